//! The backup CronJob: `postgres-operator backup` in the cluster's own PostgreSQL image
//! (so pg_dump matches the server), with the credentials from Secrets.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, KeyToPath, PodSpec, PodTemplateSpec, ResourceRequirements,
    SecretVolumeSource, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::pod::{self, CONTROLLER_BINARY};
use super::resources::amounts;
use super::secrets::{BACKUP_ACCESS_KEY, BACKUP_RESTIC_PASSWORD, BACKUP_SECRET_KEY, SUPERUSER};
use super::{Cluster, labels, names, tls};
use crate::backup::access::{
    ENV_ACCESS_KEY, ENV_REGION, ENV_REPOSITORY_BASE, ENV_RESTIC_BINARY, ENV_RESTIC_PASSWORD,
    ENV_S3_CA_FILE, ENV_SECRET_KEY,
};

/// The volume of the S3 endpoint's CA bundle (`backup.s3CASecretRef`), its mount point, and
/// the file it holds whatever the Secret key is called.
const S3_CA_VOLUME: &str = "s3-ca";
const S3_CA_DIR: &str = "/etc/s3-ca";
const S3_CA_FILE: &str = "ca.crt";
/// The cluster's CA (only `ca.crt` of the server certificate Secret; never the CA's
/// key), which the backup verifies the primary against.
const CLUSTER_CA_VOLUME: &str = "cluster-ca";
const CLUSTER_CA_DIR: &str = "/etc/postgres-ca";

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

/// What opens the backups (see `backup::access`): the credentials Secret's keys, the region,
/// the repository base, the restic copied in by the init container and, with a private CA,
/// the file of [`backup_access_mounts`]. The kubelet holds the container back until the
/// Secret exists.
pub fn backup_access_env(cluster: &Cluster) -> Vec<EnvVar> {
    let backup = &cluster.spec().backup;
    let credentials = backup_credentials_secret(cluster);
    let mut env = vec![
        pod::env_from_secret(ENV_ACCESS_KEY, &credentials, BACKUP_ACCESS_KEY),
        pod::env_from_secret(ENV_SECRET_KEY, &credentials, BACKUP_SECRET_KEY),
        pod::env_from_secret(ENV_RESTIC_PASSWORD, &credentials, BACKUP_RESTIC_PASSWORD),
        pod::env(ENV_REGION, backup.s3_region.clone()),
        pod::env(
            ENV_REPOSITORY_BASE,
            format!("s3:{}", backup.s3_bucket.clone().unwrap_or_default()),
        ),
        pod::env(ENV_RESTIC_BINARY, format!("{}/restic", pod::CONTROLLER_DIR)),
    ];
    if backup.s3_ca_secret_ref.is_some() {
        env.push(pod::env(
            ENV_S3_CA_FILE,
            format!("{S3_CA_DIR}/{S3_CA_FILE}"),
        ));
    }
    env
}

