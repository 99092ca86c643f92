//! The status a cluster reports, computed from what exists: the StatefulSet's counts,
//! the pods' role labels, and the spec's validity. Pure, so every condition is tested.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use kube::ResourceExt;

use crate::api::instance_report::{
    CONFIG_REJECTED_ANNOTATION, ConfigRejected, RESTORING_ANNOTATION, Restoring,
};
use crate::api::{BackupPhase, Postgres, PostgresBackup, PostgresStatus};
use crate::manifests::labels;

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const BACKUP_SUCCEEDED: &str = "BackupSucceeded";
pub const CONFIGURATION_APPLIED: &str = "ConfigurationApplied";
pub const RESTORING: &str = "Restoring";

/// Kubernetes refuses longer condition messages.
const MAX_MESSAGE: usize = 32768;

/// What the reconcile observed.
pub struct Observed<'a> {
    pub statefulset: Option<&'a StatefulSet>,
    pub pods: &'a [Pod],
    /// The validation message when the spec is refused.
    pub invalid: Option<String>,
    /// Backup records of the cluster and the state of its credentials; `None` when the
    /// spec has no backups.
    pub backups: Option<BackupsObserved<'a>>,
    /// Where the rolling update, drain or scale-down stands; `None` when not looked at.
    pub rollout: Option<RolloutObserved>,
}

/// The planned-changes part of the status.
pub struct RolloutObserved {
    /// Pods on the current pod template.
    pub updated: Vec<String>,
    /// The `Progressing` reason and message while a change is under way.
    pub progress: Option<(&'static str, String)>,
}

/// What the backup condition is computed from.
pub struct BackupsObserved<'a> {
    /// `PostgresBackup` records of this cluster.
    pub records: &'a [PostgresBackup],
    /// Set when the credentials Secret does not exist: its name.
    pub missing_credentials: Option<String>,
}

/// `BackupSucceeded` and `lastBackup`: whether the latest finished run succeeded, and when
/// the latest successful one ended.
pub fn backup_condition(
    observed: &BackupsObserved<'_>,
    generation: Option<i64>,
) -> (Condition, Option<String>) {
    let finished = |phase: BackupPhase| {
        observed
            .records
            .iter()
            .filter_map(move |record| {
                let status = record.status.as_ref()?;
                (status.phase == Some(phase)).then_some(())?;
                let at: Timestamp = status.completed_at.as_deref()?.parse().ok()?;
                Some((at, record))
            })
            .max_by_key(|(at, _)| *at)
    };
    let last_ok = finished(BackupPhase::Completed);
    let last_failed = finished(BackupPhase::Failed);
    let last_backup = last_ok.map(|(at, _)| at.to_string());
    let mut condition = match (&observed.missing_credentials, last_ok, last_failed) {
        (Some(secret), _, _) => condition(
            BACKUP_SUCCEEDED,
            false,
            "CredentialsMissing",
            format!(
                "Secret {secret:?} not found: create it with keys s3AccessKey, s3SecretKey and resticPassword"
            ),
            generation,
        ),
        (None, ok, Some((failed_at, failed))) if ok.is_none_or(|(ok_at, _)| failed_at > ok_at) => {
            condition(
                BACKUP_SUCCEEDED,
                false,
                "BackupFailed",
                format!(
                    "backup {} failed: {}",
                    failed.name_any(),
                    failed
                        .status
                        .as_ref()
                        .and_then(|s| s.error.clone())
                        .unwrap_or_default()
                ),
                generation,
            )
        }
        (None, Some((at, ok)), _) => condition(
            BACKUP_SUCCEEDED,
            true,
            "BackupCompleted",
            format!(
                "backup {} completed at {at}{}",
                ok.name_any(),
                ok.status
                    .as_ref()
                    .and_then(|s| s.total_size.as_ref())
                    .map(|size| format!(", {size} added"))
                    .unwrap_or_default()
            ),
            generation,
        ),
        (None, None, _) => condition(
            BACKUP_SUCCEEDED,
            false,
            "NoBackupYet",
            "no backup run has finished yet".to_string(),
            generation,
        ),
    };
    if condition.reason == "NoBackupYet" {
        condition.status = "Unknown".to_string();
    }
    (condition, last_backup)
}

