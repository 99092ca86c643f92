//! `PostgresBackup` records: each one is checked against its cluster and given a phase.
//! Running the backup itself (a Job with `postgres-operator backup`) belongs to the
//! backup mode; until it exists a valid request stays `Pending` and says why.

use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::{Context, Error, FIELD_MANAGER};
use crate::api::{API_VERSION, BackupPhase, Postgres, PostgresBackup, PostgresBackupStatus};

/// The phase and message a record should show, given its cluster.
pub fn desired_backup_status(
    record: &PostgresBackup,
    cluster: Option<&Postgres>,
) -> PostgresBackupStatus {
    let current = record.status.clone().unwrap_or_default();
    if matches!(
        current.phase,
        Some(BackupPhase::Running | BackupPhase::Completed)
    ) {
        return current;
    }
    let namespace = record.namespace().unwrap_or_default();
    let error = match cluster {
        None => Some(format!(
            "Postgres {:?} not found in namespace {namespace:?}",
            record.spec.postgres
        )),
        Some(cluster) if !cluster.spec.backup.enabled => Some(format!(
            "Postgres {:?} has no backup configuration (spec.backup.enabled is false)",
            record.spec.postgres
        )),
        Some(_) => None,
    };
    match error {
        Some(error) => PostgresBackupStatus {
            phase: Some(BackupPhase::Failed),
            completed_at: current
                .completed_at
                .or_else(|| Some(Timestamp::now().to_string())),
            error: Some(error),
            ..current
        },
        None => PostgresBackupStatus {
            phase: Some(BackupPhase::Pending),
            error: Some(
                "waiting for a backup runner: this operator version does not run backup Jobs yet"
                    .to_string(),
            ),
            ..current
        },
    }
}

/// Reconciles one record: reads its cluster, writes the status when it changed.
pub async fn reconcile(record: Arc<PostgresBackup>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = record.namespace().unwrap_or_default();
    let name = record.name_any();
    let cluster = Api::<Postgres>::namespaced(ctx.client.clone(), &namespace)
        .get_opt(&record.spec.postgres)
        .await
        .map_err(Error::kube("get", "Postgres", &record.spec.postgres))?;
    let mut desired = desired_backup_status(&record, cluster.as_ref());
    let current = record.status.clone().unwrap_or_default();
    // A failure keeps the time it was first recorded.
    if current.phase == desired.phase && current.error == desired.error {
        desired.completed_at = current.completed_at.clone();
    }
    if record.status.as_ref() == Some(&desired) {
        return Ok(Action::requeue(ctx.settings.resync));
    }
    let patch = json!({"apiVersion": API_VERSION, "kind": "PostgresBackup", "status": desired});
    Api::<PostgresBackup>::namespaced(ctx.client.clone(), &namespace)
        .patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(Error::kube("apply status", "PostgresBackup", &name))?;
    ctx.metrics.count_write("apply status", "PostgresBackup");
    if desired.phase == Some(BackupPhase::Failed) {
        let event = kube::runtime::events::Event {
            type_: kube::runtime::events::EventType::Warning,
            reason: "BackupFailed".to_string(),
            note: desired.error.clone(),
            action: "Backup".to_string(),
            secondary: None,
        };
        if let Err(error) = ctx.recorder.publish(&event, &record.object_ref(&())).await {
            tracing::warn!(%error, "cannot record event");
        }
    }
    Ok(Action::requeue(ctx.settings.resync))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PostgresBackupSpec;

    fn record() -> PostgresBackup {
        let mut record = PostgresBackup::new(
            "manual",
            PostgresBackupSpec {
                postgres: "shop".to_string(),
                databases: Vec::new(),
                snapshot_deletion_policy: Default::default(),
            },
        );
        record.metadata.namespace = Some("ns".to_string());
        record
    }

    fn cluster(backup: bool) -> Postgres {
        let spec = if backup {
            "backup:\n  enabled: true\n  s3Bucket: h/b\n"
        } else {
            "{}"
        };
        Postgres::new("shop", serde_yaml::from_str(spec).unwrap())
    }

    #[test]
    fn a_record_for_a_missing_cluster_fails_with_the_reason() {
        let status = desired_backup_status(&record(), None);
        assert_eq!(status.phase, Some(BackupPhase::Failed));
        assert!(
            status
                .error
                .unwrap()
                .contains("\"shop\" not found in namespace \"ns\"")
        );
    }

    #[test]
    fn a_record_for_a_cluster_without_backups_fails() {
        let status = desired_backup_status(&record(), Some(&cluster(false)));
        assert_eq!(status.phase, Some(BackupPhase::Failed));
        assert!(
            status
                .error
                .unwrap()
                .contains("spec.backup.enabled is false")
        );
    }

    #[test]
    fn a_valid_record_waits_pending() {
        let status = desired_backup_status(&record(), Some(&cluster(true)));
        assert_eq!(status.phase, Some(BackupPhase::Pending));
    }

    #[test]
    fn finished_records_are_left_alone() {
        let mut done = record();
        done.status = Some(PostgresBackupStatus {
            phase: Some(BackupPhase::Completed),
            ..Default::default()
        });
        assert_eq!(
            desired_backup_status(&done, None).phase,
            Some(BackupPhase::Completed)
        );
    }
}
