//! `postgres-operator`: one binary, one mode per subcommand.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod backup_cli;
use postgres_operator::controller::{
    self,
    leader::{self, Ended, LeaseLock, Timing},
};
use postgres_operator::instance::events::EventSink;
use postgres_operator::instance::from_backup::BackupEnvironment;
use postgres_operator::instance::manager::{self, InstanceSettings, Peers};
use postgres_operator::instance::pod_report::{PodReporter, Reports};
use postgres_operator::instance::reaper;
use postgres_operator::instance::source::{FileSource, KubeSource};
use postgres_operator::manifests::OperatorSettings;
use postgres_operator::manifests::cluster::{
    DEFAULT_OPERATOR_IMAGE, DEFAULT_OPERATOR_NAMESPACE, DEFAULT_POSTGRES_IMAGE_REPOSITORY,
};
use postgres_operator::manifests::pod;
use postgres_operator::manifests::secrets::RandomPasswords;
use postgres_operator::manifests::tls::RcgenIssuer;
use postgres_operator::render::{self, OutputFormat};
use postgres_operator::telemetry::{self, LogFormat};
use postgres_operator::{binaries, crdgen, http, switchover_cli};

#[derive(Parser)]
#[command(
    name = "postgres-operator",
    version,
    about = "Kubernetes operator for highly available PostgreSQL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print every object the controller would apply for Postgres manifests (no cluster needed).
    Render(RenderArgs),
    /// Print the CustomResourceDefinitions (Postgres, PostgresBackup) as YAML.
    Crds,
    /// Print the reference of every metric an instance exports (docs/metrics.md).
    MetricsReference,
    /// Run the operator: reconcile Postgres objects (in the operator Deployment).
    Controller(ControllerArgs),
    /// Run and supervise PostgreSQL (PID 1 of each database pod).
    Instance(Box<InstanceArgs>),
    /// Back up every database (pg_dump | restic) and the roles to S3, then apply retention
    /// (in backup Jobs).
    Backup(Box<backup_cli::BackupArgs>),
    /// Restore databases (and missing roles) from a backup run into a running server.
    Restore(Box<backup_cli::RestoreArgs>),
    /// Move the primary to a standby (a switchover): sets status.targetPrimary, which the
    /// HA engine carries out. Also `kubectl pg switchover` with the binary installed as
    /// `kubectl-pg`.
    Switchover(switchover_cli::SwitchoverArgs),
    /// Copy this binary and restic into DIR (init container of database and backup pods).
    CopyBinaries {
        /// Target directory, shared with the PostgreSQL container.
        dir: PathBuf,
        /// restic binary to copy along.
        #[arg(long, default_value = binaries::DEFAULT_RESTIC)]
        restic: PathBuf,
    },
}

#[derive(clap::Args)]
struct RenderArgs {
    /// Postgres manifest file (multi-document YAML allowed; `-` reads standard input). Repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<String>,
    /// Namespace for manifests that do not set metadata.namespace.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "yaml")]
    output: OutputFormat,
    #[command(flatten)]
    operator: OperatorFlags,
}

