//! The `backup` and `restore` subcommands: flags and environment into settings, a report on
//! standard output, the exit code. Secrets come from the environment only (never flags, which
//! `ps` shows).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use postgres_operator::api::DEFAULT_CLEANUP_STRATEGY;
use postgres_operator::backup::access::Access;
use postgres_operator::backup::record::{self, Recording};
use postgres_operator::backup::restore::{self, RestoreSettings, RunSelector};
use postgres_operator::backup::run::{self, BackupSettings, Run};
use postgres_operator::backup::tls::ServerTrust;
use postgres_operator::instance::provision::Connection;
use postgres_operator::telemetry::{self, LogFormat};
use postgres_operator::validate::retention::RetentionPolicy;

use crate::{fail, runtime};

/// Where the backups are and how to open them.
#[derive(clap::Args)]
pub struct RepositoryArgs {
    /// The cluster: its name is the host of every snapshot.
    #[arg(long, env = "CLUSTER_NAME")]
    cluster: String,
    /// restic repository base, `s3:host/bucket[/prefix]` (`s3:http://…` for S3 without TLS);
    /// each database is in `<base>/<database>`. AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
    /// RESTIC_PASSWORD come from the environment, and S3_CA_FILE (a PEM CA bundle trusted
    /// instead of the system roots) for an endpoint with a private CA.
    #[arg(long, env = "RESTIC_REPOSITORY_BASE")]
    repository_base: String,
    #[arg(long, env = "AWS_DEFAULT_REGION", default_value = "us-east-1")]
    s3_region: String,
    /// The restic program.
    #[arg(long, env = "RESTIC_BINARY", default_value = "restic")]
    restic: PathBuf,
    /// PostgreSQL server (libpq's PGHOST, PGPORT, PGUSER; PGPASSWORD from the environment).
    #[arg(long, env = "PGHOST", default_value = "localhost")]
    pghost: String,
    #[arg(long, env = "PGPORT", default_value_t = 5432)]
    pgport: u16,
    #[arg(long, env = "PGUSER", default_value = "postgres")]
    pguser: String,
    /// Directory of pg_dump, pg_dumpall and pg_restore (default: PATH).
    #[arg(long, env = "PG_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "json")]
    log_format: LogFormat,
}

impl RepositoryArgs {
    fn parts(&self) -> Result<(Access, Connection), String> {
        let access = Access::from_env(&self.repository_base, &self.s3_region, self.restic.clone())
            .map_err(|e| e.to_string())?;
        let env = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        let postgres = Connection {
            host: self.pghost.clone(),
            port: self.pgport,
            user: self.pguser.clone(),
            password: env("PGPASSWORD"),
            hostaddr: env("PGHOSTADDR")
                .map(|address| {
                    address
                        .parse()
                        .map_err(|_| format!("PGHOSTADDR={address} is not an IP address"))
                })
                .transpose()?,
            verify_with: server_trust(env("PGSSLMODE"), env("PGSSLROOTCERT"))?,
        };
        Ok((access, postgres))
    }
}

/// How the backup's own client trusts the server, from libpq's `PGSSLMODE` and
/// `PGSSLROOTCERT` (pg_dump and pg_restore read the same variables): `verify-full`
/// verifies the certificate and the host name against the CA bundle; no mode, or one
/// that never verifies, connects in clear text (the local socket, loopback).
fn server_trust(
    mode: Option<String>,
    root_cert: Option<String>,
) -> Result<Option<ServerTrust>, String> {
    match mode.as_deref() {
        None | Some("disable" | "allow" | "prefer") => Ok(None),
        Some("verify-full") => {
            let root_cert = root_cert
                .ok_or("PGSSLMODE=verify-full needs PGSSLROOTCERT (the cluster's ca.crt)")?;
            ServerTrust::load(Path::new(&root_cert))
                .map(Some)
                .map_err(|e| format!("PGSSLROOTCERT: {e}"))
        }
        Some(other) => Err(format!(
            "PGSSLMODE={other} is not supported: use verify-full (with PGSSLROOTCERT) or disable"
        )),
    }
}

