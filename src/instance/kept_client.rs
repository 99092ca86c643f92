//! One connection to the server kept between the short reads of the HTTP endpoints
//! (probes, `/status`, `/ha/report`): opening a session for each would start a backend
//! every few seconds and, with `log_connections` on (the audit default), log four lines
//! each time.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_postgres::Client;

use super::provision::{Connection, MAINTENANCE_DB};

#[derive(Debug, thiserror::Error)]
pub enum KeptError {
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    #[error("the server did not answer within {0:?}")]
    Timeout(Duration),
}

/// The kept connection, shared by clones; reads take turns on it.
#[derive(Clone)]
pub struct KeptClient {
    connection: Arc<Connection>,
    kept: Arc<Mutex<Option<Client>>>,
}

impl KeptClient {
    pub fn new(connection: Arc<Connection>) -> Self {
        Self {
            connection,
            kept: Arc::default(),
        }
    }

    /// Runs `read` on the kept connection to the maintenance database (opened when
    /// there is none or it closed) within `deadline`, its turn included (a read stuck
    /// on a stopping server holds the connection meanwhile). A failed or late read
    /// drops the connection, so a broken or stuck one is never reused.
    pub async fn read<T>(
        &self,
        deadline: Duration,
        read: impl AsyncFnOnce(&Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, KeptError> {
        let until = tokio::time::Instant::now() + deadline;
        let Ok(mut kept) = tokio::time::timeout_at(until, self.kept.lock()).await else {
            return Err(KeptError::Timeout(deadline));
        };
        let attempt = tokio::time::timeout_at(until, async {
            let client = match &mut *kept {
                Some(client) if !client.is_closed() => client,
                slot => slot.insert(self.connection.client(MAINTENANCE_DB).await?),
            };
            read(client).await
        })
        .await;
        let failure = match attempt {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) => KeptError::Postgres(error),
            Err(_) => KeptError::Timeout(deadline),
        };
        *kept = None;
        Err(failure)
    }
}
