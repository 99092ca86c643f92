//! The Terraform example declares a valid Postgres: its `manifest` renders.

mod support;

use postgres_operator::manifests::OperatorSettings;

#[test]
fn terraform_manifest_renders() {
    let manifest = support::terraform::manifest();
    assert_eq!(manifest["kind"], "Postgres");
    assert_eq!(manifest["spec"]["replicas"], 3);
    let yaml = serde_yaml::to_string(&manifest).unwrap();
    let rendered = support::render_ok(
        &[("terraform.tf", &yaml)],
        "default",
        &OperatorSettings::default(),
    );
    let statefulset = rendered[0]
        .objects
        .iter()
        .find(|o| o.kind() == "StatefulSet")
        .unwrap();
    let json = statefulset.to_json().unwrap();
    assert_eq!(json["spec"]["replicas"], 3);
    assert_eq!(
        json["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
        "20Gi"
    );
}