/// The volumes [`backup_access_env`] needs: the S3 endpoint's CA bundle when the spec names
/// one, its single key mounted under a fixed file name. The kubelet holds the pod back
/// until that Secret exists.
pub fn backup_access_volumes(cluster: &Cluster) -> Vec<Volume> {
    let Some(reference) = &cluster.spec().backup.s3_ca_secret_ref else {
        return Vec::new();
    };
    vec![Volume {
        name: S3_CA_VOLUME.to_string(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(reference.name.clone()),
            items: Some(vec![KeyToPath {
                key: reference.key.clone(),
                path: S3_CA_FILE.to_string(),
                ..KeyToPath::default()
            }]),
            optional: Some(false),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }]
}

/// Mounts matching [`backup_access_volumes`], read-only.
pub fn backup_access_mounts(cluster: &Cluster) -> Vec<VolumeMount> {
    backup_access_volumes(cluster)
        .into_iter()
        .map(|volume| VolumeMount {
            read_only: Some(true),
            ..pod::mount(&volume.name, S3_CA_DIR)
        })
        .collect()
}

/// `ca.crt` of the cluster's server certificate Secret.
fn cluster_ca_volume(cluster: &Cluster) -> Volume {
    Volume {
        name: CLUSTER_CA_VOLUME.to_string(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(names::secret_server(&cluster.name)),
            items: Some(vec![KeyToPath {
                key: tls::CA_CERT.to_string(),
                path: tls::CA_CERT.to_string(),
                ..KeyToPath::default()
            }]),
            optional: Some(false),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// The pod of a backup run: `postgres-operator backup` in the cluster's own PostgreSQL image
/// (so pg_dump matches the server), with `args` after `backup --cluster <name>`.
fn backup_pod_template(cluster: &Cluster, args: &[String]) -> PodTemplateSpec {
    let backup = &cluster.spec().backup;
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
    ]);
    env.extend(backup_access_env(cluster));
    env.extend([
        // The primary is another pod: TLS, verified for the -rw Service's name.
        pod::env("PGSSLMODE", "verify-full"),
        pod::env(
            "PGSSLROOTCERT",
            format!("{CLUSTER_CA_DIR}/{}", tls::CA_CERT),
        ),
        pod::env("BACKUP_CLEANUP_STRATEGY", backup.cleanup_strategy.clone()),
        pod::env_from_field(
            "JOB_NAME",
            "metadata.labels['batch.kubernetes.io/job-name']",
        ),
        pod::env("LOG_FORMAT", "json"),
    ]);
    let mut command = vec![
        CONTROLLER_BINARY.to_string(),
        "backup".to_string(),
        "--cluster".to_string(),
        cluster.name.clone(),
    ];
    command.extend(args.iter().cloned());
    let container = Container {
        name: "backup".to_string(),
        image: Some(cluster.postgres_image()),
        image_pull_policy: Some("IfNotPresent".to_string()),
        command: Some(command),
        env: Some(env),
        resources: Some(ResourceRequirements {
            requests: Some(amounts("100m", "128Mi")),
            limits: Some(amounts("1", "512Mi")),
            ..ResourceRequirements::default()
        }),
        security_context: Some(pod::container_security_context()),
        volume_mounts: Some(
            [
                pod::runtime_mounts(),
                backup_access_mounts(cluster),
                vec![VolumeMount {
                    read_only: Some(true),
                    ..pod::mount(CLUSTER_CA_VOLUME, CLUSTER_CA_DIR)
                }],
            ]
            .concat(),
        ),
        ..Container::default()
    };
    PodTemplateSpec {
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
            volumes: Some(
                [
                    pod::runtime_volumes(),
                    backup_access_volumes(cluster),
                    vec![cluster_ca_volume(cluster)],
                ]
                .concat(),
            ),
            ..PodSpec::default()
        }),
    }
}

/// CronJob `postgres-<name>-backup`, only when backups are enabled. Each run records itself
/// as a new `PostgresBackup` (`--scheduled`).
pub fn desired_backup_cronjob(cluster: &Cluster) -> Option<CronJob> {
    let backup = &cluster.spec().backup;
    if !backup.enabled {
        return None;
    }
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
                    template: backup_pod_template(cluster, &["--scheduled".to_string()]),
                    ..JobSpec::default()
                }),
            },
            ..CronJobSpec::default()
        }),
        ..CronJob::default()
    })
}

/// Name of the Job of a `PostgresBackup` requested by hand: the record's name with
/// `-backup`, shortened with a hash when that would pass the 63 characters a Job name (a
/// pod label value) may have.
pub fn backup_job_name(record: &str) -> String {
    let name = format!("{record}-backup");
    if name.len() <= 63 {
        return name;
    }
    let hash = ring::digest::digest(&ring::digest::SHA256, record.as_bytes());
    let suffix: String = hash.as_ref()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut keep = 63 - suffix.len() - 1;
    while !record.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}-{suffix}", record[..keep].trim_end_matches('-'))
}

