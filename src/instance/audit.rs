//! The instance manager's audit trail of the changes it makes to a server (roles,
//! memberships, privileges, databases, extensions), and the one way it runs a statement
//! that carries a password: with the server's statement logging off for that statement
//! only, so that neither `log_statement` (`ddl` by default, or `all`), a slow-statement
//! log nor an error's `STATEMENT:` line ever holds it.

use tokio_postgres::Client;

use crate::sql::redact::{carries_password, redact_password};

/// The `tracing` target of audit records, for routing them apart.
pub const TARGET: &str = "audit";

/// Session settings that keep the next statement out of PostgreSQL's log. A superuser
/// may set them (the manager connects as one); `pgaudit.log` is a placeholder when the
/// library is not loaded, so setting it is harmless then.
const SILENCE: &str = "SET log_statement = 'none'; SET log_min_error_statement = 'panic'; \
     SET log_min_duration_statement = -1; SET log_min_duration_sample = -1; \
     SET pgaudit.log = 'none'";

const RESTORE: &str = "RESET log_statement; RESET log_min_error_statement; \
     RESET log_min_duration_statement; RESET log_min_duration_sample; RESET pgaudit.log";

/// Runs `sql` (one statement or a transaction block); when it carries a password, with
/// PostgreSQL's statement logging off around it. The caller records it with [`record`].
pub async fn execute(client: &Client, sql: &str) -> Result<(), tokio_postgres::Error> {
    if !carries_password(sql) {
        return client.batch_execute(sql).await;
    }
    // Sent apart: the server decides whether to log a query string before running
    // any SET inside it.
    client.batch_execute(SILENCE).await?;
    let result = client.batch_execute(sql).await;
    if result.is_err() {
        // A failed transaction block must end before the settings can be reset.
        let _ = client.batch_execute("ROLLBACK").await;
    }
    client.batch_execute(RESTORE).await?;
    result
}

/// Records a change the manager made: which database, what (passwords cut), and that
/// the operator made it as the superuser on the spec's behalf.
pub fn record(database: &str, sql: &str, source: &str) {
    tracing::info!(
        target: TARGET,
        actor = "postgres-operator",
        role = crate::manifests::secrets::SUPERUSER,
        database,
        source,
        statement = %redact_password(sql),
        "change applied"
    );
}
