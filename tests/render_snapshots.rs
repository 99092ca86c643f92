//! Snapshot of every object `render` produces for each example. Generated passwords
//! come from a seeded generator so the snapshots are stable.

mod support;

use postgres_operator::manifests::OperatorSettings;
use postgres_operator::render::{OutputFormat, format_objects};
use support::{example, render_ok};

fn render_example(file: &str) -> String {
    let name = format!("examples/{file}");
    let rendered = render_ok(
        &[(&name, &example(file))],
        "tenant-demo",
        &OperatorSettings::default(),
    );
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
fn restore_example() {
    insta::assert_snapshot!(render_example("restore.yaml"));
}

#[test]
fn backup_private_ca_example() {
    insta::assert_snapshot!(render_example("backup-private-ca.yaml"));
}

#[test]
fn json_output_is_a_list_of_the_same_objects() {
    let yaml_objects = render_ok(
        &[("complete.yaml", &example("complete.yaml"))],
        "ns",
        &OperatorSettings::default(),
    );
    let json = format_objects(&yaml_objects, OutputFormat::Json).unwrap();
    let list: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(list["kind"], "List");
    let yaml = format_objects(&yaml_objects, OutputFormat::Yaml).unwrap();
    let from_yaml: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&yaml)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    assert_eq!(list["items"].as_array().unwrap(), &from_yaml);
}
