//! The Helm chart, rendered and linted by the real Helm (helm-python-sdk), validated
//! against the Kubernetes schemas, for default and non-default values.

mod support;

use std::process::Command;

use serde_json::{Value, json};
use support::validators::{kubernetes_validate, kubernetes_validate_versions, tools_bin};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/postgres-operator");

fn helm(args: &[&str]) -> Result<String, String> {
    let out = Command::new(tools_bin("python"))
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/helm_chart.py"
        ))
        .args(args)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn render(values: &Value) -> Result<String, String> {
    helm(&[
        "render",
        CHART,
        &values.to_string(),
        "postgres-operator",
        "postgres-operator",
    ])
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn kinds(docs: &[Value]) -> Vec<String> {
    let mut kinds: Vec<String> = docs
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap(),
                d["metadata"]["namespace"].as_str().unwrap_or("")
            )
        })
        .collect();
    kinds.sort();
    kinds
}

fn non_default_values() -> Value {
    json!({
        "watchNamespaces": ["team-a", "team-b"],
        "leaderElection": {"enabled": false},
        "replicaCount": 1,
        "image": {"tag": "9.9.9"},
        "logFormat": "text",
        "defaultStorageClass": "replicated",
        "resources": {"requests": {"cpu": "100m", "memory": "96Mi"}, "limits": {"memory": "256Mi"}},
        "metrics": {"serviceMonitor": {"enabled": true, "labels": {"release": "prometheus"}}},
        "serviceAccount": {"name": "custom-sa"},
        "nodeSelector": {"kubernetes.io/os": "linux"}
    })
}

fn validate_builtin_kinds(docs: &[Value]) {
    let builtin: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] != "ServiceMonitor")
        .collect();
    let yaml: String = builtin
        .iter()
        .map(|d| format!("---\n{}", serde_yaml::to_string(d).unwrap()))
        .collect();
    for version in kubernetes_validate_versions() {
        kubernetes_validate(&yaml, &version)
            .unwrap_or_else(|e| panic!("Kubernetes {version}: {e}"));
    }
}

#[test]
fn default_values_render_valid_objects() {
    let docs = documents(&render(&json!({})).unwrap());
    assert_eq!(
        kinds(&docs),
        [
            "ClusterRole/",
            "ClusterRoleBinding/",
            "Deployment/postgres-operator",
            "Role/postgres-operator",
            "RoleBinding/postgres-operator",
            "Service/postgres-operator",
            "ServiceAccount/postgres-operator"
        ]
    );
    validate_builtin_kinds(&docs);
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let spec = &deployment["spec"]["template"]["spec"];
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    let container = &spec["containers"][0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(
        container["image"],
        "ghcr.io/cozystack/postgres-operator:0.1.0"
    );
    assert!(container["resources"]["limits"]["memory"].is_string());
    let env: Vec<&str> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    for name in [
        "WATCH_NAMESPACES",
        "OPERATOR_NAMESPACE",
        "POD_NAME",
        "LEADER_ELECTION",
        "LOG_FORMAT",
    ] {
        assert!(env.contains(&name), "{name} missing from {env:?}");
    }
}

#[test]
fn non_default_values_render_namespaced_rbac_and_a_service_monitor() {
    let docs = documents(&render(&non_default_values()).unwrap());
    assert_eq!(
        kinds(&docs),
        [
            "Deployment/postgres-operator",
            "Role/team-a",
            "Role/team-b",
            "RoleBinding/team-a",
            "RoleBinding/team-b",
            "Service/postgres-operator",
            "ServiceAccount/postgres-operator",
            "ServiceMonitor/postgres-operator"
        ]
    );
    validate_builtin_kinds(&docs);
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["image"],
        "ghcr.io/cozystack/postgres-operator:9.9.9"
    );
    let env = |name: &str| {
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap()["value"]
            .clone()
    };
    assert_eq!(env("WATCH_NAMESPACES"), "team-a,team-b");
    assert_eq!(env("LEADER_ELECTION"), "false");
    assert_eq!(env("DEFAULT_STORAGE_CLASS"), "replicated");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["serviceAccountName"],
        "custom-sa"
    );
    let monitor = docs.iter().find(|d| d["kind"] == "ServiceMonitor").unwrap();
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
}

#[test]
fn lint_is_clean() {
    for values in [json!({}), non_default_values()] {
        let report: Value =
            serde_json::from_str(&helm(&["lint", CHART, &values.to_string()]).unwrap()).unwrap();
        assert_eq!(report["errors"], json!([]), "{report}");
        let serious: Vec<&Value> = report["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["severity"].as_i64().unwrap() >= 2)
            .collect();
        assert!(serious.is_empty(), "{serious:?}");
    }
}

#[test]
fn the_values_schema_refuses_bad_values() {
    for (values, field) in [
        (json!({"logFormat": "xml"}), "logFormat"),
        (json!({"replicaCount": "two"}), "replicaCount"),
        (json!({"watchNamespaces": "team-a"}), "watchNamespaces"),
        (json!({"unknown": true}), "unknown"),
    ] {
        let error = render(&values).unwrap_err();
        assert!(error.contains(field), "{values}: {error}");
    }
}

#[test]
fn the_chart_ships_the_generated_crds() {
    let chart = std::fs::read_to_string(format!("{CHART}/crds/crds.yaml")).unwrap();
    let generated = postgres_operator::crdgen::crds_yaml().unwrap();
    assert!(
        chart == generated,
        "charts/postgres-operator/crds/crds.yaml is stale: copy crds/crds.yaml"
    );
}
