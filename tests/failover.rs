//! Automatic failover with real PostgreSQL servers and real instance managers on
//! loopback, the HA engine (the controller's, on its local world) driving them.

mod support;

use std::time::{Duration, Instant};

use postgres_operator::ha::engine::Announcement;
use postgres_operator::ha::wire::Instruction;
use postgres_operator::ha::{RESTART_GRACE, Role};
use support::failover::{HaCluster, Writer, missing_on, send_signal, signal_pending};
use support::wait_until;

/// Three instances, `ANY 1` of the two standbys.
const QUORUM_ONE: &str = "  replicas: 3\n  quorum: {minSyncReplicas: 1, maxSyncReplicas: 1}\n";

/// How long the remaining standby may take to stream from the promoted one. The target
/// is 3 s; a loaded 2-core CI machine gets more room.
const RESTREAM_BOUND: Duration = Duration::from_secs(10);

const SIGTERM: u32 = 15;

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
    let last = cluster.status().last_failover.expect("status.lastFailover");
    assert_eq!(
        (last.from.as_str(), last.to.as_str()),
        (cluster.instances[0].pod.as_str(), new_primary.as_str())
    );
    assert_eq!(
        last.lost_wal_bytes, None,
        "nothing is given up under a quorum"
    );
    // The record shows each instance as the new primary reports it.
    let other_pod = cluster.instances[other].pod.clone();
    wait_until(
        "status.instancesStatus follows the new primary",
        30,
        || async {
            let instances = cluster.status().instances_status;
            let state = |pod: &str| instances.iter().find(|i| i.name == pod).cloned();
            state(&new_primary).is_some_and(|i| i.role == "primary" && i.ready)
                && state(&other_pod).is_some_and(|i| {
                    i.role == "standby" && i.ready && i.sync_state.as_deref() == Some("quorum")
                })
                && state(&cluster.instances[0].pod).is_some_and(|i| !i.ready)
        },
    )
    .await;

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