/// Settings that shape the objects, shared by `render` and `controller`.
#[derive(clap::Args)]
struct OperatorFlags {
    /// Image of the operator (copied into database and backup pods).
    #[arg(long, env = "OPERATOR_IMAGE", default_value = DEFAULT_OPERATOR_IMAGE)]
    operator_image: String,
    /// Repository of the PostgreSQL images; the tag is the major version.
    #[arg(long, env = "POSTGRES_IMAGE_REPOSITORY", default_value = DEFAULT_POSTGRES_IMAGE_REPOSITORY)]
    postgres_image_repository: String,
    /// Storage class for clusters that set none (empty: the cluster default).
    #[arg(long, env = "DEFAULT_STORAGE_CLASS", default_value = "")]
    default_storage_class: String,
    /// Namespace of the operator: it holds the leader Lease, and the NetworkPolicy lets
    /// its pods reach the instances.
    #[arg(long, env = "OPERATOR_NAMESPACE", default_value = DEFAULT_OPERATOR_NAMESPACE)]
    operator_namespace: String,
    /// A Prometheus Operator PodMonitor per cluster: set it only where the PodMonitor CRD
    /// is installed (the controller checks at start and leaves them out otherwise).
    #[arg(long, env = "POD_MONITORS", default_value_t = false, action = clap::ArgAction::Set)]
    pod_monitors: bool,
    /// Who may reach PostgreSQL besides each cluster's own instances and backup Jobs: a
    /// JSON list of NetworkPolicy peers (`podSelector`, `namespaceSelector`, `ipBlock`);
    /// empty or `[]`: anyone.
    #[arg(long, env = "CLIENT_PEERS", default_value = "[]", value_parser = policy_peers)]
    client_peers: PolicyPeers,
    /// Who may scrape the instances' metrics port: a JSON list of NetworkPolicy peers;
    /// empty or `[]`: anyone.
    #[arg(long, env = "METRICS_PEERS", default_value = "[]", value_parser = policy_peers)]
    metrics_peers: PolicyPeers,
}

#[derive(Clone, Debug)]
struct PolicyPeers(Vec<k8s_openapi::api::networking::v1::NetworkPolicyPeer>);

/// A JSON list of NetworkPolicy peers, refused with the reason (clap names the flag).
fn policy_peers(text: &str) -> Result<PolicyPeers, String> {
    if text.trim().is_empty() {
        return Ok(PolicyPeers(Vec::new()));
    }
    serde_json::from_str(text)
        .map(PolicyPeers)
        .map_err(|e| format!("not a JSON list of NetworkPolicy peers: {e}"))
}

impl OperatorFlags {
    fn settings(&self) -> OperatorSettings {
        OperatorSettings {
            operator_image: self.operator_image.clone(),
            postgres_image_repository: self.postgres_image_repository.clone(),
            default_storage_class: Some(self.default_storage_class.clone())
                .filter(|c| !c.is_empty()),
            operator_namespace: self.operator_namespace.clone(),
            pod_monitors: self.pod_monitors,
            client_peers: self.client_peers.0.clone(),
            metrics_peers: self.metrics_peers.0.clone(),
        }
    }
}

#[derive(clap::Args)]
struct ControllerArgs {
    /// Namespaces to watch, comma-separated; empty watches all namespaces.
    #[arg(
        long,
        env = "WATCH_NAMESPACES",
        default_value = "",
        value_delimiter = ','
    )]
    watch_namespaces: Vec<String>,
    #[command(flatten)]
    operator: OperatorFlags,
    /// This replica's identity for leader election and events.
    #[arg(long, env = "POD_NAME", default_value = "postgres-operator")]
    pod_name: String,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "json")]
    log_format: LogFormat,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "HTTP_ADDRESS", default_value = "0.0.0.0:8080")]
    http_address: std::net::SocketAddr,
    /// Elect one active replica through a Lease.
    #[arg(long, env = "LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Resync period of a settled cluster, in seconds.
    #[arg(long, env = "RESYNC_SECONDS", default_value_t = 300)]
    resync_seconds: u64,
    /// Automatic failover: an HA engine per cluster watches its primary.
    #[arg(long, env = "FAILOVER", default_value_t = true, action = clap::ArgAction::Set)]
    failover: bool,
    /// Where the HA engine reaches an instance's status port, with `{pod}`, `{cluster}`
    /// and `{namespace}` replaced; default: the pod's name under the headless Service.
    /// For running the controller outside a cluster (benchmarks).
    #[arg(long, hide = true)]
    instance_address_template: Option<String>,
}

