//! The Terraform example declares a valid Postgres: its `manifest` renders.

mod support;

use postgres_operator::manifests::OperatorSettings;
use serde_json::Value;

/// Converts the HCL object syntax used by `kubernetes_manifest` (`key = value` lines,
/// nested `{ }`, strings and numbers) to JSON.
fn hcl_object_to_json(hcl: &str) -> Value {
    let mut json = String::new();
    for line in hcl
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        if line == "}" {
            json.push_str("},");
        } else if let Some((key, value)) = line.split_once(" = ").or_else(|| line.split_once('=')) {
            let value = value.trim();
            json.push_str(&format!("\"{}\": {}", key.trim(), value));
            if value != "{" {
                json.push(',');
            }
        } else {
            panic!("unsupported HCL line: {line}");
        }
    }
    let json = format!("{{{}}}", json.trim_end_matches(',')).replace(",}", "}");
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"))
}

#[test]
fn terraform_manifest_renders() {
    let tf = std::fs::read_to_string(format!(
        "{}/examples/terraform.tf",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let start = tf.find("manifest = {").expect("a manifest block") + "manifest = {".len();
    let mut depth = 1;
    let end = start
        + tf[start..]
            .char_indices()
            .find(|(_, c)| {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .expect("a closed manifest block")
            .0;
    let manifest = hcl_object_to_json(&tf[start..end]);
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
