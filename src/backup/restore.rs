//! Restores from complete runs: pick a run (latest, latest before a time, or by id) from the
//! manifests, recreate the missing roles from its globals, and restore databases. Nothing that
//! exists is overwritten unless asked (`clean`), and a failed restore leaves the target as it
//! was: a database created for the restore is dropped again, one restored in place is
//! restored in a single transaction.

use std::collections::BTreeSet;
use std::path::PathBuf;

use k8s_openapi::jiff::Timestamp;

use super::location::Location;
use super::manifest::{GLOBALS_FILE, MANIFEST_FILE, RunManifest};
use super::restic::{Restic, ResticError, TAG_RUN};
use super::run::{describe_pg, pg_command};
use super::s3::{self, S3Credentials};
use super::stream;
use crate::instance::audit;
use crate::instance::provision::{Connection, MAINTENANCE_DB};
use crate::sql::quote::ident;
use crate::sql::redact::redact_password;

/// SQLSTATE duplicate_object.
const DUPLICATE_OBJECT: &str = "42710";

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    S3(#[from] s3::S3Error),
    #[error(transparent)]
    Restic(#[from] ResticError),
    #[error("no complete backup run of cluster {cluster:?} in {repository}{when}")]
    NoRun {
        cluster: String,
        repository: String,
        when: String,
    },
    #[error("run manifest {run}: {message}")]
    Manifest { run: String, message: String },
    #[error("database {database:?} is not in backup run {run} (it has: {available})")]
    NotInRun {
        database: String,
        run: String,
        available: String,
    },
    #[error(
        "database {0:?} already exists: pass --clean to replace its objects with the backup's, or --target-database to restore beside it"
    )]
    TargetExists(String),
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    #[error("restoring the globals, at {statement}: {message}")]
    Globals { statement: String, message: String },
    #[error("restoring database {database:?}: {message}")]
    Database { database: String, message: String },
}

impl From<tokio_postgres::Error> for RestoreError {
    fn from(error: tokio_postgres::Error) -> Self {
        RestoreError::Postgres(describe_pg(&error))
    }
}

/// Which run to restore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunSelector {
    Latest,
    /// The latest run that completed at or before this time (`bootstrap.recoveryTime`).
    LatestBefore(Timestamp),
    /// A run id (`YYYYMMDDTHHMMSSZ`) or a manifest snapshot id.
    Id(String),
}

impl RunSelector {
    /// `latest`, an RFC 3339 time, or a run or snapshot id (run ids are basic-format times,
    /// so only times with dashes count as times).
    pub fn parse(text: &str) -> RunSelector {
        let text = text.trim();
        if text.is_empty() || text == "latest" {
            RunSelector::Latest
        } else if let Some(time) = text
            .contains('-')
            .then(|| text.parse::<Timestamp>().ok())
            .flatten()
        {
            RunSelector::LatestBefore(time)
        } else {
            RunSelector::Id(text.to_string())
        }
    }
}

/// Where to read backups from and which server to restore into.
#[derive(Clone, Debug)]
pub struct RestoreSettings {
    /// The cluster whose backups are read (`bootstrap.oldName`, or the cluster itself).
    pub source_cluster: String,
    pub location: Location,
    pub credentials: S3Credentials,
    pub restic: Restic,
    /// The target server, as its superuser.
    pub postgres: Connection,
    pub bin_dir: Option<PathBuf>,
}

/// The manifest of the selected complete run.
pub async fn find_run(
    settings: &RestoreSettings,
    selector: &RunSelector,
) -> Result<RunManifest, RestoreError> {
    s3::check_bucket(&settings.location, &settings.credentials).await?;
    let repository = settings.location.globals_repository();
    let snapshots = settings
        .restic
        .snapshots(
            &repository,
            &settings.source_cluster,
            Some(&format!("/{MANIFEST_FILE}")),
        )
        .await?;
    let chosen = snapshots
        .iter()
        .rev()
        .find(|snapshot| match selector {
            RunSelector::Latest => true,
            RunSelector::LatestBefore(limit) => snapshot
                .time
                .parse::<Timestamp>()
                .is_ok_and(|time| time <= *limit),
            RunSelector::Id(id) => {
                snapshot.tag(TAG_RUN) == Some(id.as_str()) || snapshot.id.starts_with(id.as_str())
            }
        })
        .ok_or_else(|| RestoreError::NoRun {
            cluster: settings.source_cluster.clone(),
            repository: repository.clone(),
            when: match selector {
                RunSelector::Latest => String::new(),
                RunSelector::LatestBefore(time) => format!(" completed at or before {time}"),
                RunSelector::Id(id) => format!(" with id {id:?}"),
            },
        })?;
    let text = settings
        .restic
        .read_file(&repository, &chosen.id, MANIFEST_FILE)
        .await?;
    let run = chosen.tag(TAG_RUN).unwrap_or(&chosen.short_id).to_string();
    serde_json::from_str(&text).map_err(|e| RestoreError::Manifest {
        run,
        message: e.to_string(),
    })
}

