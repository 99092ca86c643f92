//! The instance manager's main loop: wait for the cluster's spec and Secrets, bootstrap
//! the data directory, write the configuration, supervise the postmaster, serve status
//! and metrics, and keep everything current: reload on configuration changes, restart
//! for settings that need it (standbys at once, the primary after its standbys), keep
//! the synchronous quorum on the primary, and run the declarative SQL there.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, watch};

use super::bootstrap::{self, Bootstrap, Tools};
use super::config_guard::ConfigGuard;
use super::controldata;
use super::events::EventSink;
use super::files::{ConfigFiles, Endpoint, Listen, RuntimeRole};
use super::from_backup::{self, BackupEnvironment, Progress};
use super::ha_api::{self, HaEndpoints, HaView};
use super::kept_client::KeptClient;
use super::metrics::InstanceMetrics;
use super::pod_report::{Reports, RestoreReport};
use super::postgres_logs;
use super::postmaster_events::PostmasterWatch;
use super::provision::{Connection, MAINTENANCE_DB, Provisioner, Scope};
use super::quorum_keeper::{self, Applied, Keeper};
use super::replication_password::ReplicationPassword;
use super::server_metrics::ServerMetrics;
use super::source::{Snapshot, SpecSource};
use super::status::Hold;
use super::supervise::{self, Event, HoldDown, PostmasterCommand};
use super::tls_files::{self, TlsPaths};
use crate::api::instance_report::Restoring;
use crate::manifests::config::postgresql_conf;
use crate::manifests::pod::POSTGRES_PORT;
use crate::manifests::secrets::{REPLICATION_USER, SUPERUSER};
use crate::manifests::{Cluster, OperatorSettings, names};
use crate::sql::DesiredState;
use crate::telemetry::{Labels, LogFormat};

/// How other instances are reached: `<pod>.<headless Service>.<namespace>.svc:5432`,
/// unless an override names an address (tests, where every instance is on loopback).
#[derive(Clone, Debug, Default)]
pub struct Peers {
    pub overrides: BTreeMap<String, (String, u16)>,
}

impl Peers {
    /// The pod's name (the one its certificate holds), the address to connect to
    /// instead of resolving it (an override's IP address), and the port.
    pub fn address(
        &self,
        cluster: &str,
        namespace: &str,
        pod: &str,
    ) -> (String, Option<String>, u16) {
        let name = format!("{pod}.{}.{namespace}.svc", names::service_headless(cluster));
        match self.overrides.get(pod) {
            Some((host, port)) if host.parse::<std::net::IpAddr>().is_ok() => {
                (name, Some(host.clone()), *port)
            }
            Some((host, port)) => (host.clone(), None, *port),
            None => (name, None, u16::try_from(POSTGRES_PORT).unwrap_or(5432)),
        }
    }
}

