//! Custom resource types: the `Postgres` cluster and the `PostgresBackup` record.

pub mod backup;
pub mod postgres;
pub mod presets;

pub use backup::{
    BackupPhase, BackupSnapshot, PostgresBackup, PostgresBackupSpec, PostgresBackupStatus,
    SnapshotDeletionPolicy,
};
pub use postgres::*;

/// API group of every resource this operator serves.
pub const GROUP: &str = "apps.cozystack.io";
/// API version of every resource this operator serves.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` string as written in manifests.
pub const API_VERSION: &str = "apps.cozystack.io/v1alpha1";
