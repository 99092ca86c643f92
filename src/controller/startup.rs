//! What the controllers need before they start: the operator's CRDs, served by the API
//! server. An operator installed before its CRDs waits for them, says so in its log and
//! in `/readyz`, and starts as soon as they are served, without a restart.

use std::time::Duration;

use futures::FutureExt;
use kube::api::ListParams;
use kube::{Api, Client, CustomResourceExt};

use super::{Settings, retry_delay};
use crate::api::{Postgres, PostgresBackup};
use crate::http::Health;

/// The longest pause between two checks for the CRDs.
const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(15);

/// Waits until the CRDs are served, then runs the controllers until `shutdown`
/// resolves. Returns early if `shutdown` resolves while waiting.
pub async fn run_when_installed(
    client: Client,
    settings: Settings,
    health: Health,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let shutdown = Box::pin(shutdown).shared();
    let namespace = settings.watch_namespaces.first().cloned();
    tokio::select! {
        () = shutdown.clone() => return,
        () = wait_for_crds(&client, namespace.as_deref(), &health, settings.retry_base) => {}
    }
    super::run(client, settings, health.metrics.clone(), shutdown).await;
}

/// Polls until both CRDs are served, with a growing interval, keeping `/readyz` and the
/// log saying what is missing.
pub async fn wait_for_crds(
    client: &Client,
    namespace: Option<&str>,
    health: &Health,
    retry_base: Duration,
) {
    let mut attempts = 0u32;
    let mut said: Option<String> = None;
    loop {
        let missing = match missing_crd::<Postgres>(client, namespace).await {
            None => missing_crd::<PostgresBackup>(client, namespace).await,
            missing => missing,
        };
        let Some(reason) = missing else {
            if said.is_some() {
                tracing::info!("the CustomResourceDefinitions are served: starting");
            }
            health.wait_for(None);
            return;
        };
        if said.as_ref() != Some(&reason) {
            tracing::warn!(waiting_for = %reason, "cannot start the controllers yet");
            said = Some(reason.clone());
        }
        health.wait_for(Some(reason));
        attempts = attempts.saturating_add(1);
        tokio::time::sleep(retry_delay(retry_base, attempts).min(MAX_CHECK_INTERVAL)).await;
    }
}

/// Why the CRD of `K` cannot be used yet, or `None` when a list of it succeeds.
async fn missing_crd<K>(client: &Client, namespace: Option<&str>) -> Option<String>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + CustomResourceExt
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    let crd = K::crd_name();
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => None,
        Err(kube::Error::Api(status)) if status.is_not_found() => Some(format!(
            "CustomResourceDefinition {crd} (install it: kubectl apply --server-side -f crds/, or the chart)"
        )),
        Err(error) => Some(format!("a list of {crd} to succeed: {error}")),
    }
}
