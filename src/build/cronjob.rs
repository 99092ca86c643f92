//! The backup CronJob: `postgres-operator backup` in the cluster's own PostgreSQL image
//! (so pg_dump matches the server), with the credentials from Secrets.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::pod::{self, CONTROLLER_BINARY};
use super::resources::amounts;
use super::secrets::{BACKUP_ACCESS_KEY, BACKUP_RESTIC_PASSWORD, BACKUP_SECRET_KEY, SUPERUSER};
use super::{Cluster, labels, names};

/// Labels of backup pods: the cluster's, but a different `app.kubernetes.io/name`, so
/// neither the StatefulSet nor the `-r` Service ever selects a backup pod.
pub fn backup_pod_labels(cluster: &Cluster) -> BTreeMap<String, String> {
    let mut pod_labels = cluster.labels(labels::COMPONENT_BACKUP);
    pod_labels.insert(labels::NAME.to_string(), "postgres-backup".to_string());
    pod_labels
}

/// The Secret with the S3 keys and restic password: the user's when referenced.
pub fn backup_credentials_secret(cluster: &Cluster) -> String {
    cluster
        .spec()
        .backup
        .credentials_secret_ref
        .as_ref()
        .map(|reference| reference.name.clone())
        .unwrap_or_else(|| names::secret_backup(&cluster.name))
}