/// The first announcement `matching` picks out, waiting up to `seconds` for it.
async fn wait_announced<T>(
    cluster: &HaCluster,
    what: &str,
    seconds: u64,
    matching: impl Fn(&Announcement) -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(found) = cluster.announcements().iter().find_map(&matching) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "not announced within {seconds} s: {what}; announced: {:?}",
            cluster.announcements()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn completed_failovers(cluster: &HaCluster) -> Vec<(String, String)> {
    cluster
        .announcements()
        .into_iter()
        .filter_map(|a| match a {
            Announcement::FailoverCompleted { from, to, .. } => Some((from, to)),
            _ => None,
        })
        .collect()
}

/// Standby 1 falls behind while it stays in the synchronous set `ANY 1 (1, 2)`;
/// standby 2, up to date, is promoted. Standby 1 is the lagging one on purpose: between
/// equally advanced standbys the lowest ordinal wins, so only the WAL positions can
/// make the engine pick standby 2.
///
/// Standby 1's WAL receiver is frozen (SIGSTOP) at a quiet moment, the writer commits
/// a little more (acknowledged by standby 2 alone), and the primary is killed well
/// before the quorum keeper drops the stalled standby from the set (after 500 ms
/// stalled), so the engine decides with both listed and both needed (2 of 2 must
/// answer for `ANY 1`); the test prints the set it decided with (on a machine so
/// loaded that standby 1 was already dropped, standby 2 is still the only right
/// choice, as the only member left). The frozen receiver is let go (SIGCONT) only once
/// the engine's fence has asked it to stop (SIGTERM pending): it then exits without
/// reading what the dead primary had already sent into its socket, the fence succeeds,
/// and standby 1 stays behind. Held frozen through the fence instead, the fence would
/// fail after its 3 s, standby 1 would count as silent (it might still acknowledge a
/// live primary's commits), and with 2 of 2 needed the failover would be Blocked:
/// safe, and the case of its own test below.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_standby_is_not_chosen_over_an_up_to_date_one() {
    let mut cluster = HaCluster::start("lag", 3, QUORUM_ONE).await;
    cluster.wait_quorum(0, 1, 2).await;
    cluster.start_engine();
    cluster.wait_engine_recorded(1, 2).await;
    let (lagging, ahead) = (1, 2);
    let ahead_pod = cluster.instances[ahead].pod.clone();
    let writer = Writer::start(&cluster.ports()).await;
    writer.wait_acks_after(Instant::now(), 20, 30).await;

    // A quiet moment: the receiver is idle when frozen, not halfway through a message
    // it would finish (with everything queued behind it) once let go.
    writer.pause().await;
    wait_until("both standbys hold the same WAL", 30, || async {
        let (a, b) = (
            cluster.durable_lsn(lagging).await,
            cluster.durable_lsn(ahead).await,
        );
        a.is_some() && a == b
    })
    .await;
    let receiver = cluster
        .walreceiver_pid(lagging)
        .expect("standby 1 has a WAL receiver");
    send_signal(receiver, "STOP");
    let frozen_lsn = cluster.durable_lsn(lagging).await.unwrap();
    let frozen = Instant::now();
    writer.resume();
    // Each commit acknowledged from now on is on standby 2 only. The primary dies right
    // after the first ones, before the stall takes standby 1 out of the set (which
    // would exclude it as a non-member rather than for its position).
    writer.wait_acks_after(frozen, 2, 30).await;
    let old_port = cluster.instances[0].port;
    let killed = Instant::now();
    cluster.kill_at_once(&[0]);
    let listed = cluster.status().sync_standbys;
    eprintln!(
        "primary killed {} ms after the freeze; the set at the loss: {listed:?}",
        frozen.elapsed().as_millis()
    );
    let ahead_lsn = cluster.durable_lsn(ahead).await.unwrap();
    assert!(
        ahead_lsn > frozen_lsn,
        "standby 2 at {ahead_lsn} is not ahead of standby 1 at {frozen_lsn}"
    );

    wait_until(
        "the fence asks the frozen WAL receiver to stop",
        30,
        || async { signal_pending(receiver, SIGTERM) },
    )
    .await;
    send_signal(receiver, "CONT");

    wait_until("the engine records the new primary", 60, || async {
        cluster.status().current_primary.as_deref() == Some(ahead_pod.as_str())
    })
    .await;
    let promotion = wait_announced(&cluster, "FailoverStarted", 10, |a| match a {
        Announcement::FailoverStarted { promotion, .. } => Some(promotion.clone()),
        _ => None,
    })
    .await;
    assert_eq!(promotion.pod, ahead_pod);
    assert!(promotion.lsn > frozen_lsn, "{promotion:?} vs {frozen_lsn}");

    // Every acknowledged commit, including those only standby 2 had, is on it.
    let first = writer.wait_ack_elsewhere(old_port, killed, 60).await;
    assert_eq!(first.port, cluster.instances[ahead].port);
    let acks = writer.acks();
    let lost = missing_on(first.port, &acks).await;
    assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");

    wait_until(
        "the lagging standby streams from the new primary",
        60,
        || async { cluster.streams_from(lagging, &ahead_pod).await },
    )
    .await;
    assert_eq!(
        completed_failovers(&cluster),
        [(cluster.instances[0].pod.clone(), ahead_pod.clone())]
    );
}