#[derive(clap::Args)]
pub struct BackupArgs {
    #[command(flatten)]
    repository: RepositoryArgs,
    /// restic forget flags (only --keep-*), applied after a successful run.
    #[arg(long, env = "BACKUP_CLEANUP_STRATEGY", default_value = DEFAULT_CLEANUP_STRATEGY, allow_hyphen_values = true)]
    cleanup_strategy: String,
    /// Database to back up (repeatable); default: every user database.
    #[arg(long = "database")]
    databases: Vec<String>,
    /// Report into this PostgresBackup (a run requested by hand).
    #[arg(long, conflicts_with = "scheduled")]
    record: Option<String>,
    /// Record this run as a new PostgresBackup (the CronJob's runs).
    #[arg(long)]
    scheduled: bool,
    /// Namespace of the cluster and its records.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    namespace: String,
}

pub fn run_backup(args: BackupArgs) -> ExitCode {
    telemetry::init(args.repository.log_format);
    let retention = match RetentionPolicy::parse(&args.cleanup_strategy) {
        Ok(policy) => policy,
        Err(e) => return fail(&format!("--cleanup-strategy: {e}")),
    };
    let (access, postgres) = match args.repository.parts() {
        Ok(parts) => parts,
        Err(e) => return fail(&e),
    };
    let settings = BackupSettings {
        cluster: args.repository.cluster.clone(),
        location: access.location,
        credentials: access.credentials,
        restic: access.restic,
        postgres,
        bin_dir: args.repository.bin_dir.clone(),
        retention,
        databases: args.databases.clone(),
    };
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let run = Run::now();
        let recording = if args.record.is_some() || args.scheduled {
            let client = match kube::Client::try_default().await {
                Ok(client) => client,
                Err(e) => return fail(&format!("cannot configure the Kubernetes client: {e}")),
            };
            let target = match &args.record {
                Some(name) => record::Target::Existing(name.clone()),
                None => record::Target::Scheduled,
            };
            match Recording::start(client, &args.namespace, &settings.cluster, target, &run).await {
                Ok(recording) => Some(recording),
                Err(e) => return fail(&e.to_string()),
            }
        } else {
            None
        };
        tracing::info!(cluster = %settings.cluster, run = %run.id, "backup started");
        let report = run::run_backup(&settings, &run).await;
        if let Some(recording) = &recording
            && let Err(e) = recording.finish(&report).await
        {
            tracing::error!(error = %e, "cannot record the result");
        }
        println!("{}", record::report_json(&report));
        match &report.error {
            None => {
                tracing::info!(run = %report.run, bytes = report.added_bytes(), forgotten = report.forgotten, "backup completed");
                ExitCode::SUCCESS
            }
            Some(error) => fail(&format!("backup {} failed: {error}", report.run)),
        }
    })
}

#[derive(clap::Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    repository: RepositoryArgs,
    /// The cluster whose backups to read (default: --cluster).
    #[arg(long)]
    from_cluster: Option<String>,
    /// `latest`, an RFC 3339 time (the latest run completed by then), or a run id.
    #[arg(long, default_value = "latest")]
    run: String,
    /// Database to restore (repeatable); default: every database of the run.
    #[arg(long = "database")]
    databases: Vec<String>,
    /// Restore into this database instead (only with one --database).
    #[arg(long)]
    target_database: Option<String>,
    /// Replace the objects of an existing database (in one transaction).
    #[arg(long)]
    clean: bool,
    /// Do not create the roles of the run that the server lacks.
    #[arg(long)]
    no_globals: bool,
}

pub fn run_restore(args: RestoreArgs) -> ExitCode {
    telemetry::init(args.repository.log_format);
    if args.target_database.is_some() && args.databases.len() != 1 {
        return fail("--target-database needs exactly one --database");
    }
    let (access, postgres) = match args.repository.parts() {
        Ok(parts) => parts,
        Err(e) => return fail(&e),
    };
    let settings = RestoreSettings {
        source_cluster: args
            .from_cluster
            .clone()
            .unwrap_or_else(|| args.repository.cluster.clone()),
        location: access.location,
        credentials: access.credentials,
        restic: access.restic,
        postgres,
        bin_dir: args.repository.bin_dir.clone(),
    };
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let selector = RunSelector::parse(&args.run);
        let outcome = restore::restore(
            &settings,
            &selector,
            &args.databases,
            args.target_database.as_deref(),
            args.clean,
            !args.no_globals,
        )
        .await;
        match outcome {
            Ok(restored) => {
                println!(
                    "{}",
                    serde_json::json!({"run": restored.run, "databases": restored.databases, "globalsStatements": restored.globals_statements})
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e.to_string()),
        }
    })
}
