//! The Services of a cluster: read-write (primary), read-only (standbys), any instance,
//! the headless Service behind pod DNS names, and the optional external LoadBalancer.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::pod::{POSTGRES_PORT, POSTGRES_PORT_NAME, STATUS_PORT, STATUS_PORT_NAME};
use super::{Cluster, labels, names};

/// Every Service the spec asks for: rw, ro, r, headless, then external when enabled.
pub fn desired_services(cluster: &Cluster) -> Vec<Service> {
    let primary = labels::role_selector(&cluster.name, labels::ROLE_PRIMARY);
    let replicas = labels::role_selector(&cluster.name, labels::ROLE_REPLICA);
    let mut services = vec![
        cluster_ip(cluster, names::service_rw(&cluster.name), primary.clone()),
        cluster_ip(cluster, names::service_ro(&cluster.name), replicas),
        cluster_ip(cluster, names::service_r(&cluster.name), cluster.selector()),
        headless(cluster),
    ];
    if cluster.spec().external {
        let mut external = cluster_ip(cluster, names::service_external(&cluster.name), primary);
        if let Some(spec) = external.spec.as_mut() {
            spec.type_ = Some("LoadBalancer".to_string());
            // Keeps client source addresses visible to pg_hba and avoids a second hop.
            spec.external_traffic_policy = Some("Local".to_string());
        }
        services.push(external);
    }
    services
}

fn port(name: &str, number: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_string()),
        port: number,
        target_port: Some(IntOrString::String(name.to_string())),
        protocol: Some("TCP".to_string()),
        ..ServicePort::default()
    }
}

fn cluster_ip(cluster: &Cluster, name: String, selector: BTreeMap<String, String>) -> Service {
    Service {
        metadata: cluster.meta(name, labels::COMPONENT_DATABASE),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_string()),
            selector: Some(selector),
            ports: Some(vec![port(POSTGRES_PORT_NAME, POSTGRES_PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// Pod DNS names (`postgres-<name>-N.postgres-<name>-headless`) exist before the pods
/// are ready, because standbys must reach the primary to become ready at all.
fn headless(cluster: &Cluster) -> Service {
    Service {
        metadata: cluster.meta(
            names::service_headless(&cluster.name),
            labels::COMPONENT_DATABASE,
        ),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            publish_not_ready_addresses: Some(true),
            selector: Some(cluster.selector()),
            ports: Some(vec![
                port(POSTGRES_PORT_NAME, POSTGRES_PORT),
                port(STATUS_PORT_NAME, STATUS_PORT),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::test_support::cluster_from_yaml;

    fn names_of(services: &[Service]) -> Vec<String> {
        services
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect()
    }

    #[test]
    fn four_services_without_external_access() {
        let (pg, settings) = cluster_from_yaml("replicas: 3\n");
        let services = desired_services(&Cluster::new(&pg, "ns", &settings));
        assert_eq!(
            names_of(&services),
            [
                "postgres-demo-rw",
                "postgres-demo-ro",
                "postgres-demo-r",
                "postgres-demo-headless"
            ]
        );
    }

    #[test]
    fn rw_selects_the_primary_and_ro_the_replicas() {
        let (pg, settings) = cluster_from_yaml("{}");
        let services = desired_services(&Cluster::new(&pg, "ns", &settings));
        let selector = |i: usize| services[i].spec.as_ref().unwrap().selector.clone().unwrap();
        assert_eq!(selector(0)[labels::ROLE], "primary");
        assert_eq!(selector(1)[labels::ROLE], "replica");
        assert!(!selector(2).contains_key(labels::ROLE));
        assert_eq!(selector(2)[labels::CLUSTER], "demo");
        assert_eq!(
            services[0].spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port,
            5432
        );
    }

    #[test]
    fn headless_service_publishes_unready_pods_and_the_status_port() {
        let (pg, settings) = cluster_from_yaml("{}");
        let services = desired_services(&Cluster::new(&pg, "ns", &settings));
        let spec = services[3].spec.as_ref().unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        let ports: Vec<i32> = spec
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| p.port)
            .collect();
        assert_eq!(ports, [5432, 8000]);
    }

    #[test]
    fn external_adds_a_local_load_balancer_to_the_primary() {
        let (pg, settings) = cluster_from_yaml("external: true\n");
        let services = desired_services(&Cluster::new(&pg, "ns", &settings));
        let external = services.last().unwrap();
        assert_eq!(
            external.metadata.name.as_deref(),
            Some("postgres-demo-external-write")
        );
        let spec = external.spec.as_ref().unwrap();
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
        assert_eq!(spec.selector.as_ref().unwrap()[labels::ROLE], "primary");
    }

    #[test]
    fn every_service_is_owned_and_labelled() {
        let (pg, settings) = cluster_from_yaml("external: true\n");
        for service in desired_services(&Cluster::new(&pg, "ns", &settings)) {
            let meta = &service.metadata;
            assert_eq!(meta.namespace.as_deref(), Some("ns"));
            assert_eq!(meta.owner_references.as_ref().unwrap()[0].kind, "Postgres");
            assert_eq!(meta.labels.as_ref().unwrap()["app"], "postgres");
        }
    }
}