/// The Job that runs a `PostgresBackup` requested by hand, owned by the record. It reports
/// into the record (`--record`); a failed run is not retried, since it already says why.
pub fn desired_backup_job(
    cluster: &Cluster,
    record: &str,
    record_owner: OwnerReference,
    databases: &[String],
) -> Job {
    let mut args = vec!["--record".to_string(), record.to_string()];
    for database in databases {
        args.push("--database".to_string());
        args.push(database.clone());
    }
    let mut job_labels = backup_pod_labels(cluster);
    job_labels.insert(labels::BACKUP_RECORD.to_string(), record.to_string());
    Job {
        metadata: ObjectMeta {
            name: Some(backup_job_name(record)),
            namespace: Some(cluster.namespace.clone()),
            labels: Some(job_labels),
            owner_references: Some(vec![record_owner]),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            // Finished Jobs go after a day; the record keeps the result.
            ttl_seconds_after_finished: Some(86400),
            template: backup_pod_template(cluster, &args),
            ..JobSpec::default()
        }),
        ..Job::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::test_support::cluster_from_yaml;

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

    /// The Secret of the job pod's volume `name`, and where its container mounts it.
    fn secret_volume(
        job: &CronJob,
        name: &str,
    ) -> (k8s_openapi::api::core::v1::SecretVolumeSource, VolumeMount) {
        let pod = pod_of(job);
        let volume = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == name);
        let mount = pod.containers[0]
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == name);
        (
            volume.unwrap().secret.clone().unwrap(),
            mount.unwrap().clone(),
        )
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
            ["backup", "--cluster", "demo", "--scheduled"]
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
    fn the_backup_verifies_the_primary_with_the_cluster_ca_and_never_sees_its_key() {
        let job = cron(ENABLED).unwrap();
        assert_eq!(
            env_of(&job)["PGSSLMODE"].value.as_deref(),
            Some("verify-full")
        );
        assert_eq!(
            env_of(&job)["PGSSLROOTCERT"].value.as_deref(),
            Some("/etc/postgres-ca/ca.crt")
        );
        let (secret, mount) = secret_volume(&job, CLUSTER_CA_VOLUME);
        assert_eq!(secret.secret_name.as_deref(), Some("postgres-demo-server"));
        // Only the certificate is projected: not the server's key, nor the CA's.
        let items = secret.items.as_ref().unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(
            (items[0].key.as_str(), items[0].path.as_str()),
            ("ca.crt", "ca.crt")
        );
        assert_eq!(
            (mount.mount_path.as_str(), mount.read_only),
            ("/etc/postgres-ca", Some(true))
        );
    }

    #[test]
    fn a_private_ca_is_mounted_read_only_and_named_to_the_backup() {
        let job = cron("backup:\n  enabled: true\n  s3Bucket: https://minio.storage:9000/pg\n  s3CASecretRef: {name: minio-tls}\n").unwrap();
        let (secret, mount) = secret_volume(&job, S3_CA_VOLUME);
        assert_eq!(secret.secret_name.as_deref(), Some("minio-tls"));
        let item = &secret.items.as_ref().unwrap()[0];
        assert_eq!(
            (item.key.as_str(), item.path.as_str()),
            ("ca.crt", "ca.crt")
        );
        assert_eq!(
            (mount.mount_path.as_str(), mount.read_only),
            ("/etc/s3-ca", Some(true))
        );
        assert_eq!(
            env_of(&job)["S3_CA_FILE"].value.as_deref(),
            Some("/etc/s3-ca/ca.crt")
        );

        let plain = cron(ENABLED).unwrap();
        assert!(!env_of(&plain).contains_key("S3_CA_FILE"));
        assert!(
            pod_of(&plain)
                .volumes
                .as_ref()
                .unwrap()
                .iter()
                .all(|v| v.name != S3_CA_VOLUME)
        );
    }

    #[test]
    fn a_manual_backup_job_reports_into_its_record_and_is_not_retried() {
        let (pg, settings) = cluster_from_yaml(ENABLED);
        let cluster = Cluster::new(&pg, "ns", &settings);
        let owner = OwnerReference {
            api_version: "apps.cozystack.io/v1alpha1".into(),
            kind: "PostgresBackup".into(),
            name: "manual-1".into(),
            uid: "u".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let job = desired_backup_job(&cluster, "manual-1", owner, &["shop".to_string()]);
        assert_eq!(job.metadata.name.as_deref(), Some("manual-1-backup"));
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.backoff_limit, Some(0));
        let container = &spec.template.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            container.command.as_ref().unwrap()[1..],
            [
                "backup",
                "--cluster",
                "demo",
                "--record",
                "manual-1",
                "--database",
                "shop"
            ]
        );
        assert_eq!(job.metadata.owner_references.unwrap()[0].name, "manual-1");
    }

    #[test]
    fn long_record_names_give_valid_job_names() {
        let record = "a".repeat(70);
        let name = backup_job_name(&record);
        assert_eq!(name.len(), 63);
        assert_ne!(backup_job_name(&"a".repeat(71)), name);
        assert_eq!(backup_job_name("short"), "short-backup");
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