/// `ANY 1 (1, 2)`: a commit is acknowledged once either standby has it, so after the
/// primary is lost both must answer (s − q + 1 = 2) for the engine to know which holds
/// every acknowledged commit. The primary and standby 2 die together (one `kill`, the
/// primary first, so no heartbeat can bring a set without standby 2): standby 1 alone
/// may lack the last commits, and the engine must not promote it. It announces why it
/// is blocked, records no target, and promotes nobody; once standby 2 is back it
/// promotes the more advanced of the two, and no acknowledged commit is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_synchronous_standbys_answering_block_the_failover_until_enough_do() {
    let mut cluster = HaCluster::start("blk", 3, QUORUM_ONE).await;
    cluster.wait_quorum(0, 1, 2).await;
    cluster.start_engine();
    cluster.wait_engine_recorded(1, 2).await;
    let writer = Writer::start(&cluster.ports()).await;
    writer.wait_acks_after(Instant::now(), 50, 30).await;
    let before = cluster.status();
    let pods: Vec<String> = cluster.instances.iter().map(|i| i.pod.clone()).collect();

    let old_port = cluster.instances[0].port;
    let killed = Instant::now();
    cluster.kill_at_once(&[0, 2]);

    let message = wait_announced(&cluster, "Blocked", 30, |a| match a {
        Announcement::Blocked(Some(message)) => Some(message.clone()),
        _ => None,
    })
    .await;
    eprintln!(
        "blocked {} ms after the kill: {message}",
        killed.elapsed().as_millis()
    );
    assert!(
        message.contains("2 of the 2 synchronous standbys must answer"),
        "{message}"
    );
    assert!(
        message.contains(&format!("only {} answers", pods[1])),
        "{message}"
    );

    // It stays so: nothing recorded, nothing promoted.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = cluster.status();
    assert_eq!(status.target_primary, before.target_primary);
    assert_eq!(status.current_primary, before.current_primary);
    let report = cluster.report(1).await.expect("standby 1 answers");
    assert_eq!(report.report.role, Role::Standby);
    let announced = cluster.announcements();
    assert!(
        !announced.iter().any(|a| matches!(
            a,
            Announcement::FailoverStarted { .. } | Announcement::FailoverCompleted { .. }
        )),
        "{announced:?}"
    );

    // Standby 2 comes back on its volume: both answer, the more advanced is promoted.
    cluster.instances[2].restart_with_env(&[]);
    wait_until("the engine records the new primary", 60, || async {
        cluster
            .status()
            .current_primary
            .is_some_and(|p| p != pods[0])
    })
    .await;
    let new_primary = cluster.status().current_primary.unwrap();
    let new = cluster.index(&new_primary);
    let first = writer.wait_ack_elsewhere(old_port, killed, 60).await;
    assert_eq!(first.port, cluster.instances[new].port);
    let acks = writer.acks();
    let lost = missing_on(first.port, &acks).await;
    assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");
    eprintln!(
        "{new_primary} promoted; writes resumed {} ms after the kill",
        (first.at - killed).as_millis()
    );

    let other = 3 - new;
    wait_until(
        "the other standby streams from the new primary",
        60,
        || async { cluster.streams_from(other, &new_primary).await },
    )
    .await;
    eprintln!(
        "restreamed {} ms after the kill",
        killed.elapsed().as_millis()
    );
    assert_eq!(
        completed_failovers(&cluster),
        [(pods[0].clone(), new_primary.clone())]
    );
    let announced = cluster.announcements();
    assert!(
        matches!(announced.last(), Some(Announcement::Blocked(None))),
        "no longer blocked: {announced:?}"
    );
}

