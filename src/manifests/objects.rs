//! Every object of a cluster, in apply order, as one list the controller and `render`
//! share.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::ApiResource;

use super::monitoring::PodMonitor;
use super::secrets::{ExistingSecrets, PasswordGenerator};
use super::tls::{self, CertificateIssuer, TlsError};
use super::{Cluster, config, cronjob, monitoring, policy, rbac, secrets, services, statefulset};

/// Declares [`ManagedObject`] with one variant per kind, and its accessors.
macro_rules! managed_objects {
    ($($kind:ident),* $(,)?) => {
        /// One object the operator owns.
        // A reconcile holds about twenty of these at once; boxing the large variants
        // would buy nothing.
        #[allow(clippy::large_enum_variant)]
        #[derive(Clone, Debug, PartialEq)]
        pub enum ManagedObject {
            $($kind($kind),)*
        }

        impl ManagedObject {
            /// The object's `kind`.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(ManagedObject::$kind(_) => stringify!($kind),)*
                }
            }

            /// The object's metadata.
            pub fn metadata(&self) -> &ObjectMeta {
                match self {
                    $(ManagedObject::$kind(o) => &o.metadata,)*
                }
            }

            /// How to reach objects of this kind through the API.
            pub fn api_resource(&self) -> ApiResource {
                match self {
                    $(ManagedObject::$kind(_) => ApiResource::erase::<$kind>(&()),)*
                }
            }

            /// The object as JSON, with `apiVersion` and `kind`.
            pub fn to_json(&self) -> Result<serde_json::Value, serde_json::Error> {
                match self {
                    $(ManagedObject::$kind(o) => serde_json::to_value(o),)*
                }
            }
        }
    };
}

managed_objects!(
    ServiceAccount,
    Role,
    RoleBinding,
    Secret,
    ConfigMap,
    Service,
    PodDisruptionBudget,
    NetworkPolicy,
    StatefulSet,
    CronJob,
    PodMonitor,
);

impl ManagedObject {
    /// The object's `metadata.name`.
    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or_default()
    }
}

/// Every object the spec asks for, in apply order: identities and credentials first,
/// then configuration, network, disruption policy, the instances, and the backups.
/// Objects absent from the list (the external Service, the backup CronJob, the backup
/// Secret) are the ones the controller deletes. `existing` holds the Secrets as stored
/// (and the spec's own certificate Secrets), `external_addresses` the external Service's
/// load-balancer addresses, both as the controller observed them.
pub fn desired_objects(
    cluster: &Cluster,
    existing: &ExistingSecrets,
    external_addresses: &[String],
    passwords: &mut dyn PasswordGenerator,
    certificates: &mut dyn CertificateIssuer,
) -> Result<Vec<ManagedObject>, TlsError> {
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
    objects.extend(
        tls::desired_tls_secrets(cluster, existing, external_addresses, certificates)?
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
    objects.extend(monitoring::desired_pod_monitor(cluster).map(ManagedObject::PodMonitor));
    Ok(objects)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::secrets::SeededPasswords;
    use crate::manifests::test_support::cluster_from_yaml;
    use crate::manifests::tls::PlaceholderIssuer;
    use crate::manifests::{labels, names};

    fn objects(yaml: &str) -> Vec<ManagedObject> {
        let (pg, settings) = cluster_from_yaml(yaml);
        desired_objects(
            &Cluster::new(&pg, "ns", &settings),
            &ExistingSecrets::new(),
            &[],
            &mut SeededPasswords::default(),
            &mut PlaceholderIssuer::default(),
        )
        .unwrap()
    }

    fn kinds_and_names(objects: &[ManagedObject]) -> Vec<String> {
        objects
            .iter()
            .map(|o| format!("{}/{}", o.kind(), o.name()))
            .collect()
    }

    #[test]
    fn every_object_is_owned_by_the_postgres_and_carries_the_cluster_labels() {
        for object in objects("external: true\nbackup:\n  enabled: true\n  s3Bucket: h/b\n") {
            let meta = object.metadata();
            let owner = &meta.owner_references.as_ref().unwrap()[0];
            assert_eq!(
                (owner.kind.as_str(), owner.name.as_str(), owner.controller),
                ("Postgres", "demo", Some(true))
            );
            assert_eq!(meta.namespace.as_deref(), Some("ns"));
            let object_labels = meta.labels.as_ref().unwrap();
            assert_eq!(object_labels[labels::CLUSTER], "demo", "{}", object.name());
            assert_eq!(object_labels["app"], "postgres");
            let json = object.to_json().unwrap();
            assert_eq!(json["kind"], object.kind());
            assert!(json["apiVersion"].is_string());
        }
    }

    #[test]
    fn identities_and_credentials_come_before_the_instances() {
        let list = kinds_and_names(&objects("{}"));
        let position = |name: &str| list.iter().position(|o| o == name).unwrap();
        assert_eq!(position("ServiceAccount/postgres-demo"), 0);
        assert!(position("Secret/postgres-demo-superuser") < position("StatefulSet/postgres-demo"));
        assert!(position("ConfigMap/postgres-demo-config") < position("StatefulSet/postgres-demo"));
        assert_eq!(list.last().unwrap(), "StatefulSet/postgres-demo");
    }

    #[test]
    fn optional_objects_follow_the_spec() {
        let plain = kinds_and_names(&objects("{}"));
        let full = kinds_and_names(&objects(
            "external: true\nbackup:\n  enabled: true\n  s3Bucket: h/b\n  s3AccessKey: a\n  s3SecretKey: b\n  resticPassword: c\n",
        ));
        let added: Vec<&String> = full.iter().filter(|o| !plain.contains(o)).collect();
        assert_eq!(
            added,
            [
                "Secret/postgres-demo-backup",
                "Service/postgres-demo-external-write",
                "CronJob/postgres-demo-backup"
            ]
        );
    }

    #[test]
    fn object_names_are_unique_per_kind_and_fit_63_characters_for_the_longest_cluster_name() {
        let longest = "a".repeat(crate::api::MAX_NAME_LENGTH);
        let spec: crate::api::PostgresSpec =
            serde_yaml::from_str("external: true\nbackup:\n  enabled: true\n  s3Bucket: h/b\n")
                .unwrap();
        let pg = crate::api::Postgres::new(&longest, spec);
        let settings = crate::manifests::OperatorSettings::default();
        let list = desired_objects(
            &Cluster::new(&pg, "ns", &settings),
            &ExistingSecrets::new(),
            &[],
            &mut SeededPasswords::default(),
            &mut PlaceholderIssuer::default(),
        )
        .unwrap();
        let all = kinds_and_names(&list);
        let unique: std::collections::BTreeSet<&String> = all.iter().collect();
        assert_eq!(unique.len(), all.len());
        for object in &list {
            assert!(object.name().len() <= 63, "{}", object.name());
        }
        assert!(names::pod(&longest, 99).len() <= 63);
    }
}
