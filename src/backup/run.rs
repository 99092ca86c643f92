//! One backup run: check the bucket, open or create the repositories, store the globals and
//! one `pg_dump -Ft` per database, write the run manifest, then apply retention. A run that
//! fails anywhere stops there and never forgets or prunes anything.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::jiff::Timestamp;
use tokio::process::Command;

use super::location::{self, Location};
use super::manifest::{
    DatabaseDump, GLOBALS_FILE, MANIFEST_FILE, MANIFEST_VERSION, RunManifest, StoredDump,
};
use super::restic::{self, Restic, TAG_CLUSTER, TAG_RUN};
use super::s3::{self, S3Credentials};
use super::stream;
use super::{BackupError, GLOBALS_NAME};
use crate::api::BackupSnapshot;
use crate::instance::provision::{Connection, MAINTENANCE_DB};
use crate::validate::retention::RetentionPolicy;

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct BackupSettings {
    pub cluster: String,
    pub location: Location,
    pub credentials: S3Credentials,
    pub restic: Restic,
    /// The primary, as the superuser.
    pub postgres: Connection,
    /// Directory of pg_dump and pg_dumpall; PATH when absent.
    pub bin_dir: Option<PathBuf>,
    pub retention: RetentionPolicy,
    /// Databases to back up; every user database when empty.
    pub databases: Vec<String>,
}

/// Identity of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    pub id: String,
    pub started_at: Timestamp,
}

impl Run {
    /// A run starting now.
    pub fn now() -> Run {
        let started_at = Timestamp::now();
        Run {
            id: started_at.strftime("%Y%m%dT%H%M%SZ").to_string(),
            started_at,
        }
    }
}

/// What a run did, failed or not.
#[derive(Clone, Debug, PartialEq)]
pub struct RunReport {
    pub run: String,
    pub started_at: Timestamp,
    pub completed_at: Timestamp,
    /// The snapshots stored (globals first), including those of a run that failed later.
    pub snapshots: Vec<BackupSnapshot>,
    /// Snapshots that retention forgot, in all repositories.
    pub forgotten: usize,
    pub error: Option<String>,
}

impl RunReport {
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
    }

    /// Sum of the bytes the snapshots added to the repositories.
    pub fn added_bytes(&self) -> i64 {
        self.snapshots.iter().filter_map(|s| s.size_bytes).sum()
    }
}

/// A database to dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatabaseInfo {
    pub name: String,
    pub owner: String,
}

/// Runs one backup. Never panics on bad input: every failure ends up in the report.
pub async fn run_backup(settings: &BackupSettings, run: &Run) -> RunReport {
    let mut report = RunReport {
        run: run.id.clone(),
        started_at: run.started_at,
        completed_at: run.started_at,
        snapshots: Vec::new(),
        forgotten: 0,
        error: None,
    };
    let outcome = match store_run(settings, run, &mut report).await {
        Ok(earlier) => apply_retention(settings, run, earlier).await,
        Err(error) => Err(error),
    };
    match outcome {
        Ok(forgotten) => report.forgotten = forgotten,
        Err(error) => report.error = Some(error.to_string()),
    }
    report.completed_at = Timestamp::now();
    report
}

/// restic processes one run starts at once (opening repositories, retention): each
/// derives a key and holds an index in memory, so there is a bound.
const PARALLEL_RESTIC: usize = 4;

/// The snapshots of earlier runs, by repository (the globals repository first).
type Listing = Vec<(String, Vec<restic::Snapshot>)>;

/// Lists every repository of the run, removing the stale locks of killed runs on the way
/// (even where retention will forget nothing).
async fn list_earlier(
    settings: &BackupSettings,
    repositories: &[String],
) -> Result<Listing, BackupError> {
    let restic = &settings.restic;
    let host = &settings.cluster;
    futures::stream::iter(repositories.iter().map(|repository| async move {
        restic.unlock(repository).await?;
        let listed = restic.snapshots(repository, host, None).await?;
        Ok::<_, BackupError>((repository.clone(), listed))
    }))
    .buffered(PARALLEL_RESTIC)
    .try_collect()
    .await
}

