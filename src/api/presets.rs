//! Placeholder until the preset table lands (being written concurrently).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub enum ResourcesPreset {
    #[serde(rename = "micro")]
    Micro,
}
