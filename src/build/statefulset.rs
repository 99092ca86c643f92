//! The StatefulSet of PostgreSQL instances: a stock PostgreSQL image whose PID 1 is the
//! operator's instance manager, one data volume per pod.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Affinity, ConfigMapVolumeSource, Container, ContainerPort, HTTPGetAction,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodAffinityTerm, PodAntiAffinity, PodSpec,
    PodTemplateSpec, Probe, Volume, VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::pod::{self, CONFIG_DIR, CONTROLLER_BINARY, DATA_MOUNT, DATA_VOLUME};
use super::resources::instance_resources;
use super::{Cluster, labels, names};

/// Smart shutdown first, then fast: long enough for clients to finish and for a clean
/// checkpoint, short of a node drain's patience.
pub const TERMINATION_GRACE_SECONDS: i64 = 180;
/// initdb, pg_basebackup of a large database or crash recovery can take long; the
/// startup probe allows an hour before liveness takes over.
const STARTUP_PERIOD_SECONDS: i32 = 10;
const STARTUP_FAILURES: i32 = 360;

/// The StatefulSet `postgres-<name>`.
pub fn desired_statefulset(cluster: &Cluster) -> StatefulSet {
    StatefulSet {
        metadata: cluster.meta(names::prefix(&cluster.name), labels::COMPONENT_DATABASE),
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
            selector: LabelSelector {
                match_labels: Some(cluster.selector()),
                ..LabelSelector::default()
            },
            // Deleting the Postgres or scaling down keeps the data.
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Retain".to_string()),
                    when_scaled: Some("Retain".to_string()),
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
    let mut volumes = vec![
        Volume {
            name: pod::CONFIG_VOLUME.to_string(),
            config_map: Some(ConfigMapVolumeSource {
                name: names::config_map(&cluster.name),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        // PostgreSQL's dynamic shared memory; the runtime's default /dev/shm is 64 MiB.
        pod::empty_dir(pod::SHM_VOLUME, Some("Memory")),
    ];
    volumes.extend(pod::runtime_volumes());
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            // No role label here: the operator sets it on each pod as roles change.
            labels: Some(cluster.labels(labels::COMPONENT_DATABASE)),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(names::prefix(&cluster.name)),
            automount_service_account_token: Some(true),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
            security_context: Some(pod::pod_security_context()),
            affinity: Some(anti_affinity(cluster)),
            init_containers: Some(vec![pod::copy_binaries_init_container(cluster)]),
            containers: vec![postgres_container(cluster)],
            volumes: Some(volumes),
            ..PodSpec::default()
        }),
    }
}

/// Preferred, not required: a cluster with more instances than nodes still schedules,
/// while instances spread over nodes whenever they can.
fn anti_affinity(cluster: &Cluster) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        topology_key: "kubernetes.io/hostname".to_string(),
                        label_selector: Some(LabelSelector {
                            match_labels: Some(cluster.selector()),
                            ..LabelSelector::default()
                        }),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String("status".to_string()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(5),
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
    env.push(pod::env("CONFIG_DIR", CONFIG_DIR));
    let mut mounts = vec![
        pod::mount(DATA_VOLUME, DATA_MOUNT),
        k8s_openapi::api::core::v1::VolumeMount {
            read_only: Some(true),
            ..pod::mount(pod::CONFIG_VOLUME, CONFIG_DIR)
        },
        pod::mount(pod::SHM_VOLUME, "/dev/shm"),
    ];
    mounts.extend(pod::runtime_mounts());
    Container {
        name: "postgres".to_string(),
        image: Some(cluster.postgres_image()),
        image_pull_policy: Some("IfNotPresent".to_string()),
        command: Some(vec![CONTROLLER_BINARY.to_string(), "instance".to_string()]),
        env: Some(env),
        ports: Some(vec![
            container_port("postgresql", pod::POSTGRES_PORT),
            container_port("status", pod::STATUS_PORT),
            container_port("metrics", pod::METRICS_PORT),
        ]),
        startup_probe: Some(http_probe(
            "/healthz",
            STARTUP_PERIOD_SECONDS,
            STARTUP_FAILURES,
        )),
        liveness_probe: Some(http_probe("/healthz", 10, 6)),
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
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
    use crate::build::OperatorSettings;
    use crate::build::test_support::cluster_from_yaml;

    fn sts(yaml: &str) -> StatefulSet {
        let (pg, settings) = cluster_from_yaml(yaml);
        desired_statefulset(&Cluster::new(&pg, "ns", &settings))
    }

    fn pod_spec(s: &StatefulSet) -> &PodSpec {
        s.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    #[test]
    fn statefulset_is_named_owned_and_selects_only_this_cluster() {
        let s = sts("replicas: 3\n");
        assert_eq!(s.metadata.name.as_deref(), Some("postgres-demo"));
        assert_eq!(
            s.metadata.owner_references.as_ref().unwrap()[0].name,
            "demo"
        );
        let spec = s.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.service_name.as_deref(), Some("postgres-demo-headless"));
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        assert_eq!(
            spec.update_strategy.as_ref().unwrap().type_.as_deref(),
            Some("OnDelete")
        );
        let selector = spec.selector.match_labels.as_ref().unwrap();
        let template_labels = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        assert!(
            selector
                .iter()
                .all(|(k, v)| template_labels.get(k) == Some(v))
        );
        assert_eq!(template_labels["app"], "postgres");
        assert!(!template_labels.contains_key(labels::ROLE));
    }

    #[test]
    fn the_instance_manager_runs_as_pid_1_with_probes_on_the_status_port() {
        let s = sts("{}");
        let container = &pod_spec(&s).containers[0];
        assert_eq!(
            container.command.as_ref().unwrap(),
            &["/controller/postgres-operator", "instance"]
        );
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
                ("postgresql".into(), 5432),
                ("status".into(), 8000),
                ("metrics".into(), 9187)
            ]
        );
        let path = |p: &Option<Probe>| {
            p.as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .clone()
                .unwrap()
        };
        assert_eq!(path(&container.readiness_probe), "/readyz");
        assert_eq!(path(&container.liveness_probe), "/healthz");
        assert_eq!(path(&container.startup_probe), "/healthz");
        let init = &pod_spec(&s).init_containers.as_ref().unwrap()[0];
        assert_eq!(
            init.image.as_deref(),
            Some(OperatorSettings::default().operator_image.as_str())
        );
    }

    #[test]
    fn image_follows_the_version_unless_overridden() {
        assert_eq!(
            pod_spec(&sts("{}")).containers[0].image.as_deref(),
            Some("docker.io/library/postgres:18")
        );
        assert_eq!(
            pod_spec(&sts("version: v16\n")).containers[0]
                .image
                .as_deref(),
            Some("docker.io/library/postgres:16")
        );
        assert_eq!(
            pod_spec(&sts("version: v16\nimage: registry.local/pg:16.4\n")).containers[0]
                .image
                .as_deref(),
            Some("registry.local/pg:16.4")
        );
    }

    #[test]
    fn storage_class_comes_from_the_spec_then_the_operator_default() {
        let class = |yaml: &str, default: Option<&str>| {
            let (pg, mut settings) = cluster_from_yaml(yaml);
            settings.default_storage_class = default.map(str::to_string);
            let s = desired_statefulset(&Cluster::new(&pg, "ns", &settings));
            let claim = &s.spec.unwrap().volume_claim_templates.unwrap()[0];
            claim.spec.as_ref().unwrap().storage_class_name.clone()
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
        let s = sts("size: 50Gi\n");
        let spec = s.spec.as_ref().unwrap();
        let claim = &spec.volume_claim_templates.as_ref().unwrap()[0];
        let requests = claim
            .spec
            .as_ref()
            .unwrap()
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap();
        assert_eq!(requests["storage"].0, "50Gi");
        let retention = spec
            .persistent_volume_claim_retention_policy
            .as_ref()
            .unwrap();
        assert_eq!(retention.when_deleted.as_deref(), Some("Retain"));
        assert_eq!(retention.when_scaled.as_deref(), Some("Retain"));
    }

    #[test]
    fn pods_run_non_root_with_a_read_only_root_filesystem() {
        let s = sts("{}");
        let pod = pod_spec(&s);
        let pod_security = pod.security_context.as_ref().unwrap();
        assert_eq!(pod_security.run_as_non_root, Some(true));
        assert_eq!(pod_security.run_as_user, Some(999));
        for container in pod
            .containers
            .iter()
            .chain(pod.init_containers.as_ref().unwrap())
        {
            let security = container.security_context.as_ref().unwrap();
            assert_eq!(security.read_only_root_filesystem, Some(true));
            assert_eq!(security.allow_privilege_escalation, Some(false));
        }
        let mounts: Vec<&str> = pod.containers[0]
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.mount_path.as_str())
            .collect();
        for writable in [
            "/var/lib/postgresql/data",
            "/var/run/postgresql",
            "/tmp",
            "/dev/shm",
        ] {
            assert!(
                mounts.contains(&writable),
                "{writable} missing from {mounts:?}"
            );
        }
    }

    #[test]
    fn instances_prefer_different_nodes() {
        let s = sts("{}");
        let terms = pod_spec(&s)
            .affinity
            .as_ref()
            .unwrap()
            .pod_anti_affinity
            .as_ref()
            .unwrap()
            .preferred_during_scheduling_ignored_during_execution
            .clone()
            .unwrap();
        assert_eq!(
            terms[0].pod_affinity_term.topology_key,
            "kubernetes.io/hostname"
        );
    }
}
