//! How Prometheus finds the instances' metrics: a Prometheus Operator `PodMonitor` per
//! cluster when the operator is told the CRD exists, and the `prometheus.io/*` pod
//! annotations that annotation-based scrape configurations follow.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use serde::{Deserialize, Serialize};

use super::pod::{METRICS_PORT, METRICS_PORT_NAME};
use super::{Cluster, labels, names};

/// Where an instance serves its metrics.
pub const METRICS_PATH: &str = "/metrics";

/// The part of the Prometheus Operator's `PodMonitor` the operator writes.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "monitoring.coreos.com",
    version = "v1",
    kind = "PodMonitor",
    namespaced,
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct PodMonitorSpec {
    pub selector: LabelSelector,
    pub pod_metrics_endpoints: Vec<PodMetricsEndpoint>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodMetricsEndpoint {
    /// The container port's name.
    pub port: String,
    pub path: String,
}

/// `PodMonitor` `postgres-<name>` selecting the cluster's instances, when the operator's
/// setting asks for PodMonitors.
pub fn desired_pod_monitor(cluster: &Cluster) -> Option<PodMonitor> {
    if !cluster.settings.pod_monitors {
        return None;
    }
    let mut monitor = PodMonitor::new(
        &names::prefix(&cluster.name),
        PodMonitorSpec {
            selector: labels::match_labels(cluster.selector()),
            pod_metrics_endpoints: vec![PodMetricsEndpoint {
                port: METRICS_PORT_NAME.to_string(),
                path: METRICS_PATH.to_string(),
            }],
        },
    );
    monitor.metadata = cluster.meta(names::prefix(&cluster.name), labels::COMPONENT_DATABASE);
    Some(monitor)
}

/// The `prometheus.io/*` annotations of an instance pod.
pub fn scrape_annotations() -> BTreeMap<String, String> {
    [
        ("prometheus.io/scrape", "true".to_string()),
        ("prometheus.io/port", METRICS_PORT.to_string()),
        ("prometheus.io/path", METRICS_PATH.to_string()),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_string(), value))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::test_support::cluster_from_yaml;

    #[test]
    fn a_pod_monitor_selects_the_instances_metrics_port_only_when_asked() {
        let (pg, mut settings) = cluster_from_yaml("{}");
        assert!(desired_pod_monitor(&Cluster::new(&pg, "ns", &settings)).is_none());
        settings.pod_monitors = true;
        let cluster = Cluster::new(&pg, "ns", &settings);
        let monitor = desired_pod_monitor(&cluster).unwrap();
        let json = serde_json::to_value(&monitor).unwrap();
        assert_eq!(json["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(json["kind"], "PodMonitor");
        assert_eq!(json["metadata"]["name"], "postgres-demo");
        assert_eq!(json["metadata"]["namespace"], "ns");
        assert_eq!(json["metadata"]["ownerReferences"][0]["kind"], "Postgres");
        assert_eq!(
            json["spec"]["selector"]["matchLabels"],
            serde_json::to_value(cluster.selector()).unwrap()
        );
        assert_eq!(
            json["spec"]["podMetricsEndpoints"],
            serde_json::json!([{"port": "metrics", "path": "/metrics"}])
        );
    }
}
