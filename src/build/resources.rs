//! Compute resources of the containers the operator runs.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// The init container only copies two files.
pub fn init_container_resources() -> ResourceRequirements {
    let amounts = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.to_string())),
            ("memory".to_string(), Quantity(memory.to_string())),
        ])
    };
    ResourceRequirements {
        requests: Some(amounts("10m", "32Mi")),
        limits: Some(amounts("100m", "64Mi")),
        ..ResourceRequirements::default()
    }
}