/// Stores the run (globals, every database, then the manifest); meanwhile lists what the
/// repositories held before, for retention.
async fn store_run(
    settings: &BackupSettings,
    run: &Run,
    report: &mut RunReport,
) -> Result<Listing, BackupError> {
    s3::check_bucket(&settings.location, &settings.credentials).await?;
    let (databases, server_version) = list_databases(settings).await?;
    let restic = &settings.restic;
    let globals_repository = settings.location.globals_repository();
    // Opening (or on a first run creating) a repository is mostly key derivation: all at once.
    let mut repositories = vec![globals_repository.clone()];
    repositories.extend(
        databases
            .iter()
            .map(|database| settings.location.database_repository(&database.name)),
    );
    futures::stream::iter(repositories.iter().map(|r| restic.ensure_repository(r)))
        .buffered(PARALLEL_RESTIC)
        .try_collect::<Vec<_>>()
        .await?;
    let tags = vec![
        format!("{TAG_RUN}={}", run.id),
        format!("{TAG_CLUSTER}={}", settings.cluster),
    ];

    let mut dumpall = pg_command(
        settings.bin_dir.as_deref(),
        &settings.postgres,
        "pg_dumpall",
    );
    dumpall.args(["--globals-only", "--no-password"]);
    let store_globals = store(
        settings,
        &globals_repository,
        GLOBALS_FILE,
        &tags,
        dumpall,
        GLOBALS_NAME,
    );
    // The databases one after the other (one dump's load on the primary at a time), the
    // small globals beside them; the first failure stops both.
    let store_databases = async {
        let mut dumps = Vec::new();
        for database in &databases {
            let mut dump = pg_command(settings.bin_dir.as_deref(), &settings.postgres, "pg_dump");
            // PGDATABASE, not -d: a -d value with `=` in it would be read as a connection string.
            dump.env("PGDATABASE", &database.name)
                .args(["--format=tar", "--no-password"]);
            let stored = store(
                settings,
                &settings.location.database_repository(&database.name),
                &location::dump_file_name(&database.name),
                &tags,
                dump,
                &database.name,
            )
            .await?;
            dumps.push(DatabaseDump {
                name: database.name.clone(),
                owner: database.owner.clone(),
                dump: stored,
            });
        }
        Ok(dumps)
    };
    let (globals, dumps, earlier) = futures::try_join!(
        store_globals,
        store_databases,
        list_earlier(settings, &repositories)
    )?;
    report.snapshots.push(api_snapshot(GLOBALS_NAME, &globals));
    for dump in &dumps {
        report.snapshots.push(api_snapshot(&dump.name, &dump.dump));
    }

    let manifest = RunManifest {
        version: MANIFEST_VERSION,
        cluster: settings.cluster.clone(),
        run: run.id.clone(),
        started_at: run.started_at.to_string(),
        completed_at: Timestamp::now().to_string(),
        server_version,
        globals,
        databases: dumps,
    };
    let json =
        serde_json::to_vec_pretty(&manifest).map_err(|e| BackupError::Manifest(e.to_string()))?;
    let out = stream::feed(
        &json,
        restic.backup_command(&globals_repository, MANIFEST_FILE, &settings.cluster, &tags),
    )
    .await
    .map_err(|error| restic::failure(&globals_repository, "backup", error))?;
    restic::backup_summary(&globals_repository, &out)?;
    Ok(earlier)
}

/// Streams one dump into a new snapshot.
async fn store(
    settings: &BackupSettings,
    repository: &str,
    file: &str,
    tags: &[String],
    producer: Command,
    what: &str,
) -> Result<StoredDump, BackupError> {
    let consumer = settings
        .restic
        .backup_command(repository, file, &settings.cluster, tags);
    let piped = stream::pipe(producer, consumer)
        .await
        .map_err(|error| BackupError::Dump {
            database: what.to_string(),
            message: match &error {
                stream::PipeError::Failed {
                    program, stderr, ..
                } if program == "restic" => restic::explain(stderr),
                other => other.to_string(),
            },
        })?;
    let summary = restic::backup_summary(repository, &piped.stdout)?;
    Ok(StoredDump {
        repository: repository.to_string(),
        snapshot: summary.snapshot_id,
        file: file.to_string(),
        dump_bytes: piped.bytes,
        added_bytes: summary.data_added,
    })
}

fn api_snapshot(database: &str, stored: &StoredDump) -> BackupSnapshot {
    BackupSnapshot {
        database: database.to_string(),
        repository: stored.repository.clone(),
        id: stored.snapshot.clone(),
        size_bytes: Some(stored.added_bytes),
    }
}

/// `pg_dump`/`pg_dumpall` with the connection in libpq's environment variables.
pub fn pg_command(bin_dir: Option<&Path>, postgres: &Connection, program: &str) -> Command {
    let path = bin_dir
        .map(|dir| dir.join(program))
        .unwrap_or_else(|| PathBuf::from(program));
    let mut command = Command::new(path);
    command
        .env("PGHOST", &postgres.host)
        .env("PGPORT", postgres.port.to_string())
        .env("PGUSER", &postgres.user)
        .env("PGAPPNAME", "postgres-operator-backup")
        .env_remove("PGDATABASE")
        .env_remove("PGSERVICE");
    match &postgres.password {
        Some(password) => command.env("PGPASSWORD", password),
        None => command.env_remove("PGPASSWORD"),
    };
    match postgres.hostaddr {
        Some(address) => command.env("PGHOSTADDR", address.to_string()),
        None => command.env_remove("PGHOSTADDR"),
    };
    match &postgres.verify_with {
        Some(trust) => command
            .env("PGSSLMODE", "verify-full")
            .env("PGSSLROOTCERT", &trust.ca_file),
        None => command.env_remove("PGSSLMODE").env_remove("PGSSLROOTCERT"),
    };
    command
}