/// Everything the instance manager needs to know about its pod.
#[derive(Clone, Debug)]
pub struct InstanceSettings {
    pub cluster: String,
    pub namespace: String,
    pub pod_name: String,
    pub data_dir: PathBuf,
    pub bin_dir: PathBuf,
    /// Where the server listens (written to the run-time include, which wins).
    pub port: u16,
    pub socket_dir: PathBuf,
    pub listen_addresses: String,
    /// This instance's own connections: the socket directory in a pod (peer
    /// authentication as `postgres`), or a host name with the superuser's password.
    pub local_host: String,
    pub peers: Peers,
    pub status_address: SocketAddr,
    pub metrics_address: SocketAddr,
    /// PostgreSQL's metrics gathered for one scrape are served again this long.
    pub metrics_cache: Duration,
    /// Declarative SQL: a full pass on every change and at least this often ...
    pub sql_full_period: Duration,
    /// ... and a pass over roles, passwords, memberships and databases this often.
    pub sql_period: Duration,
    /// Quorum and pending-restart checks.
    pub maintenance_period: Duration,
    /// The primary waits this long at most for its standbys to restart first.
    pub primary_restart_wait: Duration,
    /// Pause between clone attempts while the primary is not reachable.
    pub clone_retry: Duration,
    /// Pause between attempts of a restore from backup that failed.
    pub restore_retry: Duration,
    /// Stop the server of a primary cut off from everything (see `isolation`).
    pub fence_when_isolated: bool,
    /// Where the backups of a bootstrap from backup are.
    pub backup: BackupEnvironment,
    pub timing: supervise::Timing,
    /// PostgreSQL's records leave in the manager's own format (`postgres_logs`).
    pub log_format: LogFormat,
}

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("bootstrap: {0}")]
    Bootstrap(#[from] bootstrap::BootstrapError),
    #[error("configuration: {0}")]
    Files(#[from] super::files::FileError),
    #[error("supervising the postmaster: {0}")]
    Supervise(#[from] supervise::SuperviseError),
    #[error("serving {address}: {source}")]
    Serve {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("bootstrap from backup: {0}")]
    FromBackup(#[from] from_backup::FromBackupError),
    #[error("a blocking task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("PostgreSQL's log: {0}")]
    Logs(#[from] postgres_logs::LogPipeError),
    #[error("TLS files: {0}")]
    Tls(#[from] tls_files::TlsFileError),
}

/// Failures of a step that is logged and tried again on the next tick.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

mod instructions;

/// What this instance is doing now.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Role {
    Primary,
    Standby { primary: String },
}

/// A target primary the HA engine named directly, ahead of the spec source: it holds
/// while the source still names `over` (the target it replaced), and gives way as soon
/// as the source names anything else.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Instructed {
    target: String,
    over: String,
}

struct Manager {
    settings: InstanceSettings,
    operator: OperatorSettings,
    /// Every connection of the manager to its own server goes through here: the one to
    /// the maintenance database is kept between ticks and passes.
    provisioner: Provisioner,
    metrics: Arc<InstanceMetrics>,
    /// A restore from backup in progress, reported on the Pod.
    restoring: RestoreReport,
    restart: Arc<Notify>,
    /// Keeps `/readyz` failing until the server is what the spec says.
    hold: Hold,
    role: Role,
    /// `synchronous_standby_names` as the quorum keeper last decided it.
    quorum: Applied,
    /// When a setting that needs a restart was first seen pending.
    pending_since: Option<Instant>,
    /// A restart asked for and not yet seen done (Unix seconds): until the postmaster
    /// has started again, a setting still pending must not ask a second time.
    restart_requested: Option<f64>,
    /// Installs only a postgresql.conf PostgreSQL takes.
    guard: ConfigGuard,
    postmaster: PostmasterWatch,
    instructed: Option<Instructed>,
    /// Fenced by the HA engine since then: a standby streams from nobody, a primary's
    /// server is held down. Lifted by the next instruction, or after `FENCE_LEASE`.
    fenced_at: Option<Instant>,
    /// The supervisor keeps the postmaster stopped while this is true.
    held_down: watch::Sender<HoldDown>,
    /// What the HA endpoints report of this manager.
    ha_view: Arc<RwLock<HaView>>,
    /// Held down because it lost contact with everything (see `isolation`): only the
    /// HA engine lifts that, never the fence lease.
    self_fenced: bool,
    contact: Arc<super::isolation::Contact>,
    /// `spec.replicas`, for the isolation watch.
    replicas: watch::Sender<i32>,
    /// Handed over in a switchover: the final checkpoint of the stopped server.
    stopped_at_lsn: Option<u64>,
    /// Since when the record names another primary while this one runs as the primary.
    named_elsewhere: Option<Instant>,
    /// Since when this primary asks the HA engine for a switchover rather than restart
    /// for its settings (see `restart_by_switchover`).
    restart_wanted_since: Option<Instant>,
    /// The switchover asked for did not come: the primary restarts in place.
    switchover_given_up: bool,
    /// What a standby streams with while the replication password rotates.
    replication_password: ReplicationPassword,
    /// The superuser password in force, which HA instructions must prove (`ha::token`).
    superuser_password: watch::Sender<Option<String>>,
}

/// An HA instruction that waits longer than this for the main loop is logged.
const INSTRUCTION_WAIT_WARNING: Duration = Duration::from_millis(500);
/// How long a primary waits for the switchover it asked for before it restarts in place.
const SWITCHOVER_WAIT: Duration = Duration::from_secs(30);
/// The HA engine counts as watching when its stream is open or was this recently.
const ENGINE_CONTACT: Duration = Duration::from_secs(2);

/// Runs the instance until `shutdown` turns true; the postmaster is then shut down
/// (smart, fast, immediate) before this returns. `events` records what the user must
/// know on the Postgres (a configuration PostgreSQL refused); `reports` hold that
/// refusal while it is in force, and a restore from backup while it runs.
pub async fn run<S: SpecSource>(
    settings: InstanceSettings,
    source: S,
    events: EventSink,
    reports: Reports,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), InstanceError> {
    let (updates, mut snapshots) = watch::channel(None);
    let source_task = tokio::spawn(source.run(updates));
    let result = run_with(settings, events, reports, &mut snapshots, &mut shutdown).await;
    source_task.abort();
    result
}

/// The first snapshot that satisfies `ready`, or `None` on shutdown.
async fn wait_snapshot(
    snapshots: &mut watch::Receiver<Option<Arc<Snapshot>>>,
    shutdown: &mut watch::Receiver<bool>,
    what: &str,
    ready: impl Fn(&Snapshot) -> bool,
) -> Option<Arc<Snapshot>> {
    let mut logged = false;
    loop {
        if let Some(snapshot) = snapshots.borrow_and_update().clone()
            && ready(&snapshot)
        {
            return Some(snapshot);
        }
        if !logged {
            tracing::info!("waiting for {what}");
            logged = true;
        }
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { return None },
            _ = shutdown.wait_for(|stop| *stop) => return None,
        }
    }
}

async fn run_with(
    settings: InstanceSettings,
    events: EventSink,
    reports: Reports,
    snapshots: &mut watch::Receiver<Option<Arc<Snapshot>>>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), InstanceError> {
    let Some(mut snapshot) = wait_snapshot(
        snapshots,
        shutdown,
        "the Postgres object, its superuser and replication Secrets and its server certificate",
        |s| {
            s.superuser_password().is_some()
                && s.replication_password().is_some()
                && s.server_tls().is_some()
        },
    )
    .await
    else {
        return Ok(());
    };
    let mut role = role_of(&settings, &snapshot, None);
    // A standby named as the target starts as a standby still: the HA engine promotes
    // it once the primary recorded as running has handed over or is given up on.
    if role == Role::Primary
        && settings
            .data_dir
            .join(super::files::STANDBY_SIGNAL)
            .exists()
        && let Some(current) = snapshot
            .postgres
            .status
            .as_ref()
            .and_then(|s| s.current_primary.clone())
            .filter(|current| *current != settings.pod_name)
    {
        role = Role::Standby { primary: current };
    }
    let local = Connection {
        host: settings.local_host.clone(),
        port: settings.port,
        user: SUPERUSER.to_string(),
        password: snapshot.superuser_password().map(str::to_string),
        hostaddr: None,
        verify_with: None,
    };
    let metrics = Arc::new(InstanceMetrics::default());
    let mut manager = Manager {
        provisioner: Provisioner::new(local),
        operator: OperatorSettings::default(),
        guard: ConfigGuard::new(
            settings.bin_dir.clone(),
            settings.data_dir.clone(),
            metrics.clone(),
            events,
            reports.rejected,
        ),
        restoring: reports.restoring,
        postmaster: PostmasterWatch::new(metrics.clone()),
        metrics,
        restart: Arc::new(Notify::new()),
        hold: Hold::new("starting: the first declarative SQL pass has not run yet"),
        role,
        quorum: Applied::default(),
        pending_since: None,
        restart_requested: None,
        instructed: None,
        fenced_at: None,
        self_fenced: false,
        stopped_at_lsn: None,
        named_elsewhere: None,
        restart_wanted_since: None,
        switchover_given_up: false,
        replication_password: ReplicationPassword::default(),
        superuser_password: watch::channel(snapshot.superuser_password().map(str::to_string)).0,
        contact: Arc::default(),
        replicas: watch::channel(snapshot.postgres.spec.replicas).0,
        held_down: watch::channel(HoldDown::Released).0,
        ha_view: Arc::new(RwLock::new(HaView {
            role: crate::ha::Role::Standby,
            following: None,
            fenced: false,
            stopped_at_lsn: None,
            restart_wanted: false,
            config_written_at: None,
            config_digest: None,
        })),
        settings,
    };
    manager.publish_view();
    // A clone verifies the primary against the CA before any configuration is written.
    manager.install_tls(&snapshot)?;
    if !manager.bootstrap(&snapshot, shutdown).await? {
        return Ok(());
    }
    manager.write_files(&snapshot)?;
    let log_sink = manager.log_sink();
    postgres_logs::start(
        &postgres_logs::log_directory(&manager.settings.socket_dir),
        log_sink,
    )?;

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut supervisor = {
        let command = manager.postmaster_command();
        let timing = manager.settings.timing;
        let stop = shutdown.clone();
        let restart = manager.restart.clone();
        let held = manager.held_down.subscribe();
        tokio::spawn(async move {
            supervise::supervise(&command, timing, stop, restart, held, events_tx).await
        })
    };
    let (instructions_tx, mut instructions) = mpsc::channel(8);
    let (isolated_tx, mut isolated) = mpsc::channel(1);
    let isolation = manager.settings.fence_when_isolated.then(|| {
        tokio::spawn(super::isolation::run(
            manager.contact.clone(),
            manager.provisioner.connection().clone(),
            manager.ha_view.clone(),
            manager.replicas.subscribe(),
            isolated_tx,
        ))
    });
    manager
        .wait_accepting(&mut snapshot, snapshots, &mut events, shutdown)
        .await;
    tokio::spawn(quorum_keeper::run(
        manager.quorum_keeper(),
        snapshots.clone(),
        shutdown.clone(),
    ));
    // Liveness passes from now on, however long a restore takes; readiness waits.
    manager.serve(shutdown.clone(), instructions_tx).await?;
    if manager.restore_if_pending(&snapshot, shutdown).await {
        // Before /readyz can pass: a primary must hold the replication role first.
        manager.declarative_sql(&snapshot, Scope::Full).await;
        manager.hold.release();
    }

    let mut sql_timer = tokio::time::interval(manager.settings.sql_period);
    let mut full_sql_timer = tokio::time::interval(manager.settings.sql_full_period);
    // A full pass has just run.
    sql_timer.reset();
    full_sql_timer.reset();
    let mut maintenance = tokio::time::interval(manager.settings.maintenance_period);
    let mut source_open = true;
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let ended = loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break None,
            // The supervisor only returns on shutdown, or when it cannot start postgres.
            result = &mut supervisor => break Some(result),
            Some(event) = events.recv() => manager.postmaster_event(&event, &snapshot),
            Some(()) = async { hangups.as_mut()?.recv().await } => {
                // SIGHUP, as for a postmaster: rewrite the files and reload.
                manager.reconfigure(&snapshot).await;
                if let Err(error) = manager.reload().await {
                    tracing::warn!(%error, "reload on SIGHUP failed");
                }
            }
            changed = snapshots.changed(), if source_open => {
                if changed.is_err() {
                    // The timers still keep the instance current on the last spec.
                    tracing::error!("the spec source ended; keeping the last spec");
                    source_open = false;
                    continue;
                }
                if let Some(latest) = snapshots.borrow_and_update().clone() {
                    snapshot = latest;
                }
                manager.replicas.send_replace(snapshot.postgres.spec.replicas);
                manager.reconfigure(&snapshot).await;
                manager.declarative_sql(&snapshot, Scope::Full).await;
            }
            _ = full_sql_timer.tick() => {
                manager.declarative_sql(&snapshot, Scope::Full).await;
            }
            _ = sql_timer.tick() => {
                // Something had drifted: look inside the databases too.
                if manager.declarative_sql(&snapshot, Scope::Cluster).await > 0 {
                    manager.declarative_sql(&snapshot, Scope::Full).await;
                }
            }
            _ = maintenance.tick() => manager.maintain(&snapshot).await,
            Some(()) = isolated.recv() => manager.fence_isolated(),
            Some((instruction, received, reply)) = instructions.recv() => {
                // The manager carries out one thing at a time: an instruction that
                // waited long says what held it up (the log lines before).
                let waited = received.elapsed();
                if waited > INSTRUCTION_WAIT_WARNING {
                    tracing::warn!(waited_ms = waited.as_millis(), ?instruction, "an HA instruction waited for the manager");
                }
                let outcome = manager.instruct(instruction, &snapshot).await;
                if let Err(message) = &outcome {
                    tracing::warn!(%message, "HA instruction not carried out");
                }
                let _ = reply.send(outcome);
            }
        }
    };
    manager.provisioner.release_all();
    if let Some(isolation) = isolation {
        isolation.abort();
    }
    let mode = match ended {
        Some(result) => result??,
        None => supervisor.await??,
    };
    tracing::info!(?mode, "postmaster stopped");
    Ok(())
}

