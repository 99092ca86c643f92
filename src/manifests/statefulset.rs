//! The StatefulSet of PostgreSQL instances: a stock PostgreSQL image whose PID 1 is the
//! operator's instance manager, one data volume per pod.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Affinity, Container, ContainerPort, HTTPGetAction, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodAffinityTerm, PodAntiAffinity, PodSpec, PodTemplateSpec, Probe,
    VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::cronjob;
use super::pod::{self, CONTROLLER_BINARY, DATA_MOUNT, DATA_VOLUME};
use super::resources::instance_resources;
use super::{Cluster, labels, names};

/// Name of the PostgreSQL container.
pub const POSTGRES_CONTAINER: &str = "postgres";

/// Smart shutdown first, then fast: long enough for clients to finish and for a clean
/// checkpoint, short of a node drain's patience.
pub const TERMINATION_GRACE_SECONDS: i64 = 180;
/// initdb, pg_basebackup of a large database or crash recovery can take long; the
/// startup probe allows an hour before liveness takes over.
const STARTUP_PERIOD_SECONDS: i32 = 10;
const STARTUP_FAILURES: i32 = 360;
/// A minute of failed health checks before the kubelet restarts the instance manager.
const LIVENESS_PERIOD_SECONDS: i32 = 10;
const LIVENESS_FAILURES: i32 = 6;
/// Readiness reacts faster: it moves the instance out of the Services.
const READINESS_PERIOD_SECONDS: i32 = 5;
const READINESS_FAILURES: i32 = 3;
const PROBE_TIMEOUT_SECONDS: i32 = 5;

const HOSTNAME_TOPOLOGY_KEY: &str = "kubernetes.io/hostname";
/// PostgreSQL's dynamic shared memory lives here; the runtime's default is 64 MiB.
const SHM_MOUNT: &str = "/dev/shm";

/// The StatefulSet `postgres-<name>`.
pub fn desired_statefulset(cluster: &Cluster) -> StatefulSet {
    let mut metadata = cluster.meta(names::prefix(&cluster.name), labels::COMPONENT_DATABASE);
    metadata.annotations.get_or_insert_default().insert(
        labels::MAJOR_VERSION.to_string(),
        cluster.spec().version().major().to_string(),
    );
    StatefulSet {
        metadata,
        spec: Some(StatefulSetSpec {
            replicas: Some(cluster.spec().replicas),
            service_name: Some(names::service_headless(&cluster.name)),
            // Standbys clone from whichever pod is primary; ordering buys nothing.
            pod_management_policy: Some("Parallel".to_string()),
            // The operator restarts pods itself: standbys first, the primary last after a
            // switchover, whatever its ordinal.
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".to_string()),
                ..StatefulSetUpdateStrategy::default()
            }),
            selector: labels::match_labels(cluster.selector()),
            // Deleting the Postgres keeps the data; a scale-down deletes the removed
            // instances' claims, so a later scale-up clones afresh instead of starting
            // from data the cluster has moved on from.
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Retain".to_string()),
                    when_scaled: Some("Delete".to_string()),
                },
            ),
            template: pod_template(cluster),
            volume_claim_templates: Some(vec![data_claim(cluster)]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

fn pod_template(cluster: &Cluster) -> PodTemplateSpec {
    // No ConfigMap volume: the instance manager renders postgresql.conf and pg_hba.conf
    // from the spec it watches, so a change applies without waiting for the kubelet to
    // sync a mounted ConfigMap.
    let mut volumes = vec![pod::empty_dir(pod::SHM_VOLUME, Some("Memory"))];
    volumes.extend(pod::runtime_volumes());
    if cluster.spec().restore_source().is_some() {
        volumes.extend(cronjob::backup_access_volumes(cluster));
    }
    let mut template = PodTemplateSpec {
        // No role label: the operator sets it on each pod as roles change. No config
        // checksum annotation either: the instance manager reloads configuration itself,
        // so the template changes only when pods really need replacing.
        metadata: Some(ObjectMeta {
            labels: Some(cluster.labels(labels::COMPONENT_DATABASE)),
            annotations: Some(super::monitoring::scrape_annotations()),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(names::prefix(&cluster.name)),
            // The instance manager watches its Postgres and reads its Secrets.
            automount_service_account_token: Some(true),
            // Every Service in the namespace as environment variables is noise, and
            // can collide with PG* variables.
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
            security_context: Some(pod::pod_security_context()),
            affinity: Some(anti_affinity(cluster)),
            init_containers: Some(vec![pod::copy_binaries_init_container(cluster)]),
            containers: vec![postgres_container(cluster)],
            volumes: Some(volumes),
            ..PodSpec::default()
        }),
    };
    let hash = template_hash(&template);
    if let Some(metadata) = template.metadata.as_mut() {
        metadata
            .annotations
            .get_or_insert_default()
            .insert(labels::TEMPLATE_HASH.to_string(), hash);
    }
    template
}

/// A digest of everything in the template (before the digest is added): any change
/// that needs new pods changes it.
fn template_hash(template: &PodTemplateSpec) -> String {
    // Serialising plain data with string keys cannot fail; an empty input would
    // still give a stable digest.
    let bytes = serde_json::to_vec(template).unwrap_or_default();
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    digest
        .as_ref()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The template digest a pod or template carries, if any.
pub fn template_hash_of(metadata: &ObjectMeta) -> Option<&str> {
    metadata
        .annotations
        .as_ref()?
        .get(labels::TEMPLATE_HASH)
        .map(String::as_str)
}

/// Preferred, not required: a cluster with more instances than schedulable nodes still
/// runs (and a node drain can still reschedule), while instances spread over nodes
/// whenever they can.
fn anti_affinity(cluster: &Cluster) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        topology_key: HOSTNAME_TOPOLOGY_KEY.to_string(),
                        label_selector: Some(labels::match_labels(cluster.selector())),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    }
}

