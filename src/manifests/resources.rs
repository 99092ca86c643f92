//! Compute resources of the containers the operator runs.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::api::PostgresSpec;
use crate::api::presets::ResourcesPreset;

/// Without `resources` or `resourcesPreset` an instance requests little and has no
/// limits (Burstable): the seed examples set `shared_buffers` without sizing the pod,
/// and a memory limit would get such a cluster OOM-killed wherever it lands.
const DEFAULT_CPU_REQUEST: &str = "100m";
const DEFAULT_MEMORY_REQUEST: &str = "256Mi";

const CPU: &str = "cpu";
const MEMORY: &str = "memory";

/// A cpu/memory map for requests or limits.
pub fn amounts(cpu: &str, memory: &str) -> BTreeMap<String, Quantity> {
    BTreeMap::from([
        (CPU.to_string(), Quantity(cpu.to_string())),
        (MEMORY.to_string(), Quantity(memory.to_string())),
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

/// Request and limit of one resource; `None` limit = unbounded.
struct Bounds {
    request: Quantity,
    limit: Option<Quantity>,
}

/// One resource: the explicit value (request = limit, for a Guaranteed-like pod), else
/// the preset's pair, else the default request with no limit.
fn bounds(
    explicit: Option<&Quantity>,
    preset: Option<(String, String)>,
    default_request: &str,
) -> Bounds {
    match (explicit, preset) {
        (Some(given), _) => Bounds {
            request: given.clone(),
            limit: Some(given.clone()),
        },
        (None, Some((request, limit))) => Bounds {
            request: Quantity(request),
            limit: Some(Quantity(limit)),
        },
        (None, None) => Bounds {
            request: Quantity(default_request.to_string()),
            limit: None,
        },
    }
}

/// The PostgreSQL container: `resources` wins over `resourcesPreset`, resource by
/// resource, so `resources: {memory: 2Gi}` with a preset keeps the preset's CPU.
pub fn instance_resources(spec: &PostgresSpec) -> ResourceRequirements {
    let preset = spec.resources_preset.map(ResourcesPreset::resources);
    let explicit = spec.resources.as_ref();
    let cpu = bounds(
        explicit.and_then(|r| r.cpu.as_ref()),
        preset
            .as_ref()
            .map(|p| (p.requests_cpu.to_string(), p.limits_cpu.to_string())),
        DEFAULT_CPU_REQUEST,
    );
    let memory = bounds(
        explicit.and_then(|r| r.memory.as_ref()),
        preset
            .as_ref()
            .map(|p| (p.requests_memory.to_string(), p.limits_memory.to_string())),
        DEFAULT_MEMORY_REQUEST,
    );
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    for (resource, Bounds { request, limit }) in [(CPU, cpu), (MEMORY, memory)] {
        requests.insert(resource.to_string(), request);
        if let Some(limit) = limit {
            limits.insert(resource.to_string(), limit);
        }
    }
    ResourceRequirements {
        requests: Some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..ResourceRequirements::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources(yaml: &str) -> ResourceRequirements {
        instance_resources(&serde_yaml::from_str(yaml).unwrap())
    }

    fn amount(map: &Option<BTreeMap<String, Quantity>>, resource: &str) -> Option<String> {
        map.as_ref()?.get(resource).map(|q| q.0.clone())
    }

    fn preset(name: &str) -> crate::api::presets::PresetResources {
        serde_yaml::from_str::<ResourcesPreset>(name)
            .unwrap()
            .resources()
    }

    #[test]
    fn nothing_set_means_small_requests_and_no_limits() {
        let r = resources("{}");
        assert_eq!(amount(&r.requests, CPU).as_deref(), Some("100m"));
        assert_eq!(amount(&r.requests, MEMORY).as_deref(), Some("256Mi"));
        assert_eq!(r.limits, None);
    }

    #[test]
    fn empty_resources_without_a_preset_mean_the_defaults() {
        assert_eq!(resources("resources: {}\n"), resources("{}"));
    }

    #[test]
    fn a_preset_gives_its_requests_and_limits() {
        let expected = preset("u1.medium");
        let r = resources("resourcesPreset: u1.medium\n");
        assert_eq!(
            r.requests,
            Some(amounts(&expected.requests_cpu, &expected.requests_memory))
        );
        assert_eq!(
            r.limits,
            Some(amounts(&expected.limits_cpu, &expected.limits_memory))
        );
    }

    #[test]
    fn explicit_resources_win_over_the_preset_with_requests_equal_to_limits() {
        let r = resources("resourcesPreset: nano\nresources:\n  cpu: 2\n  memory: 4Gi\n");
        assert_eq!(r.requests, Some(amounts("2", "4Gi")));
        assert_eq!(r.limits, Some(amounts("2", "4Gi")));
    }

    #[test]
    fn a_missing_explicit_resource_falls_back_to_the_preset() {
        let small = preset("small");
        let r = resources("resourcesPreset: small\nresources:\n  memory: 2Gi\n");
        assert_eq!(r.requests, Some(amounts(&small.requests_cpu, "2Gi")));
        assert_eq!(r.limits, Some(amounts(&small.limits_cpu, "2Gi")));
    }

    #[test]
    fn a_missing_explicit_resource_without_a_preset_is_requested_by_default_and_unbounded() {
        let r = resources("resources:\n  memory: 2Gi\n");
        assert_eq!(r.requests, Some(amounts("100m", "2Gi")));
        assert_eq!(amount(&r.limits, CPU), None);
        assert_eq!(amount(&r.limits, MEMORY).as_deref(), Some("2Gi"));

        let r = resources("resources:\n  cpu: 500m\n");
        assert_eq!(r.requests, Some(amounts("500m", "256Mi")));
        assert_eq!(amount(&r.limits, MEMORY), None);
    }

    #[test]
    fn the_init_container_is_bounded() {
        let r = init_container_resources();
        assert!(r.requests.is_some());
        assert!(r.limits.is_some());
    }
}
