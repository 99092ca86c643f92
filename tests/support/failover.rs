//! A cluster of real instance managers on loopback, every one able to reach every other
//! (so any can be promoted), driven by the HA engine on its local world (the spec file
//! is the cluster record); and a writer that commits through a read-write multi-host
//! connection, as an application behind the `-rw` Service does, recording each
//! acknowledged commit. Shared by the failover tests and the failover benchmark.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres_operator::api::{Postgres, PostgresStatus};
use postgres_operator::ha::Role;
use postgres_operator::ha::engine::{Announcement, Engine, Timing, World};
use postgres_operator::ha::local::LocalWorld;
use postgres_operator::ha::wire::{InstanceReport, Instruction};

use super::instance::{Instance, SpecFile, secrets_yaml};
use super::postgres::free_port;

pub const SUPERUSER_PASSWORD: &str = "su";

pub struct HaCluster {
    pub name: String,
    pub spec: SpecFile,
    pub instances: Vec<Instance>,
    engine: Option<tokio::task::JoinHandle<()>>,
    announcements: Arc<Mutex<Vec<Announcement>>>,
}

/// `spec` (the Postgres's `spec:` body, indented by two spaces) as a spec file with
/// the cluster's Secrets.
pub fn spec_file(name: &str, spec: &str) -> SpecFile {
    SpecFile::new(&format!(
        "apiVersion: apps.cozystack.io/v1alpha1\nkind: Postgres\nmetadata: {{name: {name}, namespace: tenant}}\nspec:\n{spec}\n{}",
        secrets_yaml(name, SUPERUSER_PASSWORD, "repl", &[])
    ))
}