/// CronJob `postgres-<name>-backup`, only when backups are enabled.
pub fn desired_backup_cronjob(cluster: &Cluster) -> Option<CronJob> {
    let backup = &cluster.spec().backup;
    if !backup.enabled {
        return None;
    }
    let credentials = backup_credentials_secret(cluster);
    let mut env = pod::cluster_env(cluster);
    env.retain(|var| var.name != "PGHOST");
    env.extend([
        pod::env("PGHOST", names::service_rw(&cluster.name)),
        pod::env("PGUSER", SUPERUSER),
        pod::env_from_secret(
            "PGPASSWORD",
            &names::secret_superuser(&cluster.name),
            "password",
        ),
        pod::env_from_secret("AWS_ACCESS_KEY_ID", &credentials, BACKUP_ACCESS_KEY),
        pod::env_from_secret("AWS_SECRET_ACCESS_KEY", &credentials, BACKUP_SECRET_KEY),
        pod::env_from_secret("RESTIC_PASSWORD", &credentials, BACKUP_RESTIC_PASSWORD),
        pod::env("AWS_DEFAULT_REGION", backup.s3_region.clone()),
        pod::env(
            "RESTIC_REPOSITORY_BASE",
            format!("s3:{}", backup.s3_bucket.clone().unwrap_or_default()),
        ),
        pod::env("BACKUP_CLEANUP_STRATEGY", backup.cleanup_strategy.clone()),
    ]);
    let container = Container {
        name: "backup".to_string(),
        image: Some(cluster.postgres_image()),
        image_pull_policy: Some("IfNotPresent".to_string()),
        command: Some(vec![
            CONTROLLER_BINARY.to_string(),
            "backup".to_string(),
            "--cluster".to_string(),
            cluster.name.clone(),
        ]),
        env: Some(env),
        resources: Some(ResourceRequirements {
            requests: Some(amounts("100m", "128Mi")),
            limits: Some(amounts("1", "512Mi")),
            ..ResourceRequirements::default()
        }),
        security_context: Some(pod::container_security_context()),
        volume_mounts: Some(pod::runtime_mounts()),
        ..Container::default()
    };
    Some(CronJob {
        metadata: cluster.meta(
            names::backup_cronjob(&cluster.name),
            labels::COMPONENT_BACKUP,
        ),
        spec: Some(CronJobSpec {
            schedule: backup.schedule.clone(),
            // Two dumps of one cluster at once only slow each other down.
            concurrency_policy: Some("Forbid".to_string()),
            // A run missed by more than an hour waits for the next slot.
            starting_deadline_seconds: Some(3600),
            successful_jobs_history_limit: Some(3),
            failed_jobs_history_limit: Some(3),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(backup_pod_labels(cluster)),
                    ..ObjectMeta::default()
                }),
                spec: Some(JobSpec {
                    backoff_limit: Some(2),
                    template: PodTemplateSpec {
                        metadata: Some(ObjectMeta {
                            labels: Some(backup_pod_labels(cluster)),
                            ..ObjectMeta::default()
                        }),
                        spec: Some(PodSpec {
                            restart_policy: Some("Never".to_string()),
                            service_account_name: Some(names::prefix(&cluster.name)),
                            enable_service_links: Some(false),
                            security_context: Some(pod::pod_security_context()),
                            init_containers: Some(vec![pod::copy_binaries_init_container(cluster)]),
                            containers: vec![container],
                            volumes: Some(pod::runtime_volumes()),
                            ..PodSpec::default()
                        }),
                    },
                    ..JobSpec::default()
                }),
            },
            ..CronJobSpec::default()
        }),
        ..CronJob::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::cluster_from_yaml;

    const ENABLED: &str = "backup:\n  enabled: true\n  s3Bucket: s3.example.org/pg\n  schedule: \"0 3 * * *\"\n  s3AccessKey: a\n  s3SecretKey: b\n  resticPassword: c\n";

    fn cron(yaml: &str) -> Option<CronJob> {
        let (pg, settings) = cluster_from_yaml(yaml);
        desired_backup_cronjob(&Cluster::new(&pg, "ns", &settings))
    }

    fn pod_of(job: &CronJob) -> &PodSpec {
        let job_spec = job
            .spec
            .as_ref()
            .unwrap()
            .job_template
            .spec
            .as_ref()
            .unwrap();
        job_spec.template.spec.as_ref().unwrap()
    }

    fn env_of(job: &CronJob) -> BTreeMap<String, k8s_openapi::api::core::v1::EnvVar> {
        pod_of(job).containers[0]
            .env
            .clone()
            .unwrap()
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect()
    }

    #[test]
    fn no_cronjob_unless_backups_are_enabled() {
        assert!(cron("{}").is_none());
        assert!(cron("backup:\n  enabled: false\n  s3Bucket: s3.example.org/pg\n").is_none());
    }

    #[test]
    fn cronjob_runs_on_the_spec_schedule_one_at_a_time() {
        let job = cron(ENABLED).unwrap();
        assert_eq!(job.metadata.name.as_deref(), Some("postgres-demo-backup"));
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.schedule, "0 3 * * *");
        assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
        let pod = pod_of(&job);
        assert_eq!(
            pod.containers[0].command.as_ref().unwrap()[1..],
            ["backup", "--cluster", "demo"]
        );
        assert_eq!(
            pod.containers[0].image.as_deref(),
            Some("docker.io/library/postgres:18")
        );
    }

    #[test]
    fn credentials_come_from_the_backup_secret_or_the_referenced_one() {
        let secret_of = |job: &CronJob, var: &str| {
            env_of(job)[var]
                .value_from
                .clone()
                .unwrap()
                .secret_key_ref
                .unwrap()
                .name
        };
        let job = cron(ENABLED).unwrap();
        assert_eq!(secret_of(&job, "AWS_ACCESS_KEY_ID"), "postgres-demo-backup");
        assert_eq!(secret_of(&job, "PGPASSWORD"), "postgres-demo-superuser");
        assert_eq!(
            env_of(&job)["RESTIC_REPOSITORY_BASE"].value.as_deref(),
            Some("s3:s3.example.org/pg")
        );
        assert_eq!(
            env_of(&job)["PGHOST"].value.as_deref(),
            Some("postgres-demo-rw")
        );
        let job = cron("backup:\n  enabled: true\n  s3Bucket: s3.example.org/pg\n  credentialsSecretRef:\n    name: mine\n").unwrap();
        assert_eq!(secret_of(&job, "RESTIC_PASSWORD"), "mine");
    }

    #[test]
    fn backup_pods_are_never_selected_as_database_instances() {
        let (pg, settings) = cluster_from_yaml(ENABLED);
        let cluster = Cluster::new(&pg, "ns", &settings);
        let pod_labels = backup_pod_labels(&cluster);
        let selected = cluster
            .selector()
            .iter()
            .all(|(k, v)| pod_labels.get(k) == Some(v));
        assert!(!selected, "{pod_labels:?}");
        assert_eq!(pod_labels[labels::CLUSTER], "demo");
    }
}
