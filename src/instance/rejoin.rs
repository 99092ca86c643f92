//! A former primary (or any instance whose history left the primary's) becomes a
//! standby of the new primary: `pg_rewind` against it (data checksums are on, so any
//! cluster this operator created can be rewound), and when that fails a fresh clone.
//! The server must be stopped; pg_rewind finishes an interrupted crash recovery first.

use std::path::Path;

use super::bootstrap::{BootstrapError, Tools, clone_from_primary, run_with_env};
use super::files::Endpoint;
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
    pub primary: &'a Endpoint,
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

/// How to log in to `source` as the superuser (the password goes in `PGPASSWORD`).
fn superuser_conninfo(source: &Source) -> String {
    format!(
        "{} user={SUPERUSER} dbname=postgres connect_timeout=5",
        source.primary.conninfo()
    )
}

/// Runs `sql` on `source` with psql, unaligned and without headers; what it printed.
fn psql(tools: &Tools, source: &Source, sql: &str) -> Result<String, BootstrapError> {
    run_with_env(
        &tools.wrap,
        &tools.bin_dir.join("psql"),
        &[
            "-X".to_string(),
            "-q".to_string(),
            "-A".to_string(),
            "-t".to_string(),
            "-d".to_string(),
            superuser_conninfo(source),
            "-c".to_string(),
            sql.to_string(),
        ],
        &[("PGPASSWORD", source.superuser_password)],
    )
}

/// Rewinds `data_dir` onto `source`'s history.
pub fn rewind(tools: &Tools, data_dir: &Path, source: &Source) -> Result<Rejoined, RewindError> {
    clear_stale_lock(data_dir);
    // pg_rewind reads the source's timeline from its control file, which a promoted
    // server updates only at its first checkpoint after the promotion: without one, a
    // rewind right after a failover finds "no rewind required" and the old primary
    // cannot follow.
    psql(tools, source, "CHECKPOINT").map_err(RewindError::SourceUnreachable)?;
    let output = run_with_env(
        &tools.wrap,
        &tools.bin_dir.join("pg_rewind"),
        &[
            "--target-pgdata".to_string(),
            data_dir.to_string_lossy().into_owned(),
            "--source-server".to_string(),
            superuser_conninfo(source),
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

/// Which initdb a data directory comes from, and on which timeline it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub system: String,
    pub timeline: u32,
}

/// What a standby does with the data directory it finds, against its primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fit {
    /// Same system, same timeline: it streams from where it is.
    Follows,
    /// Same system, another timeline (a failover happened since its last
    /// restartpoint, or it received WAL the new primary never had): pg_rewind decides,
    /// and clones again when it cannot.
    OtherTimeline,
    /// Another initdb (the primary's volume was replaced): nothing of it can be kept
    /// in this cluster, so it is cloned again.
    OtherSystem,
}

pub fn fit(local: &Identity, primary: &Identity) -> Fit {
    if local.system != primary.system {
        Fit::OtherSystem
    } else if local.timeline != primary.timeline {
        Fit::OtherTimeline
    } else {
        Fit::Follows
    }
}

/// The identity of a stopped server's data directory, from `pg_controldata`.
pub fn local_identity(tools: &Tools, data_dir: &Path) -> Result<Option<Identity>, BootstrapError> {
    let control = super::controldata::read(tools, data_dir)?;
    Ok(control
        .system_identifier
        .zip(control.timeline)
        .map(|(system, timeline)| Identity { system, timeline }))
}

/// The identity of the running `source`: its system identifier and the timeline it
/// writes (a primary's current WAL file names it; its control file may lag after a
/// promotion).
pub fn source_identity(tools: &Tools, source: &Source) -> Result<Identity, BootstrapError> {
    let output = psql(
        tools,
        source,
        "SELECT system_identifier, CASE WHEN pg_is_in_recovery() \
         THEN (SELECT timeline_id FROM pg_control_checkpoint()) \
         ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END \
         FROM pg_control_system()",
    )?;
    parse_identity(&output).ok_or_else(|| BootstrapError::Tool {
        tool: "psql".to_string(),
        message: format!("no system identifier and timeline in {:?}", output.trim()),
    })
}

fn parse_identity(output: &str) -> Option<Identity> {
    output.lines().find_map(|line| {
        let (system, timeline) = line.trim().split_once('|')?;
        Some(Identity {
            system: system.to_string(),
            timeline: timeline.parse().ok()?,
        })
    })
}

/// A standby's existing directory made fit to follow `source`: kept when it follows,
/// rewound (or cloned) when on another timeline, cloned when of another system. None
/// when it was kept.
pub fn realign(
    tools: &Tools,
    data_dir: &Path,
    source: &Source,
) -> Result<Option<Rejoined>, BootstrapError> {
    let Some(local) = local_identity(tools, data_dir)? else {
        return Ok(None);
    };
    let primary = source_identity(tools, source)?;
    match fit(&local, &primary) {
        Fit::Follows => Ok(None),
        Fit::OtherTimeline => {
            tracing::info!(
                local = local.timeline,
                primary = primary.timeline,
                "the data is on another timeline than the primary's: rejoining its history"
            );
            rejoin(tools, data_dir, source).map(Some)
        }
        Fit::OtherSystem => {
            tracing::warn!(
                local = %local.system,
                primary = %primary.system,
                "the data comes from another system than the primary's: cloning the primary again"
            );
            reclone(tools, data_dir, source).map(Some)
        }
    }
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
                primary = %source.primary,
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
        source.primary,
        source.replication_password,
        source.application_name,
    )?;
    Ok(Rejoined::Recloned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(system: &str, timeline: u32) -> Identity {
        Identity {
            system: system.to_string(),
            timeline,
        }
    }

    #[test]
    fn a_standby_keeps_rewinds_or_reclones_by_system_and_timeline() {
        let primary = identity("744", 2);
        assert_eq!(fit(&identity("744", 2), &primary), Fit::Follows);
        assert_eq!(fit(&identity("744", 1), &primary), Fit::OtherTimeline);
        assert_eq!(fit(&identity("744", 3), &primary), Fit::OtherTimeline);
        // Another initdb: the timeline says nothing then.
        assert_eq!(fit(&identity("745", 2), &primary), Fit::OtherSystem);
        assert_eq!(fit(&identity("745", 1), &primary), Fit::OtherSystem);
    }

    #[test]
    fn the_sources_identity_is_read_from_psqls_output() {
        assert_eq!(
            parse_identity("7441234567890123456|3\n"),
            Some(identity("7441234567890123456", 3))
        );
        assert_eq!(
            parse_identity("psql: warning\n744|1\n"),
            Some(identity("744", 1))
        );
        assert_eq!(parse_identity(""), None);
        assert_eq!(parse_identity("744|x"), None);
    }
}