/// `ConfigurationApplied`: False while any instance refuses the spec's configuration (its
/// pod carries the `config-rejected` annotation), naming each pod, the setting and
/// PostgreSQL's message; `ConfigurationReverted` when a pod went back to its last good
/// configuration after a failed start. `Ready` does not follow it: those instances
/// still serve, with the configuration they had.
pub fn configuration_condition(pods: &[Pod], generation: Option<i64>) -> Condition {
    let mut refusals: Vec<(String, ConfigRejected)> = pods
        .iter()
        .filter_map(|pod| {
            let value = pod.annotations().get(CONFIG_REJECTED_ANNOTATION)?;
            // Only the instance manager writes it; a value it cannot have written is not
            // a refusal.
            let report = serde_json::from_str(value).ok()?;
            Some((pod.name_any(), report))
        })
        .collect();
    if refusals.is_empty() {
        return condition(
            CONFIGURATION_APPLIED,
            true,
            "Applied",
            "every instance runs the spec's configuration".to_string(),
            generation,
        );
    }
    // Sorted, so the same refusals always make the same message and no status write.
    refusals.sort_by(|a, b| a.0.cmp(&b.0));
    let reverted = refusals.iter().any(|(_, report)| report.reverted);
    let message = refusals
        .iter()
        .map(|(pod, report)| {
            let setting = if report.setting.is_empty() {
                String::new()
            } else {
                format!(" setting {}:", report.setting)
            };
            let consequence = if report.reverted {
                "failed to start with it and runs its last good configuration"
            } else {
                "keeps its current configuration"
            };
            format!("pod {pod} ({consequence}):{setting} {}", report.message)
        })
        .collect::<Vec<_>>()
        .join("; ");
    condition(
        CONFIGURATION_APPLIED,
        false,
        if reverted {
            "ConfigurationReverted"
        } else {
            "SettingRejected"
        },
        format!("PostgreSQL refuses the configuration: {message}")
            .chars()
            .take(MAX_MESSAGE)
            .collect(),
        generation,
    )
}

/// `Restoring`, for a cluster bootstrapped from a backup or any of whose instances
/// reports a restore: True while an instance restores (with what it says it is doing, or
/// why its last attempt failed), or before any has started; False once the primary
/// serves. `None` for other clusters.
pub fn restore_condition(
    pods: &[Pod],
    from_backup: bool,
    primary_ready: bool,
    generation: Option<i64>,
) -> Option<Condition> {
    let mut reports: Vec<(String, Restoring)> = pods
        .iter()
        .filter_map(|pod| {
            let value = pod.annotations().get(RESTORING_ANNOTATION)?;
            Some((pod.name_any(), serde_json::from_str(value).ok()?))
        })
        .collect();
    reports.sort_by(|a, b| a.0.cmp(&b.0));
    if reports.is_empty() {
        return from_backup.then(|| {
            if primary_ready {
                condition(
                    RESTORING,
                    false,
                    "RestoreComplete",
                    "the data was restored from backup and the primary serves".to_string(),
                    generation,
                )
            } else {
                condition(
                    RESTORING,
                    true,
                    "RestorePending",
                    "waiting for the primary to start restoring from backup".to_string(),
                    generation,
                )
            }
        });
    }
    let retrying = reports.iter().any(|(_, report)| report.retrying);
    let message = reports
        .iter()
        .map(|(pod, report)| format!("pod {pod}: {}", report.message))
        .collect::<Vec<_>>()
        .join("; ");
    Some(condition(
        RESTORING,
        true,
        if retrying {
            "RestoreRetrying"
        } else {
            "RestoreInProgress"
        },
        message.chars().take(MAX_MESSAGE).collect(),
        generation,
    ))
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if ok { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time: Time(Timestamp::UNIX_EPOCH),
    }
}