impl HaCluster {
    /// `replicas` instances of cluster `name` with `spec` (which must say as many
    /// replicas), every one ready; the engine is not started.
    pub async fn start(name: &str, replicas: usize, spec: &str) -> Self {
        let spec = spec_file(name, spec);
        let pods: Vec<String> = (0..replicas)
            .map(|i| format!("postgres-{name}-{i}"))
            .collect();
        let ports: Vec<u16> = pods.iter().map(|_| free_port()).collect();
        let mut instances = Vec::new();
        for (index, pod) in pods.iter().enumerate() {
            let peers: Vec<(&str, u16)> = pods
                .iter()
                .zip(&ports)
                .filter(|(other, _)| *other != pod)
                .map(|(other, port)| (other.as_str(), *port))
                .collect();
            let instance = Instance::spawn_on(
                &spec,
                name,
                pod,
                ports[index],
                &peers,
                &["--fence-when-isolated", "true"],
                &[],
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
        Self {
            name: name.to_string(),
            spec,
            instances,
            engine: None,
            announcements: Arc::default(),
        }
    }

    pub fn world(&self) -> LocalWorld {
        LocalWorld::new(
            self.spec.path.clone(),
            self.instances
                .iter()
                .map(|i| (i.pod.clone(), i.status_port))
                .collect(),
        )
    }

    pub fn start_engine(&mut self) {
        // The engine logs into the test's output (shown when it fails).
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("postgres_operator=info")
            .try_init();
        let world = self.world();
        self.announcements = world.announcements();
        let engine = Engine::new(world, Timing::default());
        self.engine = Some(tokio::spawn(engine.run()));
    }

    /// Stops the engine at once (a controller that lost its leadership, or crashed).
    pub fn stop_engine(&mut self) {
        if let Some(engine) = self.engine.take() {
            engine.abort();
        }
    }

    pub fn announcements(&self) -> Vec<Announcement> {
        self.announcements.lock().unwrap().clone()
    }

    /// The status the engine recorded in the spec file.
    pub fn status(&self) -> PostgresStatus {
        let text = std::fs::read_to_string(&self.spec.path).unwrap();
        let postgres: Postgres = serde_yaml::Deserializer::from_str(&text)
            .filter_map(|d| serde::Deserialize::deserialize(d).ok())
            .find_map(|v: serde_yaml::Value| {
                (v.get("kind")?.as_str()? == "Postgres").then(|| serde_yaml::from_value(v).ok())?
            })
            .expect("a Postgres in the spec file");
        postgres.status.unwrap_or_default()
    }

    pub fn index(&self, pod: &str) -> usize {
        self.instances.iter().position(|i| i.pod == pod).unwrap()
    }

    pub async fn report(&self, index: usize) -> Option<InstanceReport> {
        let (code, body) = self.instances[index].get("/ha/report").await?;
        (code == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    }

    /// Until the engine has seen the primary's synchronous set (its heartbeat runs).
    pub async fn wait_engine_watching(&self, quorum: i32) {
        super::wait_until(
            "the engine records the primary's synchronous set",
            60,
            || async { self.status().sync_quorum == Some(quorum) },
        )
        .await;
    }

    /// Until the primary runs `ANY quorum (...)` over `members` standbys.
    pub async fn wait_quorum(&self, primary: usize, quorum: usize, members: usize) {
        super::wait_until("the primary runs the expected quorum", 60, || async {
            self.report(primary)
                .await
                .is_some_and(|r| r.sync_quorum == quorum && r.sync_standbys.len() == members)
        })
        .await;
    }

    /// Edits the spec file's documents in one write, keeping the status the engine
    /// recorded there.
    pub fn edit_documents(&self, edit: impl FnOnce(&mut Vec<serde_yaml::Value>)) {
        let text = std::fs::read_to_string(&self.spec.path).unwrap();
        let mut documents: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .filter(|d: &serde_yaml::Value| !d.is_null())
            .collect();
        edit(&mut documents);
        let text: String = documents
            .iter()
            .map(|d| format!("---\n{}", serde_yaml::to_string(d).unwrap()))
            .collect();
        self.spec.write(&text);
    }

    /// Sets `spec.postgresql.parameters.<name>` in the spec file.
    pub fn set_parameter(&self, name: &str, value: &str) {
        self.edit_documents(|documents| {
            let postgres = documents
                .iter_mut()
                .find(|d| d["kind"] == "Postgres")
                .unwrap();
            let spec = postgres["spec"].as_mapping_mut().unwrap();
            let postgresql = spec
                .entry("postgresql".into())
                .or_insert_with(|| serde_yaml::Value::Mapping(Default::default()));
            let parameters = postgresql
                .as_mapping_mut()
                .unwrap()
                .entry("parameters".into())
                .or_insert_with(|| serde_yaml::Value::Mapping(Default::default()));
            parameters
                .as_mapping_mut()
                .unwrap()
                .insert(name.into(), value.into());
        });
    }

    /// Sets the password in Secret `secret` of the spec file, as a rotation does.
    pub fn set_secret_password(&self, secret: &str, password: &str) {
        self.edit_documents(|documents| {
            let found = documents
                .iter_mut()
                .find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == secret)
                .unwrap();
            found["stringData"]["password"] = password.into();
        });
    }

    pub fn ports(&self) -> Vec<u16> {
        self.instances.iter().map(|i| i.port).collect()
    }
}

impl Drop for HaCluster {
    fn drop(&mut self) {
        self.stop_engine();
    }
}

/// How often the writer commits.
pub const WRITE_EVERY: Duration = Duration::from_millis(10);

/// One acknowledged commit: its id, when, and the port of the server that took it.
#[derive(Clone, Copy, Debug)]
pub struct Ack {
    pub id: i64,
    pub at: Instant,
    pub port: u16,
}

/// Commits one row at a time through `host=…,… target_session_attrs=read-write`,
/// reconnecting after any error, and records every acknowledged commit.
pub struct Writer {
    acks: Arc<Mutex<Vec<Ack>>>,
    task: tokio::task::JoinHandle<()>,
    /// While true, no new commit starts (see [`Writer::pause`]).
    paused: Arc<AtomicBool>,
    /// Held across each commit, so that a pause can wait for the one in flight.
    turn: Arc<tokio::sync::Mutex<()>>,
}

impl Writer {
    pub async fn start(ports: &[u16]) -> Self {
        Self::start_as(ports, SUPERUSER_PASSWORD).await
    }

    /// As [`Writer::start`], the superuser logging in with `password` (one the
    /// controller generated).
    pub async fn start_as(ports: &[u16], password: &str) -> Self {
        let mut config = tokio_postgres::Config::new();
        for port in ports {
            config.host("127.0.0.1").port(*port);
        }
        config
            .user("postgres")
            .password(password)
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(1))
            .target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite);
        let connect = |config: tokio_postgres::Config| async move {
            let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            let port: i32 = client
                .query_one("SELECT inet_server_port()", &[])
                .await?
                .get(0);
            Ok::<_, tokio_postgres::Error>((client, u16::try_from(port).unwrap()))
        };
        let (client, _) = connect(config.clone()).await.unwrap();
        client
            .batch_execute("CREATE TABLE IF NOT EXISTS ticks (id bigint PRIMARY KEY)")
            .await
            .unwrap();
        drop(client);
        let acks = Arc::new(Mutex::new(Vec::new()));
        let record = acks.clone();
        let paused = Arc::new(AtomicBool::new(false));
        let turn = Arc::new(tokio::sync::Mutex::new(()));
        let (held, turns) = (paused.clone(), turn.clone());
        let task = tokio::spawn(async move {
            let mut next: i64 = 1;
            loop {
                let Ok((client, port)) = connect(config.clone()).await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                loop {
                    let my_turn = turns.lock().await;
                    if held.load(Ordering::SeqCst) {
                        drop(my_turn);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                    let id = next;
                    next += 1;
                    if client
                        .execute("INSERT INTO ticks (id) VALUES ($1)", &[&id])
                        .await
                        .is_err()
                    {
                        break;
                    }
                    record.lock().unwrap().push(Ack {
                        id,
                        at: Instant::now(),
                        port,
                    });
                    drop(my_turn);
                    tokio::time::sleep(WRITE_EVERY).await;
                }
            }
        });
        Self {
            acks,
            task,
            paused,
            turn,
        }
    }

    pub fn acks(&self) -> Vec<Ack> {
        self.acks.lock().unwrap().clone()
    }

    /// The longest time without an acknowledged commit that ended after `from` (the gap
    /// that spans `from` included).
    pub fn longest_gap_since(&self, from: Instant) -> Duration {
        let mut times: Vec<Instant> = self.acks().iter().map(|a| a.at).collect();
        times.sort();
        times
            .windows(2)
            .filter(|pair| pair[1] > from)
            .map(|pair| pair[1] - pair[0])
            .max()
            .unwrap_or_default()
    }

    /// Until a commit is acknowledged by a server on another port than `old` after
    /// `after`; that commit.
    pub async fn wait_ack_elsewhere(&self, old: u16, after: Instant, seconds: u64) -> Ack {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        loop {
            if let Some(ack) = self
                .acks()
                .into_iter()
                .find(|a| a.at > after && a.port != old)
            {
                return ack;
            }
            assert!(
                Instant::now() < deadline,
                "no commit acknowledged by another server within {seconds} s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The acknowledged ids missing from the server on `port`.
pub async fn missing_on(port: u16, acks: &[Ack]) -> Vec<i64> {
    missing_on_as(port, SUPERUSER_PASSWORD, acks).await
}

/// As [`missing_on`], the superuser logging in with `password`. A server restarting
/// (for settings, a switchover) is waited for: what is checked is its data, not that it
/// answers at this very moment.
pub async fn missing_on_as(port: u16, password: &str, acks: &[Ack]) -> Vec<i64> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let client = loop {
        match super::postgres::login(port, "postgres", password, "postgres").await {
            Ok(client) => break client,
            Err(error) if std::time::Instant::now() < deadline => {
                eprintln!("the server on {port} does not answer yet ({error}); asking again");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(error) => panic!("the server on {port} does not answer: {error}"),
        }
    };
    let present: std::collections::BTreeSet<i64> = client
        .query("SELECT id FROM ticks", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    acks.iter()
        .map(|a| a.id)
        .filter(|id| !present.contains(id))
        .collect()
}

impl Writer {
    /// Lets the commit in flight finish and starts no new one until [`Writer::resume`]
    /// (a quiet moment, without stopping the writer or its connection).
    pub async fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
        drop(self.turn.lock().await);
    }

    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }

    /// Until `count` commits were acknowledged after `after`.
    pub async fn wait_acks_after(&self, after: Instant, count: usize, seconds: u64) {
        super::wait_until(
            &format!("{count} commits are acknowledged"),
            seconds,
            || async { self.acks().iter().filter(|a| a.at > after).count() >= count },
        )
        .await;
    }
}

impl HaCluster {
    /// What the engine records before it promotes (`status.targetPrimary`), written
    /// through its own world: the record a controller that died right after leaves.
    pub async fn record_target(&self, pod: &str) {
        self.world().record_target(pod).await.unwrap();
    }

    /// Sends `instruction` to instance `index` as the engine does; its report once
    /// carried out.
    pub async fn instruct(
        &self,
        index: usize,
        instruction: &Instruction,
    ) -> Result<InstanceReport, String> {
        let token = postgres_operator::ha::engine::World::instruct_token(&self.world()).await;
        self.instruct_with(index, token.as_deref(), instruction)
            .await
    }

    /// [`Self::instruct`] with `token` as the instruct token.
    pub async fn instruct_with(
        &self,
        index: usize,
        token: Option<&str>,
        instruction: &Instruction,
    ) -> Result<InstanceReport, String> {
        let address = format!("127.0.0.1:{}", self.instances[index].status_port);
        postgres_operator::ha::client::instruct(
            &address,
            token,
            instruction,
            Duration::from_secs(30),
        )
        .await
        .map_err(|error| error.to_string())
    }

    /// Whether instance `index` runs as a standby streaming from `primary`.
    pub async fn streams_from(&self, index: usize, primary: &str) -> bool {
        self.report(index).await.is_some_and(|r| {
            r.report.role == Role::Standby && r.report.streaming_from.as_deref() == Some(primary)
        })
    }

    /// The WAL instance `index` holds (received or replayed), as it reports it.
    pub async fn durable_lsn(&self, index: usize) -> Option<u64> {
        self.report(index).await?.report.durable_lsn()
    }

    /// Until the engine has recorded `ANY quorum` over `members` standbys.
    pub async fn wait_engine_recorded(&self, quorum: i32, members: usize) {
        super::wait_until(
            "the engine records the primary's synchronous set",
            60,
            || async {
                let status = self.status();
                status.sync_quorum == Some(quorum) && status.sync_standbys.len() == members
            },
        )
        .await;
    }

    /// The pid of instance `index`'s WAL receiver: the child of its postmaster whose
    /// process title is `postgres: walreceiver ...` (a title replaces the command line,
    /// so it does not name the data directory).
    pub fn walreceiver_pid(&self, index: usize) -> Option<u32> {
        let postmaster = self.instances[index].postmaster_pid()?;
        children_titled(postmaster, "walreceiver").first().copied()
    }

    /// SIGKILL to every process of the instances at `indexes` in one `kill` (so they
    /// die within microseconds of each other, in the order given), then reaps them.
    pub fn kill_at_once(&mut self, indexes: &[usize]) {
        let pids: Vec<String> = indexes
            .iter()
            .flat_map(|&index| self.instances[index].processes())
            .map(|(pid, _)| pid.to_string())
            .collect();
        let _ = std::process::Command::new("kill")
            .arg("-KILL")
            .args(&pids)
            .status();
        for &index in indexes {
            self.instances[index].kill();
        }
    }
}

/// Live children of `parent` whose command line (a PostgreSQL process title) contains
/// `needle`.
pub fn children_titled(parent: u32, needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            ppid == Some(parent) && String::from_utf8_lossy(&cmdline).contains(needle)
        })
        .collect()
}

/// `kill -<signal> <pid>`.
pub fn send_signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// Whether signal number `signal` is pending on process `pid` (delivered to a stopped
/// process, not yet handled).
pub fn signal_pending(pid: u32, signal: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .filter(|line| line.starts_with("SigPnd:") || line.starts_with("ShdPnd:"))
        .filter_map(|line| u64::from_str_radix(line.split_whitespace().nth(1)?, 16).ok())
        .any(|mask| mask & (1 << (signal - 1)) != 0)
}
