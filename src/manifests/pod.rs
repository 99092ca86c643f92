//! Pieces shared by the database pods and the backup Job pods: the init container that
//! brings the operator binary into a stock PostgreSQL image, volumes, security contexts.

use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, ObjectFieldSelector,
    PodSecurityContext, SeccompProfile, SecretKeySelector, SecurityContext, Volume, VolumeMount,
};

use super::Cluster;

/// PostgreSQL port on every instance.
pub const POSTGRES_PORT: i32 = 5432;
/// Instance manager HTTP port (`/healthz`, `/readyz`, `/status`).
pub const STATUS_PORT: i32 = 8000;
/// Prometheus metrics port of the instance manager.
pub const METRICS_PORT: i32 = 9187;
/// Container port names; Services and probes target the ports by these names.
pub const POSTGRES_PORT_NAME: &str = "postgresql";
pub const STATUS_PORT_NAME: &str = "status";
pub const METRICS_PORT_NAME: &str = "metrics";

/// uid/gid of `postgres` in the official Debian-based PostgreSQL images.
pub const POSTGRES_UID: i64 = 999;

/// Where the init container puts the operator binary (and restic).
pub const CONTROLLER_DIR: &str = "/controller";
/// The operator binary inside database and backup pods.
pub const CONTROLLER_BINARY: &str = "/controller/postgres-operator";
/// Path of the binary inside the operator image.
pub const OPERATOR_BINARY: &str = "/usr/local/bin/postgres-operator";
/// Mount point of the data volume.
pub const DATA_MOUNT: &str = "/var/lib/postgresql/data";
/// PGDATA: a subdirectory, so `lost+found` at the volume root does not upset initdb.
pub const PGDATA: &str = "/var/lib/postgresql/data/pgdata";
/// Unix socket directory.
pub const SOCKET_DIR: &str = "/var/run/postgresql";

/// Name of the data volume claim template.
pub const DATA_VOLUME: &str = "pgdata";
pub const CONTROLLER_VOLUME: &str = "controller";
pub const SOCKET_VOLUME: &str = "run";
pub const TMP_VOLUME: &str = "tmp";
pub const SHM_VOLUME: &str = "shm";

/// Init container: copies the operator binary and restic from the operator image into
/// the shared `controller` volume, so the main container can run a stock image.
pub fn copy_binaries_init_container(cluster: &Cluster) -> Container {
    Container {
        name: "bootstrap-controller".to_string(),
        image: Some(cluster.settings.operator_image.clone()),
        image_pull_policy: Some("IfNotPresent".to_string()),
        command: Some(vec![
            OPERATOR_BINARY.to_string(),
            "copy-binaries".to_string(),
            CONTROLLER_DIR.to_string(),
        ]),
        volume_mounts: Some(vec![mount(CONTROLLER_VOLUME, CONTROLLER_DIR)]),
        security_context: Some(container_security_context()),
        resources: Some(super::resources::init_container_resources()),
        ..Container::default()
    }
}

/// Volumes every pod that runs the operator binary needs, besides data and config.
pub fn runtime_volumes() -> Vec<Volume> {
    vec![
        empty_dir(CONTROLLER_VOLUME, None),
        empty_dir(SOCKET_VOLUME, None),
        empty_dir(TMP_VOLUME, None),
    ]
}

/// Mounts matching [`runtime_volumes`]: the root filesystem stays read-only.
pub fn runtime_mounts() -> Vec<VolumeMount> {
    vec![
        mount(CONTROLLER_VOLUME, CONTROLLER_DIR),
        mount(SOCKET_VOLUME, SOCKET_DIR),
        mount(TMP_VOLUME, "/tmp"),
    ]
}

/// An `emptyDir` volume; `medium` is e.g. `Memory` for /dev/shm.
pub fn empty_dir(name: &str, medium: Option<&str>) -> Volume {
    Volume {
        name: name.to_string(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: medium.map(str::to_string),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    }
}

pub fn mount(volume: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: volume.to_string(),
        mount_path: path.to_string(),
        ..VolumeMount::default()
    }
}

/// Pod-level security: non-root as the image's `postgres` user, volumes group-owned by
/// it, default seccomp profile.
pub fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(POSTGRES_UID),
        run_as_group: Some(POSTGRES_UID),
        fs_group: Some(POSTGRES_UID),
        fs_group_change_policy: Some("OnRootMismatch".to_string()),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_string(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

/// Container-level security: no privilege escalation, no capabilities, read-only root.
pub fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_string(),
            ..SeccompProfile::default()
        }),
        ..SecurityContext::default()
    }
}

/// A plain environment variable.
pub fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

/// An environment variable read from a Secret key.
pub fn env_from_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_string(),
                key: key.to_string(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// An environment variable from the pod's own metadata (downward API).
pub fn env_from_field(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.to_string(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// Identity of the cluster for the operator binary running inside a pod.
pub fn cluster_env(cluster: &Cluster) -> Vec<EnvVar> {
    vec![
        env("CLUSTER_NAME", cluster.name.clone()),
        env_from_field("POD_NAMESPACE", "metadata.namespace"),
        env_from_field("POD_NAME", "metadata.name"),
        env("PGDATA", PGDATA),
        env("PGHOST", SOCKET_DIR),
        env("PGPORT", POSTGRES_PORT.to_string()),
    ]
}