/// Creates the roles of the run's globals that the server lacks, with their attributes,
/// passwords and settings, and grants the memberships. Roles that exist are left as they are
/// (the cluster's superuser and replication role, and users the spec already manages).
/// Returns the statements executed.
pub async fn restore_globals(
    settings: &RestoreSettings,
    manifest: &RunManifest,
) -> Result<usize, RestoreError> {
    let text = settings
        .restic
        .read_file(
            &manifest.globals.repository,
            &manifest.globals.snapshot,
            GLOBALS_FILE,
        )
        .await?;
    let client = settings.postgres.client(MAINTENANCE_DB).await?;
    let existing: BTreeSet<String> = client
        .query("SELECT rolname FROM pg_roles", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let statements = globals_statements(&text, &existing);
    for statement in &statements {
        if let Err(error) = audit::execute(&client, statement).await {
            let duplicate = error
                .as_db_error()
                .is_some_and(|db| db.code().code() == DUPLICATE_OBJECT);
            if !duplicate {
                return Err(RestoreError::Globals {
                    statement: redact_password(statement),
                    message: describe_pg(&error),
                });
            }
        }
    }
    Ok(statements.len())
}

/// The statements of a `pg_dumpall --globals-only` script to run against a server that has
/// the roles `existing`: role statements about those roles are dropped, as are tablespaces
/// (their directories belong to the old server), comments, psql meta-commands and SETs.
pub fn globals_statements(script: &str, existing: &BTreeSet<String>) -> Vec<String> {
    let mut statements = Vec::new();
    for line in script.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with("--") || line.starts_with('\\') {
            continue;
        }
        let upper = line.to_ascii_uppercase();
        if upper.starts_with("SET ") || upper.contains("TABLESPACE") && !upper.starts_with("GRANT ")
        {
            continue;
        }
        let subject = ["CREATE ROLE ", "ALTER ROLE ", "COMMENT ON ROLE "]
            .iter()
            .find(|prefix| upper.starts_with(**prefix))
            .and_then(|prefix| first_identifier(&line[prefix.len()..]));
        if subject.is_some_and(|role| existing.contains(&role)) {
            continue;
        }
        statements.push(line.to_string());
    }
    statements
}

/// The identifier at the start of `text`, unquoted.
fn first_identifier(text: &str) -> Option<String> {
    let text = text.trim_start();
    if let Some(rest) = text.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = rest.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    name.push('"');
                } else {
                    return Some(name);
                }
            } else {
                name.push(c);
            }
        }
        None
    } else {
        let name: String = text
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != ';')
            .collect();
        (!name.is_empty()).then(|| name.to_ascii_lowercase())
    }
}

/// `--dbname=` as a connection string, so any database name (with `=`, spaces or quotes)
/// is read as a name.
fn dbname_option(database: &str) -> String {
    let escaped = database.replace('\\', "\\\\").replace('\'', "\\'");
    format!("--dbname=dbname='{escaped}'")
}