/// An engine that recorded `status.targetPrimary` and died before promoting (a
/// controller restarted midway): the next engine finishes that failover as recorded,
/// and only once. The cluster is idle, so both standbys hold the same WAL and a fresh
/// decision would pick standby 1 (the lowest ordinal); the record names standby 2, as
/// the dead engine's choice, after it fenced both (positions final, as it does before
/// recording).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_interrupted_after_recording_the_target_is_finished_once_as_recorded() {
    let mut cluster = HaCluster::start("mid", 3, QUORUM_ONE).await;
    cluster.wait_quorum(0, 1, 2).await;
    cluster.start_engine();
    cluster.wait_engine_recorded(1, 2).await;
    let pods: Vec<String> = cluster.instances.iter().map(|i| i.pod.clone()).collect();
    wait_until(
        "both standbys hold all of the primary's WAL",
        30,
        || async {
            let primary = cluster.report(0).await.and_then(|r| r.report.received_lsn);
            primary.is_some()
                && cluster.durable_lsn(1).await == primary
                && cluster.durable_lsn(2).await == primary
        },
    )
    .await;

    // The engine dies; then the primary; the dying engine had fenced the standbys and
    // recorded standby 2.
    cluster.stop_engine();
    cluster.instances[0].kill();
    let fence = Instruction::Fence {
        primary: pods[0].clone(),
    };
    // Only the engine's word counts: without the cluster's instruct token, or with one
    // of another password, an instruction is refused and changes nothing.
    for token in [
        None,
        Some(postgres_operator::ha::token::instruct_token(
            "not-the-superuser",
        )),
    ] {
        let refused = cluster
            .instruct_with(1, token.as_deref(), &fence)
            .await
            .unwrap_err();
        assert!(refused.contains("401"), "{refused}");
    }
    assert!(!cluster.report(1).await.unwrap().fenced);
    for standby in [1, 2] {
        let report = cluster.instruct(standby, &fence).await.unwrap();
        assert!(report.fenced, "{report:?}");
    }
    let (lsn1, lsn2) = (
        cluster.durable_lsn(1).await.unwrap(),
        cluster.durable_lsn(2).await.unwrap(),
    );
    assert!(
        lsn1 >= lsn2,
        "standby 1 at {lsn1} is behind standby 2 at {lsn2}: a fresh decision would pick standby 2 too"
    );
    cluster.record_target(&pods[2]).await;

    let restarted = Instant::now();
    cluster.start_engine();
    wait_until(
        "the engine records standby 2 as the primary",
        60,
        || async { cluster.status().current_primary.as_deref() == Some(pods[2].as_str()) },
    )
    .await;
    wait_until("standby 1 streams from standby 2", 60, || async {
        cluster.streams_from(1, &pods[2]).await
    })
    .await;
    eprintln!(
        "finished {} ms after the engine restarted",
        restarted.elapsed().as_millis()
    );
    let report = cluster.report(2).await.expect("standby 2 answers");
    assert_eq!(
        (report.report.role, report.report.running),
        (Role::Primary, true)
    );
    let status = cluster.status();
    assert_eq!(status.target_primary.as_deref(), Some(pods[2].as_str()));
    cluster.instances[2]
        .admin("postgres")
        .await
        .batch_execute("CREATE TABLE after_failover (id int)")
        .await
        .unwrap();

    // Once: no second decision (it would name standby 1), no second completion.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let announced = cluster.announcements();
    assert!(
        !announced
            .iter()
            .any(|a| matches!(a, Announcement::FailoverStarted { .. })),
        "{announced:?}"
    );
    assert_eq!(
        completed_failovers(&cluster),
        [(pods[0].clone(), pods[2].clone())]
    );
    assert_eq!(
        cluster.status().current_primary.as_deref(),
        Some(pods[2].as_str())
    );
}

/// A primary whose PostgreSQL crashes (kill -9 of the postmaster; the instance manager
/// lives on and restarts it) and serves again within the restart grace is not failed
/// over: the engine sees it lost, waits, and lets it be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_whose_server_restarts_within_the_grace_is_not_failed_over() {
    let mut cluster = HaCluster::start("crash", 3, QUORUM_ONE).await;
    cluster.wait_quorum(0, 1, 2).await;
    cluster.start_engine();
    cluster.wait_engine_recorded(1, 2).await;
    let writer = Writer::start(&cluster.ports()).await;
    writer.wait_acks_after(Instant::now(), 20, 30).await;
    let before = cluster.status();
    let primary = cluster.instances[0].pod.clone();

    let crashed = Instant::now();
    cluster.instances[0].kill_postmaster().await;
    let back = crashed.elapsed();
    eprintln!(
        "the primary serves again {} ms after the crash",
        back.as_millis()
    );
    // The engine did see it (its heartbeat reported the server down) ...
    wait_announced(&cluster, "PrimaryLost", 10, |a| match a {
        Announcement::PrimaryLost { pod, .. } if *pod == primary => Some(()),
        _ => None,
    })
    .await;
    // ... and gives a failover every chance past the grace: none comes.
    let past_grace = crashed + RESTART_GRACE + Duration::from_secs(3);
    tokio::time::sleep(past_grace.saturating_duration_since(Instant::now())).await;
    let announced = cluster.announcements();
    assert!(
        !announced.iter().any(|a| matches!(
            a,
            Announcement::FailoverStarted { .. }
                | Announcement::FailoverCompleted { .. }
                | Announcement::Blocked(_)
        )),
        "{announced:?}"
    );
    let status = cluster.status();
    assert_eq!(status.current_primary, before.current_primary);
    assert_eq!(status.target_primary, before.target_primary);
    let report = cluster.report(0).await.expect("the primary answers");
    assert_eq!(
        (report.report.role, report.report.running, report.fenced),
        (Role::Primary, true, false)
    );

    // The standbys stream from it again, and it takes writes without losing any.
    for standby in [1, 2] {
        wait_until("the standby streams from the primary again", 60, || async {
            cluster.streams_from(standby, &primary).await
        })
        .await;
    }
    let port = cluster.instances[0].port;
    writer.wait_acks_after(Instant::now(), 5, 60).await;
    let acks = writer.acks();
    assert!(acks.iter().all(|a| a.port == port));
    let lost = missing_on(port, &acks).await;
    assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");
}

