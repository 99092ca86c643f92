//! The chart's RBAC is exactly what the operator needs: every request the controller
//! makes in a full scenario is allowed, every permission it holds is used or needed to
//! grant the clusters' own Roles, and leader election stays inside its Lease Role.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use postgres_operator::build::{Cluster, OperatorSettings, rbac};
use postgres_operator::controller::leader::{self, LeaseLock, Timing};
use postgres_operator::controller::{self, Settings};
use postgres_operator::metrics::Metrics;
use serde_json::{Value, json};
use support::apiserver::{ApiServer, Recorded};

type Permission = (String, String, String);

fn verb(request: &Recorded) -> &'static str {
    match (
        request.method.as_str(),
        request.name.is_some(),
        request.watch,
    ) {
        ("GET", _, true) => "watch",
        ("GET", true, false) => "get",
        ("GET", false, false) => "list",
        ("POST", _, _) => "create",
        ("PUT", _, _) => "update",
        ("PATCH", _, _) => "patch",
        ("DELETE", _, _) => "delete",
        _ => "unknown",
    }
}

/// (group, resource, verb) of every request; `resource` may end in `/status`.
fn used(server: &ApiServer) -> BTreeSet<Permission> {
    server
        .requests()
        .iter()
        .map(|r| {
            let (group, resource) = r.resource.split_once('/').unwrap();
            (group.to_string(), resource.to_string(), verb(r).to_string())
        })
        .collect()
}

fn expand(rules: &Value) -> BTreeSet<Permission> {
    let mut out = BTreeSet::new();
    for rule in rules.as_array().unwrap() {
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    out.insert((
                        group.as_str().unwrap().into(),
                        resource.as_str().unwrap().into(),
                        verb.as_str().unwrap().into(),
                    ));
                }
            }
        }
    }
    out
}

fn chart_rules() -> BTreeSet<Permission> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/charts/postgres-operator/files/rbac-rules.yaml"
    ))
    .unwrap();
    expand(&serde_yaml::from_str(&text).unwrap())
}