/// Restores database `name` of the run into `target` (the same name by default).
pub async fn restore_database(
    settings: &RestoreSettings,
    manifest: &RunManifest,
    name: &str,
    target: Option<&str>,
    clean: bool,
) -> Result<(), RestoreError> {
    let entry = manifest
        .database(name)
        .ok_or_else(|| RestoreError::NotInRun {
            database: name.to_string(),
            run: manifest.run.clone(),
            available: manifest
                .databases
                .iter()
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let target = target.unwrap_or(name);
    let client = settings.postgres.client(MAINTENANCE_DB).await?;
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&target])
        .await?
        .is_some();
    if exists && !clean {
        return Err(RestoreError::TargetExists(target.to_string()));
    }
    let mut restore = pg_command(
        settings.bin_dir.as_deref(),
        &settings.postgres,
        "pg_restore",
    );
    restore.args(["--format=tar", "--exit-on-error", "--no-password"]);
    let created = if exists {
        // One transaction: a failure leaves the database exactly as it was.
        restore
            .args(["--clean", "--if-exists", "--single-transaction"])
            .arg(dbname_option(target));
        false
    } else if target == name {
        // The archive's own CREATE DATABASE: owner, encoding, locale and settings as they were.
        restore.arg("--create").arg(dbname_option(MAINTENANCE_DB));
        true
    } else {
        let owner_exists = client
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&entry.owner])
            .await?
            .is_some();
        let owner = if owner_exists {
            format!(" OWNER {}", ident(&entry.owner))
        } else {
            String::new()
        };
        client
            .batch_execute(&format!("CREATE DATABASE {}{owner}", ident(target)))
            .await?;
        restore
            .arg("--single-transaction")
            .arg(dbname_option(target));
        true
    };
    let dump = settings.restic.dump_command(
        &entry.dump.repository,
        &entry.dump.snapshot,
        &entry.dump.file,
    );
    if let Err(error) = stream::pipe(dump, restore).await {
        if created {
            let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(target));
            if let Err(drop_error) = client.batch_execute(&drop).await {
                tracing::warn!(database = target, error = %describe_pg(&drop_error), "cannot drop the partly restored database");
            }
        }
        return Err(RestoreError::Database {
            database: target.to_string(),
            message: error.to_string(),
        });
    }
    tracing::info!(database = target, run = %manifest.run, "database restored");
    Ok(())
}

/// What a restore did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restored {
    pub run: String,
    pub databases: Vec<String>,
    pub globals_statements: usize,
}

/// Restores a run: the missing roles first (when `globals`), then each database asked for
/// (every database of the run when `databases` is empty). Stops at the first failure.
pub async fn restore(
    settings: &RestoreSettings,
    selector: &RunSelector,
    databases: &[String],
    target: Option<&str>,
    clean: bool,
    globals: bool,
) -> Result<Restored, RestoreError> {
    let manifest = find_run(settings, selector).await?;
    let globals_statements = if globals {
        restore_globals(settings, &manifest).await?
    } else {
        0
    };
    let names: Vec<String> = if databases.is_empty() {
        manifest.databases.iter().map(|d| d.name.clone()).collect()
    } else {
        databases.to_vec()
    };
    for name in &names {
        restore_database(settings, &manifest, name, target, clean).await?;
    }
    Ok(Restored {
        run: manifest.run.clone(),
        databases: names,
        globals_statements,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = r#"\restrict abc
--
-- PostgreSQL database cluster dump
--

SET default_transaction_read_only = off;
SET client_encoding = 'UTF8';

--
-- Roles
--

CREATE ROLE admin;
ALTER ROLE admin WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS PASSWORD 'SCRAM-SHA-256$4096:x';
CREATE ROLE postgres;
ALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS;
CREATE ROLE "Odd ""one""";
ALTER ROLE "Odd ""one""" SET work_mem TO '8MB';
COMMENT ON ROLE postgres IS 'x';
CREATE TABLESPACE fast OWNER postgres LOCATION '/mnt/fast';

--
-- Role memberships
--

GRANT admin TO "Odd ""one""" GRANTED BY postgres;

\unrestrict abc
"#;

    #[test]
    fn roles_that_exist_are_left_alone_and_the_rest_is_recreated() {
        let existing = BTreeSet::from(["postgres".to_string(), "Odd \"one\"".to_string()]);
        let statements = globals_statements(SCRIPT, &existing);
        assert_eq!(
            statements,
            vec![
                "CREATE ROLE admin;".to_string(),
                "ALTER ROLE admin WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS PASSWORD 'SCRAM-SHA-256$4096:x';".to_string(),
                "GRANT admin TO \"Odd \"\"one\"\"\" GRANTED BY postgres;".to_string(),
            ]
        );
    }

    #[test]
    fn database_names_reach_pg_restore_as_names() {
        assert_eq!(dbname_option("shop"), "--dbname=dbname='shop'");
        assert_eq!(
            dbname_option("a='b' c\\"),
            "--dbname=dbname='a=\\'b\\' c\\\\'"
        );
    }

    #[test]
    fn run_selectors_read_latest_times_and_ids() {
        assert_eq!(RunSelector::parse(""), RunSelector::Latest);
        assert_eq!(RunSelector::parse("latest"), RunSelector::Latest);
        assert!(matches!(
            RunSelector::parse("2026-11-25T03:00:00Z"),
            RunSelector::LatestBefore(_)
        ));
        assert_eq!(
            RunSelector::parse("20261125T030000Z"),
            RunSelector::Id("20261125T030000Z".to_string())
        );
    }
}
