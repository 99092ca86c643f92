//! The `PostgresBackup` record of a run, written by the runner itself: `Running` when it
//! starts, `Completed` or `Failed` with the snapshots when it ends. A run requested by hand
//! reports into its record; a scheduled run creates one (owned by the Postgres).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use super::run::{Run, RunReport};
use crate::api::FIELD_MANAGER;
use crate::api::{
    API_VERSION, BackupPhase, Postgres, PostgresBackup, PostgresBackupSpec, PostgresBackupStatus,
};
use crate::manifests::labels;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{action} PostgresBackup {name:?}: {source}")]
    Kube {
        action: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("PostgresBackup {name:?} is for cluster {wanted:?}, not {cluster:?}")]
    WrongCluster {
        name: String,
        wanted: String,
        cluster: String,
    },
}

/// Which record a run reports into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A record created by hand (`--record NAME`).
    Existing(String),
    /// A new record for a scheduled run.
    Scheduled,
}

/// An open record.
pub struct Recording {
    api: Api<PostgresBackup>,
    name: String,
    running: PostgresBackupStatus,
}

/// Name of the record of a scheduled run: the cluster and the start time.
pub fn scheduled_record_name(cluster: &str, run: &Run) -> String {
    format!(
        "{cluster}-scheduled-{}",
        run.started_at.strftime("%Y%m%d-%H%M%S")
    )
}

impl Recording {
    /// Finds or creates the record and marks it `Running`.
    pub async fn start(
        client: Client,
        namespace: &str,
        cluster: &str,
        target: Target,
        run: &Run,
    ) -> Result<Recording, RecordError> {
        let api = Api::<PostgresBackup>::namespaced(client.clone(), namespace);
        let kube = |action, name: &str| {
            let name = name.to_string();
            move |source| RecordError::Kube {
                action,
                name,
                source,
            }
        };
        let (name, current) = match target {
            Target::Existing(name) => {
                let record = api.get(&name).await.map_err(kube("get", &name))?;
                if record.spec.postgres != cluster {
                    return Err(RecordError::WrongCluster {
                        name,
                        wanted: record.spec.postgres.clone(),
                        cluster: cluster.to_string(),
                    });
                }
                (name, record.status.unwrap_or_default())
            }
            Target::Scheduled => {
                let name = scheduled_record_name(cluster, run);
                let owner = Api::<Postgres>::namespaced(client, namespace)
                    .get_opt(cluster)
                    .await
                    .map_err(kube("get Postgres for", &name))?
                    .map(|postgres| owner_reference(&postgres));
                let mut record = PostgresBackup::new(
                    &name,
                    PostgresBackupSpec {
                        postgres: cluster.to_string(),
                        databases: Vec::new(),
                        snapshot_deletion_policy: Default::default(),
                    },
                );
                record.metadata = ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(namespace.to_string()),
                    labels: Some(BTreeMap::from([
                        (labels::CLUSTER.to_string(), cluster.to_string()),
                        (
                            labels::BACKUP_ORIGIN.to_string(),
                            labels::BACKUP_ORIGIN_SCHEDULE.to_string(),
                        ),
                        (
                            labels::MANAGED_BY.to_string(),
                            labels::MANAGED_BY_VALUE.to_string(),
                        ),
                    ])),
                    owner_references: owner.map(|owner| vec![owner]),
                    ..ObjectMeta::default()
                };
                match api.create(&PostParams::default(), &record).await {
                    Ok(_) => {}
                    // A retried pod of the same run: report into the same record.
                    Err(kube::Error::Api(status)) if status.code == 409 => {}
                    Err(source) => return Err(kube("create", &name)(source)),
                }
                (name, PostgresBackupStatus::default())
            }
        };
        let running = PostgresBackupStatus {
            phase: Some(BackupPhase::Running),
            job_name: current.job_name.or_else(|| std::env::var("JOB_NAME").ok()),
            started_at: Some(run.started_at.to_string()),
            ..PostgresBackupStatus::default()
        };
        let recording = Recording { api, name, running };
        recording.write(&recording.running).await?;
        Ok(recording)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Writes the outcome.
    pub async fn finish(&self, report: &RunReport) -> Result<(), RecordError> {
        self.write(&final_status(&self.running, report)).await
    }

    async fn write(&self, status: &PostgresBackupStatus) -> Result<(), RecordError> {
        apply_status(&self.api, &self.name, status)
            .await
            .map_err(|source| RecordError::Kube {
                action: "update status of",
                name: self.name.clone(),
                source,
            })
    }
}