/// Drives the controller through creation, growth, removal of optional objects, and an
/// invalid spec, so every code path that talks to the API runs.
async fn full_scenario(server: &ApiServer) {
    let spec: Value =
        serde_yaml::from_str::<Value>(&support::example("complete.yaml")).unwrap()["spec"].clone();
    server.put(
        "apps.cozystack.io/postgreses",
        "ns",
        json!({"apiVersion": "apps.cozystack.io/v1alpha1", "kind": "Postgres",
        "metadata": {"name": "all", "namespace": "ns"}, "spec": spec.clone()}),
    );
    server.put("apps.cozystack.io/postgreses", "ns", json!({"apiVersion": "apps.cozystack.io/v1alpha1", "kind": "Postgres",
        "metadata": {"name": "bad", "namespace": "ns"}, "spec": {"replicas": 2, "quorum": {"maxSyncReplicas": 2}}}));
    server.put("apps.cozystack.io/postgresbackups", "ns", json!({"apiVersion": "apps.cozystack.io/v1alpha1",
        "kind": "PostgresBackup", "metadata": {"name": "manual", "namespace": "ns"}, "spec": {"postgres": "missing"}}));
    server.put("/persistentvolumeclaims", "ns", json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "pgdata-postgres-all-0", "namespace": "ns", "labels": {"app.kubernetes.io/name": "postgres",
            "app.kubernetes.io/instance": "all", "postgres.apps.cozystack.io/cluster": "all"}},
        "spec": {"resources": {"requests": {"storage": "1Gi"}}}}));
    // A pod as the StatefulSet creates it: no role label yet.
    server.put("/pods", "ns", json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "postgres-all-0", "namespace": "ns", "labels": {"app.kubernetes.io/name": "postgres",
            "app.kubernetes.io/instance": "all", "postgres.apps.cozystack.io/cluster": "all"}}}));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let client = server.client();
    let lock = LeaseLock::new(
        client.clone(),
        "operator",
        "postgres-operator",
        "me",
        Duration::from_secs(3),
    );
    let timing = Timing {
        lease_duration: Duration::from_secs(3),
        renew_every: Duration::from_millis(200),
        retry_every: Duration::from_millis(100),
    };
    let settings = Settings {
        resync: Duration::from_millis(200),
        retry_base: Duration::from_millis(100),
        ..Settings::default()
    };
    let task = tokio::spawn(leader::lead(
        lock,
        timing,
        async move {
            let _ = stopped.await;
        },
        move |stop| controller::run(client, settings, Arc::new(Metrics::default()), stop),
    ));
    support::wait_for("the claim grew", || {
        server
            .get("/persistentvolumeclaims", "ns", "pgdata-postgres-all-0")
            .is_some_and(|c| c["spec"]["resources"]["requests"]["storage"] == "50Gi")
    })
    .await;
    support::wait_for("the pod is labelled primary", || {
        server
            .get("/pods", "ns", "postgres-all-0")
            .is_some_and(|p| {
                p["metadata"]["labels"]["postgres.apps.cozystack.io/role"] == "primary"
            })
    })
    .await;
    // A backup asked for by hand gets its Job, and the record names it.
    server.put("apps.cozystack.io/postgresbackups", "ns", json!({"apiVersion": "apps.cozystack.io/v1alpha1",
        "kind": "PostgresBackup", "metadata": {"name": "now", "namespace": "ns"}, "spec": {"postgres": "all"}}));
    support::wait_for("the backup Job", || {
        server.get("batch/jobs", "ns", "now-backup").is_some()
            && server
                .get("apps.cozystack.io/postgresbackups", "ns", "now")
                .is_some_and(|r| r["status"]["jobName"] == "now-backup")
    })
    .await;
    let mut pg = server
        .get("apps.cozystack.io/postgreses", "ns", "all")
        .unwrap();
    pg["spec"]["external"] = json!(false);
    pg["spec"]["backup"] = json!({"enabled": false});
    server.put("apps.cozystack.io/postgreses", "ns", pg);
    support::wait_for("stale objects are deleted", || {
        server
            .get("batch/cronjobs", "ns", "postgres-all-backup")
            .is_none()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.send(()).unwrap();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_rbac_allows_exactly_what_the_operator_uses() {
    let server = ApiServer::new();
    full_scenario(&server).await;
    let used = used(&server);
    let (lease, controller_used): (BTreeSet<Permission>, BTreeSet<Permission>) = used
        .into_iter()
        .partition(|(group, _, _)| group == "coordination.k8s.io");

    let allowed = chart_rules();
    let missing: Vec<&Permission> = controller_used.difference(&allowed).collect();
    assert!(missing.is_empty(), "the chart does not allow: {missing:?}");

    // What each cluster's Role grants, the operator must hold.
    let pg: postgres_operator::api::Postgres =
        serde_yaml::from_str(&support::example("complete.yaml")).unwrap();
    let settings = OperatorSettings::default();
    let role = rbac::desired_role(&Cluster::new(&pg, "ns", &settings));
    let granted = expand(&serde_json::to_value(role.rules.unwrap()).unwrap());
    let not_held: Vec<&Permission> = granted.difference(&allowed).collect();
    assert!(
        not_held.is_empty(),
        "the operator grants what it does not hold: {not_held:?}"
    );

    let unused: Vec<&Permission> = allowed
        .iter()
        .filter(|p| !controller_used.contains(*p) && !granted.contains(*p))
        .collect();
    assert!(
        unused.is_empty(),
        "the chart allows verbs nobody uses: {unused:?}"
    );

    let lease_role: BTreeSet<Permission> = ["get", "create", "update"]
        .iter()
        .map(|v| ("coordination.k8s.io".into(), "leases".into(), v.to_string()))
        .collect();
    let lease_missing: Vec<&Permission> = lease.difference(&lease_role).collect();
    assert!(
        lease_missing.is_empty(),
        "the leader-election Role lacks: {lease_missing:?}"
    );
}
