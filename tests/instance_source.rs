//! The instance manager's Kubernetes source against the in-memory API double: it watches
//! its own Postgres and Secrets by name (what the pod's Role allows), publishes a
//! snapshot when either changes, and asks for nothing else.

mod support;

use std::sync::Arc;
use std::time::Duration;

use postgres_operator::instance::source::{KubeSource, Snapshot, SpecSource};
use serde_json::{Value, json};
use support::apiserver::ApiServer;
use tokio::sync::watch;

const NS: &str = "tenant";

fn secret(name: &str, values: &[(&str, &str)]) -> Value {
    let data: serde_json::Map<String, Value> = values
        .iter()
        .map(|(k, v)| {
            use base64::Engine;
            (
                k.to_string(),
                json!(base64::engine::general_purpose::STANDARD.encode(v)),
            )
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS}, "data": data})
}

fn postgres(max_connections: i64) -> Value {
    json!({"apiVersion": "apps.cozystack.io/v1alpha1", "kind": "Postgres",
        "metadata": {"name": "demo", "namespace": NS},
        "spec": {"users": {"alice": {}}, "postgresql": {"parameters": {"max_connections": max_connections}}}})
}

async fn next(
    updates: &mut watch::Receiver<Option<Arc<Snapshot>>>,
    what: &str,
    check: impl Fn(&Snapshot) -> bool,
) -> Arc<Snapshot> {
    let found = tokio::time::timeout(
        Duration::from_secs(10),
        updates.wait_for(|s| s.as_ref().is_some_and(|s| check(s))),
    )
    .await
    .unwrap_or_else(|_| panic!("no snapshot where {what}"))
    .unwrap();
    found.clone().unwrap()
}

#[tokio::test]
async fn the_kube_source_follows_its_postgres_and_secrets_by_name() {
    let server = ApiServer::new();
    server.put("apps.cozystack.io/postgreses", NS, postgres(100));
    server.put(
        "/secrets",
        NS,
        secret("postgres-demo-superuser", &[("password", "su")]),
    );
    server.put(
        "/secrets",
        NS,
        secret("postgres-demo-credentials", &[("alice", "a'1")]),
    );
    // Another cluster's Secret: never read.
    server.put(
        "/secrets",
        NS,
        secret("postgres-other-superuser", &[("password", "x")]),
    );
    let (tx, mut updates) = watch::channel(None);
    let task = tokio::spawn(
        KubeSource {
            client: server.client(),
            namespace: NS.to_string(),
            cluster: "demo".to_string(),
        }
        .run(tx),
    );
    let first = next(&mut updates, "both Secrets are seen", |s| {
        s.superuser_password() == Some("su")
            && s.user_passwords().get("alice").map(String::as_str) == Some("a'1")
    })
    .await;
    assert_eq!(first.replication_password(), None);

    server.put(
        "/secrets",
        NS,
        secret("postgres-demo-replication", &[("password", "r")]),
    );
    next(&mut updates, "the replication Secret appears", |s| {
        s.replication_password() == Some("r")
    })
    .await;
    server.put(
        "/secrets",
        NS,
        secret("postgres-demo-credentials", &[("alice", "rotated")]),
    );
    next(&mut updates, "a rotated password arrives", |s| {
        s.user_passwords().get("alice").map(String::as_str) == Some("rotated")
    })
    .await;
    server.put("apps.cozystack.io/postgreses", NS, postgres(200));
    next(&mut updates, "a spec change arrives", |s| {
        format!(
            "{:?}",
            s.postgres.spec.postgresql.parameters.get("max_connections")
        )
        .contains("200")
    })
    .await;

    // Only reads, and only by name: what the rendered Role grants.
    let pg: postgres_operator::api::Postgres = serde_json::from_value(postgres(100)).unwrap();
    let role = postgres_operator::manifests::rbac::desired_role(
        &postgres_operator::manifests::Cluster::new(
            &pg,
            NS,
            &postgres_operator::manifests::OperatorSettings::default(),
        ),
    );
    let allowed: Vec<String> = role
        .rules
        .unwrap()
        .iter()
        .filter(|rule| {
            rule.resources
                .as_ref()
                .is_some_and(|r| r.iter().any(|r| r == "secrets" || r == "postgreses"))
        })
        .flat_map(|rule| rule.resource_names.clone().unwrap_or_default())
        .map(|name| format!("metadata.name={name}"))
        .collect();
    assert!(allowed.contains(&"metadata.name=postgres-demo-server".to_string()));
    let requests = server.requests();
    assert!(!requests.is_empty());
    for request in requests {
        assert!(!request.is_write(), "{request:?}");
        assert!(
            request.name.is_some()
                || request
                    .field_selector
                    .as_deref()
                    .is_some_and(|f| allowed.iter().any(|a| a == f)),
            "a request not restricted to one of its names: {request:?}"
        );
    }
    drop(updates);
    task.abort();
}

const CONFIG_REJECTED: &str = "postgres.apps.cozystack.io/config-rejected";

fn pod_annotation(server: &ApiServer, pod: &str) -> Option<Value> {
    let pod = server.get("/pods", NS, pod)?;
    let value = pod["metadata"]["annotations"][CONFIG_REJECTED].as_str()?;
    Some(serde_json::from_str(value).unwrap())
}

