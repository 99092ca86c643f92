//! `postgres-operator`: one binary, one mode per subcommand.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use postgres_operator::build::OperatorSettings;
use postgres_operator::build::cluster::{
    DEFAULT_OPERATOR_IMAGE, DEFAULT_OPERATOR_NAMESPACE, DEFAULT_POSTGRES_IMAGE_REPOSITORY,
};
use postgres_operator::build::secrets::RandomPasswords;
use postgres_operator::controller::{
    self,
    leader::{self, Ended, LeaseLock, Timing},
};
use postgres_operator::render::{self, OutputFormat};
use postgres_operator::telemetry::{self, LogFormat};
use postgres_operator::{binaries, crdgen, http};

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
    /// Run the operator: reconcile Postgres objects (in the operator Deployment).
    Controller(ControllerArgs),
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
}

impl OperatorFlags {
    fn settings(&self) -> OperatorSettings {
        OperatorSettings {
            operator_image: self.operator_image.clone(),
            postgres_image_repository: self.postgres_image_repository.clone(),
            default_storage_class: Some(self.default_storage_class.clone())
                .filter(|c| !c.is_empty()),
            operator_namespace: self.operator_namespace.clone(),
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
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Controller(args) => run_controller(args),
        Command::Render(args) => run_render(args),
        Command::Crds => match crdgen::crds_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&format!("cannot serialize the CRDs: {e}")),
        },
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
    let rendered =
        match render::render_inputs(&inputs, &args.namespace, &settings, &mut RandomPasswords) {
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
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
            ..controller::Settings::default()
        };
        let health = http::Health::default();
        let (stop, stopping) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested");
            let _ = stop.send(true);
        });
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
        let metrics = health.metrics.clone();
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
                move |stop| controller::run(client, settings, metrics, stop),
            )
            .await;
            if ended == Ended::LostLease {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        } else {
            controller::run(client, settings, metrics, stopped(stopping.clone())).await;
            ExitCode::SUCCESS
        };
        let _ = server.await;
        code
    })
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

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}
