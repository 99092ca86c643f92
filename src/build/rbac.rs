//! The identity of the instance manager and backup jobs: a ServiceAccount with a Role
//! that reads only this cluster's objects and records backups.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};

use super::{Cluster, labels, names};
use crate::api::GROUP;

/// ServiceAccount `postgres-<name>`.
pub fn desired_service_account(cluster: &Cluster) -> ServiceAccount {
    ServiceAccount {
        metadata: cluster.meta(names::prefix(&cluster.name), labels::COMPONENT_DATABASE),
        automount_service_account_token: Some(true),
        ..ServiceAccount::default()
    }
}

fn rule(group: &str, resources: &[&str], verbs: &[&str], names: Option<Vec<String>>) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        resource_names: names,
        ..PolicyRule::default()
    }
}

/// Role `postgres-<name>`. `resourceNames` pin reads to this cluster's objects
/// (Kubernetes honours them for get, and for list/watch with a name field selector).
pub fn desired_role(cluster: &Cluster) -> Role {
    let name = &cluster.name;
    let mut secrets = vec![
        names::secret_users(name),
        names::secret_credentials(name),
        names::secret_superuser(name),
        names::secret_replication(name),
        names::secret_backup(name),
    ];
    if let Some(reference) = &cluster.spec().backup.credentials_secret_ref {
        secrets.push(reference.name.clone());
    }
    let read = ["get", "list", "watch"];
    Role {
        metadata: cluster.meta(names::prefix(name), labels::COMPONENT_DATABASE),
        rules: Some(vec![
            rule(GROUP, &["postgreses"], &read, Some(vec![name.clone()])),
            rule(
                GROUP,
                &["postgreses/status"],
                &["get"],
                Some(vec![name.clone()]),
            ),
            rule("", &["secrets"], &read, Some(secrets)),
            rule(
                "",
                &["configmaps"],
                &read,
                Some(vec![names::config_map(name)]),
            ),
            // Instances find each other (and the primary) through their pods.
            rule("", &["pods"], &read, None),
            // Backup jobs record each run.
            rule(
                GROUP,
                &["postgresbackups"],
                &["create", "get", "list", "watch"],
                None,
            ),
            rule(
                GROUP,
                &["postgresbackups/status"],
                &["get", "update", "patch"],
                None,
            ),
        ]),
    }
}

/// RoleBinding `postgres-<name>` of the Role to the ServiceAccount.
pub fn desired_role_binding(cluster: &Cluster) -> RoleBinding {
    let name = names::prefix(&cluster.name);
    RoleBinding {
        metadata: cluster.meta(name.clone(), labels::COMPONENT_DATABASE),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_string(),
            kind: "Role".to_string(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_string(),
            name,
            namespace: Some(cluster.namespace.clone()),
            ..Subject::default()
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::cluster_from_yaml;

    #[test]
    fn the_role_reads_only_this_clusters_secrets() {
        let (pg, settings) =
            cluster_from_yaml("backup:\n  credentialsSecretRef:\n    name: my-s3\n");
        let role = desired_role(&Cluster::new(&pg, "ns", &settings));
        let rules = role.rules.unwrap();
        let secrets = rules
            .iter()
            .find(|r| r.resources.as_ref().unwrap()[0] == "secrets")
            .unwrap();
        let allowed = secrets.resource_names.clone().unwrap();
        assert!(allowed.contains(&"postgres-demo-superuser".to_string()));
        assert!(allowed.contains(&"my-s3".to_string()));
        assert!(
            secrets
                .verbs
                .iter()
                .all(|v| ["get", "list", "watch"].contains(&v.as_str()))
        );
        assert!(
            rules
                .iter()
                .all(|r| !r.verbs.contains(&"delete".to_string()))
        );
    }

    #[test]
    fn the_binding_ties_the_role_to_the_service_account_in_the_namespace() {
        let (pg, settings) = cluster_from_yaml("{}");
        let cluster = Cluster::new(&pg, "tenant", &settings);
        let binding = desired_role_binding(&cluster);
        assert_eq!(binding.role_ref.name, "postgres-demo");
        let subject = &binding.subjects.unwrap()[0];
        assert_eq!(
            subject.name,
            desired_service_account(&cluster).metadata.name.unwrap()
        );
        assert_eq!(subject.namespace.as_deref(), Some("tenant"));
    }
}