/// As in the lagging test, standby 1's WAL receiver is frozen while standby 1 is in
/// the synchronous set `ANY 1 (1, 2)`, and the primary is killed; but the receiver
/// stays frozen through the engine's fence, which therefore fails (the receiver cannot
/// stop). Standby 1 then counts as silent: with a primary only partitioned away, it
/// could still be acknowledging commits that standby 2 never sees. With 2 of 2 needed
/// the failover is Blocked, and standby 2, answering and fenced, is not promoted. Once
/// the receiver is let go it exits (the fence's stop request was pending), the engine's
/// next fence of standby 1 takes, and the failover completes without losing an
/// acknowledged commit. (Before the engine asked again, one failed fence kept the
/// failover blocked for good.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_that_cannot_be_fenced_blocks_the_failover_until_it_can() {
    let mut cluster = HaCluster::start("unf", 3, QUORUM_ONE).await;
    cluster.wait_quorum(0, 1, 2).await;
    cluster.start_engine();
    cluster.wait_engine_recorded(1, 2).await;
    let (frozen_standby, other) = (1, 2);
    let pods: Vec<String> = cluster.instances.iter().map(|i| i.pod.clone()).collect();
    let writer = Writer::start(&cluster.ports()).await;
    writer.wait_acks_after(Instant::now(), 20, 30).await;
    writer.pause().await;
    wait_until("both standbys hold the same WAL", 30, || async {
        let (a, b) = (
            cluster.durable_lsn(frozen_standby).await,
            cluster.durable_lsn(other).await,
        );
        a.is_some() && a == b
    })
    .await;
    let receiver = cluster
        .walreceiver_pid(frozen_standby)
        .expect("standby 1 has a WAL receiver");
    send_signal(receiver, "STOP");
    // Killed in this quiet moment: standby 1 is not behind, so no stall takes it out
    // of the set, and the engine decides with both listed.
    let before = cluster.status();
    assert_eq!(before.sync_standbys, [pods[1].clone(), pods[2].clone()]);
    let old_port = cluster.instances[0].port;
    let killed = Instant::now();
    cluster.kill_at_once(&[0]);
    writer.resume();

    let message = wait_announced(&cluster, "Blocked", 30, |a| match a {
        Announcement::Blocked(Some(message)) => Some(message.clone()),
        _ => None,
    })
    .await;
    eprintln!(
        "blocked {} ms after the kill: {message}",
        killed.elapsed().as_millis()
    );
    assert!(
        message.contains(&format!("only {} answers", pods[other])),
        "{message}"
    );
    assert!(signal_pending(receiver, SIGTERM));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = cluster.status();
    assert_eq!(status.target_primary, before.target_primary);
    assert_eq!(status.current_primary, before.current_primary);
    let report = cluster.report(other).await.expect("standby 2 answers");
    assert_eq!((report.report.role, report.fenced), (Role::Standby, true));

    send_signal(receiver, "CONT");
    let released = Instant::now();
    wait_until("the engine records a new primary", 60, || async {
        cluster
            .status()
            .current_primary
            .is_some_and(|p| p != pods[0])
    })
    .await;
    eprintln!(
        "promoted {} ms after the receiver was let go",
        released.elapsed().as_millis()
    );
    // Both hold the same WAL (the lowest ordinal then wins), unless the primary wrote
    // something of its own in the instant before it died: whichever is promoted holds
    // every acknowledged commit, and the other follows it.
    let promoted = cluster.status().current_primary.unwrap();
    let (new, rest) = if promoted == pods[1] { (1, 2) } else { (2, 1) };
    let first = writer.wait_ack_elsewhere(old_port, killed, 60).await;
    assert_eq!(first.port, cluster.instances[new].port);
    let acks = writer.acks();
    let lost = missing_on(first.port, &acks).await;
    assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");
    wait_until(
        "the other standby streams from the new primary",
        60,
        || async { cluster.streams_from(rest, &promoted).await },
    )
    .await;
    assert_eq!(completed_failovers(&cluster), [(pods[0].clone(), promoted)]);
    let announced = cluster.announcements();
    assert!(
        matches!(announced.last(), Some(Announcement::Blocked(None))),
        "no longer blocked: {announced:?}"
    );
}

