//! The HA engine's side door into an instance, on the status port:
//! - `GET /ha/report`: what the server is now ([`InstanceReport`]), always answered
//!   while the manager runs (`running: false` when PostgreSQL does not answer);
//! - `GET /ha/watch`: the same report as one JSON line every [`HEARTBEAT`], for as long
//!   as the reader stays. The engine keeps one open to the primary: its break (the
//!   manager or its pod gone) or a silence (a hung node) is how a lost primary is seen
//!   within about a second, with no polling and no API writes;
//! - `POST /ha/instruct`: an [`Instruction`] (fence, promote, follow), carried out by the
//!   manager's main loop, answered once done; only with the cluster's instruct token
//!   (`ha::token`), `401` otherwise.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Client;

use super::isolation::Contact;
use super::kept_client::KeptClient;
use super::provision::Connection;
use crate::ha::wire::{InstanceReport, Instruction, parse_sync_standby_names};
use crate::ha::{Report, Role};

/// How often `/ha/watch` writes a line.
pub const HEARTBEAT: Duration = Duration::from_millis(200);

/// A report's query gets this long: a server that takes longer is reported as not
/// running (hung, or starved), which the engine treats as a restart in progress, with
/// its longer grace. Shorter than the engine's deadline for the whole report
/// (`ha::engine::Timing::report_deadline`), so that a live manager of a stalled server
/// is heard, rather than taken for a lost node.
pub const QUERY_DEADLINE: Duration = Duration::from_millis(400);

/// How long an instruction may take (a promotion, a rewind).
const INSTRUCTION_DEADLINE: Duration = Duration::from_secs(120);

/// What the manager's main loop is, as the HA endpoints report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HaView {
    pub role: Role,
    /// A standby: the pod it follows.
    pub following: Option<String>,
    pub fenced: bool,
    /// Handed over in a switchover: its final checkpoint.
    pub stopped_at_lsn: Option<u64>,
    /// A primary that would rather hand over than restart for its settings.
    pub restart_wanted: bool,
    /// When the manager last changed the configuration files (ms since the epoch):
    /// a server that loaded them earlier has not taken the change yet.
    pub config_written_at: Option<i64>,
    /// A digest of the postgresql.conf installed last.
    pub config_digest: Option<String>,
}

/// An instruction with the channel its outcome goes back on.
/// An instruction, when it was received, and where its outcome goes.
impl HaView {
    /// Whether the manager wrote the files after the server last loaded them
    /// (`loaded_ms`, ms since the epoch): the server does not run them yet.
    pub fn files_unread(&self, loaded_ms: i64) -> bool {
        self.config_written_at
            .is_some_and(|written| written > loaded_ms)
    }
}

pub type Request = (
    Instruction,
    std::time::Instant,
    oneshot::Sender<Result<(), String>>,
);

#[derive(Clone)]
pub struct HaEndpoints {
    pub pod: String,
    pub connection: Arc<Connection>,
    /// The connection kept for single reports, shared with the status endpoints.
    pub server: KeptClient,
    pub view: Arc<RwLock<HaView>>,
    pub instructions: mpsc::Sender<Request>,
    /// Counts the open heartbeat streams (see `isolation`).
    pub contact: Arc<Contact>,
    /// The superuser password in force: an instruction must carry its token.
    pub superuser_password: tokio::sync::watch::Receiver<Option<String>>,
}

