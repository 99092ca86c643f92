//! `resourcesPreset`: named CPU/memory sizes, as the Cozystack applications offer them.
//!
//! The plain sizes (`nano` … `2xlarge`) follow Cozystack's generic presets: the CPU
//! request is a tenth of the limit (its default CPU allocation ratio) and memory is
//! requested in full, because PostgreSQL's shared memory must never be reclaimed.
//! The families follow the KubeVirt instance types Cozystack names them after:
//! `u1` universal (1 vCPU : 4 GiB), `c1` compute (1 : 2), `m1` memory (1 : 8), and the
//! shared-CPU `s1` (1 : 4) and burstable `t1` (1 : 4), whose CPU is requested at a tenth
//! like the plain sizes; `u1`, `c1` and `m1` request their CPU in full.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Requests and limits of one preset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresetResources {
    pub requests_cpu: String,
    pub requests_memory: String,
    pub limits_cpu: String,
    pub limits_memory: String,
}

macro_rules! presets {
    ($($variant:ident = $name:literal),* $(,)?) => {
        /// A named size for each instance.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
        pub enum ResourcesPreset {
            $(#[serde(rename = $name)] $variant,)*
        }

        impl ResourcesPreset {
            /// Every preset, in documentation order.
            pub fn all() -> &'static [ResourcesPreset] {
                &[$(ResourcesPreset::$variant,)*]
            }

            /// The name users write.
            pub fn name(self) -> &'static str {
                match self { $(ResourcesPreset::$variant => $name,)* }
            }
        }
    };
}

presets! {
    Nano = "nano", Micro = "micro", Small = "small", Medium = "medium", Large = "large",
    XLarge = "xlarge", XLarge2 = "2xlarge",
    T1Nano = "t1.nano", T1Micro = "t1.micro", T1Small = "t1.small", T1Medium = "t1.medium",
    T1Large = "t1.large", T1XLarge = "t1.xlarge", T1XLarge2 = "t1.2xlarge", T1XLarge4 = "t1.4xlarge",
    C1Nano = "c1.nano", C1Micro = "c1.micro", C1Small = "c1.small", C1Medium = "c1.medium",
    C1Large = "c1.large", C1XLarge = "c1.xlarge", C1XLarge2 = "c1.2xlarge", C1XLarge4 = "c1.4xlarge",
    S1Nano = "s1.nano", S1Micro = "s1.micro", S1Small = "s1.small", S1Medium = "s1.medium",
    S1Large = "s1.large", S1XLarge = "s1.xlarge", S1XLarge2 = "s1.2xlarge", S1XLarge4 = "s1.4xlarge",
    U1Nano = "u1.nano", U1Micro = "u1.micro", U1Small = "u1.small", U1Medium = "u1.medium",
    U1Large = "u1.large", U1XLarge = "u1.xlarge", U1XLarge2 = "u1.2xlarge", U1XLarge4 = "u1.4xlarge",
    M1Nano = "m1.nano", M1Micro = "m1.micro", M1Small = "m1.small", M1Medium = "m1.medium",
    M1Large = "m1.large", M1XLarge = "m1.xlarge", M1XLarge2 = "m1.2xlarge", M1XLarge4 = "m1.4xlarge",
}

/// CPU limit in millicores and memory limit in MiB of the plain sizes.
fn plain_size(size: &str) -> Option<(u64, u64)> {
    Some(match size {
        "nano" => (250, 128),
        "micro" => (500, 256),
        "small" => (1000, 512),
        "medium" => (1000, 1024),
        "large" => (2000, 2048),
        "xlarge" => (4000, 4096),
        "2xlarge" => (8000, 8192),
        _ => return None,
    })
}

/// vCPUs (millicores) and universal-family memory (MiB) of the instance-type sizes.
fn family_size(size: &str) -> Option<(u64, u64)> {
    Some(match size {
        "nano" => (1000, 512),
        "micro" => (1000, 1024),
        "small" => (1000, 2048),
        "medium" => (1000, 4096),
        "large" => (2000, 8192),
        "xlarge" => (4000, 16384),
        "2xlarge" => (8000, 32768),
        "4xlarge" => (16000, 65536),
        _ => return None,
    })
}

