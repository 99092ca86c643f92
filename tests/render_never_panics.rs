//! Property tests: `render` returns objects or errors, and never panics, on any input —
//! arbitrary text, arbitrary YAML trees, and the examples with random parts replaced.

mod support;

use postgres_operator::manifests::OperatorSettings;
use postgres_operator::render::{OutputFormat, format_objects};
use proptest::prelude::*;
use serde_json::{Value, json};

fn render(text: String) {
    if let Ok(rendered) =
        support::render(&[("fuzz.yaml", &text)], "ns", &OperatorSettings::default())
    {
        for format in [OutputFormat::Yaml, OutputFormat::Json] {
            format_objects(&rendered, format).unwrap();
        }
    }
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        (-1e12f64..1e12).prop_map(|f| json!(f)),
        prop_oneof![
            Just("".to_string()),
            Just("10Gi".to_string()),
            Just("pg_x".to_string()),
            Just("--keep-last=1".to_string()),
            Just("* * * * *".to_string()),
            "\\PC{0,12}",
        ]
        .prop_map(Value::String),
    ]
}

fn tree() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("replicas".to_string()),
                    Just("users".to_string()),
                    Just("roles".to_string()),
                    Just("admin".to_string()),
                    Just("parameters".to_string()),
                    "[a-zA-Z_ ]{1,8}",
                ],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Every path of object keys in `value`, for choosing a place to replace.
fn paths(value: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    if let Value::Object(map) = value {
        for (key, child) in map {
            prefix.push(key.clone());
            out.push(prefix.clone());
            paths(child, prefix, out);
            prefix.pop();
        }
    }
}

fn complete_example() -> Value {
    serde_yaml::from_str(&support::example("complete.yaml")).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        render(text);
    }

    #[test]
    fn yaml_like_text_never_panics(lines in prop::collection::vec("[ -]{0,4}[a-z:\\[\\]{}&*!|>'\"#0-9 ]{0,20}", 0..12)) {
        render(format!("apiVersion: apps.cozystack.io/v1alpha1\nkind: Postgres\nmetadata:\n  name: fz\n{}", lines.join("\n")));
    }

    #[test]
    fn arbitrary_spec_trees_never_panic(spec in tree()) {
        let doc = json!({"apiVersion": "apps.cozystack.io/v1alpha1", "kind": "Postgres", "metadata": {"name": "fz"}, "spec": spec});
        render(serde_yaml::to_string(&doc).unwrap());
    }

    #[test]
    fn example_with_a_random_part_replaced_never_panics(choice in any::<prop::sample::Index>(), replacement in tree()) {
        let mut doc = complete_example();
        let mut all = Vec::new();
        paths(&doc, &mut Vec::new(), &mut all);
        let path = &all[choice.index(all.len())];
        let mut target = &mut doc;
        for key in path {
            target = target.get_mut(key.as_str()).unwrap();
        }
        *target = replacement;
        render(serde_yaml::to_string(&doc).unwrap());
    }
}
