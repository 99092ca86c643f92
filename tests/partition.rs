//! A real network partition: the primary runs in its own network namespace, its two
//! standbys and the HA engine on the host, and the veth link between them goes down.
//! The engine promotes a standby; the old primary, still running but cut off, stops
//! taking writes on its own; once the link is back it becomes a standby of the new
//! primary. Meanwhile every instance's `/ha/report` is sampled (the old primary's from
//! inside its namespace, so also during the cut): never two writable primaries once the
//! old one refused writes. Root only (`ip netns`), as every test that runs instances.
//!
//! The cluster record (the spec file the engine writes) stands for the API server. In
//! the first test it is on the host's side of the partition: the old primary reads a
//! copy that follows the record only while the link is up, so during the cut it knows
//! nothing of the failover and only its isolation watch can stop it. In the second the
//! record stays readable (a partition between the nodes, not from the API server): the
//! old primary learns of the failover from it while still cut off from its peers.

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use postgres_operator::api::{Postgres, PostgresStatus};
use postgres_operator::ha::Role;
use postgres_operator::ha::engine::{Engine, Timing};
use postgres_operator::ha::local::LocalWorld;
use postgres_operator::ha::wire::InstanceReport;
use support::failover::spec_file;
use support::instance::{Instance, Placement, SpecFile, http_get_at};
use support::netns::NetNs;
use support::postgres::{bin_dir, command, free_port};
use support::wait_until;
use tokio::io::AsyncBufReadExt;

/// Three instances, asynchronous: nothing but isolation stops a cut-off primary from
/// acknowledging writes.
const ASYNC_TRIO: &str = "  replicas: 3\n  quorum: {minSyncReplicas: 0, maxSyncReplicas: 0}\n";

/// The status the engine recorded in the spec file.
fn recorded(spec: &SpecFile) -> PostgresStatus {
    let text = std::fs::read_to_string(&spec.path).unwrap();
    let postgres: Postgres = serde_yaml::Deserializer::from_str(&text)
        .filter_map(|d| serde::Deserialize::deserialize(d).ok())
        .find_map(|v: serde_yaml::Value| {
            (v.get("kind")?.as_str()? == "Postgres").then(|| serde_yaml::from_value(v).ok())?
        })
        .expect("a Postgres in the spec file");
    postgres.status.unwrap_or_default()
}