/// Applies a record's whole status. The runner and the controller share the one field
/// manager, so each must send every field: fields left out would be removed.
pub async fn apply_status(
    api: &Api<PostgresBackup>,
    name: &str,
    status: &PostgresBackupStatus,
) -> Result<(), kube::Error> {
    let patch = json!({"apiVersion": API_VERSION, "kind": "PostgresBackup", "status": status});
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(drop)
}

fn owner_reference(postgres: &Postgres) -> OwnerReference {
    OwnerReference {
        api_version: API_VERSION.to_string(),
        kind: "Postgres".to_string(),
        name: postgres.name_any(),
        uid: postgres.meta().uid.clone().unwrap_or_default(),
        controller: Some(false),
        block_owner_deletion: Some(false),
    }
}

/// The status a finished run leaves on its record.
pub fn final_status(running: &PostgresBackupStatus, report: &RunReport) -> PostgresBackupStatus {
    let ids: Vec<String> = report
        .snapshots
        .iter()
        .map(|snapshot| snapshot.id.chars().take(8).collect())
        .collect();
    PostgresBackupStatus {
        phase: Some(if report.succeeded() {
            BackupPhase::Completed
        } else {
            BackupPhase::Failed
        }),
        job_name: running.job_name.clone(),
        started_at: Some(report.started_at.to_string()),
        completed_at: Some(report.completed_at.to_string()),
        snapshots: report.snapshots.clone(),
        total_size: (!report.snapshots.is_empty()).then(|| human_size(report.added_bytes())),
        snapshot_ids: (!ids.is_empty()).then(|| ids.join(",")),
        error: report.error.clone(),
    }
}

/// Bytes for `kubectl get`: `512B`, `1.5KiB`, `20.0MiB`, …
pub fn human_size(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}

/// The report as one JSON line, printed by the runner for logs and scripts.
pub fn report_json(report: &RunReport) -> String {
    json!({
        "run": report.run,
        "phase": if report.succeeded() { "Completed" } else { "Failed" },
        "startedAt": report.started_at.to_string(),
        "completedAt": report.completed_at.to_string(),
        "snapshots": report.snapshots,
        "addedBytes": report.added_bytes(),
        "forgotten": report.forgotten,
        "error": report.error,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::BackupSnapshot;
    use k8s_openapi::jiff::Timestamp;

    fn report(error: Option<&str>) -> RunReport {
        let at: Timestamp = "2026-11-25T03:00:00Z".parse().unwrap();
        RunReport {
            run: "20261125T030000Z".into(),
            started_at: at,
            completed_at: at,
            snapshots: vec![BackupSnapshot {
                database: "globals".into(),
                repository: "s3:h/b/.globals".into(),
                id: "0123456789abcdef".into(),
                size_bytes: Some(3 * 1024 * 1024 / 2),
            }],
            forgotten: 0,
            error: error.map(str::to_string),
        }
    }

    #[test]
    fn a_completed_run_lists_short_ids_and_a_readable_size() {
        let status = final_status(&PostgresBackupStatus::default(), &report(None));
        assert_eq!(status.phase, Some(BackupPhase::Completed));
        assert_eq!(status.snapshot_ids.as_deref(), Some("01234567"));
        assert_eq!(status.total_size.as_deref(), Some("1.5MiB"));
        assert_eq!(status.error, None);
    }

    #[test]
    fn a_failed_run_keeps_its_error_and_the_job() {
        let running = PostgresBackupStatus {
            job_name: Some("job-1".into()),
            ..Default::default()
        };
        let status = final_status(&running, &report(Some("wrong restic password")));
        assert_eq!(status.phase, Some(BackupPhase::Failed));
        assert_eq!(status.job_name.as_deref(), Some("job-1"));
        assert_eq!(status.error.as_deref(), Some("wrong restic password"));
    }

    #[test]
    fn sizes_read_like_kubectl_output() {
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(2048), "2.0KiB");
        assert_eq!(human_size(5 * 1024 * 1024 * 1024), "5.0GiB");
    }

    #[test]
    fn scheduled_records_are_named_after_cluster_and_start() {
        let run = Run {
            id: "x".into(),
            started_at: "2026-11-25T03:04:05Z".parse().unwrap(),
        };
        assert_eq!(
            scheduled_record_name("shop", &run),
            "shop-scheduled-20261125-030405"
        );
    }
}
