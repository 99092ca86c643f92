//! An operator started before its CRDs are installed waits for them, says what it
//! waits for in `/readyz`, and starts reconciling once they are served, without a restart.

mod support;

use std::time::Duration;

use postgres_operator::controller::failover::InstanceAddresses;
use postgres_operator::controller::{Settings, startup};
use postgres_operator::http::Health;
use serde_json::json;
use support::apiserver::ApiServer;

const POSTGRES: &str = "apps.cozystack.io/postgreses";
const BACKUPS: &str = "apps.cozystack.io/postgresbackups";

fn waiting_for(health: &Health) -> Option<String> {
    health.waiting_for.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_started_before_its_crds_starts_once_they_are_served() {
    let server = ApiServer::new();
    server.unserve(POSTGRES);
    server.unserve(BACKUPS);
    let health = Health::default();
    let settings = Settings {
        resync: Duration::from_millis(200),
        retry_base: Duration::from_millis(50),
        instance_addresses: InstanceAddresses::with(|_, _, _| None),
        ..Settings::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(startup::run_when_installed(
        server.client(),
        settings,
        health.clone(),
        async move {
            let _ = stopped.await;
        },
    ));

    support::wait_for("the operator says it waits for the Postgres CRD", || {
        waiting_for(&health)
            .is_some_and(|w| w.starts_with("CustomResourceDefinition postgreses.apps.cozystack.io"))
    })
    .await;
    server.serve(POSTGRES);
    support::wait_for(
        "the operator says it waits for the PostgresBackup CRD",
        || {
            waiting_for(&health).is_some_and(|w| {
                w.starts_with("CustomResourceDefinition postgresbackups.apps.cozystack.io")
            })
        },
    )
    .await;
    server.serve(BACKUPS);
    server.put(
        POSTGRES,
        "ns",
        json!({"apiVersion": "apps.cozystack.io/v1alpha1", "kind": "Postgres",
               "metadata": {"name": "late", "namespace": "ns"}, "spec": {}}),
    );
    support::wait_for("the cluster created after the CRDs is reconciled", || {
        server
            .get("apps/statefulsets", "ns", "postgres-late")
            .is_some()
    })
    .await;
    assert_eq!(waiting_for(&health), None);

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the controllers stop when asked")
        .unwrap();
}

#[tokio::test]
async fn a_stop_while_waiting_for_the_crds_ends_the_wait() {
    let server = ApiServer::new();
    server.unserve(POSTGRES);
    let run = startup::run_when_installed(
        server.client(),
        Settings::default(),
        Health::default(),
        std::future::ready(()),
    );
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("a stop ends the wait at once");
}
