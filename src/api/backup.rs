//! The `PostgresBackup` custom resource: one backup run of a cluster, created by hand
//! (run now) or by each scheduled run.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A request for, and the record of, one backup run.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "apps.cozystack.io",
    version = "v1alpha1",
    kind = "PostgresBackup",
    plural = "postgresbackups",
    singular = "postgresbackup",
    shortname = "pgbackup",
    namespaced,
    status = "PostgresBackupStatus",
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.postgres"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Started","type":"date","jsonPath":".status.startedAt"}"#,
    printcolumn = r#"{"name":"Completed","type":"date","jsonPath":".status.completedAt"}"#,
    printcolumn = r#"{"name":"Size","type":"string","jsonPath":".status.totalSize"}"#,
    printcolumn = r#"{"name":"Snapshots","type":"string","jsonPath":".status.snapshotIds","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("a PostgresBackup spec is immutable; create a new one instead"))]
#[serde(rename_all = "camelCase")]
pub struct PostgresBackupSpec {
    /// Name of the Postgres cluster (same namespace) to back up.
    #[x_kube(validation = Rule::new("self.size() > 0").message("spec.postgres must name a Postgres cluster"))]
    pub postgres: String,
    /// Databases to back up; all user databases when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("maxItems" = 100))]
    pub databases: Vec<String>,
    /// What happens to the restic snapshots when this record is deleted. Only `Retain` is
    /// supported yet: the snapshots stay until retention (`cleanupStrategy`) removes them.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self != 'Delete'").message("snapshotDeletionPolicy Delete is not supported yet: deleting a PostgresBackup keeps its snapshots until retention (spec.backup.cleanupStrategy) removes them"))]
    pub snapshot_deletion_policy: SnapshotDeletionPolicy,
}

/// Whether deleting a `PostgresBackup` deletes its restic snapshots.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum SnapshotDeletionPolicy {
    /// Keep the snapshots (retention still applies).
    #[default]
    Retain,
    /// Forget and prune the snapshots of this run.
    Delete,
}

/// Phase of a backup run.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum BackupPhase {
    #[default]
    Pending,
    Running,
    Completed,
    Failed,
}

/// Observed state of a backup run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresBackupStatus {
    /// Pending, Running, Completed or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<BackupPhase>,
    /// The Job that runs (or ran) this backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_name: Option<String>,
    /// Start time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// End time (RFC 3339), success or failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    /// One restic snapshot per database, plus the globals.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<BackupSnapshot>,
    /// Sum of the snapshot sizes, human readable (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_size: Option<String>,
    /// Comma-separated short snapshot ids (for `kubectl get -o wide`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_ids: Option<String>,
    /// Why the run failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The restic snapshot of one database (or of the globals) in one run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupSnapshot {
    /// Database name, or `globals` for roles and memberships.
    pub database: String,
    /// restic repository, e.g. `s3:s3.example.org/bucket/mydb`.
    pub repository: String,
    /// restic snapshot id.
    pub id: String,
    /// Bytes added to the repository by this snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<i64>,
}
