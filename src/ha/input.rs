//! What a failover decision is made from: plain data the caller collects from the
//! instances, the spec and the status.

use std::time::SystemTime;

use crate::instance::quorum::Bounds;

/// What the server of an instance is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    Primary,
    Standby,
}

/// What an instance answered.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub role: Role,
    /// Whether PostgreSQL itself answers. False while the instance manager answers but
    /// its server is starting, restarting or in crash recovery.
    pub running: bool,
    pub timeline: u32,
    /// Standby: `pg_last_wal_receive_lsn()`, WAL received and flushed to its disk
    /// (`None` when nothing was streamed since it started). Primary: its flushed WAL.
    pub received_lsn: Option<u64>,
    /// Standby: `pg_last_wal_replay_lsn()`.
    pub replayed_lsn: Option<u64>,
    /// Standby: the pod its WAL receiver streams from, if it streams.
    pub streaming_from: Option<String>,
}

impl Report {
    /// The WAL this instance holds on its disk: a standby replays only WAL it has
    /// flushed, so the further of the two positions is on disk (the received one is
    /// `None` for WAL restored from an archive rather than streamed).
    pub fn durable_lsn(&self) -> Option<u64> {
        self.received_lsn.max(self.replayed_lsn)
    }

    /// A standby whose server answers with a position: one that can be compared, and
    /// promoted.
    pub(super) fn answering_standby(&self) -> Option<u64> {
        (self.role == Role::Standby && self.running)
            .then(|| self.durable_lsn())
            .flatten()
    }
}

/// One pod of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub pod: String,
    /// Named in the synchronous set `ANY q (S)` the primary last reported.
    pub in_sync_set: bool,
    /// What it answered now; `None` when it did not answer in time.
    pub report: Option<Report>,
}

/// Everything one decision reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// Every pod of the cluster, answering or not.
    pub instances: Vec<Instance>,
    /// The spec's quorum bounds and `dataDurability`.
    pub bounds: Bounds,
    /// The `q` of `ANY q (S)` the primary last reported; 0 for asynchronous.
    pub sync_quorum: usize,
    /// The flushed WAL position the primary last reported.
    pub primary_lsn: Option<u64>,
    /// `status.currentPrimary`.
    pub current_primary: Option<String>,
    /// `status.targetPrimary`.
    pub target_primary: Option<String>,
    /// When the current primary was first seen unhealthy, as recorded; `None` when it
    /// was healthy at the last look.
    pub unhealthy_since: Option<SystemTime>,
}

impl Cluster {
    pub(super) fn instance(&self, pod: &str) -> Option<&Instance> {
        self.instances.iter().find(|instance| instance.pod == pod)
    }
}