/// A switchover asked for in the record (as `postgres-operator switchover` does) while
/// the primary runs: the primary stops cleanly, the target is promoted once it has
/// received the final checkpoint, the other standby and the former primary follow it,
/// the former primary without a rewind, and no acknowledged commit is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_moves_the_primary_without_losing_a_commit_or_rewinding() {
    let mut cluster = HaCluster::start("sw", 3, QUORUM_ONE).await;
    cluster.wait_quorum(0, 1, 2).await;
    cluster.start_engine();
    cluster.wait_engine_watching(1).await;
    let writer = Writer::start(&cluster.ports()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let old_port = cluster.instances[0].port;
    let target = cluster.instances[2].pod.clone();
    let asked = Instant::now();
    cluster.record_target(&target).await;
    let first = writer.wait_ack_elsewhere(old_port, asked, 60).await;
    assert_eq!(first.port, cluster.instances[2].port);
    wait_until("the engine records the new primary", 30, || async {
        cluster.status().current_primary.as_deref() == Some(target.as_str())
    })
    .await;
    // The longest time without an acknowledged commit around the switchover.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acks = writer.acks();
    let gap = writer.longest_gap_since(asked);
    eprintln!(
        "switchover: writes resumed on {target} {} ms after the request; longest write gap {} ms",
        (first.at - asked).as_millis(),
        gap.as_millis()
    );
    let lost = missing_on(first.port, &acks).await;
    assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");

    for index in [0, 1] {
        wait_until("the others stream from the new primary", 60, || async {
            cluster.report(index).await.is_some_and(|r| {
                r.report.role == Role::Standby
                    && r.report.streaming_from.as_deref() == Some(target.as_str())
            })
        })
        .await;
    }
    let log = cluster.instances[0].log();
    assert!(log.contains("switchover: stopped cleanly"), "{log}");
    assert!(
        log.contains("AlreadyOnHistory"),
        "the former primary needed a rewind:\n{log}"
    );
    let announced = cluster.announcements();
    assert!(
        announced
            .iter()
            .any(|a| matches!(a, Announcement::SwitchoverCompleted { to, .. } if *to == target)),
        "{announced:?}"
    );
    assert!(
        !announced
            .iter()
            .any(|a| matches!(a, Announcement::FailoverStarted { .. })),
        "{announced:?}"
    );
}

