//! Every PostgreSQL metric an instance exports on :9187: name, type, labels, meaning,
//! and on which role it appears. The collector emits nothing outside this table and
//! the reference (`docs/metrics.md`) is generated from it, so the two cannot drift.

/// How Prometheus reads a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    /// Exposed with the `_total` suffix.
    Counter,
}

/// Where a metric appears.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Every,
    Primary,
    Standby,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Metric {
    /// Without the `_total` of a counter.
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
    pub scope: Scope,
}

impl Metric {
    /// The name a scrape shows.
    pub fn exposed_name(&self) -> String {
        match self.kind {
            Kind::Gauge => self.name.to_string(),
            Kind::Counter => format!("{}_total", self.name),
        }
    }
}

const fn gauge(
    name: &'static str,
    labels: &'static [&'static str],
    scope: Scope,
    help: &'static str,
) -> Metric {
    Metric {
        name,
        kind: Kind::Gauge,
        labels,
        help,
        scope,
    }
}

const fn counter(
    name: &'static str,
    labels: &'static [&'static str],
    scope: Scope,
    help: &'static str,
) -> Metric {
    Metric {
        name,
        kind: Kind::Counter,
        labels,
        help,
        scope,
    }
}

use Scope::{Every, Primary, Standby};

pub const SCRAPE_DURATION: &str = "pg_scrape_duration_seconds";
pub const SCRAPE_QUERIES: &str = "pg_scrape_queries";
pub const SCRAPE_ERROR: &str = "pg_scrape_error";
pub const UP: &str = "pg_up";
pub const IN_RECOVERY: &str = "pg_in_recovery";
pub const MAX_CONNECTIONS: &str = "pg_max_connections";
pub const CONNECTIONS: &str = "pg_connections";
pub const DATABASE_SIZE: &str = "pg_database_size_bytes";
pub const COMMITS: &str = "pg_database_xact_commit";
pub const ROLLBACKS: &str = "pg_database_xact_rollback";
pub const BLOCKS_READ: &str = "pg_database_blocks_read";
pub const BLOCKS_HIT: &str = "pg_database_blocks_hit";
pub const DEADLOCKS: &str = "pg_database_deadlocks";
pub const CONFLICTS: &str = "pg_database_conflicts";
pub const TEMP_BYTES: &str = "pg_database_temp_bytes";
pub const XID_AGE: &str = "pg_database_xid_age";
pub const LOCKS: &str = "pg_locks";
pub const LOCKS_WAITING: &str = "pg_locks_waiting";
pub const OLDEST_XACT: &str = "pg_oldest_transaction_seconds";
pub const OLDEST_IDLE_IN_XACT: &str = "pg_oldest_idle_in_transaction_seconds";
pub const SLOT_ACTIVE: &str = "pg_replication_slot_active";
pub const SLOT_RETAINED: &str = "pg_replication_slot_retained_bytes";
pub const CHECKPOINTS: &str = "pg_checkpoints";
pub const BUFFERS_WRITTEN: &str = "pg_buffers_written";
pub const WAL_WRITTEN: &str = "pg_wal_written_bytes";
pub const REPLICATION_LAG_SECONDS: &str = "pg_replication_lag_seconds";
pub const REPLICATION_LAG_BYTES: &str = "pg_replication_lag_bytes";
pub const REPLICATION_SYNC: &str = "pg_replication_sync_standby";
pub const STANDBY_RECEIVING: &str = "pg_standby_receiving";
pub const STANDBY_RECEIVE_LAG_BYTES: &str = "pg_standby_receive_lag_bytes";
pub const STANDBY_REPLAY_LAG_BYTES: &str = "pg_standby_replay_lag_bytes";
pub const STANDBY_REPLAY_LAG_SECONDS: &str = "pg_standby_replay_lag_seconds";
pub const VOLUME_SIZE: &str = "pg_volume_size_bytes";
pub const VOLUME_USED: &str = "pg_volume_used_bytes";
pub const VOLUME_FREE: &str = "pg_volume_free_bytes";