impl HaEndpoints {
    fn view(&self) -> HaView {
        self.view
            .read()
            .map(|view| view.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// The report, read through `server` (the shared kept connection, or a stream's own).
    async fn report(&self, server: &KeptClient) -> InstanceReport {
        let view = self.view();
        let server = server
            .read(QUERY_DEADLINE, async |client| read_report(client).await)
            .await
            .ok();
        compose(&self.pod, &view, server)
    }
}

/// What the server answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerState {
    pub in_recovery: bool,
    pub timeline: u32,
    pub received_lsn: Option<u64>,
    pub replayed_lsn: Option<u64>,
    pub streaming: bool,
    pub sync_standby_names: String,
    /// Primary: the standbys streaming from it (not a clone's WAL stream, which
    /// replays nothing).
    pub streaming_standbys: Vec<String>,
    /// Settings wait for a restart.
    pub pending_restart: bool,
    /// `pg_conf_load_time()`, ms since the epoch.
    pub config_loaded_at: i64,
}

const REPORT_SQL: &str = "SELECT pg_is_in_recovery(), \
     CASE WHEN pg_is_in_recovery() \
       THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver WHERE received_tli > 0), \
                     (SELECT timeline_id FROM pg_control_checkpoint()))::bigint \
       ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint END, \
     CASE WHEN pg_is_in_recovery() THEN pg_wal_lsn_diff(pg_last_wal_receive_lsn(), '0/0')::bigint \
       ELSE pg_wal_lsn_diff(pg_current_wal_flush_lsn(), '0/0')::bigint END, \
     CASE WHEN pg_is_in_recovery() THEN pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint END, \
     coalesce((SELECT status = 'streaming' FROM pg_stat_wal_receiver), false), \
     current_setting('synchronous_standby_names'), \
     ARRAY(SELECT application_name::text FROM pg_stat_replication \
           WHERE state = 'streaming' AND replay_lsn IS NOT NULL ORDER BY 1), \
     EXISTS (SELECT 1 FROM pg_settings WHERE pending_restart), \
     (extract(epoch FROM pg_conf_load_time()) * 1000)::bigint";

pub async fn read_report(client: &Client) -> Result<ServerState, tokio_postgres::Error> {
    let row = client.query_one(REPORT_SQL, &[]).await?;
    let lsn = |index: usize| -> Option<u64> {
        row.get::<_, Option<i64>>(index)
            .and_then(|v| u64::try_from(v).ok())
    };
    Ok(ServerState {
        in_recovery: row.get(0),
        timeline: u32::try_from(row.get::<_, i64>(1)).unwrap_or_default(),
        received_lsn: lsn(2),
        replayed_lsn: lsn(3),
        streaming: row.get(4),
        sync_standby_names: row.get(5),
        streaming_standbys: row.get(6),
        pending_restart: row.get(7),
        config_loaded_at: row.get(8),
    })
}

/// The report from the manager's view and what the server said (`None`: it did not).
pub fn compose(pod: &str, view: &HaView, server: Option<ServerState>) -> InstanceReport {
    let Some(server) = server else {
        return InstanceReport {
            pod: pod.to_string(),
            report: Report {
                role: view.role,
                running: false,
                timeline: 0,
                received_lsn: None,
                replayed_lsn: None,
                streaming_from: None,
            },
            sync_quorum: 0,
            sync_standbys: Vec::new(),
            fenced: view.fenced,
            stopped_at_lsn: view.stopped_at_lsn,
            streaming_standbys: Vec::new(),
            restart_wanted: false,
            pending_restart: false,
            config_digest: view.config_digest.clone(),
        };
    };
    let role = if server.in_recovery {
        Role::Standby
    } else {
        Role::Primary
    };
    let (sync_quorum, sync_standbys) = if role == Role::Primary {
        parse_sync_standby_names(&server.sync_standby_names)
    } else {
        (0, Vec::new())
    };
    InstanceReport {
        pod: pod.to_string(),
        report: Report {
            role,
            running: true,
            timeline: server.timeline,
            received_lsn: server.received_lsn,
            replayed_lsn: server.replayed_lsn,
            streaming_from: server.streaming.then(|| view.following.clone()).flatten(),
        },
        sync_quorum,
        sync_standbys,
        fenced: view.fenced,
        stopped_at_lsn: None,
        streaming_standbys: if role == Role::Primary {
            server.streaming_standbys
        } else {
            Vec::new()
        },
        restart_wanted: role == Role::Primary && view.restart_wanted,
        config_digest: view.config_digest.clone(),
        // Files written but not loaded yet wait as much as settings loaded but not
        // applied: either way the server does not run what the spec says.
        pending_restart: server.pending_restart || view.files_unread(server.config_loaded_at),
    }
}

async fn report(State(endpoints): State<HaEndpoints>) -> Json<InstanceReport> {
    Json(endpoints.report(&endpoints.server).await)
}

/// One JSON line per heartbeat through one kept connection, until the reader leaves.
async fn watch(State(endpoints): State<HaEndpoints>) -> Response {
    let guard = endpoints.contact.watch_opened();
    let lines = futures::stream::unfold(
        (
            KeptClient::new(endpoints.connection.clone()),
            endpoints,
            true,
            guard,
        ),
        |(client, endpoints, first, guard)| async move {
            if !first {
                tokio::time::sleep(HEARTBEAT).await;
            }
            let report = endpoints.report(&client).await;
            let mut line = serde_json::to_vec(&report).unwrap_or_default();
            line.push(b'\n');
            Some((
                Ok::<_, std::convert::Infallible>(bytes::Bytes::from(line)),
                (client, endpoints, false, guard),
            ))
        },
    );
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(lines))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn instruct(
    State(endpoints): State<HaEndpoints>,
    headers: axum::http::HeaderMap,
    Json(instruction): Json<Instruction>,
) -> Response {
    let presented = headers
        .get(crate::ha::token::HEADER)
        .and_then(|value| value.to_str().ok());
    let admitted =
        crate::ha::token::admits(presented, endpoints.superuser_password.borrow().as_deref());
    if !admitted {
        tracing::warn!(?instruction, "HA instruction refused: no valid token");
        return (
            StatusCode::UNAUTHORIZED,
            "an HA instruction must carry the cluster's instruct token",
        )
            .into_response();
    }
    let (reply, outcome) = oneshot::channel();
    tracing::info!(?instruction, "HA instruction received");
    if endpoints
        .instructions
        .send((instruction, std::time::Instant::now(), reply))
        .await
        .is_err()
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the instance manager is stopping",
        )
            .into_response();
    }
    match tokio::time::timeout(INSTRUCTION_DEADLINE, outcome).await {
        Ok(Ok(Ok(()))) => Json(endpoints.report(&endpoints.server).await).into_response(),
        Ok(Ok(Err(message))) => (StatusCode::CONFLICT, message).into_response(),
        Ok(Err(_)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the instance manager stopped before answering",
        )
            .into_response(),
        Err(_) => (
            StatusCode::GATEWAY_TIMEOUT,
            "the instruction is still being carried out",
        )
            .into_response(),
    }
}

