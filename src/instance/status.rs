//! What an instance reports on :8000: `/healthz` (PostgreSQL answers), `/readyz`
//! (accepting connections and, for a standby, streaming from the primary) and `/status`
//! (role, timeline, LSNs, lag, sync state, pending restart, version) as JSON.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;
use tokio_postgres::Client;

use super::config_check::Rejection;
use super::config_guard::RejectionReport;
use super::kept_client::{KeptClient, KeptError};

/// Why the instance manager keeps `/readyz` failing although PostgreSQL answers: it has not
/// finished bringing the server to the spec yet (the first declarative SQL pass, or a
/// restore from backup while the cluster bootstraps).
#[derive(Clone, Debug, Default)]
pub struct Hold(Arc<RwLock<Option<String>>>);

impl Hold {
    pub fn new(reason: impl Into<String>) -> Self {
        Hold(Arc::new(RwLock::new(Some(reason.into()))))
    }

    pub fn set(&self, reason: impl Into<String>) {
        if let Ok(mut held) = self.0.write() {
            *held = Some(reason.into());
        }
    }

    pub fn release(&self) {
        if let Ok(mut held) = self.0.write() {
            *held = None;
        }
    }

    pub fn reason(&self) -> Option<String> {
        self.0.read().ok().and_then(|held| held.clone())
    }
}

/// The instance's state as the operator and the other instances read it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    /// `primary` or `standby`.
    pub role: String,
    pub timeline: i64,
    /// Primary: current WAL write position. Standby: last received.
    pub received_lsn: Option<String>,
    /// Standby: last replayed.
    pub replayed_lsn: Option<String>,
    /// Primary: WAL flushed to disk.
    pub flushed_lsn: Option<String>,
    /// Standby: bytes received but not replayed yet.
    pub replay_lag_bytes: Option<i64>,
    /// Standby: whether the WAL receiver is streaming.
    pub streaming: bool,
    /// Primary: standbys and their sync state (`sync`, `quorum`, `async`, `potential`).
    pub replicas: Vec<ReplicaState>,
    /// Settings changed in the configuration that need a restart.
    pub pending_restart: Vec<String>,
    /// `server_version`.
    pub version: String,
    /// Why the instance is not ready although PostgreSQL answers (see [`Hold`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
    /// The spec's configuration PostgreSQL refused: the instance runs an older one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_rejected: Option<Rejection>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaState {
    pub application_name: String,
    pub sync_state: String,
    pub replay_lsn: Option<String>,
}

/// How long a probe or `/status` waits for the server: a stuck server is not ready,
/// whatever the kubelet's own timeout.
const READ_DEADLINE: Duration = Duration::from_secs(3);

/// Reads the status from the server.
pub async fn read_status(client: &Client) -> Result<InstanceStatus, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), (SELECT timeline_id::bigint FROM pg_control_checkpoint()), \
             current_setting('server_version'), \
             ARRAY(SELECT name::text FROM pg_settings WHERE pending_restart ORDER BY 1)",
            &[],
        )
        .await?;
    let standby: bool = row.get(0);
    let mut status = InstanceStatus {
        role: if standby { "standby" } else { "primary" }.to_string(),
        timeline: row.get(1),
        version: row.get(2),
        pending_restart: row.get(3),
        ..InstanceStatus::default()
    };
    if standby {
        let row = client
            .query_one(
                "SELECT pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text, \
                 pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::bigint, \
                 coalesce((SELECT status = 'streaming' FROM pg_stat_wal_receiver), false)",
                &[],
            )
            .await?;
        status.received_lsn = row.get(0);
        status.replayed_lsn = row.get(1);
        status.replay_lag_bytes = row.get(2);
        status.streaming = row.get(3);
    } else {
        let row = client
            .query_one(
                "SELECT pg_current_wal_lsn()::text, pg_current_wal_flush_lsn()::text",
                &[],
            )
            .await?;
        status.received_lsn = row.get(0);
        status.flushed_lsn = row.get(1);
        status.replicas = client
            .query(
                "SELECT application_name::text, sync_state::text, replay_lsn::text FROM pg_stat_replication ORDER BY 1",
                &[],
            )
            .await?
            .iter()
            .map(|row| ReplicaState { application_name: row.get(0), sync_state: row.get(1), replay_lsn: row.get(2) })
            .collect();
    }
    Ok(status)
}

/// Ready: accepting connections, and a standby must be streaming.
pub fn is_ready(status: &InstanceStatus) -> bool {
    status.role == "primary" || status.streaming
}

#[derive(Clone)]
struct Endpoints {
    server: KeptClient,
    hold: Hold,
    rejected: RejectionReport,
}

async fn status_of(endpoints: &Endpoints) -> Result<InstanceStatus, KeptError> {
    endpoints
        .server
        .read(READ_DEADLINE, async |client| read_status(client).await)
        .await
}

async fn healthz(State(endpoints): State<Endpoints>) -> impl IntoResponse {
    let answer = endpoints
        .server
        .read(READ_DEADLINE, async |client| {
            client.simple_query("SELECT 1").await.map(drop)
        })
        .await;
    match answer {
        Ok(()) => (StatusCode::OK, "ok".to_string()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn readyz(State(endpoints): State<Endpoints>) -> impl IntoResponse {
    if let Some(reason) = endpoints.hold.reason() {
        return (StatusCode::SERVICE_UNAVAILABLE, reason);
    }
    match status_of(&endpoints).await {
        Ok(status) if is_ready(&status) => (StatusCode::OK, "ready".to_string()),
        Ok(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "standby not streaming".to_string(),
        ),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn status(
    State(endpoints): State<Endpoints>,
) -> Result<Json<InstanceStatus>, (StatusCode, String)> {
    status_of(&endpoints)
        .await
        .map(|status| {
            Json(InstanceStatus {
                held: endpoints.hold.reason(),
                config_rejected: endpoints.rejected.get(),
                ..status
            })
        })
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
}

/// The :8000 endpoints, reading the server through `server`; `/readyz` fails while
/// `hold` holds a reason; `/status` shows the configuration refusal in `rejected`.
pub fn router(server: KeptClient, hold: Hold, rejected: RejectionReport) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(Endpoints {
            server,
            hold,
            rejected,
        })
}
