//! Logical backups with restic to S3, and restores from them.
//!
//! Layout (Cozystack-compatible): one restic repository per database, `s3:<s3Bucket>/<db>`,
//! holding `<db>.dump` (`pg_dump -Ft`), plus `s3:<s3Bucket>/.globals` holding `globals.sql`
//! (`pg_dumpall --globals-only`: roles and memberships) and the run manifests `run.json`.
//! Every snapshot has host = the cluster name and tags `run=<id>` and `cluster=<name>`.

pub mod access;
pub mod location;
pub mod manifest;
pub mod record;
pub mod restic;
pub mod restore;
pub mod run;
pub mod s3;
pub mod stream;
pub mod tls;

/// How the globals appear in a `PostgresBackup` status.
pub const GLOBALS_NAME: &str = "globals";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Location(#[from] location::LocationError),
    #[error(transparent)]
    S3(#[from] s3::S3Error),
    #[error(transparent)]
    Restic(#[from] restic::ResticError),
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    #[error("database {0:?} does not exist in the cluster")]
    NoSuchDatabase(String),
    #[error("dumping {database:?}: {message}")]
    Dump { database: String, message: String },
    #[error("run manifest: {0}")]
    Manifest(String),
}

impl From<tokio_postgres::Error> for BackupError {
    fn from(error: tokio_postgres::Error) -> Self {
        BackupError::Postgres(run::describe_pg(&error))
    }
}