#[derive(clap::Args)]
struct InstanceArgs {
    /// Name of the Postgres object this instance belongs to.
    #[arg(long, env = "CLUSTER_NAME")]
    cluster: String,
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: String,
    /// This pod's name: the instance's identity, and its application_name as a standby.
    #[arg(long, env = "POD_NAME")]
    pod_name: String,
    #[arg(long, env = "PGDATA", default_value = pod::PGDATA)]
    data_dir: PathBuf,
    /// Directory of the PostgreSQL programs (default: where `postgres` is on PATH).
    #[arg(long, env = "PG_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    #[arg(long, env = "PGPORT", default_value_t = 5432)]
    port: u16,
    #[arg(long, default_value = pod::SOCKET_DIR)]
    socket_dir: PathBuf,
    #[arg(long, default_value = "*")]
    listen_addresses: String,
    /// Where the instance connects to its own server: the socket directory (peer
    /// authentication), or a host name (then with the superuser's password).
    #[arg(long, env = "PGHOST", default_value = pod::SOCKET_DIR)]
    local_host: String,
    /// Address of another instance, POD=HOST:PORT, instead of its DNS name. Repeatable.
    #[arg(long = "peer", value_parser = parse_peer)]
    peers: Vec<(String, (String, u16))>,
    #[arg(long, default_value = "0.0.0.0:8000")]
    status_address: std::net::SocketAddr,
    #[arg(long, default_value = "0.0.0.0:9187")]
    metrics_address: std::net::SocketAddr,
    /// PostgreSQL's metrics gathered for a scrape are served again to scrapes within
    /// this many seconds (several scrapers, one collection).
    #[arg(long, default_value_t = 5)]
    metrics_cache_seconds: u64,
    /// Read the Postgres object and its Secrets from this YAML file instead of the
    /// Kubernetes API (re-read when it changes).
    #[arg(long)]
    spec_file: Option<PathBuf>,
    /// Full declarative SQL pass (inside every database) on every change and at least
    /// this often.
    #[arg(long, default_value_t = 600)]
    sql_full_period_seconds: u64,
    /// Check of roles, passwords, memberships and databases, this often.
    #[arg(long, default_value_t = 30)]
    sql_period_seconds: u64,
    /// Quorum and pending-restart checks, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    maintenance_period_ms: u64,
    /// A primary cut off from the HA engine and from every standby stops its server
    /// (see the README, "Failover"). Off only where no HA engine runs.
    #[arg(long, env = "FENCE_WHEN_ISOLATED", default_value_t = true, action = clap::ArgAction::Set)]
    fence_when_isolated: bool,
    /// Longest wait of the primary for its standbys to restart first.
    #[arg(long, default_value_t = 300)]
    primary_restart_wait_seconds: u64,
    /// On SIGTERM, how long a smart shutdown waits for clients to leave before a fast
    /// one disconnects them (then 90 s for the fast one; fits a 180 s grace period).
    #[arg(long, default_value_t = 60)]
    smart_shutdown_seconds: u64,
    /// Pause between attempts of a bootstrap from backup that failed.
    #[arg(long, default_value_t = 30)]
    restore_retry_seconds: u64,
    /// Bootstrap from backup: restic repository base (default `s3:<spec.backup.s3Bucket>`);
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and RESTIC_PASSWORD come from the environment.
    #[arg(long, env = "RESTIC_REPOSITORY_BASE")]
    repository_base: Option<String>,
    /// Bootstrap from backup: S3 region (default `spec.backup.s3Region`).
    #[arg(long, env = "AWS_DEFAULT_REGION")]
    s3_region: Option<String>,
    /// Bootstrap from backup: the restic program.
    #[arg(long, env = "RESTIC_BINARY", default_value = "restic")]
    restic: PathBuf,
    /// Reap orphans and forward signals from a parent process even when not PID 1.
    #[arg(long)]
    reaper: bool,
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "json")]
    log_format: LogFormat,
}

fn parse_peer(value: &str) -> Result<(String, (String, u16)), String> {
    let (pod, address) = value
        .split_once('=')
        .ok_or_else(|| format!("{value:?}: expected POD=HOST:PORT"))?;
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("{value:?}: expected POD=HOST:PORT"))?;
    let port = port
        .parse()
        .map_err(|e| format!("{value:?}: port {port:?}: {e}"))?;
    Ok((pod.to_string(), (host.to_string(), port)))
}

/// The directory of `postgres` on PATH.
fn postgres_bin_dir() -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).find(|dir| dir.join("postgres").is_file())
}