/// An HTTP GET on the instance manager's status port.
fn status_probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String(pod::STATUS_PORT_NAME.to_string()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(PROBE_TIMEOUT_SECONDS),
        ..Probe::default()
    }
}

fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_string()),
        container_port: port,
        protocol: Some("TCP".to_string()),
        ..ContainerPort::default()
    }
}

fn postgres_container(cluster: &Cluster) -> Container {
    let mut env = pod::cluster_env(cluster);
    let mut mounts = vec![
        pod::mount(DATA_VOLUME, DATA_MOUNT),
        pod::mount(pod::SHM_VOLUME, SHM_MOUNT),
    ];
    mounts.extend(pod::runtime_mounts());
    if cluster.spec().restore_source().is_some() {
        // The first primary restores from the backups. Pods wait for the credentials
        // Secret (the kubelet says so in their events) rather than start without them.
        env.extend(cronjob::backup_access_env(cluster));
        mounts.extend(cronjob::backup_access_mounts(cluster));
    }
    Container {
        name: POSTGRES_CONTAINER.to_string(),
        image: Some(cluster.postgres_image()),
        image_pull_policy: Some("IfNotPresent".to_string()),
        command: Some(vec![CONTROLLER_BINARY.to_string(), "instance".to_string()]),
        env: Some(env),
        ports: Some(vec![
            container_port(pod::POSTGRES_PORT_NAME, pod::POSTGRES_PORT),
            container_port(pod::STATUS_PORT_NAME, pod::STATUS_PORT),
            container_port(pod::METRICS_PORT_NAME, pod::METRICS_PORT),
        ]),
        startup_probe: Some(status_probe(
            "/healthz",
            STARTUP_PERIOD_SECONDS,
            STARTUP_FAILURES,
        )),
        liveness_probe: Some(status_probe(
            "/healthz",
            LIVENESS_PERIOD_SECONDS,
            LIVENESS_FAILURES,
        )),
        readiness_probe: Some(status_probe(
            "/readyz",
            READINESS_PERIOD_SECONDS,
            READINESS_FAILURES,
        )),
        resources: Some(instance_resources(cluster.spec())),
        security_context: Some(pod::container_security_context()),
        volume_mounts: Some(mounts),
        ..Container::default()
    }
}

