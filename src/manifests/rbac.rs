//! The identity of the instance manager and backup jobs: a ServiceAccount with a Role
//! that reads only this cluster's objects and records backups.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};

use super::{Cluster, labels, names};
use crate::api::GROUP;

const CORE_GROUP: &str = "";
const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
const EVENTS_GROUP: &str = "events.k8s.io";
const READ: &[&str] = &["get", "list", "watch"];

/// ServiceAccount `postgres-<name>`; its token is mounted because the instance manager
/// watches its Postgres.
pub fn desired_service_account(cluster: &Cluster) -> ServiceAccount {
    ServiceAccount {
        metadata: cluster.meta(names::prefix(&cluster.name), labels::COMPONENT_DATABASE),
        automount_service_account_token: Some(true),
        ..ServiceAccount::default()
    }
}

/// `resource_names: None` = every object of the kind in the namespace.
fn rule(
    group: &str,
    resource: &str,
    verbs: &[&str],
    resource_names: Option<Vec<String>>,
) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(vec![resource.to_string()]),
        verbs: verbs.iter().map(|verb| verb.to_string()).collect(),
        resource_names,
        ..PolicyRule::default()
    }
}

/// Secrets the pods read: the cluster's own, and the user's backup credentials when
/// the spec references them.
fn readable_secrets(cluster: &Cluster) -> Vec<String> {
    let name = &cluster.name;
    let mut secrets = vec![
        names::secret_users(name),
        names::secret_credentials(name),
        names::secret_superuser(name),
        names::secret_replication(name),
        names::secret_server(name),
        names::secret_backup(name),
    ];
    if let Some(reference) = &cluster.spec().backup.credentials_secret_ref
        && !secrets.contains(&reference.name)
    {
        secrets.push(reference.name.clone());
    }
    secrets
}

/// The cluster's pods, `postgres-<name>-0` to the last replica. Never an empty list, which
/// RBAC would read as every name (validation refuses fewer than one replica anyway).
fn pod_names(cluster: &Cluster) -> Vec<String> {
    (0..cluster.spec().replicas.max(1))
        .map(|ordinal| names::pod(&cluster.name, ordinal))
        .collect()
}

/// Role `postgres-<name>`, least privilege. `resourceNames` pin reads to this cluster's
/// objects: Kubernetes honours them for get, and for list/watch restricted to one name
/// by a field selector, which is how the pods watch. They cannot restrict `create`
/// (the name is not known yet) nor discovery of pods, so those rules have none.
pub fn desired_role(cluster: &Cluster) -> Role {
    let name = &cluster.name;
    Role {
        metadata: cluster.meta(names::prefix(name), labels::COMPONENT_DATABASE),
        rules: Some(vec![
            rule(GROUP, "postgreses", READ, Some(vec![name.clone()])),
            rule(
                GROUP,
                "postgreses/status",
                &["get"],
                Some(vec![name.clone()]),
            ),
            rule(CORE_GROUP, "secrets", READ, Some(readable_secrets(cluster))),
            rule(
                CORE_GROUP,
                "configmaps",
                READ,
                Some(vec![names::config_map(name)]),
            ),
            // Instances find each other, and the primary, through their pods.
            rule(CORE_GROUP, "pods", READ, None),
            // Each instance reports a configuration PostgreSQL refused on its own pod
            // (`pod_report`). No `create`: the pod always exists, so its apply never
            // creates one.
            rule(CORE_GROUP, "pods", &["patch"], Some(pod_names(cluster))),
            // Each backup run is a PostgresBackup the job creates and then completes.
            rule(
                GROUP,
                "postgresbackups",
                &["create", "get", "list", "watch"],
                None,
            ),
            rule(
                GROUP,
                "postgresbackups/status",
                &["get", "update", "patch"],
                None,
            ),
            // Instances report on their Postgres (e.g. a setting PostgreSQL refused);
            // a repeated event is a patch of the first.
            rule(EVENTS_GROUP, "events", &["create", "patch"], None),
        ]),
    }
}