fn run_instance(args: InstanceArgs) -> ExitCode {
    if reaper::should_reap(args.reaper) {
        return match reaper::run(std::env::args_os().skip(1).collect()) {
            Ok(code) => code,
            Err(e) => fail(&e.to_string()),
        };
    }
    telemetry::init_instance(
        args.log_format,
        &telemetry::Labels {
            cluster: args.cluster.clone(),
            namespace: args.namespace.clone(),
            pod: args.pod_name.clone(),
        },
    );
    let Some(bin_dir) = args.bin_dir.clone().or_else(postgres_bin_dir) else {
        return fail("no `postgres` program on PATH; set --bin-dir");
    };
    let settings = InstanceSettings {
        cluster: args.cluster.clone(),
        namespace: args.namespace.clone(),
        pod_name: args.pod_name.clone(),
        data_dir: args.data_dir.clone(),
        bin_dir,
        port: args.port,
        socket_dir: args.socket_dir.clone(),
        listen_addresses: args.listen_addresses.clone(),
        local_host: args.local_host.clone(),
        peers: Peers {
            overrides: args.peers.iter().cloned().collect(),
        },
        status_address: args.status_address,
        metrics_address: args.metrics_address,
        metrics_cache: std::time::Duration::from_secs(args.metrics_cache_seconds),
        sql_full_period: std::time::Duration::from_secs(args.sql_full_period_seconds.max(1)),
        sql_period: std::time::Duration::from_secs(args.sql_period_seconds.max(1)),
        maintenance_period: std::time::Duration::from_millis(args.maintenance_period_ms.max(100)),
        primary_restart_wait: std::time::Duration::from_secs(args.primary_restart_wait_seconds),
        clone_retry: std::time::Duration::from_secs(5),
        restore_retry: std::time::Duration::from_secs(args.restore_retry_seconds.max(1)),
        fence_when_isolated: args.fence_when_isolated,
        backup: BackupEnvironment {
            repository_base: args.repository_base.clone().filter(|b| !b.is_empty()),
            region: args.s3_region.clone().filter(|r| !r.is_empty()),
            restic: args.restic.clone(),
        },
        timing: postgres_operator::instance::supervise::Timing {
            smart_timeout: std::time::Duration::from_secs(args.smart_shutdown_seconds),
            ..postgres_operator::instance::supervise::Timing::default()
        },
        log_format: args.log_format,
    };
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let stopping = stop_on_signal();
        let result = match &args.spec_file {
            Some(path) => {
                let source = FileSource {
                    path: path.clone(),
                    interval: std::time::Duration::from_millis(500),
                };
                manager::run(
                    settings,
                    source,
                    EventSink::LogOnly,
                    Reports::default(),
                    stopping,
                )
                .await
            }
            None => {
                let client = match kube::Client::try_default().await {
                    Ok(client) => client,
                    Err(e) => return fail(&format!("cannot configure the Kubernetes client: {e}")),
                };
                let events = EventSink::kube(client.clone(), &args.pod_name);
                // The refusal in force and a restore in progress also go on the
                // instance's own Pod, where the controller turns them into conditions
                // of the Postgres.
                let reports = Reports::default();
                let reporter = || PodReporter::new(client.clone(), &args.namespace, &args.pod_name);
                let reporters = [
                    tokio::spawn(reporter().follow(reports.rejected.subscribe())),
                    tokio::spawn(reporter().follow(reports.restoring.subscribe())),
                ];
                let source = KubeSource {
                    client,
                    namespace: args.namespace.clone(),
                    cluster: args.cluster.clone(),
                };
                let result = manager::run(settings, source, events, reports, stopping).await;
                for reporter in reporters {
                    reporter.abort();
                }
                result
            }
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e.to_string()),
        }
    })
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Instance(args) => run_instance(*args),
        Command::Controller(args) => run_controller(args),
        Command::Backup(args) => backup_cli::run_backup(*args),
        Command::Restore(args) => backup_cli::run_restore(*args),
        Command::Switchover(args) => switchover_cli::run(args),
        Command::Render(args) => run_render(args),
        Command::Crds => match crdgen::crds_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&format!("cannot serialize the CRDs: {e}")),
        },
        Command::MetricsReference => {
            print!("{}", postgres_operator::instance::metrics::reference());
            ExitCode::SUCCESS
        }
        Command::CopyBinaries { dir, restic } => match binaries::copy_binaries(&dir, &restic) {
            Ok(copied) => {
                for path in copied {
                    println!("installed {}", path.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e.to_string()),
        },
    }
}

