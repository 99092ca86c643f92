//! The synchronous quorum under a writer, with real servers run by the instance manager:
//! a primary and two standbys of the complete example (`ANY 2`, `minSyncReplicas: 1`).
//! A standby is killed, restarted after the primary wrote enough WAL for its catch-up
//! to take a while, then wiped and re-cloned; the longest time without an acknowledged
//! commit is measured in each phase. Commits must never wait for a dead, cloning or
//! catching-up standby longer than the bound.
//!
//! With `dataDurability: required` the opposite holds: on two instances with
//! `minSyncReplicas: 1`, killing the only standby makes commits wait (never
//! acknowledged with the primary's copy alone) until it is back.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::instance::{COMPLETE_USERS, Instance, SpecFile, secrets_yaml};
use support::postgres::column;
use support::{example, wait_until};

const CLUSTER: &str = "postgres-complete";
const PRIMARY: &str = "postgres-postgres-complete-0";
const STANDBYS: [&str; 2] = [
    "postgres-postgres-complete-1",
    "postgres-postgres-complete-2",
];

/// The target is 1 s; the test leaves room for a loaded 2-core machine.
const LONGEST_GAP: Duration = Duration::from_millis(1500);

/// How often the writer commits.
const WRITE_EVERY: Duration = Duration::from_millis(25);

/// Commits one row every [`WRITE_EVERY`] through its own connection to the primary, as
/// an application does, and records when each commit was acknowledged.
struct Writer {
    acknowledged: Arc<Mutex<Vec<Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    async fn start(primary: &Instance) -> Self {
        let client = primary.admin("postgres").await;
        client
            .batch_execute("CREATE TABLE IF NOT EXISTS ticks (at timestamptz DEFAULT now())")
            .await
            .unwrap();
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let record = acknowledged.clone();
        let task = tokio::spawn(async move {
            loop {
                client
                    .execute("INSERT INTO ticks DEFAULT VALUES", &[])
                    .await
                    .expect("the primary takes the commit");
                record.lock().unwrap().push(Instant::now());
                tokio::time::sleep(WRITE_EVERY).await;
            }
        });
        Self { acknowledged, task }
    }

    /// The commits acknowledged between `from` and `to`.
    fn acknowledged_between(&self, from: Instant, to: Instant) -> Vec<Instant> {
        let acknowledged = self.acknowledged.lock().unwrap();
        acknowledged
            .iter()
            .copied()
            .filter(|at| (from..to).contains(at))
            .collect()
    }

