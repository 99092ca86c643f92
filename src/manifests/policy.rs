//! Disruption and network policy: voluntary evictions never take the primary or break
//! the synchronous quorum; the instance manager's port is reachable only from inside.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::pod::{METRICS_PORT, POSTGRES_PORT, STATUS_PORT};
use super::{Cluster, labels, names};

/// Label Kubernetes puts on every namespace with its name.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

fn budget(cluster: &Cluster, name: String, role: &str, min_available: i32) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: cluster.meta(name, labels::COMPONENT_DATABASE),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(min_available)),
            selector: Some(labels::match_labels(labels::role_selector(
                &cluster.name,
                role,
            ))),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

/// With two or more instances, two budgets:
/// - the primary's, minAvailable 1: a drain waits until the operator has switched over,
///   after which the old primary is a standby and the new one is protected;
/// - the standbys', minAvailable max(`minSyncReplicas`, standbys − 1): one standby at a
///   time, and never fewer than the synchronous quorum needs to acknowledge commits.
///
/// A single instance gets none: nothing could take over, so a budget would only block
/// node drains forever.
pub fn desired_pod_disruption_budgets(cluster: &Cluster) -> Vec<PodDisruptionBudget> {
    let replicas = cluster.spec().replicas;
    if replicas < 2 {
        return Vec::new();
    }
    let standbys = replicas - 1;
    let standbys_available = cluster.spec().quorum.min_sync_replicas.max(standbys - 1);
    vec![
        budget(
            cluster,
            names::pdb_primary(&cluster.name),
            labels::ROLE_PRIMARY,
            1,
        ),
        budget(
            cluster,
            names::pdb_standbys(&cluster.name),
            labels::ROLE_REPLICA,
            standbys_available,
        ),
    ]
}

fn tcp(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".to_string()),
        ..NetworkPolicyPort::default()
    }
}

/// Ingress on `ports` from `peers`; `None` = from anywhere.
fn ingress(ports: &[i32], peers: Option<Vec<NetworkPolicyPeer>>) -> NetworkPolicyIngressRule {
    NetworkPolicyIngressRule {
        ports: Some(ports.iter().copied().map(tcp).collect()),
        from: peers,
    }
}

/// The operator's pods, in the operator's namespace.
fn operator_peer(cluster: &Cluster) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(labels::match_labels(BTreeMap::from([(
            NAMESPACE_NAME_LABEL.to_string(),
            cluster.settings.operator_namespace.clone(),
        )]))),
        pod_selector: Some(labels::match_labels(BTreeMap::from([(
            labels::NAME.to_string(),
            labels::OPERATOR_NAME_VALUE.to_string(),
        )]))),
        ..NetworkPolicyPeer::default()
    }
}