fn run_render(args: RenderArgs) -> ExitCode {
    let mut inputs = Vec::new();
    for file in &args.files {
        let text = if file == "-" {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text).map(|_| text)
        } else {
            std::fs::read_to_string(file)
        };
        match text {
            Ok(text) => inputs.push((file.clone(), text)),
            Err(e) => return fail(&format!("{file}: cannot read: {e}")),
        }
    }
    let settings = args.operator.settings();
    let rendered = match render::render_inputs(
        &inputs,
        &args.namespace,
        &settings,
        &mut RandomPasswords,
        &mut RcgenIssuer,
    ) {
        Ok(rendered) => rendered,
        Err(errors) => {
            for e in errors {
                eprintln!("error: {e}");
            }
            return ExitCode::FAILURE;
        }
    };
    match render::format_objects(&rendered, args.output) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e.to_string()),
    }
}

fn run_controller(args: ControllerArgs) -> ExitCode {
    telemetry::init(args.log_format);
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let client = match kube::Client::try_default().await {
            Ok(client) => client,
            Err(e) => return fail(&format!("cannot configure the Kubernetes client: {e}")),
        };
        let settings = controller::Settings {
            operator: args.operator.settings(),
            watch_namespaces: args
                .watch_namespaces
                .into_iter()
                .filter(|n| !n.is_empty())
                .collect(),
            resync: std::time::Duration::from_secs(args.resync_seconds.max(1)),
            instance: args.pod_name.clone(),
            failover: args.failover,
            instance_addresses: match args.instance_address_template.clone() {
                Some(template) => {
                    controller::failover::InstanceAddresses::with(move |namespace, cluster, pod| {
                        Some(
                            template
                                .replace("{pod}", pod)
                                .replace("{cluster}", cluster)
                                .replace("{namespace}", namespace),
                        )
                    })
                }
                None => controller::failover::InstanceAddresses::default(),
            },
            ..controller::Settings::default()
        };
        let health = http::Health::default();
        let stopping = stop_on_signal();
        let stopped = |mut receiver: tokio::sync::watch::Receiver<bool>| async move {
            let _ = receiver.wait_for(|stop| *stop).await;
        };
        let server = tokio::spawn(http::serve(
            args.http_address,
            health.clone(),
            stopped(stopping.clone()),
        ));
        match client.apiserver_version().await {
            Ok(version) => {
                tracing::info!(version = %version.git_version, "connected to the API server")
            }
            Err(e) => return fail(&format!("cannot reach the API server: {e}")),
        }
        health
            .ready
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let code = if args.leader_election {
            let lock = LeaseLock::new(
                client.clone(),
                &args.operator.operator_namespace,
                "postgres-operator",
                &args.pod_name,
                Timing::default().lease_duration,
            );
            let ended = leader::lead(
                lock,
                Timing::default(),
                stopped(stopping.clone()),
                move |stop| controller::startup::run_when_installed(client, settings, health, stop),
            )
            .await;
            if ended == Ended::LostLease {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        } else {
            controller::startup::run_when_installed(
                client,
                settings,
                health,
                stopped(stopping.clone()),
            )
            .await;
            ExitCode::SUCCESS
        };
        let _ = server.await;
        code
    })
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(&format!("cannot start the async runtime: {e}")))
}

/// Turns true on SIGTERM or SIGINT.
fn stop_on_signal() -> tokio::sync::watch::Receiver<bool> {
    let (stop, stopping) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested");
        let _ = stop.send(true);
    });
    stopping
}

/// SIGTERM (Kubernetes) or SIGINT (a terminal).
async fn wait_for_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

pub(crate) fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}
