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
    let allowed = [
        "metadata.name=demo",
        "metadata.name=postgres-demo-credentials",
        "metadata.name=postgres-demo",
        "metadata.name=postgres-demo-superuser",
        "metadata.name=postgres-demo-replication",
    ];
    let requests = server.requests();
    assert!(!requests.is_empty());
    for request in requests {
        assert!(!request.is_write(), "{request:?}");
        assert!(
            request.name.is_some()
                || request
                    .field_selector
                    .as_deref()
                    .is_some_and(|f| allowed.contains(&f)),
            "a request not restricted to one of its names: {request:?}"
        );
    }
    drop(updates);
    task.abort();
}
