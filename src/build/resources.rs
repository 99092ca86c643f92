//! Compute resources of the containers the operator runs.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::api::PostgresSpec;

/// Without `resources` or `resourcesPreset`: small requests and no limits (Burstable),
/// so the seed examples' `shared_buffers` fit wherever they land.
const DEFAULT_CPU_REQUEST: &str = "100m";
const DEFAULT_MEMORY_REQUEST: &str = "256Mi";

/// A cpu/memory map for requests or limits.
pub fn amounts(cpu: &str, memory: &str) -> BTreeMap<String, Quantity> {
    BTreeMap::from([
        ("cpu".to_string(), Quantity(cpu.to_string())),
        ("memory".to_string(), Quantity(memory.to_string())),
    ])
}

/// The init container only copies two files.
pub fn init_container_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(amounts("10m", "32Mi")),
        limits: Some(amounts("100m", "64Mi")),
        ..ResourceRequirements::default()
    }
}

/// The PostgreSQL container: `resources` (requests = limits) wins over
/// `resourcesPreset`; a resource missing from `resources` comes from the preset, or
/// from the defaults.
pub fn instance_resources(spec: &PostgresSpec) -> ResourceRequirements {
    let preset = spec.resources_preset.map(|p| p.resources());
    let explicit = spec.resources.clone().unwrap_or_default();
    if explicit.cpu.is_none() && explicit.memory.is_none() {
        return match preset {
            Some(p) => ResourceRequirements {
                requests: Some(amounts(&p.requests_cpu, &p.requests_memory)),
                limits: Some(amounts(&p.limits_cpu, &p.limits_memory)),
                ..ResourceRequirements::default()
            },
            None => ResourceRequirements {
                requests: Some(amounts(DEFAULT_CPU_REQUEST, DEFAULT_MEMORY_REQUEST)),
                ..ResourceRequirements::default()
            },
        };
    }
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    for (resource, given, preset_request, preset_limit, default) in [
        (
            "cpu",
            explicit.cpu,
            preset.as_ref().map(|p| p.requests_cpu.clone()),
            preset.as_ref().map(|p| p.limits_cpu.clone()),
            DEFAULT_CPU_REQUEST,
        ),
        (
            "memory",
            explicit.memory,
            preset.as_ref().map(|p| p.requests_memory.clone()),
            preset.as_ref().map(|p| p.limits_memory.clone()),
            DEFAULT_MEMORY_REQUEST,
        ),
    ] {
        match given {
            Some(value) => {
                requests.insert(resource.to_string(), value.clone());
                limits.insert(resource.to_string(), value);
            }
            None => {
                let request = preset_request.unwrap_or_else(|| default.to_string());
                requests.insert(resource.to_string(), Quantity(request));
                if let Some(limit) = preset_limit {
                    limits.insert(resource.to_string(), Quantity(limit));
                }
            }
        }
    }
    ResourceRequirements {
        requests: Some(requests),
        limits: Some(limits),
        ..ResourceRequirements::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources(yaml: &str) -> ResourceRequirements {
        instance_resources(&serde_yaml::from_str(yaml).unwrap())
    }

    fn get(map: &Option<BTreeMap<String, Quantity>>, key: &str) -> Option<String> {
        map.as_ref()?.get(key).map(|q| q.0.clone())
    }

    #[test]
    fn nothing_set_means_small_requests_and_no_limits() {
        let r = resources("{}");
        assert_eq!(get(&r.requests, "cpu").as_deref(), Some("100m"));
        assert_eq!(get(&r.requests, "memory").as_deref(), Some("256Mi"));
        assert!(r.limits.is_none());
    }

    #[test]
    fn a_preset_gives_its_requests_and_limits() {
        let r = resources("resourcesPreset: u1.medium\n");
        assert_eq!(get(&r.requests, "cpu").as_deref(), Some("1"));
        assert_eq!(get(&r.limits, "memory").as_deref(), Some("4Gi"));
    }

    #[test]
    fn explicit_resources_win_over_the_preset() {
        let r = resources("resourcesPreset: nano\nresources:\n  cpu: 2\n  memory: 4Gi\n");
        assert_eq!(get(&r.requests, "cpu").as_deref(), Some("2"));
        assert_eq!(get(&r.limits, "cpu").as_deref(), Some("2"));
        assert_eq!(get(&r.requests, "memory").as_deref(), Some("4Gi"));
        assert_eq!(get(&r.limits, "memory").as_deref(), Some("4Gi"));
    }

    #[test]
    fn a_missing_explicit_resource_falls_back_to_the_preset_then_the_default() {
        let r = resources("resourcesPreset: small\nresources:\n  memory: 2Gi\n");
        assert_eq!(get(&r.requests, "cpu").as_deref(), Some("100m"));
        assert_eq!(get(&r.limits, "cpu").as_deref(), Some("1"));
        let r = resources("resources:\n  memory: 2Gi\n");
        assert_eq!(get(&r.requests, "cpu").as_deref(), Some("100m"));
        assert_eq!(get(&r.limits, "cpu"), None);
        assert_eq!(get(&r.limits, "memory").as_deref(), Some("2Gi"));
    }
}
