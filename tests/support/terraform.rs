//! The Terraform example (examples/terraform.tf): the Postgres its `kubernetes_manifest`
//! declares.

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

/// The `manifest` of examples/terraform.tf, as JSON.
pub fn manifest() -> Value {
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
    hcl_object_to_json(&tf[start..end])
}
