//! Everything we emit validates against the real schemas: rendered objects against the
//! Kubernetes OpenAPI (strict, oldest and newest supported versions), the CRDs as
//! CustomResourceDefinitions and as structural schemas, the examples against the CRD.

mod support;

use postgres_operator::crdgen;
use postgres_operator::manifests::OperatorSettings;
use postgres_operator::render::{OutputFormat, format_objects};
use support::validators::{
    check_structural_schema, kubernetes_validate, kubernetes_validate_versions,
    validate_against_crd,
};
use support::{EXAMPLES, example, render_ok};

fn render_all_examples(settings: &OperatorSettings) -> String {
    let texts: Vec<String> = EXAMPLES.iter().map(|f| example(f)).collect();
    let inputs: Vec<(&str, &str)> = EXAMPLES
        .iter()
        .copied()
        .zip(texts.iter().map(String::as_str))
        .collect();
    format_objects(
        &render_ok(&inputs, "tenant-demo", settings),
        OutputFormat::Yaml,
    )
    .unwrap()
}

#[test]
fn rendered_objects_validate_against_kubernetes_schemas() {
    // Narrowed network access too: the NetworkPolicy with its peers must validate.
    let peers: Vec<k8s_openapi::api::networking::v1::NetworkPolicyPeer> = serde_json::from_str(
        r#"[{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "apps"}}},
            {"ipBlock": {"cidr": "10.0.0.0/8"}}]"#,
    )
    .unwrap();
    let settings = OperatorSettings {
        default_storage_class: Some("replicated".to_string()),
        client_peers: peers.clone(),
        metrics_peers: peers,
        ..OperatorSettings::default()
    };
    let yaml = render_all_examples(&settings);
    let versions = kubernetes_validate_versions();
    assert!(
        versions.len() >= 2,
        "need the oldest and newest Kubernetes: {versions:?}"
    );
    for version in versions {
        kubernetes_validate(&yaml, &version)
            .unwrap_or_else(|e| panic!("Kubernetes {version}: {e}"));
    }
}

#[test]
fn crds_validate_as_custom_resource_definitions() {
    let crds = crdgen::crds_yaml().unwrap();
    for version in kubernetes_validate_versions() {
        kubernetes_validate(&crds, &version)
            .unwrap_or_else(|e| panic!("Kubernetes {version}: {e}"));
    }
}

#[test]
fn crd_schemas_are_structural() {
    check_structural_schema(&crdgen::crds_yaml().unwrap()).unwrap();
}

#[test]
fn crd_spec_has_no_preserve_unknown_fields_at_the_top() {
    let crd = serde_json::to_value(postgres_operator::crdgen::crds()[0].clone()).unwrap();
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    assert_eq!(spec["type"], "object");
    assert!(spec.get("x-kubernetes-preserve-unknown-fields").is_none());
    assert!(spec["properties"].as_object().unwrap().len() >= 14);
}

#[test]
fn examples_validate_against_the_crd_schema() {
    let crds = crdgen::crds_yaml().unwrap();
    for file in EXAMPLES.iter().copied().chain(["backup-manual.yaml"]) {
        validate_against_crd(&crds, &example(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
}

#[test]
fn crd_schema_refuses_what_kubectl_would_refuse() {
    let crds = crdgen::crds_yaml().unwrap();
    let head =
        "apiVersion: apps.cozystack.io/v1alpha1\nkind: Postgres\nmetadata:\n  name: x\nspec:\n";
    for (case, body) in [
        ("unknown field", "  replica: 2\n"),
        ("replicas as string", "  replicas: two\n"),
        ("negative replicas", "  replicas: -1\n"),
        ("unknown version", "  version: v12\n"),
        ("users as list", "  users: [a]\n"),
    ] {
        let doc = format!("{head}{body}");
        assert!(
            validate_against_crd(&crds, &doc).is_err(),
            "{case} was accepted"
        );
    }
}

#[test]
fn committed_crds_are_up_to_date() {
    let path = format!("{}/crds/crds.yaml", env!("CARGO_MANIFEST_DIR"));
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = crdgen::crds_yaml().unwrap();
    assert!(
        committed == generated,
        "crds/crds.yaml is stale: run `cargo run -- crds > crds/crds.yaml`"
    );
}