/// `/ha/report` of the status port at `host:port`, if it answers within a second.
async fn report_at(host: &str, port: u16) -> Option<InstanceReport> {
    let (code, body) = tokio::time::timeout(
        Duration::from_secs(1),
        http_get_at(host, port, "/ha/report"),
    )
    .await
    .ok()??;
    (code == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}

async fn report(instance: &Instance) -> Option<InstanceReport> {
    report_at(&instance.host, instance.status_port).await
}

/// A running primary that is not held down: one that takes writes.
fn writable(report: &InstanceReport) -> bool {
    report.report.role == Role::Primary && report.report.running && !report.fenced
}

/// `sql` through psql over the instance's Unix socket, as the `postgres` OS user (peer
/// authentication). The socket directory is on the shared filesystem: this works
/// whatever the network does. True when it succeeded.
async fn psql_over_socket(instance: &Instance, sql: &str) -> bool {
    let mut psql = command(&bin_dir().join("psql"));
    psql.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(&instance.socket_dir)
        .args(["-p", &instance.port.to_string()])
        .args(["-U", "postgres", "-d", "postgres", "-c", sql])
        .env("PGCONNECT_TIMEOUT", "2")
        .env("PGOPTIONS", "-c statement_timeout=2000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut psql = tokio::process::Command::from(psql);
    psql.kill_on_drop(true);
    matches!(
        tokio::time::timeout(Duration::from_secs(5), psql.status()).await,
        Ok(Ok(status)) if status.success()
    )
}

async fn write_over_socket(instance: &Instance) -> bool {
    psql_over_socket(
        instance,
        "INSERT INTO partition_probe (via) VALUES ('socket')",
    )
    .await
}

/// One sample of one instance's `/ha/report`: when the request started (at the
/// latest), and the answer (`None`: unreachable or no answer).
#[derive(Clone, Debug)]
struct Sample {
    index: usize,
    at: Instant,
    report: Option<InstanceReport>,
    /// Taken from inside the namespace.
    inside: bool,
}

/// Samples the report of every status port (`host`, `port`) from the host every
/// 100 ms.
fn sample_from_host(
    status_ports: Vec<(String, u16)>,
    samples: Arc<Mutex<Vec<Sample>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let at = Instant::now();
            let round = futures::future::join_all(
                status_ports
                    .iter()
                    .map(|(host, port)| report_at(host, *port)),
            )
            .await;
            {
                let mut samples = samples.lock().unwrap();
                for (index, report) in round.into_iter().enumerate() {
                    samples.push(Sample {
                        index,
                        at,
                        report,
                        inside: false,
                    });
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// Samples the report of the instance at `index`, which runs inside `netns`, every
/// 100 ms from inside the namespace (curl in a shell loop), so that its state is
/// known during the cut too. Each line is the wall-clock time the request started
/// (`date +%s%N`) and the answer.
fn sample_from_inside(
    netns: &NetNs,
    index: usize,
    instance: &Instance,
    samples: Arc<Mutex<Vec<Sample>>>,
) -> (tokio::process::Child, tokio::task::JoinHandle<()>) {
    let url = format!(
        "http://{}:{}/ha/report",
        instance.host, instance.status_port
    );
    let prefix = netns.exec_prefix();
    let mut sampler = tokio::process::Command::new(&prefix[0]);
    sampler
        .args(&prefix[1..])
        .args([
            "sh",
            "-c",
            &format!(
                "while :; do printf '%s ' \"$(date +%s%N)\"; curl -s -m 1 {url}; echo; sleep 0.1; done"
            ),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut child = sampler.spawn().expect("curl in the namespace");
    let stdout = child.stdout.take().unwrap();
    let task = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let (now, wall) = (Instant::now(), SystemTime::now());
            let (started, answer) = line.split_once(' ').unwrap_or((&line, ""));
            let Ok(started) = started.parse::<u64>() else {
                continue;
            };
            let ago = wall
                .duration_since(UNIX_EPOCH + Duration::from_nanos(started))
                .unwrap_or_default();
            samples.lock().unwrap().push(Sample {
                index,
                at: now.checked_sub(ago).unwrap_or(now),
                report: serde_json::from_str(answer).ok(),
                inside: true,
            });
        }
    });
    (child, task)
}

/// Aborts a task (the engine, the record's copier) when the test ends, however it ends.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// How long the link stays down.
const CUT_FOR: Duration = Duration::from_secs(20);

/// One partition test at a time: each runs three servers and an engine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Where the old primary reads the cluster record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Record {
    /// Behind the partition: a copy, updated from the record while the link is up.
    BehindTheCut,
    /// The record itself, readable during the cut.
    Readable,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_cut_off_from_everything_stops_on_its_own_and_comes_back_as_a_standby() {
    partition(Record::BehindTheCut).await;
}

/// The old primary reads the new target from the record during the cut and steps
/// down at once; its rejoin cannot reach the new primary until the link is back, and
/// must keep its data directory meanwhile (it once deleted it to clone instead, and the
/// clone could not reach the primary either), then rewind once it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_cut_off_from_its_peers_but_not_the_record_steps_down_and_comes_back() {
    partition(Record::Readable).await;
}

/// Copies the record to `copy` every 100 ms while `linked` (the API server's watch,
/// through the link).
fn follow_the_record(
    record: PathBuf,
    copy: Arc<SpecFile>,
    linked: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut copied = String::new();
        loop {
            if linked.load(Ordering::SeqCst)
                && let Ok(text) = std::fs::read_to_string(&record)
                && text != copied
            {
                copy.write(&text);
                copied = text;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

async fn partition(record: Record) {
    // Like every test that runs instances (as the `postgres` user), this one needs
    // root; it fails rather than passing without having looked.
    assert!(
        NetNs::available(),
        "network namespaces need root and `ip` (scripts/install-test-deps.sh installs iproute2)"
    );
    let _serial = SERIAL.lock().await;
    // Declared first, dropped last: the instances inside are stopped before it goes.
    let netns = NetNs::new();
    let name = "part";
    let spec = spec_file(name, ASYNC_TRIO);
    // The old primary's view of the record.
    let linked = Arc::new(AtomicBool::new(true));
    let copy = Arc::new(SpecFile::new(&std::fs::read_to_string(&spec.path).unwrap()));
    let _record_sync = AbortOnDrop(match record {
        Record::BehindTheCut => Some(follow_the_record(
            spec.path.clone(),
            copy.clone(),
            linked.clone(),
        )),
        Record::Readable => None,
    });
    let pods: Vec<String> = (0..3).map(|i| format!("postgres-{name}-{i}")).collect();
    let ports: Vec<u16> = pods.iter().map(|_| free_port()).collect();
    // The primary inside the namespace, the standbys on the host side's address (which
    // the namespace reaches, and the host too, cut or not).
    let hosts: Vec<String> = (0..3)
        .map(|i| {
            if i == 0 {
                netns.ns_address.clone()
            } else {
                netns.host_address.clone()
            }
        })
        .collect();
    let mut instances = Vec::new();
    for (index, pod) in pods.iter().enumerate() {
        let peers: Vec<(&str, u16)> = pods
            .iter()
            .zip(&ports)
            .filter(|(other, _)| *other != pod)
            .map(|(other, port)| (other.as_str(), *port))
            .collect();
        let placement = Placement {
            netns: (index == 0).then(|| netns.name.clone()),
            listen: hosts[index].clone(),
            peer_hosts: pods.iter().cloned().zip(hosts.iter().cloned()).collect(),
        };
        let reads = if index == 0 && record == Record::BehindTheCut {
            &*copy
        } else {
            &spec
        };
        let instance = Instance::spawn_placed(
            reads,
            name,
            pod,
            ports[index],
            &peers,
            &["--fence-when-isolated", "true"],
            &[],
            &placement,
        );
        if index == 0 {
            // The standbys clone it.
            instance.wait_ready().await;
        }
        instances.push(instance);
    }
    for instance in &instances {
        instance.wait_ready().await;
    }

    // The engine on the host, reaching each instance where it listens.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("postgres_operator=info")
        .try_init();
    let world = LocalWorld::with_addresses(
        spec.path.clone(),
        instances
            .iter()
            .map(|i| (i.pod.clone(), format!("{}:{}", i.host, i.status_port)))
            .collect(),
    );
    let _engine = AbortOnDrop(Some(tokio::spawn(
        Engine::new(world, Timing::default()).run(),
    )));
    wait_until("both standbys stream from the primary", 90, || async {
        let mut streaming = 0;
        for instance in &instances[1..] {
            if report(instance).await.is_some_and(|r| {
                r.report.role == Role::Standby
                    && r.report.streaming_from.as_deref() == Some(pods[0].as_str())
            }) {
                streaming += 1;
            }
        }
        streaming == 2
    })
    .await;
    wait_until(
        "the engine records the primary's synchronous set",
        60,
        || async { recorded(&spec).sync_quorum == Some(0) },
    )
    .await;
    let admin = instances[0].admin("postgres").await;
    admin
        .batch_execute(
            "CREATE TABLE partition_probe (at timestamptz DEFAULT now(), via text); \
             INSERT INTO partition_probe (via) VALUES ('tcp')",
        )
        .await
        .unwrap();
    drop(admin);
    assert!(
        write_over_socket(&instances[0]).await,
        "a write over the primary's socket before the cut"
    );

    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let host_sampler = sample_from_host(
        instances
            .iter()
            .map(|i| (i.host.clone(), i.status_port))
            .collect(),
        samples.clone(),
    );
    let (mut inside_sampler, inside_reader) =
        sample_from_inside(&netns, 0, &instances[0], samples.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The cut.
    let log_at_cut = instances[0].log().len();
    let cut = Instant::now();
    linked.store(false, Ordering::SeqCst);
    netns.cut();
    eprintln!("cut the link of {}", netns.name);

    // (b) The old primary, still running in its namespace, stops taking writes on its
    // own; (a) meanwhile the engine promotes a standby.
    let refusal = async {
        let mut last_write = None;
        let deadline = cut + Duration::from_secs(60);
        loop {
            let tried = Instant::now();
            if !write_over_socket(&instances[0]).await {
                return (tried, last_write);
            }
            last_write = Some(tried.duration_since(cut));
            assert!(
                Instant::now() < deadline,
                "the cut-off primary still takes writes 60 s after the cut"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let promotion = async {
        let mut new_primary = None;
        wait_until("the engine records a new primary", 90, || {
            let found = recorded(&spec)
                .current_primary
                .filter(|pod| *pod != pods[0]);
            new_primary.clone_from(&found);
            async move { found.is_some() }
        })
        .await;
        (new_primary.unwrap(), cut.elapsed())
    };
    let ((refused_at, last_write), (new_primary, recorded_after)) =
        tokio::join!(refusal, promotion);
    let refused_after = refused_at.duration_since(cut);
    // Asynchronous: the failover says what it gave up of the old primary's WAL.
    wait_until("status.lastFailover is recorded", 30, || async {
        recorded(&spec).last_failover.is_some()
    })
    .await;
    let last = recorded(&spec).last_failover.unwrap();
    assert_eq!(
        (last.from.as_str(), last.to.as_str()),
        (pods[0].as_str(), new_primary.as_str())
    );
    assert!(last.lost_wal_bytes.is_some(), "{last:?}");
    eprintln!("lastFailover: {last:?}");
    eprintln!(
        "the cut-off primary refused a write {} ms after the cut (last write it took: {})",
        refused_after.as_millis(),
        last_write.map_or("none after the cut".to_string(), |at| format!(
            "{} ms after the cut",
            at.as_millis()
        ))
    );
    eprintln!(
        "the engine recorded {new_primary} as the primary {} ms after the cut",
        recorded_after.as_millis()
    );
    assert!(
        refused_after < Duration::from_secs(15),
        "the cut-off primary took writes for {} ms after the cut",
        refused_after.as_millis()
    );
    // Behind the cut, nothing but its isolation watch can have stopped it.
    let isolated = instances[0]
        .log()
        .contains("this primary stops accepting writes");
    let stepped_down = instances[0]
        .log()
        .contains("another instance is the target primary: stepping down");
    eprintln!(
        "what stopped it: {}",
        match (isolated, stepped_down) {
            (true, true) => "its isolation watch, and the record",
            (true, false) => "its isolation watch",
            (false, true) => "the record naming another primary",
            (false, false) => "?",
        }
    );
    match record {
        Record::BehindTheCut => assert!(isolated && !stepped_down, "{}", instances[0].log()),
        Record::Readable => assert!(isolated || stepped_down, "{}", instances[0].log()),
    }
    let new = pods.iter().position(|pod| *pod == new_primary).unwrap();
    assert_ne!(new, 0);
    let client = instances[new].admin("postgres").await;
    client
        .batch_execute("INSERT INTO partition_probe (via) VALUES ('new primary')")
        .await
        .expect("the new primary takes writes");
    eprintln!(
        "the new primary {new_primary} took a write {} ms after the cut",
        cut.elapsed().as_millis()
    );

    // Still cut off, for longer than any retry inside a step (a partition rarely ends
    // within seconds): it stays down.
    while cut.elapsed() < CUT_FOR {
        assert!(
            !write_over_socket(&instances[0]).await,
            "the cut-off primary took a write again {} ms after the cut",
            cut.elapsed().as_millis()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // (c) The link is back: the old primary becomes a standby of the new one.
    let healed = Instant::now();
    netns.heal();
    linked.store(true, Ordering::SeqCst);
    eprintln!(
        "healed the link {} ms after the cut",
        healed.duration_since(cut).as_millis()
    );
    wait_until(
        "the old primary streams from the new primary",
        180,
        || async {
            report(&instances[0]).await.is_some_and(|r| {
                r.report.role == Role::Standby
                    && r.report.running
                    && r.report.streaming_from.as_deref() == Some(new_primary.as_str())
            })
        },
    )
    .await;
    eprintln!(
        "the old primary streams from {new_primary} {} ms after the heal",
        healed.elapsed().as_millis()
    );
    // And it replays what the new primary commits.
    client
        .batch_execute("INSERT INTO partition_probe (via) VALUES ('after the heal')")
        .await
        .unwrap();
    wait_until(
        "the old primary replays the new primary's commits",
        60,
        || async {
            psql_over_socket(
                &instances[0],
                "DO $$ BEGIN IF NOT EXISTS (SELECT FROM partition_probe WHERE via = 'after the heal') \
                 THEN RAISE 'not yet'; END IF; END $$",
            )
            .await
        },
    )
    .await;
    assert!(
        !write_over_socket(&instances[0]).await,
        "the old primary, now a standby, took a write"
    );
    // What its manager did from the cut on (its own lines, not the server's).
    let log = instances[0].log();
    let since_cut: Vec<&str> = log
        .get(log_at_cut..)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains("postgres_operator::"))
        .collect();
    eprintln!(
        "the old primary's manager from the cut on:\n{}",
        since_cut.join("\n")
    );

    // Never two writable primaries once the old one refused writes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    host_sampler.abort();
    let _ = inside_sampler.kill().await;
    let _ = inside_reader.await;
    let samples = samples.lock().unwrap().clone();
    let inside: Vec<&Sample> = samples.iter().filter(|s| s.inside).collect();
    let during_cut = inside
        .iter()
        .filter(|s| s.at > cut && s.at < healed && s.report.is_some())
        .count();
    eprintln!(
        "{} samples of /ha/report ({} from inside the namespace, {during_cut} of them answered during the cut)",
        samples.len(),
        inside.len()
    );
    assert!(
        during_cut > 0,
        "the sampler inside the namespace saw nothing during the cut"
    );
    let old_writable_after: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.index == 0 && s.at > refused_at)
        .filter(|s| s.report.as_ref().is_some_and(writable))
        .collect();
    assert!(
        old_writable_after.is_empty(),
        "the old primary reported itself a writable primary after it refused writes: {old_writable_after:?}"
    );
    let mut rounds: std::collections::BTreeMap<Instant, Vec<&Sample>> = Default::default();
    for sample in samples.iter().filter(|s| !s.inside) {
        rounds.entry(sample.at).or_default().push(sample);
    }
    for (at, round) in &rounds {
        let primaries: Vec<&str> = round
            .iter()
            .filter(|s| s.report.as_ref().is_some_and(writable))
            .map(|s| pods[s.index].as_str())
            .collect();
        assert!(
            primaries.len() <= 1 || *at < refused_at,
            "{primaries:?} all report running as the primary at once, {} ms after the cut",
            at.saturating_duration_since(cut).as_millis()
        );
    }
    // For the record: how long both could take writes (an asynchronous failover's
    // window, which isolation bounds).
    let old_last = samples
        .iter()
        .filter(|s| s.index == 0 && s.report.as_ref().is_some_and(writable))
        .map(|s| s.at)
        .max();
    let new_first = samples
        .iter()
        .filter(|s| s.index == new && s.report.as_ref().is_some_and(writable))
        .map(|s| s.at)
        .min();
    if let (Some(old_last), Some(new_first)) = (old_last, new_first) {
        eprintln!(
            "the old primary last reported itself writable {} ms after the cut; the new one first {} ms after the cut",
            old_last.saturating_duration_since(cut).as_millis(),
            new_first.saturating_duration_since(cut).as_millis()
        );
    }
}
