//! Disruption and network policy: voluntary evictions never take the primary or break
//! the synchronous quorum; the instance manager's port is reachable only from inside.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::pod::{METRICS_PORT, POSTGRES_PORT, STATUS_PORT};
use super::{Cluster, labels, names};

fn selector(match_labels: BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(match_labels),
        ..LabelSelector::default()
    }
}

fn budget(cluster: &Cluster, name: String, role: &str, min_available: i32) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: cluster.meta(name, labels::COMPONENT_DATABASE),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(min_available)),
            selector: Some(selector(labels::role_selector(&cluster.name, role))),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

/// With two or more instances: the primary's budget (minAvailable 1: a drain waits for
/// the operator to switch over) and the standbys' (one at a time, never fewer than
/// `minSyncReplicas`). A single instance gets none: nothing could take over, and a
/// budget would block node drains forever.
pub fn desired_pod_disruption_budgets(cluster: &Cluster) -> Vec<PodDisruptionBudget> {
    let replicas = cluster.spec().replicas;
    if replicas < 2 {
        return Vec::new();
    }
    let standbys = replicas - 1;
    let standby_floor = cluster
        .spec()
        .quorum
        .min_sync_replicas
        .max(standbys - 1)
        .max(0);
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
            standby_floor,
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

/// 5432 is open to clients (the Postgres API has no client list; tenants are isolated by
/// namespace policies) and 9187 to Prometheus; the status port 8000, which drives
/// failover decisions, only to the cluster's own pods and the operator.
pub fn desired_network_policy(cluster: &Cluster) -> NetworkPolicy {
    let operator = NetworkPolicyPeer {
        namespace_selector: Some(selector(BTreeMap::from([(
            "kubernetes.io/metadata.name".to_string(),
            cluster.settings.operator_namespace.clone(),
        )]))),
        pod_selector: Some(selector(BTreeMap::from([(
            labels::NAME.to_string(),
            "postgres-operator".to_string(),
        )]))),
        ..NetworkPolicyPeer::default()
    };
    let instances = NetworkPolicyPeer {
        pod_selector: Some(selector(cluster.selector())),
        ..NetworkPolicyPeer::default()
    };
    NetworkPolicy {
        metadata: cluster.meta(names::prefix(&cluster.name), labels::COMPONENT_DATABASE),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(selector(cluster.selector())),
            policy_types: Some(vec!["Ingress".to_string()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    ports: Some(vec![tcp(POSTGRES_PORT), tcp(METRICS_PORT)]),
                    ..NetworkPolicyIngressRule::default()
                },
                NetworkPolicyIngressRule {
                    ports: Some(vec![tcp(STATUS_PORT)]),
                    from: Some(vec![instances, operator]),
                },
            ]),
            ..NetworkPolicySpec::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::cluster_from_yaml;

    fn budgets(yaml: &str) -> Vec<(String, String, i32)> {
        let (pg, settings) = cluster_from_yaml(yaml);
        desired_pod_disruption_budgets(&Cluster::new(&pg, "ns", &settings))
            .into_iter()
            .map(|b| {
                let spec = b.spec.unwrap();
                let role = spec.selector.unwrap().match_labels.unwrap()[labels::ROLE].clone();
                let IntOrString::Int(min) = spec.min_available.unwrap() else {
                    panic!()
                };
                (b.metadata.name.unwrap(), role, min)
            })
            .collect()
    }

    #[test]
    fn a_single_instance_has_no_budget() {
        assert!(budgets("replicas: 1\n").is_empty());
    }

    #[test]
    fn the_primary_is_never_evicted_and_standbys_go_one_at_a_time() {
        assert_eq!(
            budgets("replicas: 3\n"),
            [
                (
                    "postgres-demo-primary".to_string(),
                    "primary".to_string(),
                    1
                ),
                ("postgres-demo".to_string(), "replica".to_string(), 1)
            ]
        );
        assert_eq!(budgets("replicas: 2\n")[1].2, 0);
        assert_eq!(budgets("replicas: 5\n")[1].2, 3);
    }

    #[test]
    fn standby_evictions_keep_the_minimum_sync_quorum() {
        assert_eq!(
            budgets("replicas: 3\nquorum:\n  minSyncReplicas: 2\n  maxSyncReplicas: 2\n")[1].2,
            2
        );
        assert_eq!(
            budgets("replicas: 5\nquorum:\n  minSyncReplicas: 2\n  maxSyncReplicas: 3\n")[1].2,
            3
        );
    }

    #[test]
    fn status_port_is_only_open_to_instances_and_the_operator() {
        let (pg, settings) = cluster_from_yaml("{}");
        let policy = desired_network_policy(&Cluster::new(&pg, "ns", &settings));
        let rules = policy.spec.unwrap().ingress.unwrap();
        let ports = |r: &NetworkPolicyIngressRule| -> Vec<IntOrString> {
            r.ports
                .clone()
                .unwrap()
                .into_iter()
                .map(|p| p.port.unwrap())
                .collect()
        };
        assert_eq!(
            ports(&rules[0]),
            [IntOrString::Int(5432), IntOrString::Int(9187)]
        );
        assert!(rules[0].from.is_none());
        assert_eq!(ports(&rules[1]), [IntOrString::Int(8000)]);
        let from = rules[1].from.clone().unwrap();
        assert_eq!(from.len(), 2);
        let operator_ns = from[1]
            .namespace_selector
            .clone()
            .unwrap()
            .match_labels
            .unwrap();
        assert_eq!(
            operator_ns["kubernetes.io/metadata.name"],
            "postgres-operator"
        );
    }
}
