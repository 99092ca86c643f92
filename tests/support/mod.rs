//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod validators;

use postgres_operator::manifests::OperatorSettings;
use postgres_operator::manifests::secrets::SeededPasswords;
use postgres_operator::manifests::tls::PlaceholderIssuer;
use postgres_operator::render::{RenderError, RenderedCluster, render_inputs};

/// Renders `(file name, text)` inputs with default settings and predictable passwords.
pub fn render(
    inputs: &[(&str, &str)],
    namespace: &str,
    settings: &OperatorSettings,
) -> Result<Vec<RenderedCluster>, Vec<RenderError>> {
    let inputs: Vec<(String, String)> = inputs
        .iter()
        .map(|(f, t)| (f.to_string(), t.to_string()))
        .collect();
    render_inputs(
        &inputs,
        namespace,
        settings,
        &mut SeededPasswords::default(),
        &mut PlaceholderIssuer::default(),
    )
}

/// Like [`render`], failing the test with every message when the input is refused.
pub fn render_ok(
    inputs: &[(&str, &str)],
    namespace: &str,
    settings: &OperatorSettings,
) -> Vec<RenderedCluster> {
    render(inputs, namespace, settings).unwrap_or_else(|errors| {
        panic!(
            "{}",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

/// The example manifests of `Postgres` objects, as `render` reads them.
pub const EXAMPLES: [&str; 6] = [
    "minimal.yaml",
    "complete.yaml",
    "ha.yaml",
    "dev.yaml",
    "restore.yaml",
    "backup-private-ca.yaml",
];

/// The text of an example manifest.
pub fn example(file: &str) -> String {
    std::fs::read_to_string(format!("{}/examples/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}
pub mod apiserver;
pub mod controller_failover;
pub mod crd_rule_cases;
pub mod failover;
pub mod instance;
pub mod metric_names;
pub mod netns;
pub mod pod_security;
pub mod postgres;
pub use postgres::succeed;
pub mod real_apiserver;
pub mod s3;
pub mod statefulset;
pub mod terraform;

/// Polls the asynchronous `check` every 100 ms until it holds, failing the test after
/// `seconds` with `what`.
pub async fn wait_until<F, Fut>(what: &str, seconds: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while std::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("timed out after {seconds} s waiting until {what}");
}

/// Polls the asynchronous `check` every 100 ms until it gives a value, failing the test
/// after `seconds` with `what` and the last reason `check` gave for not being there yet.
pub async fn wait_for_value<T, F, Fut>(what: &str, seconds: u64, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    let mut last = String::from("never checked");
    while std::time::Instant::now() < deadline {
        match check().await {
            Ok(value) => return value,
            Err(why) => last = why,
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("timed out after {seconds} s waiting until {what}; last seen: {last}");
}

/// Polls `check` every 50 ms until it holds, failing the test after 10 s with `what`.
pub async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}
