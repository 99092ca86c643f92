//! Snapshot of every object `render` produces for each example. Generated passwords
//! come from a seeded generator so the snapshots are stable.

use postgres_operator::build::OperatorSettings;
use postgres_operator::build::secrets::SeededPasswords;
use postgres_operator::render::{OutputFormat, format_objects, render_inputs};

fn render_example(file: &str) -> String {
    let path = format!("{}/examples/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let inputs = vec![(format!("examples/{file}"), text)];
    let rendered = render_inputs(
        &inputs,
        "tenant-demo",
        &OperatorSettings::default(),
        &mut SeededPasswords::default(),
    )
    .unwrap_or_else(|e| {
        panic!(
            "{}",
            e.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    format_objects(&rendered, OutputFormat::Yaml).unwrap()
}

#[test]
fn minimal_example() {
    insta::assert_snapshot!(render_example("minimal.yaml"));
}

#[test]
fn complete_example() {
    insta::assert_snapshot!(render_example("complete.yaml"));
}

#[test]
fn ha_example() {
    insta::assert_snapshot!(render_example("ha.yaml"));
}

#[test]
fn dev_example() {
    insta::assert_snapshot!(render_example("dev.yaml"));
}

#[test]
fn json_output_is_a_list_of_the_same_objects() {
    let path = format!("{}/examples/complete.yaml", env!("CARGO_MANIFEST_DIR"));
    let inputs = vec![(
        "complete.yaml".to_string(),
        std::fs::read_to_string(path).unwrap(),
    )];
    let settings = OperatorSettings::default();
    let yaml_objects =
        render_inputs(&inputs, "ns", &settings, &mut SeededPasswords::default()).unwrap();
    let json = format_objects(&yaml_objects, OutputFormat::Json).unwrap();
    let list: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(list["kind"], "List");
    let yaml = format_objects(&yaml_objects, OutputFormat::Yaml).unwrap();
    let from_yaml: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&yaml)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    assert_eq!(list["items"].as_array().unwrap(), &from_yaml);
}