    /// The longest time without an acknowledged commit between `from` and now, counting
    /// a commit still waiting at the end.
    fn longest_gap_since(&self, from: Instant) -> Duration {
        let now = Instant::now();
        let acknowledged = self.acknowledged.lock().unwrap();
        let mut previous = from;
        let mut longest = Duration::ZERO;
        for at in acknowledged.iter().filter(|at| **at >= from) {
            longest = longest.max(*at - previous);
            previous = *at;
        }
        longest.max(now - previous)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn setting(instance: &Instance, name: &str) -> String {
    column(&instance.admin("postgres").await, &format!("SHOW {name}"))
        .await
        .remove(0)
}

/// Both standbys in the quorum, as the spec's `maxSyncReplicas: 2` asks.
async fn wait_full_quorum(primary: &Instance, seconds: u64) {
    let full = format!("ANY 2 (\"{}\", \"{}\")", STANDBYS[0], STANDBYS[1]);
    wait_until("both standbys are in the quorum", seconds, || async {
        setting(primary, "synchronous_standby_names").await == full
    })
    .await;
}

/// Keeps the writer going for `seconds` more, then reports the phase's longest gap.
async fn phase(writer: &Writer, name: &str, from: Instant, seconds: u64) -> Duration {
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let gap = writer.longest_gap_since(from);
    eprintln!(
        "{name}: longest commit gap {} ms over {:.1} s",
        gap.as_millis(),
        from.elapsed().as_secs_f64()
    );
    gap
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_never_wait_for_a_dead_catching_up_or_cloning_standby() {
    let spec = SpecFile::new(&format!(
        "{}{}",
        example("complete.yaml"),
        secrets_yaml(CLUSTER, "su", "repl", COMPLETE_USERS)
    ));
    let primary = Instance::spawn(&spec, CLUSTER, PRIMARY, &[], &[]);
    primary.wait_ready().await;
    let spawn_standby =
        |pod: &str| Instance::spawn(&spec, CLUSTER, pod, &[(PRIMARY, primary.port)], &[]);
    let first = spawn_standby(STANDBYS[0]);
    let mut second = spawn_standby(STANDBYS[1]);
    first.wait_ready().await;
    second.wait_ready().await;
    wait_full_quorum(&primary, 60).await;

    let writer = Writer::start(&primary).await;
    let settled = Instant::now();
    let steady = phase(&writer, "steady", settled, 2).await;

    // A standby dies at once (its pod deleted, its node lost).
    let killed = Instant::now();
    second.kill();
    let death = phase(&writer, "standby killed", killed, 3).await;

    // While it is down, the primary writes WAL it will have to catch up on.
    let bulk = primary.admin("postgres").await;
    bulk.batch_execute(
        "CREATE TABLE filler AS SELECT g AS id, repeat('x', 900) AS pad FROM generate_series(1, 250000) g",
    )
    .await
    .unwrap();
    let restarted = Instant::now();
    second.restart_with_env(&[]);
    second.wait_ready().await;
    wait_full_quorum(&primary, 120).await;
    let catch_up = phase(&writer, "restart and catch-up", restarted, 2).await;

    // Lost volume: the standby comes back empty and clones the primary.
    second.kill();
    std::fs::remove_dir_all(&second.data_dir).unwrap();
    let recloned = Instant::now();
    second.restart_with_env(&[]);
    second.wait_ready().await;
    wait_full_quorum(&primary, 120).await;
    let clone = phase(&writer, "re-clone", recloned, 2).await;

    drop(writer);
    for (name, gap) in [
        ("steady", steady),
        ("standby killed", death),
        ("restart and catch-up", catch_up),
        ("re-clone", clone),
    ] {
        assert!(
            gap <= LONGEST_GAP,
            "{name}: no commit acknowledged for {} ms (bound {} ms); primary log:\n{}",
            gap.as_millis(),
            LONGEST_GAP.as_millis(),
            primary.log()
        );
    }
}

/// The complete example on two instances, `ANY 1` at most and at least, `required`.
fn required_spec() -> SpecFile {
    let yaml = example("complete.yaml")
        .replace("replicas: 3", "replicas: 2")
        .replace(
            "maxSyncReplicas: 2",
            "maxSyncReplicas: 1\n    dataDurability: required",
        );
    assert!(yaml.contains("dataDurability: required"), "{yaml}");
    SpecFile::new(&format!(
        "{yaml}{}",
        secrets_yaml(CLUSTER, "su", "repl", COMPLETE_USERS)
    ))
}

/// Backends of the primary whose commit waits for a synchronous standby.
async fn waiting_for_standbys(primary: &Instance) -> usize {
    column(
        &primary.admin("postgres").await,
        "SELECT count(*)::text FROM pg_stat_activity WHERE wait_event = 'SyncRep'",
    )
    .await
    .remove(0)
    .parse()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_durability_holds_commits_while_the_only_standby_is_down() {
    let spec = required_spec();
    // Both at once: the primary's first SQL pass waits for a standby to acknowledge it.
    let primary = Instance::spawn(&spec, CLUSTER, PRIMARY, &[], &[]);
    let mut standby = Instance::spawn(&spec, CLUSTER, STANDBYS[0], &[(PRIMARY, primary.port)], &[]);
    primary.wait_ready().await;
    standby.wait_ready().await;
    let only = format!("ANY 1 (\"{}\")", STANDBYS[0]);
    wait_until("the standby is in the quorum", 60, || async {
        setting(&primary, "synchronous_standby_names").await == only
    })
    .await;

    let writer = Writer::start(&primary).await;
    let steady = phase(&writer, "steady", Instant::now(), 2).await;
    assert!(steady <= LONGEST_GAP, "steady: {} ms", steady.as_millis());

    // The only standby dies: a commit already flushed there may still be acknowledged
    // as it goes; none after that.
    let killed = Instant::now();
    standby.kill();
    let settled = killed + Duration::from_millis(500);
    wait_until("a commit waits for the standby", 10, || async {
        waiting_for_standbys(&primary).await >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let restarted = Instant::now();
    let during = writer.acknowledged_between(settled, restarted);
    assert!(
        during.is_empty(),
        "{} commits acknowledged with the standby down (required durability); primary log:\n{}",
        during.len(),
        primary.log()
    );
    assert_eq!(setting(&primary, "synchronous_standby_names").await, only);
    eprintln!(
        "standby down {:.1} s: {} commits acknowledged in the first {} ms, none after, {} waiting",
        (restarted - killed).as_secs_f64(),
        writer.acknowledged_between(killed, settled).len(),
        (settled - killed).as_millis(),
        waiting_for_standbys(&primary).await
    );

    // Back: the waiting commit completes and the writer goes on.
    standby.restart_with_env(&[]);
    wait_until("a commit is acknowledged again", 90, || async {
        !writer
            .acknowledged_between(restarted, Instant::now())
            .is_empty()
    })
    .await;
    let resumed = writer.acknowledged_between(restarted, Instant::now())[0];
    eprintln!(
        "first commit acknowledged {} ms after the standby restarted",
        (resumed - restarted).as_millis()
    );
    standby.wait_ready().await;
    let after = phase(&writer, "standby back", Instant::now(), 2).await;
    assert!(
        after <= LONGEST_GAP,
        "standby back: {} ms",
        after.as_millis()
    );
}
