//! A primary cut off from the HA engine and from every standby stops accepting writes
//! on its own, and serves again once the engine, back, finds nobody else to promote.
//! Real instance managers and PostgreSQL on loopback; the cut is made by stopping the
//! engine (its heartbeat stream closes) and killing the only standby.

mod support;

use std::time::{Duration, Instant};

use postgres_operator::ha::Role;
use postgres_operator::ha::engine::Announcement;
use support::failover::{HaCluster, SUPERUSER_PASSWORD};
use support::postgres::login;
use support::wait_until;

/// Two instances, asynchronous: nothing else would stop an isolated primary from
/// acknowledging writes a failover then throws away.
const ASYNC_PAIR: &str = "  replicas: 2\n  quorum: {minSyncReplicas: 0, maxSyncReplicas: 0}\n";

async fn commits(port: u16) -> bool {
    match login(port, "postgres", SUPERUSER_PASSWORD, "postgres").await {
        Ok(client) => client
            .batch_execute("CREATE TABLE IF NOT EXISTS probe (at timestamptz); INSERT INTO probe VALUES (now())")
            .await
            .is_ok(),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_primary_stops_taking_writes_until_the_engine_is_back() {
    let mut cluster = HaCluster::start("iso", 2, ASYNC_PAIR).await;
    let primary_port = cluster.instances[0].port;
    cluster.start_engine();
    cluster.wait_engine_watching(0).await;

    // The engine goes (a controller restart): the standby alone keeps the primary in
    // contact, so it goes on serving.
    cluster.stop_engine();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        commits(primary_port).await,
        "the primary serves while its standby replies"
    );

    // The standby goes too: nobody is left to tell the primary it is still the one.
    let cut = Instant::now();
    cluster.instances[1].kill();
    wait_until("the isolated primary refuses writes", 30, || async {
        !commits(primary_port).await
    })
    .await;
    let stopped_after = cut.elapsed();
    let report = cluster.report(0).await.expect("its manager still answers");
    assert_eq!(report.report.role, Role::Primary);
    assert!(report.fenced && !report.report.running, "{report:?}");
    eprintln!(
        "the isolated primary stopped {} ms after its last contact went",
        stopped_after.as_millis()
    );
    assert!(
        cluster.instances[0]
            .log()
            .contains("this primary stops accepting writes"),
        "{}",
        cluster.instances[0].log()
    );

    // Still alone, it stays down.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!commits(primary_port).await);

    // The engine is back and finds no standby to promote: the held primary, the only
    // copy of every commit, serves again, and no failover is recorded.
    cluster.start_engine();
    wait_until("the primary serves again", 60, || async {
        commits(primary_port).await
    })
    .await;
    let status = cluster.status();
    let primary = cluster.instances[0].pod.as_str();
    for recorded in [&status.current_primary, &status.target_primary] {
        assert!(
            recorded.as_deref().is_none_or(|pod| pod == primary),
            "{status:?}"
        );
    }
    let announced = cluster.announcements();
    assert!(
        announced
            .iter()
            .any(|a| matches!(a, Announcement::Blocked(Some(_)))),
        "{announced:?}"
    );
    assert!(
        !announced
            .iter()
            .any(|a| matches!(a, Announcement::FailoverCompleted { .. })),
        "{announced:?}"
    );
}