/// The databases to dump (user databases: not templates, not `postgres`, connectable) and
/// the server version.
async fn list_databases(
    settings: &BackupSettings,
) -> Result<(Vec<DatabaseInfo>, i32), BackupError> {
    let client = settings.postgres.client(MAINTENANCE_DB).await?;
    let server_version: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await?
        .get(0);
    let rows = client
        .query(
            "SELECT datname, pg_get_userbyid(datdba) FROM pg_database \
             WHERE NOT datistemplate AND datallowconn AND datname <> 'postgres' ORDER BY datname",
            &[],
        )
        .await?;
    let all: Vec<DatabaseInfo> = rows
        .iter()
        .map(|row| DatabaseInfo {
            name: row.get(0),
            owner: row.get(1),
        })
        .collect();
    if settings.databases.is_empty() {
        return Ok((all, server_version));
    }
    let mut chosen = Vec::new();
    for name in &settings.databases {
        match all.iter().find(|database| &database.name == name) {
            Some(database) => chosen.push(database.clone()),
            None => return Err(BackupError::NoSuchDatabase(name.clone())),
        }
    }
    Ok((chosen, server_version))
}

/// A PostgreSQL error with the server's message (tokio-postgres's Display says "db error").
pub fn describe_pg(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => {
            let mut text = error.to_string();
            if let Some(source) = std::error::Error::source(error) {
                text = format!("{text}: {source}");
            }
            text
        }
    }
}

/// Retention, decided once per run and applied to every repository alike: the policy picks
/// the runs to keep among the complete ones (their manifests, always at least the newest),
/// then every repository forgets the snapshots of the other runs, complete or interrupted,
/// that started before this one (from `earlier`, listed while the run was stored), and is
/// pruned when it forgot any. Snapshots without a run tag (made by hand or by another tool)
/// are never touched. Returns how many snapshots were forgotten.
async fn apply_retention(
    settings: &BackupSettings,
    run: &Run,
    earlier: Listing,
) -> Result<usize, BackupError> {
    let restic = &settings.restic;
    let globals_repository = settings.location.globals_repository();
    let mut policy = settings.retention.to_args();
    if !settings.retention.keeps_newest() {
        policy.push("--keep-last=1".to_string());
    }
    let host = &settings.cluster;
    let manifests = format!("/{MANIFEST_FILE}");
    // This forget locks exclusively, so it meets any stale lock left since the listing.
    let kept = restic
        .unlocking(&globals_repository, || {
            restic.forget_by_policy(&globals_repository, host, &manifests, &policy)
        })
        .await?;
    let mut kept_runs: BTreeSet<String> = kept
        .iter()
        .filter_map(|snapshot| snapshot.tag(TAG_RUN).map(str::to_string))
        .collect();
    kept_runs.insert(run.id.clone());
    let doomed_run = |snapshot: &restic::Snapshot| {
        snapshot
            .tag(TAG_RUN)
            .is_some_and(|id| !kept_runs.contains(id))
            && started_before(&snapshot.time, &run.started_at)
    };
    let is_manifest = |snapshot: &restic::Snapshot| snapshot.paths == [manifests.as_str()];
    let work: Vec<(String, Vec<String>, bool)> = earlier
        .into_iter()
        .map(|(repository, snapshots)| {
            // The manifests the policy dropped are forgotten already; their data still
            // needs a prune.
            let dropped_manifests = snapshots
                .iter()
                .any(|snapshot| is_manifest(snapshot) && doomed_run(snapshot));
            let ids: Vec<String> = snapshots
                .into_iter()
                .filter(|snapshot| doomed_run(snapshot) && !is_manifest(snapshot))
                .map(|snapshot| snapshot.id)
                .collect();
            let prune = dropped_manifests || !ids.is_empty();
            (repository, ids, prune)
        })
        // As `restic forget --prune`: a repository that forgot nothing is not pruned (data
        // an interrupted run left unreferenced goes at its next prune).
        .filter(|(_, _, prune)| *prune)
        .collect();
    let forgotten: Vec<usize> =
        futures::stream::iter(work.into_iter().map(|(repository, ids, _)| async move {
            restic.forget_ids(&repository, &ids).await?;
            restic.prune(&repository).await?;
            Ok::<_, BackupError>(ids.len())
        }))
        .buffer_unordered(PARALLEL_RESTIC)
        .try_collect()
        .await?;
    Ok(forgotten.into_iter().sum())
}

/// Whether a snapshot time is before `instant`; an unreadable time counts as not before, so
/// it is kept.
fn started_before(time: &str, instant: &Timestamp) -> bool {
    time.parse::<Timestamp>()
        .map(|time| time < *instant)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_utc_start_times() {
        let run = Run::now();
        assert_eq!(run.id.len(), "20261125T032800Z".len());
        assert!(run.id.ends_with('Z'));
    }

    #[test]
    fn unreadable_snapshot_times_are_kept() {
        let now: Timestamp = "2026-11-25T03:00:00Z".parse().unwrap();
        assert!(started_before("2026-11-25T02:59:59.5+00:00", &now));
        assert!(started_before("2026-11-25T04:00:00+02:00", &now));
        assert!(!started_before("2026-11-25T03:00:01Z", &now));
        assert!(!started_before("yesterday", &now));
    }
}
