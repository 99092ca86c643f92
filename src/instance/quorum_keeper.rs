//! Keeps `synchronous_standby_names` on the primary current, in a task of its own: the
//! manager's main loop runs declarative SQL passes whose statements themselves wait for
//! the quorum, so the quorum must never wait behind them. Every [`POLL`] it reads
//! `pg_stat_replication` over its own kept connection, asks [`Quorum::decide`], and when
//! the server's setting differs writes the run-time include and reloads. A dead standby
//! whose walsender went away is out of the setting within a poll and a reload.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_postgres::{Client, Statement};

use super::files::{FileError, Listen, RuntimeRole, runtime_conf, write_runtime_conf};
use super::metrics::InstanceMetrics;
use super::provision::{Connection, MAINTENANCE_DB};
use super::quorum::{Bounds, Quorum, Replication, WalSender};
use super::source::Snapshot;
use crate::manifests::{Cluster, OperatorSettings};

/// How often the primary's walsenders are read: a dead standby holds commits for at
/// most about this long plus a reload.
pub const POLL: Duration = Duration::from_millis(150);

/// On a standby there is nothing to keep; it only looks this often for a promotion.
const STANDBY_POLL: Duration = Duration::from_secs(1);

/// A reload that did not take (the server's setting still differs while the file is
/// current) is asked again after this long.
const RELOAD_RETRY: Duration = Duration::from_secs(1);

/// The primary's flushed position and the commits waiting for standbys; the position
/// is read only outside recovery, where it exists.
const STATE_SQL: &str = "SELECT pg_is_in_recovery(), current_setting('synchronous_standby_names'), \
     CASE WHEN pg_is_in_recovery() THEN 0 \
     ELSE pg_wal_lsn_diff(pg_current_wal_flush_lsn(), '0/0')::bigint END, \
     (SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep')";

const SENDERS_SQL: &str = "SELECT application_name, state, \
     pg_wal_lsn_diff(flush_lsn, '0/0')::bigint, sync_state FROM pg_stat_replication";

/// A transaction of its own that writes and flushes a commit record without waiting
/// for any standby: the standbys receive it and reply, which releases commits that
/// waited from before the last change (see [`Quorum::nudge`]).
const NUDGE_SQL: &str =
    "BEGIN; SET LOCAL synchronous_commit = local; SELECT txid_current(); COMMIT";

#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    #[error("cannot connect to the local server: {0}")]
    Connect(#[source] tokio_postgres::Error),
    #[error("reading the walsenders: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("writing the run-time include: {0}")]
    Files(#[from] FileError),
    #[error("no spec yet")]
    NoSpec,
}

/// The setting as last decided, shared with the manager, which writes the same value
/// whenever it rewrites the run-time include (so neither undoes the other).
#[derive(Clone, Debug, Default)]
pub struct Applied(Arc<Mutex<String>>);

impl Applied {
    pub fn get(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, value: &str) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = value.to_string();
    }
}

/// What the keeper needs of its instance.
pub struct Keeper {
    /// The local server as the superuser; the password is taken from the latest spec.
    pub connection: Connection,
    pub data_dir: PathBuf,
    pub listen: Listen,
    pub namespace: String,
    pub pod_name: String,
    pub operator: OperatorSettings,
    pub applied: Applied,
    pub metrics: Arc<InstanceMetrics>,
}

/// The kept connection with its prepared statements.
struct Session {
    client: Client,
    state: Statement,
    senders: Statement,
}

/// Whether this instance is the primary, as its server says.
enum Seen {
    Primary,
    Standby,
}

