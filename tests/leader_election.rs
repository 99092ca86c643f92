//! Leader election on a Lease in the API double: one leader at a time, hand-over on
//! release, take-over after expiry, and two full operators where only the leader acts.

mod support;

use std::sync::Arc;
use std::time::Duration;

use postgres_operator::controller::leader::{self, Ended, LeaseLock, Timing};
use postgres_operator::controller::{self, Settings};
use postgres_operator::metrics::Metrics;
use serde_json::json;
use support::apiserver::ApiServer;

const NS: &str = "postgres-operator";

fn lock(server: &ApiServer, identity: &str, seconds: u64) -> LeaseLock {
    LeaseLock::new(
        server.client(),
        NS,
        "postgres-operator",
        identity,
        Duration::from_secs(seconds),
    )
}

fn holder(server: &ApiServer) -> Option<String> {
    let lease = server.get("coordination.k8s.io/leases", NS, "postgres-operator")?;
    lease["spec"]["holderIdentity"].as_str().map(str::to_string)
}

#[tokio::test]
async fn only_one_candidate_holds_the_lease_until_it_releases_it() {
    let server = ApiServer::new();
    let a = lock(&server, "a", 15);
    let b = lock(&server, "b", 15);
    assert!(a.try_acquire_or_renew().await.unwrap());
    assert!(!b.try_acquire_or_renew().await.unwrap());
    assert!(a.try_acquire_or_renew().await.unwrap(), "the holder renews");
    assert_eq!(holder(&server).as_deref(), Some("a"));
    a.release().await.unwrap();
    assert!(
        b.try_acquire_or_renew().await.unwrap(),
        "a released lease is free at once"
    );
    assert!(!a.try_acquire_or_renew().await.unwrap());
    let lease = server
        .get("coordination.k8s.io/leases", NS, "postgres-operator")
        .unwrap();
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
}

#[tokio::test]
async fn an_expired_lease_is_taken_over() {
    let server = ApiServer::new();
    let a = lock(&server, "a", 1);
    let b = lock(&server, "b", 1);
    assert!(a.try_acquire_or_renew().await.unwrap());
    assert!(!b.try_acquire_or_renew().await.unwrap());
    // a crashes: no renewal, no release.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(b.try_acquire_or_renew().await.unwrap());
    assert_eq!(holder(&server).as_deref(), Some("b"));
}

#[tokio::test]
async fn racing_candidates_cannot_both_win() {
    let server = ApiServer::new();
    let candidates: Vec<LeaseLock> = (0..8)
        .map(|i| lock(&server, &format!("c{i}"), 15))
        .collect();
    let results =
        futures::future::join_all(candidates.iter().map(|c| c.try_acquire_or_renew())).await;
    let winners = results.into_iter().filter(|r| *r.as_ref().unwrap()).count();
    assert_eq!(winners, 1);
}

fn timing() -> Timing {
    Timing {
        lease_duration: Duration::from_secs(3),
        renew_every: Duration::from_millis(300),
        retry_every: Duration::from_millis(200),
    }
}

/// One operator replica: leader election around the controller.
fn replica(
    server: &ApiServer,
    identity: &str,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Ended>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let client = server.client();
    let lock = lock(server, identity, 3);
    let settings = Settings {
        resync: Duration::from_millis(300),
        retry_base: Duration::from_millis(100),
        instance: identity.to_string(),
        ..Settings::default()
    };
    let task = tokio::spawn(async move {
        leader::lead(
            lock,
            timing(),
            async move {
                let _ = stopped.await;
            },
            move |stop| controller::run(client, settings, Arc::new(Metrics::default()), stop),
        )
        .await
    });
    (stop, task)
}

fn postgres(name: &str) -> serde_json::Value {
    json!({"apiVersion": "apps.cozystack.io/v1alpha1", "kind": "Postgres", "metadata": {"name": name, "namespace": "apps"}, "spec": {}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operators_one_leader_and_a_clean_hand_over() {
    let server = ApiServer::new();
    server.put("apps.cozystack.io/postgreses", "apps", postgres("first"));
    let (stop_a, task_a) = replica(&server, "operator-a");
    support::wait_for("operator-a leads", || {
        holder(&server).as_deref() == Some("operator-a")
    })
    .await;
    let (stop_b, task_b) = replica(&server, "operator-b");
    support::wait_for("the leader reconciles", || {
        server
            .get("apps/statefulsets", "apps", "postgres-first")
            .is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        holder(&server).as_deref(),
        Some("operator-a"),
        "the follower does not take over a live lease"
    );

    // SIGTERM on the leader: it stops its controller and releases the Lease.
    stop_a.send(()).unwrap();
    assert_eq!(task_a.await.unwrap(), Ended::Shutdown);
    support::wait_for("operator-b leads", || {
        holder(&server).as_deref() == Some("operator-b")
    })
    .await;
    server.put("apps.cozystack.io/postgreses", "apps", postgres("second"));
    support::wait_for("the new leader reconciles", || {
        server
            .get("apps/statefulsets", "apps", "postgres-second")
            .is_some()
    })
    .await;
    stop_b.send(()).unwrap();
    assert_eq!(task_b.await.unwrap(), Ended::Shutdown);
    assert_eq!(holder(&server), None, "released on shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_cannot_renew_steps_down() {
    let server = ApiServer::new();
    let (_stop, task) = replica(&server, "operator-a");
    support::wait_for("operator-a leads", || {
        holder(&server).as_deref() == Some("operator-a")
    })
    .await;
    // Another replica takes the Lease over (as after a network partition).
    let mut lease = server
        .get("coordination.k8s.io/leases", NS, "postgres-operator")
        .unwrap();
    lease["spec"]["holderIdentity"] = json!("operator-z");
    lease["spec"]["renewTime"] = json!("2999-01-01T00:00:00.000000Z");
    server.put("coordination.k8s.io/leases", NS, lease);
    let ended = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ended, Ended::LostLease);
}