/// The table, in the order a scrape shows it.
pub const METRICS: &[Metric] = &[
    gauge(
        UP,
        &[],
        Every,
        "1 when the last collection from PostgreSQL succeeded",
    ),
    gauge(
        SCRAPE_DURATION,
        &[],
        Every,
        "How long the last collection from PostgreSQL took",
    ),
    gauge(
        SCRAPE_QUERIES,
        &[],
        Every,
        "Queries the last collection ran",
    ),
    gauge(
        SCRAPE_ERROR,
        &[],
        Every,
        "1 when a query of the last collection failed (the others are still shown)",
    ),
    gauge(
        IN_RECOVERY,
        &[],
        Every,
        "1 on a standby (in recovery), 0 on the primary",
    ),
    gauge(MAX_CONNECTIONS, &[], Every, "The max_connections setting"),
    gauge(
        CONNECTIONS,
        &["datname", "state"],
        Every,
        "Client connections by database and state (active, idle, idle in transaction, ...)",
    ),
    gauge(
        DATABASE_SIZE,
        &["datname"],
        Every,
        "Size of each database on disk",
    ),
    counter(
        COMMITS,
        &["datname"],
        Every,
        "Transactions committed in each database",
    ),
    counter(
        ROLLBACKS,
        &["datname"],
        Every,
        "Transactions rolled back in each database",
    ),
    counter(
        BLOCKS_READ,
        &["datname"],
        Every,
        "Blocks read from disk (not found in shared buffers)",
    ),
    counter(
        BLOCKS_HIT,
        &["datname"],
        Every,
        "Blocks found in shared buffers",
    ),
    counter(DEADLOCKS, &["datname"], Every, "Deadlocks detected"),
    counter(
        CONFLICTS,
        &["datname"],
        Every,
        "Queries cancelled by conflicts with recovery (standbys)",
    ),
    counter(
        TEMP_BYTES,
        &["datname"],
        Every,
        "Bytes written to temporary files by queries",
    ),
    gauge(
        XID_AGE,
        &["datname"],
        Every,
        "Age in transactions of the oldest unfrozen transaction ID (wraparound comes at about 2 billion)",
    ),
    gauge(LOCKS, &["mode"], Every, "Locks held, by mode"),
    gauge(LOCKS_WAITING, &[], Every, "Lock requests waiting"),
    gauge(
        OLDEST_XACT,
        &[],
        Every,
        "Age of the oldest open transaction of a client (0 when none)",
    ),
    gauge(
        OLDEST_IDLE_IN_XACT,
        &[],
        Every,
        "Time the oldest idle-in-transaction session has been idle (0 when none)",
    ),
    gauge(
        SLOT_ACTIVE,
        &["slot"],
        Every,
        "1 when a replication slot is in use",
    ),
    gauge(
        SLOT_RETAINED,
        &["slot"],
        Every,
        "WAL a replication slot keeps from removal",
    ),
    counter(
        CHECKPOINTS,
        &["kind"],
        Every,
        "Checkpoints (on a standby: restartpoints) by kind: timed or requested",
    ),
    counter(
        BUFFERS_WRITTEN,
        &["by"],
        Every,
        "Buffers written by the checkpointer or the background writer",
    ),
    counter(
        WAL_WRITTEN,
        &[],
        Primary,
        "WAL generated since the cluster was created (the current WAL position)",
    ),
    gauge(
        REPLICATION_LAG_SECONDS,
        &["standby", "stage"],
        Primary,
        "Per standby, time its WAL took to be written, flushed and replayed there (stage)",
    ),
    gauge(
        REPLICATION_LAG_BYTES,
        &["standby", "stage"],
        Primary,
        "Per standby, WAL not yet written, flushed or replayed there (stage)",
    ),
    gauge(
        REPLICATION_SYNC,
        &["standby"],
        Primary,
        "Per streaming standby, 1 when it counts for synchronous commits (sync or quorum)",
    ),
    gauge(
        STANDBY_RECEIVING,
        &[],
        Standby,
        "1 while the WAL receiver streams from the primary",
    ),
    gauge(
        STANDBY_RECEIVE_LAG_BYTES,
        &[],
        Standby,
        "WAL the primary last reported beyond what this standby has flushed",
    ),
    gauge(
        STANDBY_REPLAY_LAG_BYTES,
        &[],
        Standby,
        "WAL received but not replayed yet",
    ),
    gauge(
        STANDBY_REPLAY_LAG_SECONDS,
        &[],
        Standby,
        "Age of the last replayed transaction while WAL waits for replay (0 when caught up)",
    ),
    gauge(VOLUME_SIZE, &[], Every, "Size of the data volume"),
    gauge(VOLUME_USED, &[], Every, "Bytes used on the data volume"),
    gauge(
        VOLUME_FREE,
        &[],
        Every,
        "Bytes free on the data volume for PostgreSQL",
    ),
];

pub fn find(name: &str) -> Option<&'static Metric> {
    METRICS.iter().find(|m| m.name == name)
}

/// The reference table of these metrics, in Markdown.
pub fn markdown() -> String {
    let mut out =
        String::from("| metric | type | labels | on | meaning |\n|---|---|---|---|---|\n");
    for metric in METRICS {
        let labels = if metric.labels.is_empty() {
            String::new()
        } else {
            metric
                .labels
                .iter()
                .map(|l| format!("`{l}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push_str(&format!(
            "| `{}` | {} | {labels} | {} | {} |\n",
            metric.exposed_name(),
            match metric.kind {
                Kind::Gauge => "gauge",
                Kind::Counter => "counter",
            },
            match metric.scope {
                Scope::Every => "every instance",
                Scope::Primary => "primary",
                Scope::Standby => "standby",
            },
            metric.help
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_prefixed_and_counters_carry_no_suffix() {
        let mut names: Vec<&str> = METRICS.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), METRICS.len());
        for metric in METRICS {
            assert!(metric.name.starts_with("pg_"), "{}", metric.name);
            assert!(!metric.name.ends_with("_total"), "{}", metric.name);
            assert!(!metric.help.is_empty());
        }
        assert_eq!(
            find(COMMITS).unwrap().exposed_name(),
            "pg_database_xact_commit_total"
        );
    }
}