/// Whether the CPU is shared (requested at a tenth of the limit).
const SHARED_CPU_RATIO: u64 = 10;

impl ResourcesPreset {
    /// Requests and limits of the instance container.
    pub fn resources(self) -> PresetResources {
        let name = self.name();
        let (cpu_limit, memory, cpu_request) = match name.split_once('.') {
            None => {
                let (cpu, memory) = plain_size(name).unwrap_or((1000, 1024));
                (cpu, memory, cpu / SHARED_CPU_RATIO)
            }
            Some((family, size)) => {
                let (cpu, universal_memory) = family_size(size).unwrap_or((1000, 4096));
                match family {
                    "c1" => (cpu, universal_memory / 2, cpu),
                    "m1" => (cpu, universal_memory * 2, cpu),
                    "u1" => (cpu, universal_memory, cpu),
                    // s1 and t1 share their CPU.
                    _ => (cpu, universal_memory, cpu / SHARED_CPU_RATIO),
                }
            }
        };
        PresetResources {
            requests_cpu: cpu_text(cpu_request),
            requests_memory: memory_text(memory),
            limits_cpu: cpu_text(cpu_limit),
            limits_memory: memory_text(memory),
        }
    }
}

fn cpu_text(millicores: u64) -> String {
    if millicores.is_multiple_of(1000) {
        (millicores / 1000).to_string()
    } else {
        format!("{millicores}m")
    }
}

fn memory_text(mebibytes: u64) -> String {
    if mebibytes.is_multiple_of(1024) {
        format!("{}Gi", mebibytes / 1024)
    } else {
        format!("{mebibytes}Mi")
    }
}

/// The README table of every preset.
pub fn markdown_table() -> String {
    let mut out = String::from(
        "| preset | CPU request | CPU limit | memory request | memory limit |\n|---|---|---|---|---|\n",
    );
    for preset in ResourcesPreset::all() {
        let r = preset.resources();
        out.push_str(&format!(
            "| `{}` | {} | {} | {} | {} |\n",
            preset.name(),
            r.requests_cpu,
            r.limits_cpu,
            r.requests_memory,
            r.limits_memory
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantity::Quantity;

    fn q(text: &str) -> Quantity {
        text.parse().unwrap()
    }

    #[test]
    fn there_are_seven_plain_sizes_and_five_families_of_eight() {
        assert_eq!(ResourcesPreset::all().len(), 7 + 5 * 8);
    }

    #[test]
    fn every_preset_is_valid_and_requests_fit_in_limits() {
        for preset in ResourcesPreset::all() {
            let r = preset.resources();
            assert!(q(&r.requests_cpu).is_positive(), "{preset:?}");
            assert!(q(&r.requests_cpu) <= q(&r.limits_cpu), "{preset:?}");
            assert_eq!(q(&r.requests_memory), q(&r.limits_memory), "{preset:?}");
        }
    }

    #[test]
    fn names_round_trip_through_serde() {
        for preset in ResourcesPreset::all() {
            let json = serde_json::to_value(preset).unwrap();
            assert_eq!(json, preset.name());
            assert_eq!(
                serde_json::from_value::<ResourcesPreset>(json).unwrap(),
                *preset
            );
        }
    }

    #[test]
    fn families_keep_their_ratios() {
        let mem = |p: ResourcesPreset| q(&p.resources().limits_memory);
        assert_eq!(mem(ResourcesPreset::U1Medium), q("4Gi"));
        assert_eq!(mem(ResourcesPreset::C1Medium), q("2Gi"));
        assert_eq!(mem(ResourcesPreset::M1Medium), q("8Gi"));
        assert_eq!(ResourcesPreset::Micro.resources().requests_cpu, "50m");
        assert_eq!(ResourcesPreset::U1Large.resources().requests_cpu, "2");
        assert_eq!(ResourcesPreset::T1Large.resources().requests_cpu, "200m");
    }

    #[test]
    fn table_lists_every_preset() {
        let table = markdown_table();
        assert_eq!(table.lines().count(), 2 + ResourcesPreset::all().len());
        assert!(table.contains("| `m1.4xlarge` | 16 | 16 | 128Gi | 128Gi |"));
    }
}
