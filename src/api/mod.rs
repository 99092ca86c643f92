//! Custom resource types: the `Postgres` cluster and the `PostgresBackup` record.

pub mod backup;
pub mod instance_report;
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
/// The one field manager of every server-side apply the operator makes (controller,
/// backup runner and instance manager alike), so they never fight over fields; only the
/// instance's report on its own Pod has its own (`instance_report::INSTANCE_FIELD_MANAGER`).
pub const FIELD_MANAGER: &str = "postgres-operator";

/// `apiVersion` string as written in manifests.
pub const API_VERSION: &str = "apps.cozystack.io/v1alpha1";
