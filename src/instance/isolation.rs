//! A primary cut off from everything stops accepting writes on its own: it cannot know
//! whether the HA engine has promoted a standby meanwhile, and in asynchronous mode
//! whatever it acknowledged from then on would be thrown away by that failover. Contact
//! is either of:
//! - the HA engine's heartbeat stream (`/ha/watch`) is open: the status port's sockets
//!   carry `TCP_USER_TIMEOUT` ([`USER_TIMEOUT`]), so a stream whose heartbeats go
//!   unacknowledged (the engine's side unreachable) is cut by the kernel within seconds
//!   rather than minutes;
//! - a standby replied over replication within [`ISOLATION`] (standbys reply at least
//!   every `wal_receiver_status_interval`, which the operator sets to 1 s).
//!
//! With neither for [`ISOLATION`], the manager holds its server down (see
//! `manager::instructions`) until the engine tells it what to do. A single instance has
//! nobody to be cut off from, and is never fenced this way.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::ha_api::HaView;
use super::kept_client::KeptClient;
use super::provision::Connection;
use crate::ha::Role;

/// How long a primary may go without contact before it stops.
pub const ISOLATION: Duration = Duration::from_secs(2);

/// How long sent data may stay unacknowledged on a status-port socket.
pub const USER_TIMEOUT: Duration = Duration::from_millis(1500);

/// How often contact is checked.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// The standbys' latest reply, if recent. Only a standby's WAL receiver counts: it
/// reports a replay position. A clone's WAL stream (`pg_basebackup -X stream`, which
/// reports none) replies only every 10 s and ends with the clone: counted, it armed a
/// new primary that then stopped itself while its first standby was still cloning or
/// starting (seen under load in tests/isolation.rs).
const STANDBY_CONTACT_SQL: &str = "SELECT coalesce(max(reply_time) > now() - make_interval(secs => $1), false) \
     FROM pg_stat_replication WHERE replay_lsn IS NOT NULL";

/// The engine's open heartbeat streams.
#[derive(Debug, Default)]
pub struct Contact {
    watchers: AtomicUsize,
    last_watch: Mutex<Option<Instant>>,
}

/// Held by an open `/ha/watch` stream.
pub struct WatchGuard(Arc<Contact>);

impl Contact {
    pub fn watch_opened(self: &Arc<Self>) -> WatchGuard {
        self.watchers.fetch_add(1, Ordering::SeqCst);
        WatchGuard(self.clone())
    }

    /// Whether a stream is open now, or was within `within`.
    pub(crate) fn engine_within(&self, within: Duration) -> bool {
        if self.watchers.load(Ordering::SeqCst) > 0 {
            return true;
        }
        self.last_watch
            .lock()
            .ok()
            .and_then(|last| *last)
            .is_some_and(|last| last.elapsed() < within)
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::SeqCst);
        if let Ok(mut last) = self.0.last_watch.lock() {
            *last = Some(Instant::now());
        }
    }
}

/// Sets `TCP_USER_TIMEOUT` on an accepted status-port socket.
pub fn limit_unacknowledged(stream: &mut tokio::net::TcpStream) {
    let millis = u32::try_from(USER_TIMEOUT.as_millis()).unwrap_or(u32::MAX);
    if let Err(error) = rustix::net::sockopt::set_tcp_user_timeout(&*stream, millis) {
        tracing::debug!(%error, "cannot set TCP_USER_TIMEOUT");
    }
}

/// Watches for isolation while this instance is a running primary of a cluster of
/// more than one instance (`replicas`); sends on `isolated` when it is cut off.
pub async fn run(
    contact: Arc<Contact>,
    connection: Connection,
    view: Arc<std::sync::RwLock<HaView>>,
    replicas: watch::Receiver<i32>,
    isolated: mpsc::Sender<()>,
) {
    let mut last_contact = Instant::now();
    // Only contact that was there can be lost: a new primary waits for its first
    // standby or engine (a new cluster's standbys are still cloning).
    let mut armed = false;
    let server = KeptClient::new(Arc::new(connection));
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let primary = view
            .read()
            .map(|v| v.role == Role::Primary && !v.fenced)
            .unwrap_or(false);
        if !primary || *replicas.borrow() <= 1 {
            armed = false;
            last_contact = Instant::now();
            continue;
        }
        if contact.engine_within(CHECK_EVERY) {
            armed = true;
            last_contact = Instant::now();
            continue;
        }
        let standbys = server
            .read(Duration::from_secs(1), async |client| {
                Ok(client
                    .query_one(STANDBY_CONTACT_SQL, &[&ISOLATION.as_secs_f64()])
                    .await?
                    .get::<_, bool>(0))
            })
            .await;
        match standbys {
            Ok(true) => {
                armed = true;
                last_contact = Instant::now();
            }
            Ok(false) => {}
            // A server that does not answer acknowledges nothing either (the kept
            // connection is dropped: the next check opens another).
            Err(_) => {
                last_contact = Instant::now();
            }
        }
        if armed && last_contact.elapsed() >= ISOLATION {
            tracing::error!(
                seconds = ISOLATION.as_secs(),
                "no contact with the HA engine nor any standby: this primary stops accepting writes"
            );
            if isolated.send(()).await.is_err() {
                return;
            }
            last_contact = Instant::now();
        }
    }
}
