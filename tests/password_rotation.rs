//! Rotating the replication password on a running cluster: real instance managers and
//! PostgreSQL servers on loopback, a steady writer on a synchronous quorum. The primary
//! takes the new password, every standby streams with it once the role has it (never
//! before: a standby refused by the primary would stall the quorum), no acknowledged
//! commit is lost and writes do not stop. The primary's manager is paused over the
//! rotation, so that the standbys' patience is proven, not left to a race.

mod support;

use std::time::{Duration, Instant};

use postgres_operator::manifests::config::RUNTIME_CONF;
use postgres_operator::manifests::names;
use support::failover::{HaCluster, Writer, children_titled, missing_on, send_signal};
use support::postgres::column;
use support::wait_until;

const QUORUM_ONE: &str = "  replicas: 3\n  quorum: {minSyncReplicas: 1, maxSyncReplicas: 1}\n";
const ROTATED: &str = "repl-rotated-7Qx";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_replication_password_reaches_every_standby_without_stopping_writes() {
    let cluster = HaCluster::start("rot", 3, QUORUM_ONE).await;
    cluster.wait_quorum(0, 1, 2).await;
    let writer = Writer::start(&cluster.ports()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The primary's manager paused: the role keeps the old password meanwhile, and the
    // standbys, which see the new Secret at once, must keep streaming with the old one.
    let primary_manager = children_titled(cluster.instances[0].pid(), "instance");
    assert_eq!(primary_manager.len(), 1, "the primary's manager process");
    send_signal(primary_manager[0], "STOP");
    let rotated = Instant::now();
    cluster.set_secret_password(&names::secret_replication("rot"), ROTATED);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let primary = cluster.instances[0].admin("postgres").await;
    let streaming = "SELECT count(*)::text FROM pg_stat_replication WHERE state = 'streaming'";
    assert_eq!(column(&primary, streaming).await, ["2"]);
    for standby in &cluster.instances[1..] {
        let conf = std::fs::read_to_string(standby.data_dir.join(RUNTIME_CONF)).unwrap();
        assert!(
            !conf.contains(ROTATED),
            "{} switched before the primary's role had the new password",
            standby.pod
        );
    }
    send_signal(primary_manager[0], "CONT");
    for standby in &cluster.instances[1..] {
        wait_until("the standby streams with the new password", 30, || async {
            std::fs::read_to_string(standby.data_dir.join(RUNTIME_CONF))
                .is_ok_and(|conf| conf.contains(ROTATED))
        })
        .await;
    }
    eprintln!(
        "every standby switched {} ms after the rotation",
        rotated.elapsed().as_millis()
    );
    // Only the new password opens a stream now: cut them, both come back.
    primary
        .batch_execute("SELECT pg_terminate_backend(pid) FROM pg_stat_replication")
        .await
        .unwrap();
    wait_until("both standbys stream again", 30, || async {
        column(&primary, streaming).await == ["2"]
    })
    .await;
    cluster.wait_quorum(0, 1, 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let gap = writer.longest_gap_since(rotated);
    let acks = writer.acks();
    let lost = missing_on(cluster.instances[0].port, &acks).await;
    assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");
    eprintln!(
        "{} commits; longest write gap from the rotation on: {} ms",
        acks.len(),
        gap.as_millis()
    );
    // A standby that switched before the primary altered the role would be refused and
    // retry only after wal_retrieve_retry_interval (5 s), the quorum waiting meanwhile.
    for standby in &cluster.instances[1..] {
        let log = standby.log();
        assert!(
            !log.contains("password authentication failed"),
            "{} was refused:\n{log}",
            standby.pod
        );
    }
}
