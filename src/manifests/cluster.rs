//! What every builder needs: the cluster being built and the operator's settings.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::{labels, names};
use crate::api::{API_VERSION, Postgres, PostgresSpec};

/// `metadata.uid` used when rendering a manifest that has none (no cluster to ask):
/// the controller always uses the live object's uid.
pub const UNKNOWN_UID: &str = "00000000-0000-0000-0000-000000000000";

/// Operator-wide settings that shape the objects (flags of `controller` and `render`).
#[derive(Clone, Debug, PartialEq)]
pub struct OperatorSettings {
    /// Image of this operator; its binary (and restic) are copied into database pods.
    pub operator_image: String,
    /// Repository of the stock PostgreSQL images; the tag is the major version.
    pub postgres_image_repository: String,
    /// Storage class for clusters that do not name one; `None` = the cluster default.
    pub default_storage_class: Option<String>,
    /// Namespace the operator runs in (NetworkPolicy lets it reach the instances).
    pub operator_namespace: String,
    /// A Prometheus Operator `PodMonitor` per cluster (the CRD must exist).
    pub pod_monitors: bool,
    /// Who may reach PostgreSQL (5432) besides the cluster's own instances and backup
    /// Jobs; empty: anyone (pg_hba and passwords still apply).
    pub client_peers: Vec<NetworkPolicyPeer>,
    /// Who may scrape the instances' metrics (9187); empty: anyone.
    pub metrics_peers: Vec<NetworkPolicyPeer>,
}

/// Image of the operator built from this source tree.
pub const DEFAULT_OPERATOR_IMAGE: &str = concat!(
    "ghcr.io/cozystack/postgres-operator:",
    env!("CARGO_PKG_VERSION")
);
/// Official PostgreSQL images (Debian based, user `postgres` = uid 999).
pub const DEFAULT_POSTGRES_IMAGE_REPOSITORY: &str = "docker.io/library/postgres";
/// Namespace the Helm chart installs the operator into by default.
pub const DEFAULT_OPERATOR_NAMESPACE: &str = "postgres-operator";

impl Default for OperatorSettings {
    fn default() -> Self {
        Self {
            operator_image: DEFAULT_OPERATOR_IMAGE.to_string(),
            postgres_image_repository: DEFAULT_POSTGRES_IMAGE_REPOSITORY.to_string(),
            default_storage_class: None,
            operator_namespace: DEFAULT_OPERATOR_NAMESPACE.to_string(),
            pod_monitors: false,
            client_peers: Vec::new(),
            metrics_peers: Vec::new(),
        }
    }
}

/// One cluster as the builders see it: the object, its resolved name/namespace/uid and
/// the operator settings.
#[derive(Clone, Debug)]
pub struct Cluster<'a> {
    pub postgres: &'a Postgres,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub settings: &'a OperatorSettings,
}

impl<'a> Cluster<'a> {
    /// `namespace` is used when the object has none (render without `metadata.namespace`).
    pub fn new(postgres: &'a Postgres, namespace: &str, settings: &'a OperatorSettings) -> Self {
        Self {
            postgres,
            name: postgres.metadata.name.clone().unwrap_or_default(),
            namespace: postgres
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| namespace.to_string()),
            uid: postgres
                .metadata
                .uid
                .clone()
                .unwrap_or_else(|| UNKNOWN_UID.to_string()),
            settings,
        }
    }

    pub fn spec(&self) -> &PostgresSpec {
        &self.postgres.spec
    }

    /// `postgres-<name>`.
    pub fn prefix(&self) -> String {
        names::prefix(&self.name)
    }

    /// The controller owner reference every owned object carries, so Kubernetes garbage
    /// collects them with the Postgres.
    pub fn owner_reference(&self) -> OwnerReference {
        OwnerReference {
            api_version: API_VERSION.to_string(),
            kind: "Postgres".to_string(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    /// Metadata of an owned object: name, namespace, labels of `component`, owner.
    pub fn meta(&self, name: String, component: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels(component)),
            owner_references: Some(vec![self.owner_reference()]),
            ..ObjectMeta::default()
        }
    }

    pub fn labels(&self, component: &str) -> BTreeMap<String, String> {
        labels::common(&self.name, component)
    }

    /// Pods of the cluster (immutable StatefulSet selector).
    pub fn selector(&self) -> BTreeMap<String, String> {
        labels::selector(&self.name)
    }

    /// Pod names of every instance the spec asks for, ordinal order.
    pub fn pod_names(&self) -> Vec<String> {
        (0..self.spec().replicas.max(0))
            .map(|ordinal| names::pod(&self.name, ordinal))
            .collect()
    }

    /// The storage class the data volumes use: the spec's, else the operator default;
    /// an empty string means the cluster default class, like an unset one.
    pub fn storage_class(&self) -> Option<String> {
        self.spec()
            .storage_class
            .clone()
            .or_else(|| self.settings.default_storage_class.clone())
            .filter(|class| !class.is_empty())
    }

    /// PostgreSQL image: the spec's override, else the stock image of its major version.
    pub fn postgres_image(&self) -> String {
        match &self.spec().image {
            Some(image) if !image.is_empty() => image.clone(),
            _ => format!(
                "{}:{}",
                self.settings.postgres_image_repository,
                self.spec().version().major()
            ),
        }
    }
}
