//! The Helm chart, rendered and linted by the real Helm (helm-python-sdk), validated
//! against the Kubernetes schemas, for default and non-default values.

mod support;

use std::process::Command;

use serde_json::{Value, json};
use support::pod_security::{pod_templates, restricted_violations};
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
        "metrics": {
            "serviceMonitor": {"enabled": true, "labels": {"release": "prometheus"}},
            "podMonitor": {"enabled": true},
            "prometheusRule": {"enabled": true, "runbookBaseUrl": "https://runbooks.example/pg.md"}
        },
        "serviceAccount": {"name": "custom-sa"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "grafana": {"dashboards": {"enabled": true}},
        "networkPolicy": {
            "clients": [{"namespaceSelector": {"matchLabels": {"postgres-access": "allowed"}}}],
            "metricsScrapers": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
        }
    })
}

fn validate_builtin_kinds(docs: &[Value]) {
    let builtin: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] != "ServiceMonitor" && d["kind"] != "PrometheusRule")
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
            "ClusterRole/",
            "ClusterRoleBinding/",
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
    // The operator itself runs in a `restricted` namespace too.
    for (at, template) in pod_templates(deployment) {
        assert_eq!(
            restricted_violations(&template),
            Vec::<String>::new(),
            "{at}"
        );
    }
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
    // No PodMonitors unless asked: neither the setting nor the permission.
    let pod_monitors = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "POD_MONITORS")
        .unwrap();
    assert_eq!(pod_monitors["value"], "false");
    assert!(
        !serde_json::to_string(&docs)
            .unwrap()
            .contains("podmonitors")
    );
}

#[test]
fn non_default_values_render_namespaced_rbac_a_service_monitor_and_the_alerts() {
    let docs = documents(&render(&non_default_values()).unwrap());
    assert_eq!(
        kinds(&docs),
        [
            // The nodes' ClusterRole: cluster-scoped, whatever the namespaces watched.
            "ClusterRole/",
            "ClusterRoleBinding/",
            // The Grafana dashboards, one per file of files/dashboards.
            "ConfigMap/postgres-operator",
            "ConfigMap/postgres-operator",
            "ConfigMap/postgres-operator",
            "ConfigMap/postgres-operator",
            "Deployment/postgres-operator",
            "PrometheusRule/postgres-operator",
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
    // The operator reads the peers as the chart passes them: its NetworkPolicies admit
    // exactly those clients and scrapers.
    let rendered = std::process::Command::new(env!("CARGO_BIN_EXE_postgres-operator"))
        .args(["render", "-o", "json", "-f"])
        .arg(format!(
            "{}/examples/minimal.yaml",
            env!("CARGO_MANIFEST_DIR")
        ))
        .env("CLIENT_PEERS", env("CLIENT_PEERS").as_str().unwrap())
        .env("METRICS_PEERS", env("METRICS_PEERS").as_str().unwrap())
        .output()
        .unwrap();
    assert!(rendered.status.success(), "{rendered:?}");
    let text = String::from_utf8(rendered.stdout).unwrap();
    assert!(
        text.contains("\"postgres-access\": \"allowed\"")
            || text.contains("\"postgres-access\":\"allowed\""),
        "{text}"
    );
    assert!(text.contains("monitoring"), "{text}");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["serviceAccountName"],
        "custom-sa"
    );
    // The alerts as files/alerts.yaml holds them, runbooks at the given address.
    let rule = docs.iter().find(|d| d["kind"] == "PrometheusRule").unwrap();
    let alerts: Value = serde_yaml::from_str(
        &std::fs::read_to_string(format!("{CHART}/files/alerts.yaml"))
            .unwrap()
            .replace("RUNBOOK_BASE", "https://runbooks.example/pg.md"),
    )
    .unwrap();
    assert_eq!(rule["spec"], alerts);
    assert_eq!(
        rule["spec"]["groups"][0]["rules"][0]["annotations"]["runbook_url"],
        "https://runbooks.example/pg.md#postgresinstancedown"
    );
    let monitor = docs.iter().find(|d| d["kind"] == "ServiceMonitor").unwrap();
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    for dashboard in docs.iter().filter(|d| d["kind"] == "ConfigMap") {
        assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    }
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    // The operator's metrics keep the namespace of each cluster they describe.
    assert_eq!(monitor["spec"]["endpoints"][0]["honorLabels"], true);
    // PodMonitors: the operator is told to make them, and may.
    assert_eq!(env("POD_MONITORS"), "true");
    let role = docs
        .iter()
        .find(|d| d["kind"] == "Role" && d["metadata"]["name"] == "postgres-operator")
        .unwrap();
    assert!(
        role["rules"].as_array().unwrap().iter().any(|rule| {
            rule["apiGroups"] == json!(["monitoring.coreos.com"])
                && rule["resources"] == json!(["podmonitors"])
        }),
        "{role}"
    );
    let nodes = docs.iter().find(|d| d["kind"] == "ClusterRole").unwrap();
    assert_eq!(nodes["metadata"]["name"], "postgres-operator-nodes");
    assert_eq!(
        nodes["rules"],
        json!([{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]}])
    );
}

