//! The synchronous quorum under a writer, with real servers run by the instance manager:
//! a primary and two standbys of the complete example (`ANY 2`, `minSyncReplicas: 1`).
//! A standby is killed, restarted after the primary wrote enough WAL for its catch-up
//! to take a while, then wiped and re-cloned; the longest time without an acknowledged
//! commit is measured in each phase. Commits must never wait for a dead, cloning or
//! catching-up standby longer than the bound.

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
