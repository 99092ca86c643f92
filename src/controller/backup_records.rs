//! `PostgresBackup` records: a record created by hand gets a backup Job (one run of a
//! cluster at a time), and a record whose Job died before the run reported is failed with
//! the reason. The run itself (`postgres-operator backup --record`) writes Running,
//! Completed or Failed; scheduled runs create their own records and need nothing here.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use super::{Context, Error};
use crate::api::{API_VERSION, BackupPhase, Postgres, PostgresBackup, PostgresBackupStatus};
use crate::backup::record;
use crate::manifests::cronjob::{backup_job_name, desired_backup_job};
use crate::manifests::{Cluster, labels};

/// How often an unfinished record is looked at again (its Job may have died).
const WATCH_PERIOD: Duration = Duration::from_secs(30);

/// What to do with a record.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Nothing (finished, scheduled, or running under its Job).
    Nothing,
    /// Fail it with this message.
    Fail(String),
    /// Start its Job now.
    StartJob,
    /// Stay Pending with this message.
    Wait(String),
}

/// The next step for `record`, given its cluster, the other records of that cluster and its
/// Job (when it has one).
pub fn next_step(
    record: &PostgresBackup,
    cluster: Option<&Postgres>,
    others: &[PostgresBackup],
    job: Option<&Job>,
) -> Step {
    let status = record.status.clone().unwrap_or_default();
    if matches!(
        status.phase,
        Some(BackupPhase::Completed | BackupPhase::Failed)
    ) {
        return Step::Nothing;
    }
    let scheduled = record
        .labels()
        .get(labels::BACKUP_ORIGIN)
        .is_some_and(|origin| origin == labels::BACKUP_ORIGIN_SCHEDULE);
    if scheduled {
        return Step::Nothing;
    }
    let namespace = record.namespace().unwrap_or_default();
    let cluster = match cluster {
        None => {
            return Step::Fail(format!(
                "Postgres {:?} not found in namespace {namespace:?}",
                record.spec.postgres
            ));
        }
        Some(cluster) if !cluster.spec.backup.enabled => {
            return Step::Fail(format!(
                "Postgres {:?} has no backup configuration (spec.backup.enabled is false)",
                record.spec.postgres
            ));
        }
        Some(cluster) => cluster,
    };
    if let Some(job_name) = &status.job_name {
        return match job {
            Some(job) if job_failed(job) => Step::Fail(format!(
                "backup Job {job_name:?} failed before the run reported (see `kubectl logs job/{job_name}`)"
            )),
            None if status.phase == Some(BackupPhase::Pending) => Step::StartJob,
            _ => Step::Nothing,
        };
    }
    let busy = others.iter().find(|other| {
        other.name_any() != record.name_any()
            && other.spec.postgres == cluster.name_any()
            && other.status.as_ref().is_some_and(|s| {
                s.phase == Some(BackupPhase::Running)
                    || (s.phase == Some(BackupPhase::Pending) && s.job_name.is_some())
            })
    });
    match busy {
        Some(other) => Step::Wait(format!(
            "waiting for backup {:?} of the same cluster to finish",
            other.name_any()
        )),
        None => Step::StartJob,
    }
}

fn job_failed(job: &Job) -> bool {
    job.status.as_ref().is_some_and(|status| {
        status
            .conditions
            .iter()
            .flatten()
            .any(|condition| condition.type_ == "Failed" && condition.status == "True")
    })
}