/// Runs until `shutdown` turns true, dropping its connection then so a smart shutdown
/// does not wait for it.
pub async fn run(
    keeper: Keeper,
    snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut state = State::default();
    loop {
        let pause = match keeper.step(&mut state, &snapshots).await {
            Ok(Seen::Primary) => POLL,
            Ok(Seen::Standby) => STANDBY_POLL,
            Err(error) => {
                tracing::debug!(%error, "quorum check failed");
                state.session = None;
                POLL
            }
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

#[derive(Default)]
struct State {
    session: Option<Session>,
    quorum: Quorum,
    /// When the keeper last changed the setting.
    changed_at: Option<Instant>,
    reloaded_at: Option<Instant>,
}

impl Keeper {
    async fn connect(&self, snapshot: &Snapshot) -> Result<Session, KeeperError> {
        let connection = Connection {
            password: snapshot.superuser_password().map(str::to_string),
            hostaddr: None,
            verify_with: None,
            ..self.connection.clone()
        };
        let client = connection
            .client(MAINTENANCE_DB)
            .await
            .map_err(KeeperError::Connect)?;
        let state = client.prepare(STATE_SQL).await?;
        let senders = client.prepare(SENDERS_SQL).await?;
        Ok(Session {
            client,
            state,
            senders,
        })
    }

    async fn step(
        &self,
        state: &mut State,
        snapshots: &watch::Receiver<Option<Arc<Snapshot>>>,
    ) -> Result<Seen, KeeperError> {
        let snapshot = snapshots.borrow().clone().ok_or(KeeperError::NoSpec)?;
        let session = match state.session.take() {
            Some(session) if !session.client.is_closed() => session,
            _ => self.connect(&snapshot).await?,
        };
        let session = state.session.insert(session);
        let row = session.client.query_one(&session.state, &[]).await?;
        let (in_recovery, live, flushed, waiting): (bool, String, i64, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        if in_recovery {
            // A later promotion starts from what its new standbys show.
            state.quorum = Quorum::default();
            return Ok(Seen::Standby);
        }
        let senders = session
            .client
            .query(&session.senders, &[])
            .await?
            .iter()
            .map(|row| WalSender {
                application_name: row.get(0),
                state: row.get::<_, Option<String>>(1).unwrap_or_default(),
                flush: row
                    .get::<_, Option<i64>>(2)
                    .and_then(|lsn| u64::try_from(lsn).ok()),
                sync_state: row.get::<_, Option<String>>(3).unwrap_or_default(),
            })
            .collect();
        let seen = Replication {
            flushed: u64::try_from(flushed).unwrap_or(0),
            senders,
        };
        let cluster = Cluster::new(&snapshot.postgres, &self.namespace, &self.operator);
        let members = cluster
            .pod_names()
            .into_iter()
            .filter(|pod| *pod != self.pod_name)
            .collect();
        let bounds = Bounds::of(&snapshot.postgres.spec.quorum);
        let now = Instant::now();
        let decision = state.quorum.decide(&members, &seen, bounds, now);
        let wanted = decision.synchronous_standby_names;
        self.metrics
            .sync_standbys
            .set(i64::try_from(decision.counted.len()).unwrap_or(0));
        self.metrics.min_sync_replicas.set(i64::from(bounds.min));
        let previous = self.applied.get();
        if wanted != previous {
            tracing::info!(from = %previous, to = %wanted, counted = ?decision.counted, "synchronous quorum changed");
            self.applied.set(&wanted);
            state.changed_at = Some(now);
        }
        if live != wanted {
            let role = RuntimeRole::Primary {
                sync_standby_names: wanted,
            };
            let written = write_runtime_conf(&self.data_dir, &runtime_conf(&role, &self.listen))?;
            let retry = state
                .reloaded_at
                .is_none_or(|at| now.duration_since(at) >= RELOAD_RETRY);
            if written || retry {
                state.reloaded_at = Some(now);
                session
                    .client
                    .simple_query("SELECT pg_reload_conf()")
                    .await?;
                self.metrics.config_reloads.inc();
            }
        } else if state
            .changed_at
            .is_some_and(|at| Quorum::nudge(waiting, now.duration_since(at)))
        {
            session.client.batch_execute(NUDGE_SQL).await?;
        }
        Ok(Seen::Primary)
    }
}