/// NetworkPolicy `postgres-<name>` on the cluster's pods (ingress only):
/// - 5432 from anywhere: the Postgres API has no list of client applications, so
///   clients are limited by pg_hba (TLS, passwords) and tenants by namespace policies;
///   with the operator's `client_peers`, only from those, the cluster's own instances
///   (replication, clones, rewinds) and its backup Jobs;
/// - 8000, the instance manager's status, which drives failover decisions, only from
///   the cluster's own instances and the operator;
/// - 9187 from anywhere, for whichever Prometheus scrapes it; with the operator's
///   `metrics_peers`, only from those.
pub fn desired_network_policy(cluster: &Cluster) -> NetworkPolicy {
    let instances = NetworkPolicyPeer {
        pod_selector: Some(labels::match_labels(cluster.selector())),
        ..NetworkPolicyPeer::default()
    };
    let settings = &cluster.settings;
    let open = |peers: &[NetworkPolicyPeer]| (!peers.is_empty()).then(|| peers.to_vec());
    let mut rules = if settings.client_peers.is_empty() && settings.metrics_peers.is_empty() {
        vec![ingress(&[POSTGRES_PORT, METRICS_PORT], None)]
    } else {
        let clients = open(&settings.client_peers).map(|peers| {
            let backup_jobs = NetworkPolicyPeer {
                pod_selector: Some(labels::match_labels(super::cronjob::backup_pod_labels(
                    cluster,
                ))),
                ..NetworkPolicyPeer::default()
            };
            [instances.clone(), backup_jobs]
                .into_iter()
                .chain(peers)
                .collect()
        });
        vec![
            ingress(&[POSTGRES_PORT], clients),
            ingress(&[METRICS_PORT], open(&settings.metrics_peers)),
        ]
    };
    rules.push(ingress(
        &[STATUS_PORT],
        Some(vec![instances, operator_peer(cluster)]),
    ));
    NetworkPolicy {
        metadata: cluster.meta(names::prefix(&cluster.name), labels::COMPONENT_DATABASE),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(labels::match_labels(cluster.selector())),
            policy_types: Some(vec!["Ingress".to_string()]),
            ingress: Some(rules),
            ..NetworkPolicySpec::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::OperatorSettings;
    use crate::manifests::test_support::cluster_from_yaml;

    /// (name, role selected, minAvailable) of each budget.
    fn budgets(yaml: &str) -> Vec<(String, String, i32)> {
        let (postgres, settings) = cluster_from_yaml(yaml);
        desired_pod_disruption_budgets(&Cluster::new(&postgres, "tenant", &settings))
            .into_iter()
            .map(|budget| {
                let spec = budget.spec.unwrap();
                let selected = spec.selector.unwrap().match_labels.unwrap();
                assert_eq!(
                    selected.get(labels::CLUSTER).map(String::as_str),
                    Some("demo")
                );
                let min_available = match spec.min_available {
                    Some(IntOrString::Int(count)) => count,
                    other => panic!("minAvailable {other:?} is not a count"),
                };
                (
                    budget.metadata.name.unwrap(),
                    selected[labels::ROLE].clone(),
                    min_available,
                )
            })
            .collect()
    }

    fn standbys_available(yaml: &str) -> i32 {
        budgets(yaml)[1].2
    }

    fn network_policy(settings: &OperatorSettings) -> NetworkPolicySpec {
        let (postgres, _) = cluster_from_yaml("{}");
        desired_network_policy(&Cluster::new(&postgres, "tenant", settings))
            .spec
            .unwrap()
    }

    fn rule_for(spec: &NetworkPolicySpec, port: i32) -> NetworkPolicyIngressRule {
        spec.ingress
            .as_ref()
            .unwrap()
            .iter()
            .find(|rule| {
                rule.ports
                    .iter()
                    .flatten()
                    .any(|p| p.port == Some(IntOrString::Int(port)))
            })
            .cloned()
            .unwrap()
    }

    #[test]
    fn a_single_instance_has_no_budget() {
        assert!(budgets("replicas: 1\n").is_empty());
    }

    #[test]
    fn the_primary_is_never_evicted_voluntarily() {
        assert_eq!(
            budgets("replicas: 3\n")[0],
            (
                "postgres-demo-primary".to_string(),
                "primary".to_string(),
                1
            )
        );
        assert_eq!(budgets("replicas: 2\n")[0].2, 1);
    }

    #[test]
    fn standbys_are_evicted_one_at_a_time() {
        assert_eq!(
            budgets("replicas: 3\n")[1],
            ("postgres-demo".to_string(), "replica".to_string(), 1)
        );
        assert_eq!(standbys_available("replicas: 2\n"), 0);
        assert_eq!(standbys_available("replicas: 5\n"), 3);
    }

    #[test]
    fn standby_evictions_keep_the_minimum_sync_quorum() {
        assert_eq!(
            standbys_available(
                "replicas: 3\nquorum:\n  minSyncReplicas: 2\n  maxSyncReplicas: 2\n"
            ),
            2
        );
        assert_eq!(
            standbys_available(
                "replicas: 2\nquorum:\n  minSyncReplicas: 1\n  maxSyncReplicas: 1\n"
            ),
            1
        );
        assert_eq!(
            standbys_available(
                "replicas: 5\nquorum:\n  minSyncReplicas: 2\n  maxSyncReplicas: 3\n"
            ),
            3,
            "one at a time already keeps more than the quorum"
        );
    }

    #[test]
    fn budgets_are_owned_by_the_cluster() {
        let (postgres, settings) = cluster_from_yaml("replicas: 2\n");
        for budget in desired_pod_disruption_budgets(&Cluster::new(&postgres, "tenant", &settings))
        {
            assert_eq!(budget.metadata.namespace.as_deref(), Some("tenant"));
            assert_eq!(budget.metadata.owner_references.unwrap()[0].name, "demo");
        }
    }

    #[test]
    fn the_policy_covers_only_this_clusters_pods_and_only_ingress() {
        let spec = network_policy(&OperatorSettings::default());
        assert_eq!(
            spec.pod_selector,
            Some(labels::match_labels(labels::selector("demo")))
        );
        assert_eq!(spec.policy_types, Some(vec!["Ingress".to_string()]));
        assert_eq!(spec.ingress.as_ref().unwrap().len(), 2);
    }

    #[test]
    fn clients_and_prometheus_reach_postgresql_and_metrics_from_anywhere() {
        let spec = network_policy(&OperatorSettings::default());
        assert_eq!(rule_for(&spec, 5432).from, None);
        assert_eq!(rule_for(&spec, 9187).from, None);
    }

    #[test]
    fn named_clients_and_scrapers_narrow_postgresql_and_metrics() {
        let peer = |namespace: &str| NetworkPolicyPeer {
            namespace_selector: Some(labels::match_labels(BTreeMap::from([(
                NAMESPACE_NAME_LABEL.to_string(),
                namespace.to_string(),
            )]))),
            ..NetworkPolicyPeer::default()
        };
        let settings = OperatorSettings {
            client_peers: vec![peer("apps")],
            metrics_peers: vec![peer("monitoring")],
            ..OperatorSettings::default()
        };
        let spec = network_policy(&settings);
        let clients = rule_for(&spec, 5432).from.unwrap();
        // The cluster's own instances (replication), its backup Jobs, then the clients.
        assert_eq!(clients.len(), 3);
        assert_eq!(
            clients[0].pod_selector,
            Some(labels::match_labels(labels::selector("demo")))
        );
        let jobs = clients[1]
            .pod_selector
            .clone()
            .unwrap()
            .match_labels
            .unwrap();
        assert_eq!(jobs[labels::CLUSTER], "demo");
        assert_eq!(jobs[labels::NAME], "postgres-backup");
        assert_eq!(clients[1].namespace_selector, None, "same namespace only");
        assert_eq!(clients[2], peer("apps"));
        assert_eq!(rule_for(&spec, 9187).from, Some(vec![peer("monitoring")]));
        assert_eq!(rule_for(&spec, 5432).ports.unwrap().len(), 1);

        // Only scrapers named: clients still from anywhere.
        let settings = OperatorSettings {
            metrics_peers: vec![peer("monitoring")],
            ..OperatorSettings::default()
        };
        let spec = network_policy(&settings);
        assert_eq!(rule_for(&spec, 5432).from, None);
        assert_eq!(rule_for(&spec, 9187).from, Some(vec![peer("monitoring")]));
    }

    #[test]
    fn status_port_is_only_open_to_instances_and_the_operator() {
        let settings = OperatorSettings {
            operator_namespace: "cozy-postgres".to_string(),
            ..OperatorSettings::default()
        };
        let spec = network_policy(&settings);
        let peers = rule_for(&spec, 8000).from.unwrap();
        assert_eq!(peers.len(), 2);
        assert_eq!(
            peers[0].pod_selector,
            Some(labels::match_labels(labels::selector("demo")))
        );
        assert_eq!(peers[0].namespace_selector, None, "same namespace only");
        let operator_namespace = peers[1].namespace_selector.clone().unwrap();
        assert_eq!(
            operator_namespace.match_labels.unwrap()["kubernetes.io/metadata.name"],
            "cozy-postgres"
        );
        let operator_pods = peers[1].pod_selector.clone().unwrap();
        assert_eq!(
            operator_pods.match_labels.unwrap()["app.kubernetes.io/name"],
            "postgres-operator"
        );
    }
}