pub fn router(endpoints: HaEndpoints) -> Router {
    Router::new()
        .route("/ha/report", get(report))
        .route("/ha/watch", get(watch))
        .route("/ha/instruct", post(instruct))
        .with_state(endpoints)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(role: Role, following: Option<&str>) -> HaView {
        HaView {
            role,
            following: following.map(str::to_string),
            fenced: false,
            stopped_at_lsn: None,
            restart_wanted: false,
            config_written_at: None,
            config_digest: None,
        }
    }

    #[test]
    fn a_silent_server_is_reported_not_running_in_the_managers_role() {
        let report = compose("p-1", &view(Role::Primary, None), None);
        assert_eq!(report.report.role, Role::Primary);
        assert!(!report.report.running);
        assert_eq!(report.report.received_lsn, None);
    }

    #[test]
    fn a_primary_reports_its_quorum_and_a_standby_whom_it_streams_from() {
        let server = ServerState {
            in_recovery: false,
            timeline: 3,
            received_lsn: Some(10),
            replayed_lsn: None,
            streaming: false,
            sync_standby_names: "ANY 1 (\"p-1\", \"p-2\")".to_string(),
            streaming_standbys: vec!["p-1".to_string()],
            pending_restart: false,
            config_loaded_at: 100_000,
        };
        let primary = compose("p-0", &view(Role::Primary, None), Some(server.clone()));
        assert_eq!((primary.sync_quorum, primary.sync_standbys.len()), (1, 2));
        assert_eq!(primary.streaming_standbys, ["p-1"]);
        let standby = compose(
            "p-1",
            &view(Role::Standby, Some("p-0")),
            Some(ServerState {
                in_recovery: true,
                streaming: true,
                ..server.clone()
            }),
        );
        assert_eq!(standby.report.role, Role::Standby);
        assert_eq!(standby.report.streaming_from.as_deref(), Some("p-0"));
        assert_eq!(standby.sync_quorum, 0);
        let cut_off = compose(
            "p-1",
            &view(Role::Standby, Some("p-0")),
            Some(ServerState {
                in_recovery: true,
                ..server.clone()
            }),
        );
        assert_eq!(cut_off.report.streaming_from, None);
        // Files written after the server last loaded them: not running the spec yet.
        let mut written = view(Role::Standby, Some("p-0"));
        written.config_written_at = Some(100_001);
        let state = ServerState {
            in_recovery: true,
            streaming: true,
            ..server
        };
        assert!(compose("p-1", &written, Some(state.clone())).pending_restart);
        written.config_written_at = Some(99_999);
        assert!(!compose("p-1", &written, Some(state)).pending_restart);
    }
}