/// The Grafana dashboards' ConfigMaps: one per file of `files/dashboards`, its content
/// byte for byte under the file's name, labelled for the Grafana sidecar; none by default.
#[test]
fn grafana_dashboards_render_one_config_map_per_file() {
    let config_maps = |values: &Value| -> Vec<Value> {
        let docs = documents(&render(values).unwrap());
        validate_builtin_kinds(&docs);
        docs.into_iter()
            .filter(|d| d["kind"] == "ConfigMap")
            .collect()
    };
    assert!(config_maps(&json!({})).is_empty());
    assert!(config_maps(&json!({"grafana": {"dashboards": {"enabled": false}}})).is_empty());

    let mut files: Vec<(String, String)> = std::fs::read_dir(format!("{CHART}/files/dashboards"))
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            (name, std::fs::read_to_string(&path).unwrap())
        })
        .collect();
    files.sort();
    assert_eq!(files.len(), 4);

    let rendered = config_maps(&json!({"grafana": {"dashboards": {
        "enabled": true,
        "namespace": "monitoring",
        "annotations": {"grafana_folder": "PostgreSQL"}
    }}}));
    assert_eq!(rendered.len(), files.len());
    for (name, text) in &files {
        let stem = name.strip_suffix(".json").unwrap();
        let map = rendered
            .iter()
            .find(|m| m["metadata"]["name"] == format!("postgres-operator-dashboard-{stem}"))
            .unwrap_or_else(|| panic!("no ConfigMap for {name}"));
        let meta = &map["metadata"];
        assert_eq!(meta["namespace"], "monitoring");
        assert_eq!(meta["labels"]["grafana_dashboard"], "1");
        assert_eq!(
            meta["labels"]["app.kubernetes.io/name"],
            "postgres-operator"
        );
        assert_eq!(meta["annotations"], json!({"grafana_folder": "PostgreSQL"}));
        let data = map["data"].as_object().unwrap();
        assert_eq!(data.len(), 1, "{name}");
        assert!(
            data[name.as_str()].as_str() == Some(text.as_str()),
            "{name}: the ConfigMap does not hold the file byte for byte"
        );
    }

    // Another sidecar label instead of the default; the release namespace by default.
    let rendered = config_maps(&json!({"grafana": {"dashboards": {
        "enabled": true,
        "labels": {"grafana_dashboard": null, "dashboards": "postgres"}
    }}}));
    assert_eq!(rendered.len(), files.len());
    for map in &rendered {
        let meta = &map["metadata"];
        assert_eq!(meta["namespace"], "postgres-operator");
        assert_eq!(meta["labels"]["dashboards"], "postgres");
        assert!(meta["labels"].get("grafana_dashboard").is_none(), "{meta}");
        assert!(meta.get("annotations").is_none(), "{meta}");
    }
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
        (
            json!({"grafana": {"dashboards": {"enabled": "yes"}}}),
            "enabled",
        ),
        (
            json!({"grafana": {"dashboard": {"enabled": true}}}),
            "dashboard",
        ),
        (json!({"networkPolicy": {"clients": "apps"}}), "clients"),
        (
            json!({"networkPolicy": {"clients": [{"namespace": "apps"}]}}),
            "namespace",
        ),
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