/// A setting that needs a restart (`max_connections`): the standbys restart, then the
/// primary asks the engine for a switchover instead of restarting in place; its clean
/// stop is its restart, and it comes back as a standby on the new setting. The write
/// gap is the switchover's, and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setting_that_needs_a_restart_reaches_the_primary_through_a_switchover() {
    let mut cluster = HaCluster::start("prs", 3, QUORUM_ONE).await;
    cluster.wait_quorum(0, 1, 2).await;
    cluster.start_engine();
    cluster.wait_engine_watching(1).await;
    let writer = Writer::start(&cluster.ports()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let old_primary = cluster.instances[0].pod.clone();

    let changed = Instant::now();
    cluster.set_parameter("max_connections", "150");
    wait_until(
        "every instance runs max_connections = 150, the primary elsewhere",
        120,
        || async {
            // The spec file's record names no primary until one changes (LocalWorld).
            if cluster
                .status()
                .current_primary
                .is_none_or(|p| p == old_primary)
            {
                return false;
            }
            for instance in &cluster.instances {
                let Ok(client) = instance
                    .connect_as("postgres", &instance.superuser, "postgres")
                    .await
                else {
                    return false;
                };
                let Ok(row) = client.query_one("SHOW max_connections", &[]).await else {
                    return false;
                };
                if row.get::<_, String>(0) != "150" {
                    return false;
                }
            }
            true
        },
    )
    .await;
    let new_primary = cluster.status().current_primary.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acks = writer.acks();
    let gap = writer.longest_gap_since(changed);
    eprintln!(
        "max_connections reached every instance {} ms after the change; the primary moved to {new_primary}; longest write gap {} ms",
        changed.elapsed().as_millis(),
        gap.as_millis()
    );
    let port = cluster.instances[cluster.index(&new_primary)].port;
    let lost = missing_on(port, &acks).await;
    assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");
    let log = cluster.instances[0].log();
    assert!(
        log.contains("asking the HA engine for a switchover instead"),
        "{log}"
    );
    assert!(log.contains("switchover: stopped cleanly"), "{log}");
    assert!(!log.contains("restarting in place"), "{log}");
    // A switchover's gap, not a restart's.
    assert!(gap < Duration::from_secs(2), "write gap {gap:?}");
    let announced = cluster.announcements();
    assert!(
        announced
            .iter()
            .any(|a| matches!(a, Announcement::SwitchoverCompleted { .. })),
        "{announced:?}"
    );
}

/// A standby restarted on data of another system (its primary's volume was replaced and
/// initialised again) clones the primary anew instead of starting on data that can
/// never stream from it; the standby's own data is of no use to this cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_finding_data_of_another_system_clones_the_primary_again() {
    let mut cluster = HaCluster::start(
        "sys",
        2,
        "  replicas: 2\n  quorum: {minSyncReplicas: 0, maxSyncReplicas: 1}\n",
    )
    .await;
    let primary = cluster.instances[0].pod.clone();
    wait_until("the standby streams", 60, || async {
        cluster.streams_from(1, &primary).await
    })
    .await;
    assert!(
        cluster.instances[1]
            .terminate(Duration::from_secs(30))
            .is_some()
    );
    assert!(
        cluster.instances[0]
            .terminate(Duration::from_secs(30))
            .is_some()
    );

    // The primary's volume replaced: a new initdb, a new system.
    std::fs::remove_dir_all(&cluster.instances[0].data_dir).unwrap();
    cluster.instances[0].restart_with_env(&[]);
    cluster.instances[0].wait_ready().await;
    cluster.instances[0]
        .admin("postgres")
        .await
        .batch_execute("CREATE TABLE after_the_new_initdb AS SELECT 1 AS one")
        .await
        .unwrap();

    cluster.instances[1].restart_with_env(&[]);
    wait_until(
        "the standby streams from the new system and has its data",
        90,
        || async {
            if !cluster.streams_from(1, &primary).await {
                return false;
            }
            let standby = &cluster.instances[1];
            let Ok(client) = standby
                .connect_as("postgres", &standby.superuser, "postgres")
                .await
            else {
                return false;
            };
            client
                .query_one("SELECT one FROM after_the_new_initdb", &[])
                .await
                .is_ok()
        },
    )
    .await;
    let log = cluster.instances[1].log();
    assert!(
        log.contains("the data comes from another system than the primary's"),
        "{log}"
    );
}
