//! A former primary (or any instance whose history left the primary's) becomes a
//! standby of the new primary: `pg_rewind` against it (data checksums are on, so any
//! cluster this operator created can be rewound), and when that fails a fresh clone.
//! The server must be stopped; pg_rewind finishes an interrupted crash recovery first.

use std::path::Path;

use super::bootstrap::{BootstrapError, Tools, clone_from_primary, run_with_env};
use super::files::STANDBY_SIGNAL;
use crate::manifests::secrets::SUPERUSER;

/// How the instance came back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejoined {
    /// Its history had not left the new primary's: nothing to rewind.
    AlreadyOnHistory,
    Rewound,
    /// The rewind failed; the directory was replaced by a new clone.
    Recloned,
}

/// Where the new primary is and how to log in to it.
pub struct Source<'a> {
    pub host: &'a str,
    pub port: u16,
    pub superuser_password: &'a str,
    pub replication_password: &'a str,
    /// This instance's pod name (its `application_name` and slot).
    pub application_name: &'a str,
}

/// Whether the data directory was last a primary's: no `standby.signal` beside data.
pub fn was_primary(data_dir: &Path) -> bool {
    data_dir.join("PG_VERSION").exists() && !data_dir.join(STANDBY_SIGNAL).exists()
}

/// Removes a `postmaster.pid` left by a postmaster that was killed (a lost container):
/// pg_rewind's crash recovery refuses to start beside one whose PID still exists, and
/// a killed process may linger as a zombie. A live postmaster of this directory keeps
/// its file.
fn clear_stale_lock(data_dir: &Path) {
    let lock = data_dir.join("postmaster.pid");
    let Some(pid) = std::fs::read_to_string(&lock)
        .ok()
        .and_then(|text| text.lines().next()?.trim().parse::<u32>().ok())
    else {
        return;
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // `pid (comm) state ...`: comm may hold spaces.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or("");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
        .unwrap_or_default();
    let live_postmaster =
        !stat.is_empty() && state != "Z" && cmdline.contains(&*data_dir.to_string_lossy());
    if live_postmaster {
        tracing::error!(pid, "a postmaster still runs on the data directory");
        return;
    }
    tracing::info!(pid, "removing the lock file of a postmaster that is gone");
    let _ = std::fs::remove_file(&lock);
}

/// Why a rewind did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RewindError {
    /// The new primary does not answer: nothing is known about the data yet, and it
    /// must be kept for a later attempt.
    #[error("the new primary does not answer: {0}")]
    SourceUnreachable(#[source] BootstrapError),
    /// pg_rewind itself failed against a primary that answers.
    #[error("{0}")]
    Failed(#[source] BootstrapError),
}

/// Rewinds `data_dir` onto `source`'s history.
pub fn rewind(tools: &Tools, data_dir: &Path, source: &Source) -> Result<Rejoined, RewindError> {
    clear_stale_lock(data_dir);
    let server = format!(
        "host={} port={} user={SUPERUSER} dbname=postgres connect_timeout=5",
        super::files::conninfo_value(source.host),
        source.port
    );
    // pg_rewind reads the source's timeline from its control file, which a promoted
    // server updates only at its first checkpoint after the promotion: without one, a
    // rewind right after a failover finds "no rewind required" and the old primary
    // cannot follow.
    run_with_env(
        &tools.wrap,
        &tools.bin_dir.join("psql"),
        &[
            "-X".to_string(),
            "-q".to_string(),
            "-d".to_string(),
            server.clone(),
            "-c".to_string(),
            "CHECKPOINT".to_string(),
        ],
        &[("PGPASSWORD", source.superuser_password)],
    )
    .map_err(RewindError::SourceUnreachable)?;
    let output = run_with_env(
        &tools.wrap,
        &tools.bin_dir.join("pg_rewind"),
        &[
            "--target-pgdata".to_string(),
            data_dir.to_string_lossy().into_owned(),
            "--source-server".to_string(),
            server,
        ],
        &[("PGPASSWORD", source.superuser_password)],
    )
    .map_err(RewindError::Failed)?;
    Ok(if output.contains("no rewind required") {
        Rejoined::AlreadyOnHistory
    } else {
        Rejoined::Rewound
    })
}

/// Rewinds, or when that fails replaces the directory with a new clone of `source`.
/// The WAL a failed rewind leaves behind belonged to a history the cluster has left
/// (its commits were not acknowledged under a quorum, or were given up on in an
/// asynchronous failover, which the failover reported).
pub fn rejoin(tools: &Tools, data_dir: &Path, source: &Source) -> Result<Rejoined, BootstrapError> {
    // A directory a failed clone left without data is cloned again directly.
    if !data_dir.join("PG_VERSION").exists() {
        return reclone(tools, data_dir, source);
    }
    match rewind(tools, data_dir, source) {
        Ok(outcome) => {
            tracing::info!(
                ?outcome,
                primary = source.host,
                "rejoined the new primary's history"
            );
            Ok(outcome)
        }
        // Kept as it is until the new primary answers.
        Err(RewindError::SourceUnreachable(error)) => Err(error),
        Err(RewindError::Failed(error)) => {
            tracing::warn!(%error, "pg_rewind failed; cloning the primary again");
            reclone(tools, data_dir, source)
        }
    }
}

/// Replaces the directory (whatever is left of it) with a new clone of `source`.
fn reclone(tools: &Tools, data_dir: &Path, source: &Source) -> Result<Rejoined, BootstrapError> {
    match std::fs::remove_dir_all(data_dir) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => {
            return Err(BootstrapError::Io {
                path: data_dir.to_path_buf(),
                source: error,
            });
        }
    }
    clone_from_primary(
        tools,
        data_dir,
        source.host,
        source.port,
        source.replication_password,
        source.application_name,
    )?;
    Ok(Rejoined::Recloned)
}