fn pod_writes(server: &ApiServer) -> usize {
    server
        .writes()
        .iter()
        .filter(|w| w.resource == "/pods")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instance_reports_a_refusal_on_its_own_pod_and_removes_it_when_it_clears() {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, Patch, PatchParams};
    use postgres_operator::api::instance_report::ConfigRejected;
    use postgres_operator::instance::config_guard::RejectionReport;
    use postgres_operator::instance::pod_report::PodReporter;
    use postgres_operator::manifests::{Cluster, OperatorSettings, rbac};
    use support::apiserver::permissions;

    let server = ApiServer::new();
    server.put(
        "/pods",
        NS,
        json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "postgres-demo-0", "namespace": NS}}),
    );
    // The controller's role label, applied under the operator's field manager: the
    // instance's own applies must leave it alone.
    Api::<Pod>::namespaced(server.client(), NS)
        .patch(
            "postgres-demo-0",
            &PatchParams::apply("postgres-operator").force(),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {
                "name": "postgres-demo-0", "labels": {"postgres.apps.cozystack.io/role": "primary"}}})),
        )
        .await
        .unwrap();
    // From here on, only what the cluster's Role grants the instance.
    let pg: postgres_operator::api::Postgres = serde_json::from_value(postgres(100)).unwrap();
    let role = rbac::desired_role(&Cluster::new(&pg, NS, &OperatorSettings::default()));
    server.authorize(permissions(
        &serde_json::to_value(role.rules.unwrap()).unwrap(),
    ));
    let writes_before = pod_writes(&server);

    let report = RejectionReport::default();
    let task = tokio::spawn(
        PodReporter::new(server.client(), NS, "postgres-demo-0").follow(report.subscribe()),
    );
    // The first apply clears whatever an earlier run of the container left.
    support::wait_for("the first report", || pod_writes(&server) > writes_before).await;
    assert_eq!(pod_annotation(&server, "postgres-demo-0"), None);

    let refused = ConfigRejected {
        setting: "max_connections".to_string(),
        message: "invalid value for parameter \"max_connections\": \"lots\"".to_string(),
        reverted: false,
    };
    report.set(Some(refused.clone()));
    support::wait_for("the annotation appears", || {
        pod_annotation(&server, "postgres-demo-0").is_some()
    })
    .await;
    assert_eq!(
        pod_annotation(&server, "postgres-demo-0").unwrap(),
        json!({"setting": "max_connections",
            "message": "invalid value for parameter \"max_connections\": \"lots\"", "reverted": false})
    );
    // The same refusal again writes nothing.
    let settled = pod_writes(&server);
    report.set(Some(refused));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pod_writes(&server), settled);

    report.set(None);
    support::wait_for("the annotation is removed", || {
        pod_annotation(&server, "postgres-demo-0").is_none()
    })
    .await;
    let pod = server.get("/pods", NS, "postgres-demo-0").unwrap();
    assert_eq!(
        pod["metadata"]["labels"]["postgres.apps.cozystack.io/role"], "primary",
        "the controller's label stays"
    );
    for write in server.writes().iter().skip(writes_before) {
        assert_eq!(write.method, "PATCH", "{write:?}");
        assert_eq!(
            write.content_type.as_deref(),
            Some("application/apply-patch+yaml"),
            "{write:?}"
        );
    }
    assert!(server.forbidden().is_empty(), "{:?}", server.forbidden());

    // A pod that does not exist is never created: the Role has no `create`.
    let missing = PodReporter::new(server.client(), NS, "postgres-demo-7")
        .apply(Some(&ConfigRejected::default()))
        .await;
    assert!(missing.is_err());
    assert!(server.get("/pods", NS, "postgres-demo-7").is_none());
    task.abort();
}

/// The restore in progress goes on the Pod beside a refusal, each under its own field
/// manager: setting or clearing one never removes the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_report_and_a_refusal_share_the_pod_without_removing_each_other() {
    use postgres_operator::api::instance_report::{ConfigRejected, Restoring};
    use postgres_operator::instance::pod_report::{PodReporter, Reports};

    const RESTORING: &str = "postgres.apps.cozystack.io/restoring";
    let server = ApiServer::new();
    server.put(
        "/pods",
        NS,
        json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "postgres-demo-0", "namespace": NS}}),
    );
    let restoring = |server: &ApiServer| -> Option<Value> {
        let pod = server.get("/pods", NS, "postgres-demo-0")?;
        serde_json::from_str(pod["metadata"]["annotations"][RESTORING].as_str()?).ok()
    };
    let reports = Reports::default();
    let reporter = || PodReporter::new(server.client(), NS, "postgres-demo-0");
    let tasks = [
        tokio::spawn(reporter().follow(reports.rejected.subscribe())),
        tokio::spawn(reporter().follow(reports.restoring.subscribe())),
    ];
    reports.restoring.set(Some(Restoring {
        message: "restoring backup run r1 of cluster \"old\" (0 databases done)".to_string(),
        retrying: false,
    }));
    reports.rejected.set(Some(ConfigRejected {
        setting: "work_mem".to_string(),
        message: "bad".to_string(),
        reverted: false,
    }));
    support::wait_for("both annotations", || {
        restoring(&server).is_some() && pod_annotation(&server, "postgres-demo-0").is_some()
    })
    .await;
    assert_eq!(
        restoring(&server).unwrap(),
        json!({"message": "restoring backup run r1 of cluster \"old\" (0 databases done)", "retrying": false})
    );
    reports.restoring.set(None);
    support::wait_for("the restore annotation goes", || {
        restoring(&server).is_none()
    })
    .await;
    assert_eq!(
        pod_annotation(&server, "postgres-demo-0").unwrap()["setting"],
        "work_mem",
        "the refusal stays"
    );
    reports.restoring.set(Some(Restoring {
        message: "restore from backup failed, retrying: wrong restic password".to_string(),
        retrying: true,
    }));
    reports.rejected.set(None);
    support::wait_for("the refusal goes, the restore is back", || {
        pod_annotation(&server, "postgres-demo-0").is_none()
            && restoring(&server).is_some_and(|r| r["retrying"] == true)
    })
    .await;
    for task in tasks {
        task.abort();
    }
}
