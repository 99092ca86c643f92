//! The chart's alerts (`charts/postgres-operator/files/alerts.yaml`): checked and unit
//! tested by Prometheus' own `promtool`, each with a severity, a summary, a description
//! and a runbook section, and every metric they name exported by an instance or the
//! operator.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_yaml::Value;
use support::metric_names;
use support::validators::promtool;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rules_path() -> PathBuf {
    repo().join("charts/postgres-operator/files/alerts.yaml")
}

fn rules() -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(rules_path()).unwrap()).unwrap()
}

/// Every alerting rule of the file.
fn alerts(rules: &Value) -> Vec<Value> {
    rules["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().clone())
        .filter(|r| r["alert"].is_string())
        .collect()
}

#[test]
fn promtool_accepts_the_rules() {
    let text = promtool(&["check", "rules", rules_path().to_str().unwrap()], &repo())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(text.contains("SUCCESS"), "{text}");
}

/// promtool compares labels and annotations; the annotations are checked below, so
/// the unit tests run on the rules without them.
#[test]
fn every_alert_fires_when_it_should_and_only_then() {
    let mut rules = rules();
    for group in rules["groups"].as_sequence_mut().unwrap() {
        for rule in group["rules"].as_sequence_mut().unwrap() {
            rule.as_mapping_mut().unwrap().remove("annotations");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("alerts.yaml"),
        serde_yaml::to_string(&rules).unwrap(),
    )
    .unwrap();
    let tests = repo().join("tests/fixtures/alerts-test.yaml");
    std::fs::copy(&tests, dir.path().join("alerts-test.yaml")).unwrap();
    promtool(&["test", "rules", "alerts-test.yaml"], dir.path()).unwrap_or_else(|e| panic!("{e}"));

    // Each alert is tested both ways.
    let cases: Value = serde_yaml::from_str(&std::fs::read_to_string(&tests).unwrap()).unwrap();
    let mut fires = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for test in cases["tests"].as_sequence().unwrap() {
        for case in test["alert_rule_test"].as_sequence().unwrap() {
            let name = case["alertname"].as_str().unwrap().to_string();
            if case["exp_alerts"]
                .as_sequence()
                .is_some_and(|a| a.is_empty())
            {
                silent.insert(name);
            } else {
                fires.insert(name);
            }
        }
    }
    for alert in alerts(&self::rules()) {
        let name = alert["alert"].as_str().unwrap();
        assert!(fires.contains(name), "no test where {name} fires");
        assert!(silent.contains(name), "no test where {name} stays silent");
    }
}

#[test]
fn every_alert_has_a_severity_a_summary_and_a_runbook_section() {
    let runbooks = std::fs::read_to_string(repo().join("docs/runbooks.md")).unwrap();
    let anchors: BTreeSet<String> = runbooks
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|heading| heading.trim().to_lowercase())
        .collect();
    for alert in alerts(&rules()) {
        let name = alert["alert"].as_str().unwrap();
        let severity = alert["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["critical", "warning"].contains(&severity),
            "{name}: severity {severity:?}"
        );
        let annotations = &alert["annotations"];
        for key in ["summary", "description"] {
            assert!(
                annotations[key].as_str().is_some_and(|t| !t.is_empty()),
                "{name}: no {key}"
            );
        }
        let url = annotations["runbook_url"].as_str().unwrap_or_default();
        let anchor = name.to_lowercase();
        assert_eq!(url, format!("RUNBOOK_BASE#{anchor}"), "{name}");
        assert!(
            anchors.contains(&anchor),
            "docs/runbooks.md has no section {name}"
        );
        for section in ["What it means", "How to check", "What to do"] {
            let body = runbooks
                .split(&format!("## {name}\n"))
                .nth(1)
                .map(|rest| rest.split("\n## ").next().unwrap_or_default())
                .unwrap_or_default();
            assert!(
                body.contains(section),
                "{name}: the runbook lacks {section:?}"
            );
        }
    }
}

#[test]
fn every_metric_the_alerts_name_is_exported() {
    let known = metric_names::known();
    let mut named = 0;
    for alert in alerts(&rules()) {
        let expr = alert["expr"].as_str().unwrap();
        for word in metric_names::named(expr) {
            named += 1;
            assert!(
                known.contains(word),
                "{}: {word} is exported by nothing",
                alert["alert"].as_str().unwrap()
            );
        }
    }
    assert!(named > 15);
}
