//! How an instance gets its data directory: keep an existing one, run initdb when it is
//! the first instance of a new cluster, or clone the primary with pg_basebackup. The
//! decision is pure; the two actions run the PostgreSQL tools.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::files::{Endpoint, replication_conninfo, slot_name};
use super::provision::Connection;
use crate::manifests::secrets::{REPLICATION_USER, SUPERUSER};
use crate::sql::quote::{ident, literal};
use crate::sql::scram;

/// What to do with the data directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bootstrap {
    /// PG_VERSION exists: start on it as it is.
    UseExisting,
    /// Empty, and no primary exists: this instance creates the cluster.
    InitDb,
    /// Empty, and a primary runs: copy it and follow it.
    Clone { primary_host: String },
}

/// The decision: an existing directory is always kept (never overwritten); an empty
/// one is initialised only when no primary exists, else cloned from it.
pub fn decide(data_dir: &Path, primary_host: Option<&str>) -> Bootstrap {
    if data_dir.join("PG_VERSION").exists() {
        return Bootstrap::UseExisting;
    }
    match primary_host {
        Some(host) => Bootstrap::Clone {
            primary_host: host.to_string(),
        },
        None => Bootstrap::InitDb,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("{tool} failed: {message}")]
    Tool { tool: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("creating the replication role: {0}")]
    Sql(#[from] tokio_postgres::Error),
}

/// Runs a PostgreSQL tool; `wrap` prefixes the command (e.g. to run it as `postgres`).
fn run(wrap: &[String], tool: &Path, args: &[String]) -> Result<(), BootstrapError> {
    run_with_env(wrap, tool, args, &[]).map(|_| ())
}

/// As [`run`], with environment variables (a password, kept off the command line);
/// what the tool printed, standard output then standard error.
pub(super) fn run_with_env(
    wrap: &[String],
    tool: &Path,
    args: &[String],
    env: &[(&str, &str)],
) -> Result<String, BootstrapError> {
    let (program, prefix) = match wrap.split_first() {
        Some((program, rest)) => (PathBuf::from(program), rest.to_vec()),
        None => (tool.to_path_buf(), Vec::new()),
    };
    let mut command = Command::new(program);
    command.args(prefix);
    if !wrap.is_empty() {
        command.arg(tool);
    }
    let tool_name = tool
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let out = command
        .args(args)
        .envs(env.iter().copied())
        .output()
        .map_err(|source| BootstrapError::Io {
            path: tool.to_path_buf(),
            source,
        })?;
    if out.status.success() {
        // Most tools report on standard error, even when they succeed.
        Ok(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    } else {
        Err(BootstrapError::Tool {
            tool: tool_name,
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Where the PostgreSQL binaries are and how to run them.
#[derive(Clone, Debug)]
pub struct Tools {
    pub bin_dir: PathBuf,
    /// Command prefix, e.g. `setpriv --reuid=postgres ... --` (empty in a pod, which
    /// already runs as `postgres`).
    pub wrap: Vec<String>,
}

/// initdb with data checksums and SCRAM; the superuser's password is set from its
/// verifier so it never appears in clear text on a command line or in a file.
pub fn init_data_dir(
    tools: &Tools,
    data_dir: &Path,
    superuser_password: &str,
) -> Result<(), BootstrapError> {
    let pwfile = data_dir.with_extension("pwfile");
    let verifier = scram::verifier(superuser_password, &rand::random::<[u8; 16]>());
    std::fs::write(&pwfile, &verifier).map_err(|source| BootstrapError::Io {
        path: pwfile.clone(),
        source,
    })?;
    let result = run(
        &tools.wrap,
        &tools.bin_dir.join("initdb"),
        &[
            "-D".to_string(),
            data_dir.to_string_lossy().into_owned(),
            "-U".to_string(),
            SUPERUSER.to_string(),
            format!("--pwfile={}", pwfile.display()),
            "--auth-local=peer".to_string(),
            "--auth-host=scram-sha-256".to_string(),
            "--data-checksums".to_string(),
            "-E".to_string(),
            "UTF8".to_string(),
            "--locale=C.UTF-8".to_string(),
        ],
    );
    let _ = std::fs::remove_file(&pwfile);
    result
}

/// Creates (or updates) the replication role on a running primary.
pub async fn ensure_replication_role(
    superuser: &Connection,
    password: &str,
) -> Result<bool, BootstrapError> {
    let client = superuser.client("postgres").await?;
    ensure_builtin_role(&client, REPLICATION_USER, "LOGIN REPLICATION", password).await
}

/// `role`'s stored password verifier as this server's catalog holds it: `None` when the
/// role does not exist, `Some(None)` when it has no password.
pub async fn stored_verifier(
    client: &tokio_postgres::Client,
    role: &str,
) -> Result<Option<Option<String>>, tokio_postgres::Error> {
    Ok(client
        .query_opt(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
            &[&role],
        )
        .await?
        .map(|row| row.get(0)))
}

/// Makes `role` exist with `attributes` and `password`; writes nothing when the stored
/// verifier already matches (the passes repeat, the catalog should not churn). True
/// when something was written.
pub async fn ensure_builtin_role(
    client: &tokio_postgres::Client,
    role: &str,
    attributes: &str,
    password: &str,
) -> Result<bool, BootstrapError> {
    let stored = stored_verifier(client, role).await?;
    if let Some(Some(verifier)) = &stored
        && scram::matches(password, verifier)
    {
        return Ok(false);
    }
    let verifier = literal(&scram::verifier(password, &rand::random::<[u8; 16]>()));
    let verb = if stored.is_some() { "ALTER" } else { "CREATE" };
    // Committed without waiting for the synchronous standbys: they connect with the
    // replication role, so with `dataDurability: required` a fresh primary would wait
    // for standbys that cannot log in until it commits. Each pass writes these roles
    // again, so one lost in a failover is back on the next pass of the new primary.
    let sql = format!(
        "BEGIN; SET LOCAL synchronous_commit = local; \
         {verb} ROLE {} {attributes} PASSWORD {verifier}; COMMIT",
        ident(role)
    );
    super::audit::execute(client, &sql).await?;
    super::audit::record("postgres", &sql, "built-in role");
    Ok(true)
}

/// Clones the primary into an empty data directory through the standby's own
/// replication slot. The standby settings (`standby.signal`, `primary_conninfo`) are
/// not written here but by [`super::files::ConfigFiles`], which keeps them current
/// when the primary moves; `-R` would pin them in postgresql.auto.conf, which wins.
pub fn clone_from_primary(
    tools: &Tools,
    data_dir: &Path,
    primary: &Endpoint,
    replication_password: &str,
    application_name: &str,
) -> Result<(), BootstrapError> {
    let conninfo = replication_conninfo(primary, replication_password, application_name);
    // The slot of an earlier clone of this pod (its volume lost, or a clone cut short)
    // would make `-C` fail on every attempt. A new base backup needs none of the WAL it
    // holds; dropping fails harmlessly when there is no slot, or while the old standby's
    // walsender still holds it (the next attempt comes after `wal_sender_timeout`).
    let slot = slot_name(application_name);
    let _ = run(
        &tools.wrap,
        &tools.bin_dir.join("pg_receivewal"),
        &[
            "-d".to_string(),
            conninfo.clone(),
            "--drop-slot".to_string(),
            "-S".to_string(),
            slot.clone(),
        ],
    );
    // Every instance keeps its peers' slots ready (unreserved): the slot may be back
    // already, so it is made only if missing, and the base backup uses it.
    run(
        &tools.wrap,
        &tools.bin_dir.join("pg_receivewal"),
        &[
            "-d".to_string(),
            conninfo.clone(),
            "--create-slot".to_string(),
            "--if-not-exists".to_string(),
            "-S".to_string(),
            slot.clone(),
        ],
    )?;
    run(
        &tools.wrap,
        &tools.bin_dir.join("pg_basebackup"),
        &[
            "-D".to_string(),
            data_dir.to_string_lossy().into_owned(),
            "-d".to_string(),
            conninfo,
            "-X".to_string(),
            "stream".to_string(),
            // A spread checkpoint would pace the start over minutes of checkpoint_timeout.
            "--checkpoint=fast".to_string(),
            "-S".to_string(),
            slot,
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_existing_directory_is_never_reinitialised() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("PG_VERSION"), "15\n").unwrap();
        assert_eq!(decide(dir.path(), None), Bootstrap::UseExisting);
        assert_eq!(decide(dir.path(), Some("primary")), Bootstrap::UseExisting);
    }

    #[test]
    fn an_empty_directory_is_initialised_only_without_a_primary() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(decide(dir.path(), None), Bootstrap::InitDb);
        assert_eq!(
            decide(dir.path(), Some("postgres-demo-0.postgres-demo-headless")),
            Bootstrap::Clone {
                primary_host: "postgres-demo-0.postgres-demo-headless".to_string()
            }
        );
    }
}