/// The status the cluster should report. Transition times are carried over from the
/// current status when a condition keeps its value, else set to `now`.
pub fn desired_status(postgres: &Postgres, observed: &Observed, now: Timestamp) -> PostgresStatus {
    let generation = postgres.metadata.generation;
    let current = postgres.status.clone().unwrap_or_default();
    let desired = postgres.spec.replicas;
    let mut status = PostgresStatus {
        observed_generation: generation,
        version: Some(postgres.spec.version().major().to_string()),
        // The HA engine's: carried over, never computed here.
        current_primary: current.current_primary.clone(),
        target_primary: current.target_primary.clone(),
        sync_standbys: current.sync_standbys.clone(),
        sync_quorum: current.sync_quorum,
        instances_status: current.instances_status.clone(),
        last_failover: current.last_failover.clone(),
        last_backup: current.last_backup.clone(),
        updated_instances: current.updated_instances.clone(),
        ..PostgresStatus::default()
    };

    let conditions = if let Some(message) = &observed.invalid {
        vec![
            condition(READY, false, "InvalidSpec", message.clone(), generation),
            condition(
                PROGRESSING,
                false,
                "InvalidSpec",
                "the spec is refused; nothing was applied".to_string(),
                generation,
            ),
            condition(DEGRADED, true, "InvalidSpec", message.clone(), generation),
        ]
    } else {
        let sts_status = observed.statefulset.and_then(|s| s.status.as_ref());
        let instances = sts_status.map(|s| s.replicas).unwrap_or(0);
        let ready = sts_status.and_then(|s| s.ready_replicas).unwrap_or(0);
        let primary = observed.pods.iter().find_map(|pod| {
            let pod_labels = pod.metadata.labels.as_ref()?;
            (pod_labels.get(labels::ROLE).map(String::as_str) == Some(labels::ROLE_PRIMARY))
                .then(|| pod.metadata.name.clone())
                .flatten()
        });
        status.instances = Some(instances);
        status.ready_instances = Some(ready);
        status.ready = Some(format!("{ready}/{desired}"));
        let all_ready = ready >= desired && instances == desired;
        let rolled_out = observed
            .statefulset
            .and_then(|s| s.status.as_ref()?.observed_generation)
            .zip(observed.statefulset.and_then(|s| s.metadata.generation))
            .is_some_and(|(seen, latest)| seen >= latest);
        let ready_condition = match (&primary, all_ready) {
            (Some(primary), true) => condition(
                READY,
                true,
                "ClusterReady",
                format!("{ready}/{desired} instances ready, primary {primary}"),
                generation,
            ),
            (None, _) => condition(
                READY,
                false,
                "NoPrimary",
                format!("{ready}/{desired} instances ready, no primary elected yet"),
                generation,
            ),
            (Some(_), false) => condition(
                READY,
                false,
                "InstancesNotReady",
                format!("{ready}/{desired} instances ready"),
                generation,
            ),
        };
        let progressing = !(all_ready && rolled_out);
        let planned = observed.rollout.as_ref().and_then(|r| r.progress.clone());
        if let Some(rollout) = &observed.rollout {
            status.updated_instances = rollout.updated.clone();
        }
        let progressing_condition = match planned {
            Some((reason, message)) => condition(PROGRESSING, true, reason, message, generation),
            None => condition(
                PROGRESSING,
                progressing,
                if progressing {
                    "Reconciling"
                } else {
                    "Settled"
                },
                if progressing {
                    format!("{instances} of {desired} instances created, {ready} ready")
                } else {
                    "every object matches the spec".to_string()
                },
                generation,
            ),
        };
        vec![
            ready_condition,
            progressing_condition,
            condition(
                DEGRADED,
                primary.is_some() && ready < desired && rolled_out,
                if primary.is_some() && ready < desired && rolled_out {
                    "InstancesUnavailable"
                } else {
                    "AsExpected"
                },
                format!("{ready}/{desired} instances ready"),
                generation,
            ),
        ]
    };
    let mut conditions = conditions;
    // With an invalid spec the pods are not read: the condition stays as it was.
    if observed.invalid.is_none() {
        conditions.push(configuration_condition(observed.pods, generation));
        let primary_ready = conditions
            .iter()
            .any(|c| c.type_ == READY && c.reason != "NoPrimary")
            && status.ready_instances.unwrap_or(0) > 0;
        conditions.extend(restore_condition(
            observed.pods,
            postgres.spec.restore_source().is_some(),
            primary_ready,
            generation,
        ));
    }
    if let Some(backups) = &observed.backups {
        let (backup, last_backup) = backup_condition(backups, generation);
        conditions.push(backup);
        status.last_backup = last_backup.or(status.last_backup);
    }
    status.conditions = conditions
        .into_iter()
        .chain(
            current
                .conditions
                .iter()
                .filter(|c| {
                    let kept_as_is = [CONFIGURATION_APPLIED, RESTORING].contains(&c.type_.as_str())
                        && observed.invalid.is_some();
                    kept_as_is
                        || ![
                            READY,
                            PROGRESSING,
                            DEGRADED,
                            BACKUP_SUCCEEDED,
                            CONFIGURATION_APPLIED,
                            RESTORING,
                        ]
                        .contains(&c.type_.as_str())
                })
                .cloned(),
        )
        .map(|mut c| {
            c.last_transition_time = current
                .conditions
                .iter()
                .find(|old| old.type_ == c.type_ && old.status == c.status)
                .map(|old| old.last_transition_time.clone())
                .unwrap_or(Time(now));
            c
        })
        .collect();
    status
}