fn record_owner(record: &PostgresBackup) -> OwnerReference {
    OwnerReference {
        api_version: API_VERSION.to_string(),
        kind: "PostgresBackup".to_string(),
        name: record.name_any(),
        uid: record.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Reconciles one record.
pub async fn reconcile(record: Arc<PostgresBackup>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = record.namespace().unwrap_or_default();
    let name = record.name_any();
    let current = record.status.clone().unwrap_or_default();
    match current.phase {
        Some(BackupPhase::Completed) => return Ok(Action::await_change()),
        Some(BackupPhase::Failed) => {
            report_failure(&record, &ctx, &current).await;
            return Ok(Action::await_change());
        }
        _ => {}
    }
    let cluster = Api::<Postgres>::namespaced(ctx.client.clone(), &namespace)
        .get_opt(&record.spec.postgres)
        .await
        .map_err(Error::kube("get", "Postgres", &record.spec.postgres))?;
    // The records of the same cluster, from the watch: the only ones that can be busy.
    let others = ctx.records.of(&namespace, &record.spec.postgres);
    let jobs = Api::<Job>::namespaced(ctx.client.clone(), &namespace);
    let job = match &current.job_name {
        Some(job_name) => jobs
            .get_opt(job_name)
            .await
            .map_err(Error::kube("get", "Job", job_name))?,
        None => None,
    };
    let desired = match next_step(&record, cluster.as_ref(), &others, job.as_ref()) {
        Step::Nothing => return Ok(Action::requeue(WATCH_PERIOD)),
        Step::Fail(message) => PostgresBackupStatus {
            phase: Some(BackupPhase::Failed),
            completed_at: Some(Timestamp::now().to_string()),
            error: Some(message),
            ..current.clone()
        },
        Step::Wait(message) => PostgresBackupStatus {
            phase: Some(BackupPhase::Pending),
            error: Some(message),
            ..current.clone()
        },
        Step::StartJob => {
            let Some(postgres) = cluster.as_ref() else {
                return Ok(Action::requeue(WATCH_PERIOD));
            };
            let built = Cluster::new(postgres, &namespace, &ctx.settings.operator);
            let job =
                desired_backup_job(&built, &name, record_owner(&record), &record.spec.databases);
            let job_name = backup_job_name(&name);
            super::apply(&ctx, &jobs, "Job", &job_name, &job).await?;
            PostgresBackupStatus {
                phase: Some(BackupPhase::Pending),
                job_name: Some(job_name),
                error: None,
                ..current.clone()
            }
        }
    };
    if desired == current {
        return Ok(Action::requeue(WATCH_PERIOD));
    }
    let records = Api::<PostgresBackup>::namespaced(ctx.client.clone(), &namespace);
    record::apply_status(&records, &name, &desired)
        .await
        .map_err(Error::kube("apply status", "PostgresBackup", &name))?;
    ctx.metrics.count_write("apply status", "PostgresBackup");
    if desired.phase == Some(BackupPhase::Failed) {
        report_failure(&record, &ctx, &desired).await;
    }
    Ok(Action::requeue(WATCH_PERIOD))
}

/// A Warning event and the failure metric, once per failed record (whoever failed it: the
/// run itself, or this controller when the Job died first).
async fn report_failure(record: &PostgresBackup, ctx: &Context, status: &PostgresBackupStatus) {
    let uid = record
        .meta()
        .uid
        .clone()
        .unwrap_or_else(|| record.name_any());
    let namespace = record.namespace().unwrap_or_default();
    if !ctx
        .metrics
        .count_backup_failure(&uid, &namespace, &record.spec.postgres)
    {
        return;
    }
    let event = kube::runtime::events::Event {
        type_: kube::runtime::events::EventType::Warning,
        reason: "BackupFailed".to_string(),
        note: status.error.clone(),
        action: "Backup".to_string(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &record.object_ref(&())).await {
        tracing::warn!(%error, "cannot record event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PostgresBackupSpec;
    use serde_json::json;

    fn record(name: &str, phase: Option<BackupPhase>, job: Option<&str>) -> PostgresBackup {
        let mut record = PostgresBackup::new(
            name,
            PostgresBackupSpec {
                postgres: "shop".to_string(),
                databases: Vec::new(),
                snapshot_deletion_policy: Default::default(),
            },
        );
        record.metadata.namespace = Some("ns".to_string());
        record.status = Some(PostgresBackupStatus {
            phase,
            job_name: job.map(str::to_string),
            ..Default::default()
        });
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

    fn failed_job() -> Job {
        serde_json::from_value(
            json!({"status": {"failed": 1, "conditions": [{"type": "Failed", "status": "True"}]}}),
        )
        .unwrap()
    }

    #[test]
    fn a_record_for_a_missing_cluster_or_one_without_backups_fails_with_the_reason() {
        let manual = record("manual", None, None);
        assert!(matches!(
            next_step(&manual, None, &[], None),
            Step::Fail(message) if message.contains("\"shop\" not found in namespace \"ns\"")
        ));
        assert!(matches!(
            next_step(&manual, Some(&cluster(false)), &[], None),
            Step::Fail(message) if message.contains("spec.backup.enabled is false")
        ));
    }

    #[test]
    fn a_new_record_starts_its_job_unless_another_run_of_the_cluster_is_active() {
        let manual = record("manual", None, None);
        assert_eq!(
            next_step(&manual, Some(&cluster(true)), &[], None),
            Step::StartJob
        );
        let running = record(
            "earlier",
            Some(BackupPhase::Running),
            Some("earlier-backup"),
        );
        assert!(matches!(
            next_step(&manual, Some(&cluster(true)), &[running], None),
            Step::Wait(message) if message.contains("\"earlier\"")
        ));
        let done = record("older", Some(BackupPhase::Completed), Some("older-backup"));
        assert_eq!(
            next_step(&manual, Some(&cluster(true)), &[done], None),
            Step::StartJob
        );
    }

    #[test]
    fn a_job_that_dies_before_reporting_fails_its_record() {
        let pending = record("manual", Some(BackupPhase::Pending), Some("manual-backup"));
        assert!(matches!(
            next_step(&pending, Some(&cluster(true)), &[], Some(&failed_job())),
            Step::Fail(message) if message.contains("kubectl logs job/manual-backup")
        ));
        let running = record("manual", Some(BackupPhase::Running), Some("manual-backup"));
        assert_eq!(
            next_step(&running, Some(&cluster(true)), &[], None),
            Step::Nothing
        );
        // A Job deleted before it ran is started again.
        assert_eq!(
            next_step(&pending, Some(&cluster(true)), &[], None),
            Step::StartJob
        );
    }

    #[test]
    fn finished_and_scheduled_records_are_left_to_their_runs() {
        let done = record("manual", Some(BackupPhase::Completed), None);
        assert_eq!(next_step(&done, None, &[], None), Step::Nothing);
        let mut scheduled = record(
            "shop-scheduled-20261125-030000",
            Some(BackupPhase::Running),
            None,
        );
        scheduled.metadata.labels = Some(
            [(
                labels::BACKUP_ORIGIN.to_string(),
                labels::BACKUP_ORIGIN_SCHEDULE.to_string(),
            )]
            .into(),
        );
        assert_eq!(
            next_step(&scheduled, Some(&cluster(true)), &[], None),
            Step::Nothing
        );
    }
}
