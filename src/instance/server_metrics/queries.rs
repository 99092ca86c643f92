//! The catalog views each metric comes from. A handful of queries over statistics
//! views, none taking more than an AccessShareLock on a catalog, all under the
//! connection's statement and lock timeouts.

use tokio_postgres::Client;

use super::Sample;
use super::catalog::*;

/// What one collection gathered: its samples, and how many queries failed.
#[derive(Default)]
pub struct Gathered {
    pub samples: Vec<Sample>,
    pub queries: u32,
    pub errors: Vec<String>,
}

impl Gathered {
    fn push(&mut self, metric: &'static str, labels: &[(&'static str, String)], value: f64) {
        self.samples.push(Sample {
            metric,
            labels: labels.to_vec(),
            value,
        });
    }

    /// Runs `sql`; its rows, or nothing (the error kept) so the rest still shows.
    async fn rows(&mut self, client: &Client, what: &str, sql: &str) -> Vec<tokio_postgres::Row> {
        self.queries += 1;
        match client.query(sql, &[]).await {
            Ok(rows) => rows,
            Err(error) => {
                self.errors.push(format!("{what}: {error}"));
                Vec::new()
            }
        }
    }
}

const INSTANCE: &str = "SELECT pg_is_in_recovery(), \
     current_setting('max_connections')::float8, \
     current_setting('server_version_num')::int, \
     coalesce((SELECT extract(epoch FROM max(now() - xact_start)) FROM pg_stat_activity \
               WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()), 0)::float8, \
     coalesce((SELECT extract(epoch FROM max(now() - state_change)) FROM pg_stat_activity \
               WHERE state LIKE 'idle in transaction%'), 0)::float8, \
     (SELECT count(*) FROM pg_locks WHERE NOT granted)::float8";

const CONNECTIONS_SQL: &str = "SELECT datname, coalesce(state, 'unknown'), count(*)::float8 \
     FROM pg_stat_activity WHERE backend_type = 'client backend' AND datname IS NOT NULL \
     AND pid <> pg_backend_pid() GROUP BY 1, 2";

const DATABASES: &str = "SELECT d.datname, pg_database_size(d.oid)::float8, \
     s.xact_commit::float8, s.xact_rollback::float8, s.blks_read::float8, s.blks_hit::float8, \
     s.deadlocks::float8, s.conflicts::float8, s.temp_bytes::float8, age(d.datfrozenxid)::float8 \
     FROM pg_database d JOIN pg_stat_database s ON s.datid = d.oid \
     WHERE d.datallowconn AND NOT d.datistemplate";

const LOCKS_SQL: &str = "SELECT mode, count(*)::float8 FROM pg_locks WHERE granted GROUP BY mode";

const SLOTS: &str = "SELECT slot_name::text, active, coalesce((CASE WHEN pg_is_in_recovery() \
     THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END - restart_lsn)::float8, 0) \
     FROM pg_replication_slots";

/// PostgreSQL 17 moved the checkpointer's figures to their own view.
const CHECKPOINTS_SINCE_17: &str = "SELECT c.num_timed::float8, c.num_requested::float8, \
     c.buffers_written::float8, b.buffers_clean::float8 \
     FROM pg_stat_checkpointer c, pg_stat_bgwriter b";
const CHECKPOINTS_BEFORE_17: &str = "SELECT checkpoints_timed::float8, checkpoints_req::float8, \
     buffers_checkpoint::float8, buffers_clean::float8 FROM pg_stat_bgwriter";

const PRIMARY_WAL: &str = "SELECT (pg_current_wal_lsn() - '0/0')::float8";

const STANDBYS: &str = "SELECT application_name, sync_state IN ('sync', 'quorum'), \
     coalesce(extract(epoch FROM write_lag), 0)::float8, \
     coalesce(extract(epoch FROM flush_lag), 0)::float8, \
     coalesce(extract(epoch FROM replay_lag), 0)::float8, \
     coalesce((pg_current_wal_lsn() - write_lsn)::float8, 0), \
     coalesce((pg_current_wal_lsn() - flush_lsn)::float8, 0), \
     coalesce((pg_current_wal_lsn() - replay_lsn)::float8, 0) \
     FROM pg_stat_replication WHERE application_name <> ''";