/// The message of a condition, for events and tests.
pub fn condition_of<'a>(status: &'a PostgresStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::StatefulSetStatus;
    use std::collections::BTreeMap;

    fn postgres(replicas: i32) -> Postgres {
        let spec = serde_yaml::from_str(&format!("replicas: {replicas}\n")).unwrap();
        let mut pg = Postgres::new("demo", spec);
        pg.metadata.generation = Some(3);
        pg
    }

    fn sts(replicas: i32, ready: i32) -> StatefulSet {
        let mut s = StatefulSet::default();
        s.metadata.generation = Some(1);
        s.status = Some(StatefulSetStatus {
            replicas,
            ready_replicas: Some(ready),
            observed_generation: Some(1),
            ..StatefulSetStatus::default()
        });
        s
    }

    fn pod(name: &str, role: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.to_string());
        p.metadata.labels = Some(BTreeMap::from([(
            labels::ROLE.to_string(),
            role.to_string(),
        )]));
        p
    }

    fn status_of(pg: &Postgres, statefulset: Option<&StatefulSet>, pods: &[Pod]) -> PostgresStatus {
        let observed = Observed {
            statefulset,
            pods,
            invalid: None,
            backups: None,
            rollout: None,
        };
        desired_status(pg, &observed, now())
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    fn backup_record(name: &str, phase: BackupPhase, at: &str) -> PostgresBackup {
        let mut record: PostgresBackup = serde_json::from_value(serde_json::json!({
            "apiVersion": "apps.cozystack.io/v1alpha1", "kind": "PostgresBackup",
            "metadata": {"name": name}, "spec": {"postgres": "demo"}}))
        .unwrap();
        record.status = Some(crate::api::PostgresBackupStatus {
            phase: Some(phase),
            completed_at: Some(at.to_string()),
            total_size: Some("1.0MiB".to_string()),
            error: (phase == BackupPhase::Failed).then(|| "wrong restic password".to_string()),
            ..Default::default()
        });
        record
    }

    fn restoring(mut pod: Pod, message: &str, retrying: bool) -> Pod {
        let report = Restoring {
            message: message.to_string(),
            retrying,
        };
        pod.metadata.annotations = Some(BTreeMap::from([(
            RESTORING_ANNOTATION.to_string(),
            serde_json::to_string(&report).unwrap(),
        )]));
        pod
    }

    fn restored(replicas: i32) -> Postgres {
        let mut pg = postgres(replicas);
        pg.spec = serde_yaml::from_str(&format!(
            "replicas: {replicas}\nbootstrap: {{enabled: true, oldName: old}}\n"
        ))
        .unwrap();
        pg
    }

    #[test]
    fn a_restore_in_progress_shows_what_the_instance_says_until_the_primary_serves() {
        let pg = restored(2);
        let pending = status_of(&pg, Some(&sts(0, 0)), &[]);
        let condition = condition_of(&pending, RESTORING).unwrap();
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            ("True", "RestorePending")
        );
        let busy = restoring(
            pod("postgres-demo-0", "primary"),
            "restoring backup run 2026-11-30T03:00:00Z of cluster \"old\" (1 databases done)",
            false,
        );
        let status = status_of(&pg, Some(&sts(1, 0)), &[busy]);
        let condition = condition_of(&status, RESTORING).unwrap();
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            ("True", "RestoreInProgress")
        );
        assert_eq!(
            condition.message,
            "pod postgres-demo-0: restoring backup run 2026-11-30T03:00:00Z of cluster \"old\" (1 databases done)"
        );
        let failing = restoring(
            pod("postgres-demo-0", "primary"),
            "restore from backup failed, retrying: no backup run of cluster \"old\"",
            true,
        );
        let status = status_of(&pg, Some(&sts(1, 0)), &[failing]);
        let condition = condition_of(&status, RESTORING).unwrap();
        assert_eq!(condition.reason, "RestoreRetrying");
        assert!(
            condition.message.contains("no backup run"),
            "{}",
            condition.message
        );
        let done = status_of(
            &pg,
            Some(&sts(2, 2)),
            &[
                pod("postgres-demo-0", "primary"),
                pod("postgres-demo-1", "replica"),
            ],
        );
        let condition = condition_of(&done, RESTORING).unwrap();
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            ("False", "RestoreComplete")
        );
    }

    #[test]
    fn a_cluster_not_restored_has_no_restoring_condition_and_a_stale_one_goes() {
        let pg = postgres(2);
        let mut with_stale = pg.clone();
        let stale = status_of(&restored(2), Some(&sts(0, 0)), &[]);
        with_stale.status = Some(stale);
        let status = status_of(
            &with_stale,
            Some(&sts(2, 2)),
            &[pod("postgres-demo-0", "primary")],
        );
        assert!(condition_of(&status, RESTORING).is_none());
    }

    #[test]
    fn ready_reads_ready_over_desired_instances() {
        let status = status_of(
            &postgres(3),
            Some(&sts(3, 2)),
            &[pod("postgres-demo-0", "primary")],
        );
        assert_eq!(status.ready.as_deref(), Some("2/3"));
    }

    #[test]
    fn the_backup_condition_follows_the_latest_finished_run() {
        let ok = backup_record("a", BackupPhase::Completed, "2026-11-24T03:00:00Z");
        let failed = backup_record("b", BackupPhase::Failed, "2026-11-25T03:00:00Z");
        let observed = BackupsObserved {
            records: &[ok.clone(), failed.clone()],
            missing_credentials: None,
        };
        let (condition, last) = backup_condition(&observed, Some(1));
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            ("False", "BackupFailed")
        );
        assert!(
            condition
                .message
                .contains("backup b failed: wrong restic password")
        );
        assert_eq!(last.as_deref(), Some("2026-11-24T03:00:00Z"));
        let newer = backup_record("c", BackupPhase::Completed, "2026-11-26T03:00:00Z");
        let observed = BackupsObserved {
            records: &[ok, failed, newer],
            missing_credentials: None,
        };
        let (condition, last) = backup_condition(&observed, Some(1));
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            ("True", "BackupCompleted")
        );
        assert_eq!(last.as_deref(), Some("2026-11-26T03:00:00Z"));
        let (condition, last) = backup_condition(
            &BackupsObserved {
                records: &[],
                missing_credentials: None,
            },
            None,
        );
        assert_eq!((condition.status.as_str(), last), ("Unknown", None));
        let (condition, _) = backup_condition(
            &BackupsObserved {
                records: &[],
                missing_credentials: Some("postgres-demo-backup".into()),
            },
            None,
        );
        assert_eq!(condition.reason, "CredentialsMissing");
        assert!(
            condition
                .message
                .contains("\"postgres-demo-backup\" not found")
        );
    }

    #[test]
    fn a_fully_ready_cluster_with_a_primary_is_ready_and_settled() {
        let pg = postgres(2);
        let s = sts(2, 2);
        let pods = [
            pod("postgres-demo-0", "primary"),
            pod("postgres-demo-1", "replica"),
        ];
        let status = status_of(&pg, Some(&s), &pods);
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(status.ready_instances, Some(2));
        // The HA engine records the primary; the reconcile's status carries it over.
        assert_eq!(status.current_primary, None);
        let mut recorded = pg.clone();
        recorded.status = Some(PostgresStatus {
            current_primary: Some("postgres-demo-0".to_string()),
            ..PostgresStatus::default()
        });
        assert_eq!(
            status_of(&recorded, Some(&s), &pods)
                .current_primary
                .as_deref(),
            Some("postgres-demo-0")
        );
        assert_eq!(condition_of(&status, READY).unwrap().status, "True");
        assert_eq!(condition_of(&status, PROGRESSING).unwrap().status, "False");
        assert_eq!(condition_of(&status, DEGRADED).unwrap().status, "False");
    }

    #[test]
    fn a_new_cluster_is_progressing_without_a_primary() {
        let status = status_of(&postgres(3), None, &[]);
        let ready = condition_of(&status, READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "NoPrimary")
        );
        assert_eq!(condition_of(&status, PROGRESSING).unwrap().status, "True");
    }

    #[test]
    fn a_lost_instance_degrades_a_running_cluster() {
        let pg = postgres(3);
        let s = sts(3, 2);
        let pods = [pod("postgres-demo-0", "primary")];
        let status = status_of(&pg, Some(&s), &pods);
        assert_eq!(condition_of(&status, DEGRADED).unwrap().status, "True");
        assert_eq!(
            condition_of(&status, READY).unwrap().reason,
            "InstancesNotReady"
        );
    }

    #[test]
    fn an_invalid_spec_is_not_ready_with_the_message() {
        let observed = Observed {
            statefulset: None,
            pods: &[],
            invalid: Some("spec.replicas: must be at least 1".to_string()),
            backups: None,
            rollout: None,
        };
        let status = desired_status(&postgres(1), &observed, now());
        let ready = condition_of(&status, READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "InvalidSpec")
        );
        assert!(ready.message.contains("spec.replicas"));
    }

    fn refusing(mut pod: Pod, setting: &str, message: &str, reverted: bool) -> Pod {
        let report = ConfigRejected {
            setting: setting.to_string(),
            message: message.to_string(),
            reverted,
        };
        pod.metadata.annotations = Some(BTreeMap::from([(
            CONFIG_REJECTED_ANNOTATION.to_string(),
            serde_json::to_string(&report).unwrap(),
        )]));
        pod
    }

    fn refusing_primary() -> Pod {
        refusing(
            pod("postgres-demo-0", "primary"),
            "max_connections",
            "bad",
            false,
        )
    }

    #[test]
    fn without_refusals_the_configuration_is_applied() {
        let condition = configuration_condition(&[pod("postgres-demo-0", "primary")], Some(3));
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            ("True", "Applied")
        );
        assert_eq!(condition.observed_generation, Some(3));
    }

    #[test]
    fn a_refused_setting_names_the_pod_the_setting_and_postgresqls_message() {
        let pods = [
            pod("postgres-demo-0", "primary"),
            refusing(
                pod("postgres-demo-1", "replica"),
                "max_connections",
                "invalid value for parameter \"max_connections\": \"lots\"",
                false,
            ),
        ];
        let condition = configuration_condition(&pods, None);
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            ("False", "SettingRejected")
        );
        assert!(
            condition.message.contains("pod postgres-demo-1"),
            "{}",
            condition.message
        );
        assert!(condition.message.contains("setting max_connections:"));
        assert!(
            condition
                .message
                .contains("invalid value for parameter \"max_connections\"")
        );
        assert!(!condition.message.contains("postgres-demo-0"));
    }

    #[test]
    fn a_reverted_start_is_reported_as_such_and_pods_come_in_name_order() {
        let pods = [
            refusing(pod("postgres-demo-1", "replica"), "work_mem", "bad", false),
            refusing(
                pod("postgres-demo-0", "primary"),
                "shared_buffers",
                "the postmaster failed to start with it",
                true,
            ),
        ];
        let condition = configuration_condition(&pods, None);
        assert_eq!(condition.reason, "ConfigurationReverted");
        let first = condition.message.find("postgres-demo-0").unwrap();
        let second = condition.message.find("postgres-demo-1").unwrap();
        assert!(first < second, "{}", condition.message);
        assert!(condition.message.contains("last good configuration"));
        let swapped = [pods[1].clone(), pods[0].clone()];
        assert_eq!(configuration_condition(&swapped, None), condition);
    }

    #[test]
    fn an_unreadable_annotation_is_not_a_refusal() {
        let mut garbage = pod("postgres-demo-0", "primary");
        garbage.metadata.annotations = Some(BTreeMap::from([(
            CONFIG_REJECTED_ANNOTATION.to_string(),
            "not json".to_string(),
        )]));
        assert_eq!(configuration_condition(&[garbage], None).status, "True");
    }

    #[test]
    fn a_refusal_does_not_make_a_serving_cluster_unready() {
        let pg = postgres(1);
        let s = sts(1, 1);
        let pods = [refusing_primary()];
        let status = status_of(&pg, Some(&s), &pods);
        assert_eq!(condition_of(&status, READY).unwrap().status, "True");
        assert_eq!(
            condition_of(&status, CONFIGURATION_APPLIED).unwrap().status,
            "False"
        );
    }

    #[test]
    fn an_invalid_spec_keeps_the_configuration_condition_it_had() {
        let mut pg = postgres(1);
        let s = sts(1, 1);
        let pods = [refusing_primary()];
        pg.status = Some(status_of(&pg, Some(&s), &pods));
        let observed = Observed {
            statefulset: None,
            pods: &[],
            invalid: Some("spec.replicas: must be at least 1".to_string()),
            backups: None,
            rollout: None,
        };
        let status = desired_status(&pg, &observed, now());
        assert_eq!(
            condition_of(&status, CONFIGURATION_APPLIED),
            condition_of(pg.status.as_ref().unwrap(), CONFIGURATION_APPLIED)
        );
    }

    #[test]
    fn transition_times_only_move_when_a_condition_changes() {
        let mut pg = postgres(2);
        let s = sts(2, 2);
        let pods = [pod("postgres-demo-0", "primary")];
        let observed = Observed {
            statefulset: Some(&s),
            pods: &pods,
            invalid: None,
            backups: None,
            rollout: None,
        };
        let first = desired_status(&pg, &observed, now());
        pg.status = Some(first.clone());
        let later = Timestamp::from_second(1_900_000_000).unwrap();
        let second = desired_status(&pg, &observed, later);
        assert_eq!(first, second, "nothing changed, so the status is identical");
        let degraded = sts(2, 1);
        let third = desired_status(
            &pg,
            &Observed {
                statefulset: Some(&degraded),
                pods: &pods,
                invalid: None,
                backups: None,
                rollout: None,
            },
            later,
        );
        assert_eq!(
            condition_of(&third, READY).unwrap().last_transition_time,
            Time(later)
        );
    }
    #[test]
    fn a_rolling_update_shows_as_progressing_with_the_updated_instances() {
        let pg = postgres(3);
        let statefulset = sts(3, 3);
        let pods = [pod("postgres-demo-0", labels::ROLE_PRIMARY)];
        let observed = Observed {
            statefulset: Some(&statefulset),
            pods: &pods,
            invalid: None,
            backups: None,
            rollout: Some(RolloutObserved {
                updated: vec!["postgres-demo-2".to_string()],
                progress: Some((
                    "RollingUpdate",
                    "1/3 instances updated; restarting postgres-demo-1".to_string(),
                )),
            }),
        };
        let status = desired_status(&pg, &observed, now());
        let progressing = condition_of(&status, PROGRESSING).unwrap();
        assert_eq!(progressing.status, "True");
        assert_eq!(progressing.reason, "RollingUpdate");
        assert!(progressing.message.contains("restarting postgres-demo-1"));
        assert_eq!(status.updated_instances, vec!["postgres-demo-2"]);
        assert_eq!(condition_of(&status, READY).unwrap().status, "True");
    }
}