fn data_claim(cluster: &Cluster) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(DATA_VOLUME.to_string()),
            labels: Some(cluster.selector()),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_string()]),
            storage_class_name: cluster.storage_class(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(cluster.spec().size.clone()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::presets::ResourcesPreset;
    use crate::manifests::OperatorSettings;
    use crate::manifests::resources::amounts;
    use crate::manifests::test_support::cluster_from_yaml;

    fn statefulset_with(yaml: &str, settings: impl FnOnce(&mut OperatorSettings)) -> StatefulSet {
        let (postgres, mut operator_settings) = cluster_from_yaml(yaml);
        settings(&mut operator_settings);
        desired_statefulset(&Cluster::new(&postgres, "tenant", &operator_settings))
    }

    fn statefulset(yaml: &str) -> StatefulSet {
        statefulset_with(yaml, |_| {})
    }

    fn spec(statefulset: &StatefulSet) -> &StatefulSetSpec {
        statefulset.spec.as_ref().unwrap()
    }

    fn pod_spec(statefulset: &StatefulSet) -> &PodSpec {
        spec(statefulset).template.spec.as_ref().unwrap()
    }

    fn postgres(statefulset: &StatefulSet) -> &Container {
        &pod_spec(statefulset).containers[0]
    }

    fn claim(statefulset: &StatefulSet) -> &PersistentVolumeClaimSpec {
        spec(statefulset).volume_claim_templates.as_ref().unwrap()[0]
            .spec
            .as_ref()
            .unwrap()
    }

    fn probe_target(probe: &Option<Probe>) -> (String, IntOrString) {
        let http = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        (http.path.clone().unwrap(), http.port.clone())
    }

    #[test]
    fn statefulset_is_named_after_the_cluster_and_owned_by_it() {
        let s = statefulset("replicas: 3\n");
        assert_eq!(s.metadata.name.as_deref(), Some("postgres-demo"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("tenant"));
        let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("Postgres", "demo")
        );
        assert_eq!(owner.controller, Some(true));
        assert_eq!(
            s.metadata.labels.as_ref().unwrap()[labels::COMPONENT],
            labels::COMPONENT_DATABASE
        );
    }

    #[test]
    fn the_operator_paces_restarts_and_pods_start_together() {
        let s = statefulset("replicas: 3\n");
        let spec = spec(&s);
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.service_name.as_deref(), Some("postgres-demo-headless"));
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        assert_eq!(
            spec.update_strategy.as_ref().unwrap().type_.as_deref(),
            Some("OnDelete")
        );
    }

    #[test]
    fn the_selector_matches_the_template_which_has_no_role_label() {
        let s = statefulset("{}");
        let spec = spec(&s);
        let selector = spec.selector.match_labels.as_ref().unwrap();
        let template = spec.template.metadata.as_ref().unwrap();
        let template_labels = template.labels.as_ref().unwrap();
        assert!(
            selector
                .iter()
                .all(|(k, v)| template_labels.get(k) == Some(v))
        );
        assert_eq!(template_labels[labels::APP], labels::APP_VALUE);
        assert!(!template_labels.contains_key(labels::ROLE));
        // The digest that tells a pod on an old template from one on this one, and
        // where annotation-based Prometheus setups find the metrics.
        let annotations = template.annotations.as_ref().unwrap();
        assert_eq!(
            annotations.keys().collect::<Vec<_>>(),
            vec![
                labels::TEMPLATE_HASH,
                "prometheus.io/path",
                "prometheus.io/port",
                "prometheus.io/scrape"
            ]
        );
        assert_eq!(annotations["prometheus.io/port"], "9187");
    }

    #[test]
    fn pods_run_as_the_clusters_service_account_with_its_token() {
        let s = statefulset("{}");
        let pod = pod_spec(&s);
        assert_eq!(pod.service_account_name.as_deref(), Some("postgres-demo"));
        assert_eq!(pod.automount_service_account_token, Some(true));
        assert_eq!(pod.enable_service_links, Some(false));
        assert_eq!(pod.termination_grace_period_seconds, Some(180));
    }

    #[test]
    fn the_instance_manager_runs_as_pid_1_from_the_copied_binary() {
        let s = statefulset("{}");
        assert_eq!(
            postgres(&s).command.as_ref().unwrap(),
            &["/controller/postgres-operator", "instance"]
        );
        let init = &pod_spec(&s).init_containers.as_ref().unwrap()[0];
        assert_eq!(
            init.image.as_deref(),
            Some(OperatorSettings::default().operator_image.as_str())
        );
        let env = postgres(&s).env.as_ref().unwrap();
        for name in ["CLUSTER_NAME", "POD_NAME", "POD_NAMESPACE", "PGDATA"] {
            assert!(env.iter().any(|e| e.name == name), "{name} missing");
        }
    }

    #[test]
    fn only_a_cluster_that_bootstraps_from_a_backup_mounts_the_s3_ca() {
        let backup = "backup:\n  s3Bucket: https://minio.storage/b\n  s3CASecretRef: {name: minio-tls, key: tls.ca}\n";
        let has_ca = |s: &StatefulSet| {
            let volume = pod_spec(s)
                .volumes
                .as_ref()
                .unwrap()
                .iter()
                .find(|v| v.secret.is_some());
            let mounted = postgres(s)
                .volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .any(|m| m.mount_path == "/etc/s3-ca" && m.read_only == Some(true));
            volume
                .map(|v| v.secret.clone().unwrap().items.unwrap()[0].key.clone())
                .filter(|_| mounted)
        };
        assert_eq!(has_ca(&statefulset(backup)), None);
        let restoring = statefulset(&format!(
            "{backup}bootstrap:\n  enabled: true\n  oldName: old\n"
        ));
        assert_eq!(has_ca(&restoring).as_deref(), Some("tls.ca"));
    }

    #[test]
    fn only_a_cluster_that_bootstraps_from_a_backup_gets_the_backup_credentials() {
        let env_names = |s: &StatefulSet| -> Vec<String> {
            postgres(s)
                .env
                .as_ref()
                .unwrap()
                .iter()
                .map(|e| e.name.clone())
                .collect()
        };
        let plain = statefulset("backup:\n  enabled: true\n  s3Bucket: s3.example.org/b\n");
        assert!(!env_names(&plain).contains(&"RESTIC_PASSWORD".to_string()));

        let restoring = statefulset(
            "backup:\n  s3Bucket: s3.example.org/b\n  s3Region: eu-west-3\n  credentialsSecretRef: {name: keys}\nbootstrap:\n  enabled: true\n  oldName: old\n",
        );
        let env = postgres(&restoring).env.as_ref().unwrap();
        let value = |name: &str| {
            env.iter()
                .find(|e| e.name == name)
                .unwrap_or_else(|| panic!("{name} missing"))
                .clone()
        };
        for (name, key) in [
            ("AWS_ACCESS_KEY_ID", "s3AccessKey"),
            ("AWS_SECRET_ACCESS_KEY", "s3SecretKey"),
            ("RESTIC_PASSWORD", "resticPassword"),
        ] {
            let reference = value(name).value_from.unwrap().secret_key_ref.unwrap();
            assert_eq!(
                (reference.name.as_str(), reference.key.as_str()),
                ("keys", key)
            );
        }
        assert_eq!(
            value("RESTIC_REPOSITORY_BASE").value.as_deref(),
            Some("s3:s3.example.org/b")
        );
        assert_eq!(
            value("AWS_DEFAULT_REGION").value.as_deref(),
            Some("eu-west-3")
        );
        assert_eq!(
            value("RESTIC_BINARY").value.as_deref(),
            Some("/controller/restic")
        );
    }

    #[test]
    fn ports_are_named_and_probes_ask_the_status_port() {
        let s = statefulset("{}");
        let container = postgres(&s);
        let ports: Vec<(String, i32)> = container
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| (p.name.clone().unwrap(), p.container_port))
            .collect();
        assert_eq!(
            ports,
            [
                ("postgresql".to_string(), 5432),
                ("status".to_string(), 8000),
                ("metrics".to_string(), 9187)
            ]
        );
        let status = IntOrString::String("status".to_string());
        assert_eq!(
            probe_target(&container.startup_probe),
            ("/healthz".to_string(), status.clone())
        );
        assert_eq!(
            probe_target(&container.liveness_probe),
            ("/healthz".to_string(), status.clone())
        );
        assert_eq!(
            probe_target(&container.readiness_probe),
            ("/readyz".to_string(), status)
        );
    }

    #[test]
    fn the_startup_probe_allows_an_hour_for_initdb_basebackup_or_recovery() {
        let s = statefulset("{}");
        let startup = postgres(&s).startup_probe.as_ref().unwrap();
        assert_eq!(startup.period_seconds, Some(10));
        assert_eq!(startup.failure_threshold, Some(360));
    }

    #[test]
    fn image_follows_the_version_unless_overridden() {
        let image = |yaml: &str| postgres(&statefulset(yaml)).image.clone().unwrap();
        assert_eq!(image("{}"), "docker.io/library/postgres:18");
        assert_eq!(image("version: v16\n"), "docker.io/library/postgres:16");
        assert_eq!(
            image("version: v16\nimage: registry.local/pg:16.4\n"),
            "registry.local/pg:16.4"
        );
    }

    #[test]
    fn storage_class_comes_from_the_spec_then_the_operator_default() {
        let class = |yaml: &str, default: Option<&str>| {
            let s = statefulset_with(yaml, |settings| {
                settings.default_storage_class = default.map(str::to_string)
            });
            claim(&s).storage_class_name.clone()
        };
        assert_eq!(
            class("storageClass: replicated\n", Some("local")).as_deref(),
            Some("replicated")
        );
        assert_eq!(class("{}", Some("local")).as_deref(), Some("local"));
        assert_eq!(class("{}", None), None);
        assert_eq!(
            class("storageClass: \"\"\n", Some("local")),
            None,
            "empty means the cluster default"
        );
    }

    #[test]
    fn each_pod_gets_a_data_volume_of_the_spec_size_that_outlives_the_cluster() {
        let s = statefulset("size: 50Gi\n");
        let template = &spec(&s).volume_claim_templates.as_ref().unwrap()[0];
        assert_eq!(template.metadata.name.as_deref(), Some(pod::DATA_VOLUME));
        assert_eq!(
            template.metadata.labels.as_ref(),
            Some(&labels::selector("demo"))
        );
        let claim = claim(&s);
        assert_eq!(
            claim.access_modes.as_deref(),
            Some(&["ReadWriteOnce".to_string()][..])
        );
        let requests = claim.resources.as_ref().unwrap().requests.as_ref().unwrap();
        assert_eq!(requests["storage"].0, "50Gi");
        let retention = spec(&s)
            .persistent_volume_claim_retention_policy
            .as_ref()
            .unwrap();
        assert_eq!(retention.when_deleted.as_deref(), Some("Retain"));
        assert_eq!(retention.when_scaled.as_deref(), Some("Delete"));
    }

    #[test]
    fn container_resources_prefer_explicit_then_preset_then_defaults() {
        let resources = |yaml: &str| postgres(&statefulset(yaml)).resources.clone().unwrap();
        let explicit = resources("resourcesPreset: nano\nresources:\n  cpu: 2\n  memory: 4Gi\n");
        assert_eq!(explicit.limits, Some(amounts("2", "4Gi")));
        let nano = ResourcesPreset::Nano.resources();
        assert_eq!(
            resources("resourcesPreset: nano\n").limits,
            Some(amounts(&nano.limits_cpu, &nano.limits_memory))
        );
        let default = resources("{}");
        assert_eq!(default.requests, Some(amounts("100m", "256Mi")));
        assert_eq!(default.limits, None);
    }

    #[test]
    fn instances_prefer_different_nodes() {
        let s = statefulset("{}");
        let terms = pod_spec(&s)
            .affinity
            .as_ref()
            .unwrap()
            .pod_anti_affinity
            .as_ref()
            .unwrap();
        assert_eq!(
            terms.required_during_scheduling_ignored_during_execution,
            None
        );
        let preferred = &terms
            .preferred_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap()[0];
        assert_eq!(preferred.weight, 100);
        assert_eq!(
            preferred.pod_affinity_term.topology_key,
            "kubernetes.io/hostname"
        );
        assert_eq!(
            preferred.pod_affinity_term.label_selector,
            Some(labels::match_labels(labels::selector("demo")))
        );
    }

    #[test]
    fn pods_run_non_root_with_a_read_only_root_filesystem() {
        let s = statefulset("{}");
        let pod = pod_spec(&s);
        let pod_security = pod.security_context.as_ref().unwrap();
        assert_eq!(pod_security.run_as_non_root, Some(true));
        assert_eq!(pod_security.run_as_user, Some(pod::POSTGRES_UID));
        for container in pod
            .containers
            .iter()
            .chain(pod.init_containers.as_ref().unwrap())
        {
            let security = container.security_context.as_ref().unwrap();
            assert_eq!(security.read_only_root_filesystem, Some(true));
            assert_eq!(security.allow_privilege_escalation, Some(false));
        }
    }

    #[test]
    fn the_template_digest_changes_with_what_needs_new_pods_only() {
        let hash = |yaml: &str| {
            let s = statefulset(yaml);
            template_hash_of(spec(&s).template.metadata.as_ref().unwrap())
                .unwrap()
                .to_string()
        };
        let base = hash("replicas: 3\n");
        assert_eq!(base.len(), 16);
        assert_eq!(base, hash("replicas: 3\n"));
        // Scaling and the major recorded on the StatefulSet are not the pods' business.
        assert_eq!(base, hash("replicas: 5\n"));
        assert_ne!(base, hash("replicas: 3\nresourcesPreset: large\n"));
        assert_ne!(
            base,
            hash("replicas: 3\nimage: example.org/postgres:18.2\n")
        );
        let s = statefulset("version: v17\n");
        assert_eq!(
            s.metadata.annotations.as_ref().unwrap()[labels::MAJOR_VERSION],
            "17"
        );
    }

    #[test]
    fn only_data_socket_tmp_and_shared_memory_are_writable() {
        let s = statefulset("{}");
        let pod = pod_spec(&s);
        let mounts = postgres(&s).volume_mounts.as_ref().unwrap();
        let mount = |path: &str| mounts.iter().find(|m| m.mount_path == path);
        for writable in [DATA_MOUNT, pod::SOCKET_DIR, "/tmp", "/dev/shm"] {
            let found = mount(writable).unwrap_or_else(|| panic!("{writable} not mounted"));
            assert_ne!(found.read_only, Some(true), "{writable}");
        }
        assert_eq!(
            mounts.len(),
            5,
            "data, shared memory, socket, tmp, controller"
        );

        let volumes = pod.volumes.as_ref().unwrap();
        let volume = |name: &str| volumes.iter().find(|v| v.name == name).unwrap();
        assert_eq!(
            volume(pod::SHM_VOLUME)
                .empty_dir
                .as_ref()
                .unwrap()
                .medium
                .as_deref(),
            Some("Memory")
        );
        for mount in mounts {
            assert!(
                mount.name == DATA_VOLUME || volumes.iter().any(|v| v.name == mount.name),
                "{} has no volume",
                mount.name
            );
        }
    }
}