const STANDBY: &str = "SELECT \
     coalesce((SELECT status = 'streaming' FROM pg_stat_wal_receiver), false), \
     coalesce((SELECT greatest(latest_end_lsn - flushed_lsn, 0)::float8 FROM pg_stat_wal_receiver), 0), \
     coalesce(greatest(pg_last_wal_receive_lsn() - pg_last_wal_replay_lsn(), 0)::float8, 0), \
     CASE WHEN pg_last_wal_receive_lsn() IS NULL \
               OR pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0 \
          ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0) END::float8";

/// Runs every query that applies to this server.
pub async fn gather(client: &Client) -> Gathered {
    let mut out = Gathered::default();
    let instance = out.rows(client, "instance", INSTANCE).await;
    let Some(row) = instance.first() else {
        return out;
    };
    let in_recovery: bool = row.get(0);
    let version: i32 = row.get(2);
    out.push(IN_RECOVERY, &[], if in_recovery { 1.0 } else { 0.0 });
    out.push(MAX_CONNECTIONS, &[], row.get(1));
    out.push(OLDEST_XACT, &[], row.get(3));
    out.push(OLDEST_IDLE_IN_XACT, &[], row.get(4));
    out.push(LOCKS_WAITING, &[], row.get(5));

    for row in out.rows(client, "connections", CONNECTIONS_SQL).await {
        out.push(
            CONNECTIONS,
            &[("datname", row.get(0)), ("state", row.get(1))],
            row.get(2),
        );
    }
    for row in out.rows(client, "databases", DATABASES).await {
        let labels = [("datname", row.get::<_, String>(0))];
        for (index, metric) in [
            DATABASE_SIZE,
            COMMITS,
            ROLLBACKS,
            BLOCKS_READ,
            BLOCKS_HIT,
            DEADLOCKS,
            CONFLICTS,
            TEMP_BYTES,
            XID_AGE,
        ]
        .into_iter()
        .enumerate()
        {
            out.push(metric, &labels, row.get(index + 1));
        }
    }
    for row in out.rows(client, "locks", LOCKS_SQL).await {
        out.push(LOCKS, &[("mode", row.get(0))], row.get(1));
    }
    for row in out.rows(client, "replication slots", SLOTS).await {
        let slot: String = row.get(0);
        let active: bool = row.get(1);
        out.push(
            SLOT_ACTIVE,
            &[("slot", slot.clone())],
            if active { 1.0 } else { 0.0 },
        );
        out.push(SLOT_RETAINED, &[("slot", slot)], row.get(2));
    }
    let checkpoints = if version >= 170_000 {
        CHECKPOINTS_SINCE_17
    } else {
        CHECKPOINTS_BEFORE_17
    };
    for row in out.rows(client, "checkpoints", checkpoints).await {
        out.push(CHECKPOINTS, &[("kind", "timed".into())], row.get(0));
        out.push(CHECKPOINTS, &[("kind", "requested".into())], row.get(1));
        out.push(
            BUFFERS_WRITTEN,
            &[("by", "checkpointer".into())],
            row.get(2),
        );
        out.push(BUFFERS_WRITTEN, &[("by", "bgwriter".into())], row.get(3));
    }
    if in_recovery {
        for row in out.rows(client, "standby", STANDBY).await {
            let receiving: bool = row.get(0);
            out.push(STANDBY_RECEIVING, &[], if receiving { 1.0 } else { 0.0 });
            out.push(STANDBY_RECEIVE_LAG_BYTES, &[], row.get(1));
            out.push(STANDBY_REPLAY_LAG_BYTES, &[], row.get(2));
            out.push(STANDBY_REPLAY_LAG_SECONDS, &[], row.get(3));
        }
    } else {
        for row in out.rows(client, "WAL position", PRIMARY_WAL).await {
            out.push(WAL_WRITTEN, &[], row.get(0));
        }
        for row in out.rows(client, "standbys", STANDBYS).await {
            let standby: String = row.get(0);
            let sync: bool = row.get(1);
            out.push(
                REPLICATION_SYNC,
                &[("standby", standby.clone())],
                if sync { 1.0 } else { 0.0 },
            );
            for (offset, stage) in ["write", "flush", "replay"].into_iter().enumerate() {
                let labels = [("standby", standby.clone()), ("stage", stage.to_string())];
                out.push(REPLICATION_LAG_SECONDS, &labels, row.get(2 + offset));
                out.push(REPLICATION_LAG_BYTES, &labels, row.get(5 + offset));
            }
        }
    }
    out
}
