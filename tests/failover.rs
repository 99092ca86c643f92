//! Automatic failover with real PostgreSQL servers and real instance managers on
//! loopback, the HA engine (the controller's, on its local world) driving them.

mod support;

use std::time::{Duration, Instant};

use postgres_operator::ha::Role;
use postgres_operator::ha::engine::Announcement;
use support::failover::{HaCluster, Writer, missing_on};
use support::wait_until;

/// Three instances, `ANY 1` of the two standbys.
const QUORUM_ONE: &str = "  replicas: 3\n  quorum: {minSyncReplicas: 1, maxSyncReplicas: 1}\n";

/// How long the remaining standby may take to stream from the promoted one. The target
/// is 3 s; a loaded 2-core CI machine gets more room.
const RESTREAM_BOUND: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_replaced_without_losing_an_acknowledged_commit() {
    let mut cluster = HaCluster::start("fo", 3, QUORUM_ONE).await;
    cluster.wait_quorum(0, 1, 2).await;
    cluster.start_engine();
    cluster.wait_engine_watching(1).await;
    let writer = Writer::start(&cluster.ports()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let old_port = cluster.instances[0].port;
    let killed = Instant::now();
    cluster.instances[0].kill();
    let first = writer.wait_ack_elsewhere(old_port, killed, 60).await;
    let rto = first.at - killed;
    wait_until("the engine records the new primary", 30, || async {
        cluster
            .status()
            .current_primary
            .is_some_and(|p| p != cluster.instances[0].pod)
    })
    .await;
    let status = cluster.status();
    let new_primary = status.current_primary.clone().unwrap();
    assert_ne!(new_primary, cluster.instances[0].pod);
    assert_eq!(status.target_primary.as_deref(), Some(new_primary.as_str()));
    let new = cluster.index(&new_primary);
    assert_eq!(cluster.instances[new].port, first.port);
    eprintln!(
        "writes resumed on {new_primary} {} ms after the kill",
        rto.as_millis()
    );

    // Every commit acknowledged, before and after, is on the new primary.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acks = writer.acks();
    let lost = missing_on(first.port, &acks).await;
    assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");

    // The other standby streams from the new primary.
    let other = 3 - new;
    let promoted = Instant::now();
    wait_until(
        "the other standby streams from the new primary",
        RESTREAM_BOUND.as_secs(),
        || async {
            cluster.report(other).await.is_some_and(|r| {
                r.report.role == Role::Standby
                    && r.report.streaming_from.as_deref() == Some(new_primary.as_str())
            })
        },
    )
    .await;
    eprintln!(
        "the other standby streams again {} ms after",
        promoted.elapsed().as_millis()
    );

    let announced = cluster.announcements();
    assert!(
        announced
            .iter()
            .any(|a| matches!(a, Announcement::FailoverCompleted { to, .. } if *to == new_primary)),
        "{announced:?}"
    );

    // The old primary comes back on its volume: it rewinds and streams from the new one.
    cluster.instances[0].restart_with_env(&[]);
    cluster.instances[0].wait_ready().await;
    wait_until("the old primary streams from the new one", 60, || async {
        cluster.report(0).await.is_some_and(|r| {
            r.report.role == Role::Standby
                && r.report.streaming_from.as_deref() == Some(new_primary.as_str())
        })
    })
    .await;
    let log = cluster.instances[0].log();
    assert!(log.contains("rejoined the new primary's history"), "{log}");
    // It holds every acknowledged commit once caught up.
    let acks = writer.acks();
    drop(writer);
    wait_until("the old primary has replayed every commit", 60, || async {
        missing_on(cluster.instances[0].port, &acks)
            .await
            .is_empty()
    })
    .await;
}
