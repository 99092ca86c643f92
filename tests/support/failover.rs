//! A cluster of real instance managers on loopback, every one able to reach every other
//! (so any can be promoted), driven by the HA engine on its local world (the spec file
//! is the cluster record); and a writer that commits through a read-write multi-host
//! connection, as an application behind the `-rw` Service does, recording each
//! acknowledged commit. Shared by the failover tests and the failover benchmark.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres_operator::api::{Postgres, PostgresStatus};
use postgres_operator::ha::engine::{Announcement, Engine, Timing};
use postgres_operator::ha::local::LocalWorld;
use postgres_operator::ha::wire::InstanceReport;

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
            let instance = Instance::spawn_on(&spec, name, pod, ports[index], &peers, &[], &[]);
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
}

impl Writer {
    pub async fn start(ports: &[u16]) -> Self {
        let mut config = tokio_postgres::Config::new();
        for port in ports {
            config.host("127.0.0.1").port(*port);
        }
        config
            .user("postgres")
            .password(SUPERUSER_PASSWORD)
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
        let task = tokio::spawn(async move {
            let mut next: i64 = 1;
            loop {
                let Ok((client, port)) = connect(config.clone()).await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                loop {
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
                    tokio::time::sleep(WRITE_EVERY).await;
                }
            }
        });
        Self { acks, task }
    }

    pub fn acks(&self) -> Vec<Ack> {
        self.acks.lock().unwrap().clone()
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
    let client = super::postgres::login(port, "postgres", SUPERUSER_PASSWORD, "postgres")
        .await
        .unwrap();
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