/// RoleBinding `postgres-<name>` of the Role to the ServiceAccount.
pub fn desired_role_binding(cluster: &Cluster) -> RoleBinding {
    let name = names::prefix(&cluster.name);
    RoleBinding {
        metadata: cluster.meta(name.clone(), labels::COMPONENT_DATABASE),
        role_ref: RoleRef {
            api_group: RBAC_GROUP.to_string(),
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
    use crate::manifests::test_support::cluster_from_yaml;

    fn role_rules(yaml: &str) -> Vec<PolicyRule> {
        let (postgres, settings) = cluster_from_yaml(yaml);
        desired_role(&Cluster::new(&postgres, "tenant", &settings))
            .rules
            .unwrap()
    }

    fn rule_for(rules: &[PolicyRule], resource: &str) -> PolicyRule {
        rules
            .iter()
            .find(|rule| rule.resources.as_deref() == Some(&[resource.to_string()][..]))
            .cloned()
            .unwrap_or_else(|| panic!("no rule for {resource}"))
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| item.to_string()).collect()
    }

    #[test]
    fn the_role_lets_an_instance_read_every_secret_it_watches() {
        let rules = role_rules("{}");
        let secrets = rule_for(&rules, "secrets");
        let readable = secrets.resource_names.unwrap();
        for wanted in crate::instance::source::instance_secret_names("demo") {
            assert!(
                readable.contains(&wanted),
                "{wanted} is not readable: {readable:?}"
            );
        }
        assert!(
            !readable.contains(&names::secret_ca("demo")),
            "the CA's key stays with the operator"
        );
    }

    #[test]
    fn identity_objects_share_the_cluster_prefix_and_owner() {
        let (postgres, settings) = cluster_from_yaml("{}");
        let cluster = Cluster::new(&postgres, "tenant", &settings);
        for metadata in [
            desired_service_account(&cluster).metadata,
            desired_role(&cluster).metadata,
            desired_role_binding(&cluster).metadata,
        ] {
            assert_eq!(metadata.name.as_deref(), Some("postgres-demo"));
            assert_eq!(metadata.namespace.as_deref(), Some("tenant"));
            assert_eq!(metadata.owner_references.unwrap()[0].name, "demo");
        }
    }

    #[test]
    fn the_service_account_token_is_mounted() {
        let (postgres, settings) = cluster_from_yaml("{}");
        let account = desired_service_account(&Cluster::new(&postgres, "tenant", &settings));
        assert_eq!(account.automount_service_account_token, Some(true));
    }

    #[test]
    fn the_role_reads_only_its_own_postgres() {
        let rules = role_rules("{}");
        let postgres = rule_for(&rules, "postgreses");
        assert_eq!(postgres.api_groups, Some(strings(&["apps.cozystack.io"])));
        assert_eq!(postgres.verbs, strings(READ));
        assert_eq!(postgres.resource_names, Some(strings(&["demo"])));
        let status = rule_for(&rules, "postgreses/status");
        assert_eq!(status.verbs, strings(&["get"]));
        assert_eq!(status.resource_names, Some(strings(&["demo"])));
    }

    #[test]
    fn the_role_reads_only_this_clusters_secrets_and_config() {
        let rules = role_rules("{}");
        let secrets = rule_for(&rules, "secrets");
        assert_eq!(secrets.verbs, strings(READ));
        assert_eq!(
            secrets.resource_names,
            Some(strings(&[
                "postgres-demo",
                "postgres-demo-credentials",
                "postgres-demo-superuser",
                "postgres-demo-replication",
                "postgres-demo-server",
                "postgres-demo-backup",
            ]))
        );
        let config = rule_for(&rules, "configmaps");
        assert_eq!(config.verbs, strings(READ));
        assert_eq!(
            config.resource_names,
            Some(strings(&["postgres-demo-config"]))
        );
    }

    #[test]
    fn a_referenced_backup_credentials_secret_becomes_readable_once() {
        let rules = role_rules("backup:\n  credentialsSecretRef:\n    name: my-s3\n");
        let allowed = rule_for(&rules, "secrets").resource_names.unwrap();
        assert!(allowed.contains(&"my-s3".to_string()));
        let rules =
            role_rules("backup:\n  credentialsSecretRef:\n    name: postgres-demo-backup\n");
        let allowed = rule_for(&rules, "secrets").resource_names.unwrap();
        assert_eq!(
            allowed
                .iter()
                .filter(|secret| *secret == "postgres-demo-backup")
                .count(),
            1
        );
    }

    #[test]
    fn instances_discover_each_other_through_any_pod_in_the_namespace() {
        let pods = rule_for(&role_rules("{}"), "pods");
        assert_eq!(pods.api_groups, Some(strings(&[""])));
        assert_eq!(pods.verbs, strings(READ));
        assert_eq!(pods.resource_names, None);
    }

    #[test]
    fn instances_may_patch_only_the_clusters_own_pods() {
        let rules = role_rules("replicas: 3\n");
        let patch: Vec<&PolicyRule> = rules
            .iter()
            .filter(|rule| rule.resources.as_deref() == Some(&["pods".to_string()][..]))
            .filter(|rule| {
                rule.verbs
                    .iter()
                    .any(|verb| verb != "get" && verb != "list" && verb != "watch")
            })
            .collect();
        assert_eq!(patch.len(), 1);
        assert_eq!(patch[0].verbs, strings(&["patch"]));
        assert_eq!(
            patch[0].resource_names,
            Some(strings(&[
                "postgres-demo-0",
                "postgres-demo-1",
                "postgres-demo-2"
            ]))
        );
    }

    #[test]
    fn backup_jobs_create_and_complete_their_records() {
        let rules = role_rules("{}");
        assert_eq!(
            rule_for(&rules, "postgresbackups").verbs,
            strings(&["create", "get", "list", "watch"])
        );
        assert_eq!(
            rule_for(&rules, "postgresbackups/status").verbs,
            strings(&["get", "update", "patch"])
        );
    }

    #[test]
    fn instances_record_events_and_never_read_them() {
        let events = rule_for(&role_rules("{}"), "events");
        assert_eq!(events.api_groups, Some(strings(&["events.k8s.io"])));
        assert_eq!(events.verbs, strings(&["create", "patch"]));
    }

    #[test]
    fn nothing_is_deleted_and_only_backup_records_events_and_own_pods_are_written() {
        for rule in role_rules("{}") {
            let resource = &rule.resources.as_ref().unwrap()[0];
            assert!(
                !rule.verbs.iter().any(|verb| verb == "delete"),
                "{resource}"
            );
            let writes = rule
                .verbs
                .iter()
                .any(|verb| ["create", "update", "patch"].contains(&verb.as_str()));
            let own_pods = resource == "pods" && rule.resource_names.is_some();
            assert!(
                !writes
                    || resource.starts_with("postgresbackups")
                    || resource == "events"
                    || own_pods,
                "{resource}"
            );
        }
    }

    #[test]
    fn the_binding_ties_the_role_to_the_service_account_in_the_namespace() {
        let (postgres, settings) = cluster_from_yaml("{}");
        let cluster = Cluster::new(&postgres, "tenant", &settings);
        let binding = desired_role_binding(&cluster);
        assert_eq!(binding.role_ref.api_group, "rbac.authorization.k8s.io");
        assert_eq!(binding.role_ref.kind, "Role");
        assert_eq!(
            Some(binding.role_ref.name),
            desired_role(&cluster).metadata.name
        );
        let subject = &binding.subjects.unwrap()[0];
        assert_eq!(subject.kind, "ServiceAccount");
        assert_eq!(
            Some(subject.name.clone()),
            desired_service_account(&cluster).metadata.name
        );
        assert_eq!(subject.namespace.as_deref(), Some("tenant"));
    }
}
