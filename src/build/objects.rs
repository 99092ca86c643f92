//! Every object of a cluster, in apply order, as one list the controller and `render`
//! share.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};

use super::secrets::{ExistingSecrets, PasswordGenerator};
use super::{Cluster, config, cronjob, policy, rbac, secrets, services, statefulset};

/// One object the operator owns.
#[derive(Clone, Debug, PartialEq)]
pub enum ManagedObject {
    ServiceAccount(ServiceAccount),
    Role(Role),
    RoleBinding(RoleBinding),
    Secret(Secret),
    ConfigMap(ConfigMap),
    Service(Service),
    PodDisruptionBudget(PodDisruptionBudget),
    NetworkPolicy(NetworkPolicy),
    StatefulSet(StatefulSet),
    CronJob(CronJob),
}

impl ManagedObject {
    /// The object's `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            ManagedObject::ServiceAccount(_) => "ServiceAccount",
            ManagedObject::Role(_) => "Role",
            ManagedObject::RoleBinding(_) => "RoleBinding",
            ManagedObject::Secret(_) => "Secret",
            ManagedObject::ConfigMap(_) => "ConfigMap",
            ManagedObject::Service(_) => "Service",
            ManagedObject::PodDisruptionBudget(_) => "PodDisruptionBudget",
            ManagedObject::NetworkPolicy(_) => "NetworkPolicy",
            ManagedObject::StatefulSet(_) => "StatefulSet",
            ManagedObject::CronJob(_) => "CronJob",
        }
    }

    /// The object's `metadata.name`.
    pub fn name(&self) -> &str {
        let meta = match self {
            ManagedObject::ServiceAccount(o) => &o.metadata,
            ManagedObject::Role(o) => &o.metadata,
            ManagedObject::RoleBinding(o) => &o.metadata,
            ManagedObject::Secret(o) => &o.metadata,
            ManagedObject::ConfigMap(o) => &o.metadata,
            ManagedObject::Service(o) => &o.metadata,
            ManagedObject::PodDisruptionBudget(o) => &o.metadata,
            ManagedObject::NetworkPolicy(o) => &o.metadata,
            ManagedObject::StatefulSet(o) => &o.metadata,
            ManagedObject::CronJob(o) => &o.metadata,
        };
        meta.name.as_deref().unwrap_or_default()
    }

    /// The object as JSON, with `apiVersion` and `kind`.
    pub fn to_json(&self) -> Result<serde_json::Value, serde_json::Error> {
        match self {
            ManagedObject::ServiceAccount(o) => serde_json::to_value(o),
            ManagedObject::Role(o) => serde_json::to_value(o),
            ManagedObject::RoleBinding(o) => serde_json::to_value(o),
            ManagedObject::Secret(o) => serde_json::to_value(o),
            ManagedObject::ConfigMap(o) => serde_json::to_value(o),
            ManagedObject::Service(o) => serde_json::to_value(o),
            ManagedObject::PodDisruptionBudget(o) => serde_json::to_value(o),
            ManagedObject::NetworkPolicy(o) => serde_json::to_value(o),
            ManagedObject::StatefulSet(o) => serde_json::to_value(o),
            ManagedObject::CronJob(o) => serde_json::to_value(o),
        }
    }
}

/// Every object the spec asks for, in apply order: identities and credentials first,
/// then configuration, network, disruption policy, the instances, and the backups.
/// Objects absent from the list (the external Service, the backup CronJob, the backup
/// Secret) are the ones the controller deletes.
pub fn desired_objects(
    cluster: &Cluster,
    existing: &ExistingSecrets,
    passwords: &mut dyn PasswordGenerator,
) -> Vec<ManagedObject> {
    let mut objects = vec![
        ManagedObject::ServiceAccount(rbac::desired_service_account(cluster)),
        ManagedObject::Role(rbac::desired_role(cluster)),
        ManagedObject::RoleBinding(rbac::desired_role_binding(cluster)),
    ];
    objects.extend(
        secrets::desired_secrets(cluster, existing, passwords)
            .into_iter()
            .map(ManagedObject::Secret),
    );
    objects.push(ManagedObject::ConfigMap(config::desired_config_map(
        cluster,
    )));
    objects.extend(
        services::desired_services(cluster)
            .into_iter()
            .map(ManagedObject::Service),
    );
    objects.extend(
        policy::desired_pod_disruption_budgets(cluster)
            .into_iter()
            .map(ManagedObject::PodDisruptionBudget),
    );
    objects.push(ManagedObject::NetworkPolicy(
        policy::desired_network_policy(cluster),
    ));
    objects.push(ManagedObject::StatefulSet(
        statefulset::desired_statefulset(cluster),
    ));
    objects.extend(cronjob::desired_backup_cronjob(cluster).map(ManagedObject::CronJob));
    objects
}