/// Primary when the cluster names this pod as (target) primary: the spec source's
/// target, unless the HA engine named a newer one the source has not caught up with.
fn role_of(
    settings: &InstanceSettings,
    snapshot: &Snapshot,
    instructed: Option<&Instructed>,
) -> Role {
    let named = snapshot.target_primary();
    let target = match instructed {
        Some(instructed) if instructed.over == named => instructed.target.clone(),
        _ => named,
    };
    if target == settings.pod_name {
        Role::Primary
    } else {
        Role::Standby { primary: target }
    }
}

impl Manager {
    fn tools(&self) -> Tools {
        Tools {
            bin_dir: self.settings.bin_dir.clone(),
            wrap: Vec::new(),
        }
    }

    /// Makes the data directory usable: kept, initialised, or cloned (retrying until
    /// the primary answers). False when shut down meanwhile.
    async fn bootstrap(
        &self,
        snapshot: &Snapshot,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<bool, InstanceError> {
        let primary = match &self.role {
            Role::Primary => None,
            Role::Standby { primary } => Some(self.peer(primary).host),
        };
        let data_dir = self.settings.data_dir.clone();
        match bootstrap::decide(&data_dir, primary.as_deref()) {
            Bootstrap::UseExisting => {
                tracing::info!(data_dir = %data_dir.display(), "using the existing data directory");
                if let Role::Standby { primary } = &self.role
                    && super::rejoin::was_primary(&data_dir)
                {
                    tracing::info!(%primary, "this instance was a primary and another is the target: rejoining its history");
                    let primary = primary.clone();
                    return self.rejoin(snapshot, &primary, shutdown).await;
                }
                if let Role::Standby { primary } = &self.role {
                    let primary = primary.clone();
                    self.realign(snapshot, &primary).await?;
                }
            }
            Bootstrap::InitDb => {
                tracing::info!("initialising a new cluster");
                if let Some(source) = snapshot.postgres.spec.restore_source() {
                    // Before initdb: whatever happens next, this directory is not
                    // complete until the restore is.
                    Progress::begin(source).save(&data_dir)?;
                }
                let tools = self.tools();
                let password = snapshot
                    .superuser_password()
                    .unwrap_or_default()
                    .to_string();
                tokio::task::spawn_blocking(move || {
                    bootstrap::init_data_dir(&tools, &data_dir, &password)
                })
                .await??;
            }
            Bootstrap::Clone { .. } => {
                let Role::Standby { primary } = &self.role else {
                    return Ok(true);
                };
                let endpoint = self.peer(primary);
                loop {
                    tracing::info!(primary = %endpoint, "cloning the primary");
                    let tools = self.tools();
                    let (dir, endpoint, password, name) = (
                        data_dir.clone(),
                        endpoint.clone(),
                        snapshot
                            .replication_password()
                            .unwrap_or_default()
                            .to_string(),
                        self.settings.pod_name.clone(),
                    );
                    let cloned = tokio::task::spawn_blocking(move || {
                        bootstrap::clone_from_primary(&tools, &dir, &endpoint, &password, &name)
                    })
                    .await?;
                    match cloned {
                        Ok(()) => break,
                        Err(error) => tracing::warn!(%error, "clone failed; retrying"),
                    }
                    tokio::select! {
                        () = tokio::time::sleep(self.settings.clone_retry) => {}
                        _ = shutdown.wait_for(|stop| *stop) => return Ok(false),
                    }
                }
            }
        }
        Ok(true)
    }

    /// A primary whose data directory is an unfinished restore from backup (see
    /// `from_backup`) finishes it, retrying until it succeeds. False when shut down first.
    async fn restore_if_pending(
        &self,
        snapshot: &Snapshot,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        if self.role != Role::Primary {
            return true;
        }
        let data_dir = &self.settings.data_dir;
        loop {
            let attempt = async {
                let Some(mut progress) = Progress::load(data_dir)? else {
                    return Ok(None);
                };
                self.restoring.set(Some(Restoring {
                    message: progress.describe(),
                    retrying: false,
                }));
                let settings = self.settings.backup.restore_settings(
                    &snapshot.postgres.spec,
                    &progress,
                    self.provisioner.connection().clone(),
                    &self.settings.bin_dir,
                )?;
                let done =
                    from_backup::resume(&settings, &mut progress, data_dir, &self.hold).await?;
                Progress::finish(data_dir)?;
                Ok::<_, from_backup::FromBackupError>(Some(done))
            };
            let failed = tokio::select! {
                result = attempt => match result {
                    Ok(None) => {
                        self.restoring.set(None);
                        return true;
                    }
                    Ok(Some((run, databases))) => {
                        tracing::info!(%run, databases, "restore from backup complete");
                        self.restoring.set(None);
                        return true;
                    }
                    Err(error) => error,
                },
                _ = shutdown.wait_for(|stop| *stop) => return false,
            };
            self.metrics.restore_failures.inc();
            tracing::error!(error = %failed, retry_s = self.settings.restore_retry.as_secs(), "restore from backup failed; retrying");
            let message = format!("restore from backup failed, retrying: {failed}");
            self.restoring.set(Some(Restoring {
                message: message.clone(),
                retrying: true,
            }));
            self.hold.set(message);
            tokio::select! {
                () = tokio::time::sleep(self.settings.restore_retry) => {}
                _ = shutdown.wait_for(|stop| *stop) => return false,
            }
        }
    }

    fn peer(&self, pod: &str) -> Endpoint {
        let (host, hostaddr, port) =
            self.settings
                .peers
                .address(&self.settings.cluster, &self.settings.namespace, pod);
        Endpoint {
            host,
            hostaddr,
            port,
            ca_file: self.tls_paths().ca.to_string_lossy().into_owned(),
        }
    }

    fn tls_paths(&self) -> TlsPaths {
        TlsPaths::under(&self.settings.socket_dir)
    }

    /// The Secret's certificate, key and CA as files; true when any changed.
    fn install_tls(&self, snapshot: &Snapshot) -> Result<bool, InstanceError> {
        Ok(match snapshot.server_tls() {
            Some(material) => tls_files::install(&self.tls_paths(), &material)?,
            None => false,
        })
    }

    fn postmaster_command(&self) -> PostmasterCommand {
        let s = &self.settings;
        PostmasterCommand {
            program: s.bin_dir.join("postgres"),
            args: vec!["-D".to_string(), s.data_dir.to_string_lossy().into_owned()],
            stderr: Some(self.log_sink()),
        }
    }

    fn log_sink(&self) -> postgres_logs::Sink {
        let s = &self.settings;
        postgres_logs::Sink::stdout(
            Labels {
                cluster: s.cluster.clone(),
                namespace: s.namespace.clone(),
                pod: s.pod_name.clone(),
            },
            s.log_format,
        )
    }

    fn runtime_role(&self, snapshot: &Snapshot) -> RuntimeRole {
        match &self.role {
            Role::Primary => RuntimeRole::Primary {
                sync_standby_names: self.quorum.get(),
            },
            Role::Standby { .. } if self.fenced_at.is_some() => RuntimeRole::Detached,
            Role::Standby { primary } => RuntimeRole::Standby {
                primary: self.peer(primary),
                password: self
                    .replication_password
                    .current(snapshot.replication_password().unwrap_or_default())
                    .to_string(),
                application_name: self.settings.pod_name.clone(),
            },
        }
    }

    fn listen(&self) -> Listen {
        Listen {
            port: self.settings.port,
            socket_dir: self.settings.socket_dir.to_string_lossy().into_owned(),
            addresses: self.settings.listen_addresses.clone(),
        }
    }

    /// Keeps the quorum on the primary, apart from the main loop (see `quorum_keeper`).
    fn quorum_keeper(&self) -> Keeper {
        Keeper {
            connection: self.provisioner.connection().clone(),
            data_dir: self.settings.data_dir.clone(),
            listen: self.listen(),
            namespace: self.settings.namespace.clone(),
            pod_name: self.settings.pod_name.clone(),
            operator: self.operator.clone(),
            applied: self.quorum.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// Writes the configuration files (postgresql.conf only as PostgreSQL takes it, see
    /// `config_guard`); true when any changed.
    fn write_files(&mut self, snapshot: &Snapshot) -> Result<bool, InstanceError> {
        // First: the configuration names these files, and its check starts a server.
        let tls_changed = self.install_tls(snapshot)?;
        let cluster = Cluster::new(&snapshot.postgres, &self.settings.namespace, &self.operator);
        let listen = self.listen();
        let candidate = ConfigFiles::render(&cluster, &self.runtime_role(snapshot), &listen);
        let baseline = || {
            let mut postgres = snapshot.postgres.clone();
            postgres.spec.postgresql.parameters.clear();
            postgresql_conf(&Cluster::new(
                &postgres,
                &self.settings.namespace,
                &self.operator,
            ))
        };
        let running = self.postmaster.answering();
        let mut files = self
            .guard
            .admit(candidate, baseline, &snapshot.postgres, running);
        if files.standby
            && let Ok(control) = controldata::read(&self.tools(), &self.settings.data_dir)
        {
            files
                .runtime_conf
                .push_str(&controldata::standby_floor_lines(
                    &files.postgresql_conf,
                    &control,
                ));
        }
        // Stamped before the write: a server that loads the files after it has a later
        // load time.
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or_default();
        let changed = files.write(&self.settings.data_dir)?;
        let digest = config_digest(&files.postgresql_conf);
        if let Ok(mut view) = self.ha_view.write() {
            if changed {
                view.config_written_at = Some(stamp);
            }
            view.config_digest = Some(digest);
        }
        if tls_changed {
            tracing::info!("server certificate installed");
        }
        Ok(changed || tls_changed)
    }

    /// Until the server accepts connections (start-up, crash recovery) or shutdown.
    /// Meanwhile spec changes are written and a failed start goes back to the last good
    /// configuration: a server that cannot start must still get the fix.
    async fn wait_accepting(
        &mut self,
        snapshot: &mut Arc<Snapshot>,
        snapshots: &mut watch::Receiver<Option<Arc<Snapshot>>>,
        events: &mut mpsc::UnboundedReceiver<Event>,
        shutdown: &mut watch::Receiver<bool>,
    ) {
        loop {
            if let Ok(client) = self.provisioner.connect(MAINTENANCE_DB).await
                && client.simple_query("SELECT 1").await.is_ok()
            {
                self.postmaster.answered();
                return;
            }
            if snapshots.has_changed().unwrap_or(false)
                && let Some(latest) = snapshots.borrow_and_update().clone()
            {
                *snapshot = latest;
                if let Err(error) = self.write_files(snapshot) {
                    tracing::error!(%error, "cannot write the configuration");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                Some(event) = events.recv() => self.postmaster_event(&event, snapshot),
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// Counts and logs what the supervisor reports; after a failed start the files are
    /// written again (the last good configuration when the new one was at fault, and
    /// anyway undoing any hand edit), so the next start reads them.
    fn postmaster_event(&mut self, event: &Event, snapshot: &Snapshot) {
        let Some(status) = self.postmaster.observe(event) else {
            return;
        };
        self.guard.start_failed(&status, &snapshot.postgres);
        if let Err(error) = self.write_files(snapshot) {
            tracing::error!(%error, "cannot write the configuration");
        }
    }

    async fn reload(&self) -> Result<(), BoxError> {
        let client = self.provisioner.connect(MAINTENANCE_DB).await?;
        client.simple_query("SELECT pg_reload_conf()").await?;
        self.metrics.config_reloads.inc();
        Ok(())
    }

    /// A new spec or Secret: follow a promoted target, rewrite the files, reload.
    async fn reconfigure(&mut self, snapshot: &Snapshot) {
        self.provisioner
            .set_password(snapshot.superuser_password().map(str::to_string));
        self.superuser_password
            .send_replace(snapshot.superuser_password().map(str::to_string));
        if let Some(instructed) = &self.instructed
            && instructed.over != snapshot.target_primary()
        {
            self.instructed = None;
        }
        match (
            role_of(&self.settings, snapshot, self.instructed.as_ref()),
            &self.role,
        ) {
            (Role::Primary, Role::Standby { .. }) => {
                // Only the HA engine's word promotes: in a switchover the primary still
                // runs until it has handed over, and promoting on the record alone would
                // make two.
                tracing::info!("named as the target primary; the HA engine promotes it");
            }
            (Role::Standby { primary }, Role::Standby { .. }) => {
                self.role = Role::Standby { primary };
                self.publish_view();
            }
            (Role::Standby { primary }, Role::Primary) => {
                // The HA engine hands over cleanly (switchover) or fences this server
                // (failover) within moments; stepping down on the record alone is the
                // fallback for a primary the engine cannot reach (see
                // `step_down_if_still_named`), never a race with a clean hand-over.
                if self.named_elsewhere.is_none() {
                    tracing::warn!(target = %primary, "another instance is the target primary: stepping down unless the HA engine acts first");
                    self.named_elsewhere = Some(Instant::now());
                }
            }
            (Role::Primary, Role::Primary) => self.named_elsewhere = None,
        }
        self.write_and_reload(snapshot).await;
    }

    /// Writes the files; reloads when they changed.
    async fn write_and_reload(&mut self, snapshot: &Snapshot) {
        match self.write_files(snapshot) {
            Ok(true) => {
                if let Err(error) = self.reload().await {
                    tracing::warn!(%error, "reload failed; maintenance reloads once the server answers");
                } else {
                    tracing::info!("configuration changed; reloaded");
                }
            }
            Ok(false) => {}
            Err(error) => tracing::error!(%error, "cannot write the configuration"),
        }
    }

    /// A standby streams with a rotated replication password once the role has it (see
    /// `replication_password`); a primary's role is its own doing.
    async fn follow_replication_password(
        &mut self,
        client: &tokio_postgres::Client,
        snapshot: &Snapshot,
    ) {
        let Some(wanted) = snapshot.replication_password() else {
            return;
        };
        if self.role == Role::Primary {
            self.replication_password.settle(wanted);
            return;
        }
        if self.replication_password.is(wanted) {
            return;
        }
        match bootstrap::stored_verifier(client, REPLICATION_USER).await {
            Ok(verifier) => {
                if self
                    .replication_password
                    .follow(wanted, verifier.flatten().as_deref())
                {
                    tracing::info!("the replication role has the new password: streaming with it");
                    self.write_and_reload(snapshot).await;
                }
            }
            Err(error) => tracing::debug!(%error, "cannot read the replication role"),
        }
    }

    async fn promote(&self) -> Result<(), BoxError> {
        tracing::info!("promoting the server");
        let client = self.provisioner.connect(MAINTENANCE_DB).await?;
        client.simple_query("SELECT pg_promote(true, 60)").await?;
        Ok(())
    }

    /// The declarative SQL, on the primary only: the built-in roles' passwords, then
    /// users, databases, group roles, grants and extensions. The statements it ran.
    async fn declarative_sql(&self, snapshot: &Snapshot, scope: Scope) -> usize {
        if self.role != Role::Primary {
            return 0;
        }
        self.metrics.sql_passes.inc();
        let started = Instant::now();
        match self.sql_pass(snapshot, scope).await {
            Ok(statements) => {
                self.metrics.sql_statements.inc_by(statements as u64);
                if statements > 0 {
                    tracing::info!(
                        statements,
                        ?scope,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "declarative SQL applied"
                    );
                }
                statements
            }
            Err(error) => {
                self.metrics.sql_errors.inc();
                tracing::warn!(%error, "declarative SQL failed; retrying on the next pass");
                0
            }
        }
    }

    async fn sql_pass(&self, snapshot: &Snapshot, scope: Scope) -> Result<usize, BoxError> {
        let client = self.provisioner.connect(MAINTENANCE_DB).await?;
        if client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await?
            .get(0)
        {
            return Ok(0);
        }
        let mut statements = 0;
        for (role, attributes, password) in [
            (SUPERUSER, "SUPERUSER LOGIN", snapshot.superuser_password()),
            (
                REPLICATION_USER,
                "LOGIN REPLICATION",
                snapshot.replication_password(),
            ),
        ] {
            if let Some(password) = password
                && bootstrap::ensure_builtin_role(&client, role, attributes, password).await?
            {
                statements += 1;
            }
        }
        let desired = DesiredState::from_spec(&snapshot.postgres.spec, &snapshot.user_passwords());
        let report = self.provisioner.reconcile_scoped(&desired, scope).await?;
        Ok(statements + report.statements)
    }

    /// Periodic: the quorum (primary), settings waiting for a restart, gauges, standby
    /// slots, an expired fence.
    async fn maintain(&mut self, snapshot: &Snapshot) {
        self.lift_expired_fence(snapshot).await;
        self.step_down_if_still_named(snapshot).await;
        let client = match self.provisioner.connect(MAINTENANCE_DB).await {
            Ok(client) => client,
            Err(error) => {
                self.metrics.up.set(0);
                tracing::debug!(%error, "PostgreSQL not answering");
                return;
            }
        };
        self.metrics.up.set(1);
        self.postmaster.answered();
        self.metrics
            .primary
            .set(i64::from(self.role == Role::Primary));
        self.follow_replication_password(&client, snapshot).await;
        match self.keep_slots_ready(&client, snapshot).await {
            Ok(()) => {}
            // A cloning standby made its slot between the look and the creation: the
            // next pass finds it.
            Err(error)
                if error.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) =>
            {
                tracing::debug!(%error, "a peer's slot appeared meanwhile");
            }
            Err(error) => {
                tracing::warn!(%error, "cannot keep the standbys' replication slots ready");
            }
        }
        if let Err(error) = self.maintain_with(&client).await {
            tracing::warn!(%error, "maintenance failed");
        }
    }

    async fn maintain_with(&mut self, client: &tokio_postgres::Client) -> Result<(), BoxError> {
        // The quorum is the keeper's (quorum_keeper.rs).
        if self.role != Role::Primary {
            let lag: Option<i64> = client
                .query_one(
                    "SELECT pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::bigint",
                    &[],
                )
                .await?
                .get(0);
            self.metrics.replay_lag_bytes.set(lag.unwrap_or(0));
        }
        if let Some(requested) = self.restart_requested {
            let started: f64 = client
                .query_one(
                    "SELECT extract(epoch FROM pg_postmaster_start_time())::float8",
                    &[],
                )
                .await?
                .get(0);
            if started < requested {
                return Ok(());
            }
            self.restart_requested = None;
        }
        let pending: Vec<String> = client
            .query("SELECT name FROM pg_settings WHERE pending_restart", &[])
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        self.metrics
            .pending_restart
            .set(i64::try_from(pending.len()).unwrap_or(i64::MAX));
        let loaded: f64 = client
            .query_one(
                "SELECT extract(epoch FROM pg_conf_load_time())::float8",
                &[],
            )
            .await?
            .get(0);
        if self.files_unread(loaded) {
            // A reload that failed (the server was starting or stopping) or files
            // written while it started: nothing else would make it read them.
            tracing::info!("the server has not read the files written last: reloading");
            client.simple_query("SELECT pg_reload_conf()").await?;
            self.metrics.config_reloads.inc();
            return Ok(());
        }
        if !self.guard.server_answers(loaded, !pending.is_empty()) {
            return Ok(());
        }
        if pending.is_empty() {
            self.pending_since = None;
            self.switchover_given_up = false;
            self.stop_wanting_a_switchover();
            return Ok(());
        }
        let since = *self.pending_since.get_or_insert_with(Instant::now);
        if self.role == Role::Primary && !self.primary_first(client).await? {
            if self.restart_by_switchover(client).await? {
                return Ok(());
            }
            if !self.standbys_restarted(client, since).await? {
                return Ok(());
            }
        }
        tracing::info!(?pending, "restarting for settings that need it");
        self.provisioner.release_all();
        self.pending_since = None;
        self.restart_requested = Some(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default(),
        );
        self.restart.notify_one();
        Ok(())
    }

    /// Whether the files were written after the server last loaded them (`loaded`, Unix
    /// seconds): what `/ha/report` tells the engine as a pending restart.
    fn files_unread(&self, loaded: f64) -> bool {
        self.ha_view
            .read()
            .is_ok_and(|view| view.files_unread((loaded * 1000.0) as i64))
    }

    /// A primary hands over rather than restart in place when it can: a switchover
    /// stops writes for a fraction of a second (its clean stop is the restart, and it
    /// comes back as a standby on the new settings), a restart in place for the whole
    /// shutdown and start. It can when the HA engine watches it and a standby streams;
    /// it asks through its report, and the engine hands over to a standby once one runs
    /// the new settings (standbys restart first). After [`SWITCHOVER_WAIT`] without a
    /// switchover it gives up and restarts in place, as without an engine. True while
    /// it waits.
    async fn restart_by_switchover(
        &mut self,
        client: &tokio_postgres::Client,
    ) -> Result<bool, tokio_postgres::Error> {
        if self.switchover_given_up {
            return Ok(false);
        }
        if self
            .restart_wanted_since
            .is_some_and(|since| since.elapsed() >= SWITCHOVER_WAIT)
        {
            tracing::warn!("no switchover came; restarting in place once the standbys have");
            self.switchover_given_up = true;
            self.stop_wanting_a_switchover();
            return Ok(false);
        }
        if !self.contact.engine_within(ENGINE_CONTACT) {
            return Ok(false);
        }
        let streaming: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                &[],
            )
            .await?
            .get(0);
        // Asked once, it keeps waiting while the standbys restart (none streams for a
        // moment): the engine hands over when one runs the new settings.
        if streaming == 0 && self.restart_wanted_since.is_none() {
            return Ok(false);
        }
        if self.restart_wanted_since.is_none() {
            tracing::info!(
                "settings need a restart: asking the HA engine for a switchover instead"
            );
            self.restart_wanted_since = Some(Instant::now());
            self.publish_view();
        }
        Ok(true)
    }

    /// Whether the pending settings lower a value the standbys must keep at least as
    /// high as the primary's (see `controldata::lowers_a_standby_minimum`): then the
    /// primary restarts in place at once, neither handing over (the standby taking over
    /// would want the same restart) nor waiting for the standbys (they keep the old
    /// value until the primary has restarted).
    async fn primary_first(
        &mut self,
        client: &tokio_postgres::Client,
    ) -> Result<bool, tokio_postgres::Error> {
        let running: Vec<(String, i64)> = client
            .query(
                "SELECT name, setting::bigint FROM pg_settings \
                 WHERE pending_restart AND vartype = 'integer'",
                &[],
            )
            .await?
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        let lowering = self
            .guard
            .installed()
            .is_some_and(|conf| controldata::lowers_a_standby_minimum(conf, &running));
        if lowering {
            tracing::info!(
                "the settings lower a value the standbys must keep at least as high: the primary restarts first, in place"
            );
            self.stop_wanting_a_switchover();
        }
        Ok(lowering)
    }

    fn stop_wanting_a_switchover(&mut self) {
        if self.restart_wanted_since.take().is_some() {
            self.publish_view();
        }
    }

    /// Standbys restart first: the primary waits until every streaming standby has
    /// reconnected since the change was seen (a standby's restart reconnects its WAL
    /// receiver) and at least one streams again, or until the wait runs out. Standbys
    /// that are all restarting at once (none streams) have not restarted yet; one still
    /// cloning (a scale-up) is not waited for.
    async fn standbys_restarted(
        &self,
        client: &tokio_postgres::Client,
        since: Instant,
    ) -> Result<bool, tokio_postgres::Error> {
        let waited = since.elapsed();
        if waited >= self.settings.primary_restart_wait {
            tracing::warn!(
                waited_s = waited.as_secs(),
                "standbys did not all restart in time; restarting the primary anyway"
            );
            return Ok(true);
        }
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE backend_start < now() - make_interval(secs => $1)), \
                 count(*) FILTER (WHERE state = 'streaming') FROM pg_stat_replication",
                &[&waited.as_secs_f64()],
            )
            .await?;
        let (stale, streaming): (i64, i64) = (row.get(0), row.get(1));
        let expected = i64::from(*self.replicas.borrow() > 1);
        Ok(stale == 0 && streaming >= expected)
    }

    /// `/healthz`, `/readyz`, `/status`, `/ha/...` and `/metrics`, until shutdown.
    async fn serve(
        &self,
        shutdown: watch::Receiver<bool>,
        instructions: mpsc::Sender<ha_api::Request>,
    ) -> Result<(), InstanceError> {
        let connection = Arc::new(self.provisioner.connection().clone());
        let server = KeptClient::new(connection.clone());
        let ha = HaEndpoints {
            pod: self.settings.pod_name.clone(),
            connection,
            server: server.clone(),
            view: self.ha_view.clone(),
            instructions,
            contact: self.contact.clone(),
            superuser_password: self.superuser_password.subscribe(),
        };
        for (address, router) in [
            (
                self.settings.status_address,
                super::status::router(server, self.hold.clone(), self.guard.report())
                    .merge(ha_api::router(ha)),
            ),
            (
                self.settings.metrics_address,
                super::metrics::router(
                    self.metrics.clone(),
                    Arc::new(ServerMetrics::new(
                        self.provisioner.connection().clone(),
                        self.settings.data_dir.clone(),
                        self.settings.metrics_cache,
                    )),
                ),
            ),
        ] {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .map_err(|source| InstanceError::Serve { address, source })?;
            // A heartbeat stream to an engine that became unreachable is cut within
            // seconds (see `isolation`).
            let listener =
                axum::serve::ListenerExt::tap_io(listener, super::isolation::limit_unacknowledged);
            let mut stop = shutdown.clone();
            tokio::spawn(async move {
                let served = axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        let _ = stop.wait_for(|stop| *stop).await;
                    })
                    .await;
                if let Err(error) = served {
                    tracing::error!(%error, %address, "HTTP server failed");
                }
            });
        }
        Ok(())
    }
}

/// What two instances compare to know they run the same settings (`config_digest` of
/// the HA report): the first bytes of postgresql.conf's SHA-256, in hex.
fn config_digest(postgresql_conf: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, postgresql_conf.as_bytes())
        .as_ref()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_default_to_the_headless_service() {
        let peers = Peers::default();
        assert_eq!(
            peers.address("demo", "tenant", "postgres-demo-0"),
            (
                "postgres-demo-0.postgres-demo-headless.tenant.svc".to_string(),
                None,
                5432
            )
        );
        let peers = Peers {
            overrides: BTreeMap::from([(
                "postgres-demo-0".to_string(),
                ("127.0.0.1".to_string(), 6000),
            )]),
        };
        // An address connects there; the certificate is still checked for the name.
        assert_eq!(
            peers.address("demo", "tenant", "postgres-demo-0"),
            (
                "postgres-demo-0.postgres-demo-headless.tenant.svc".to_string(),
                Some("127.0.0.1".to_string()),
                6000
            )
        );
    }
}
