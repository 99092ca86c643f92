//! `postgres-operator controller`: the reconcile loop over `Postgres` objects.

pub mod drift;
pub mod leader;
pub mod reconcile;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use crate::api::Postgres;
use crate::build::{OperatorSettings, labels};
use crate::metrics::Metrics;

/// The one field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "postgres-operator";

/// Reconciles in flight at once: enough to keep up with many clusters, few enough to
/// bound memory and the load on the API server.
const CONCURRENT_RECONCILES: u16 = 16;

/// Controller settings (flags of `postgres-operator controller`).
#[derive(Clone, Debug)]
pub struct Settings {
    pub operator: OperatorSettings,
    /// Namespaces to watch; empty means all.
    pub watch_namespaces: Vec<String>,
    /// Period of the cheap resync of a settled cluster.
    pub resync: Duration,
    /// Identity in events (the pod name).
    pub instance: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            operator: OperatorSettings::default(),
            watch_namespaces: Vec::new(),
            resync: Duration::from_secs(300),
            instance: "postgres-operator".to_string(),
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
}

/// Why a reconcile failed (it is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{verb} {kind} {name}: {source}")]
    Kube {
        verb: &'static str,
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot serialize an object: {0}")]
    Serialize(String),
}

impl Error {
    /// A `map_err` adapter naming the request that failed.
    pub fn kube(verb: &'static str, kind: &str, name: &str) -> impl FnOnce(kube::Error) -> Error {
        let (kind, name) = (kind.to_string(), name.to_string());
        move |source| Error::Kube {
            verb,
            kind,
            name,
            source,
        }
    }
}

/// Retries failed reconciles: quickly at first, then every 30 s at most.
fn error_policy(postgres: Arc<Postgres>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(
        namespace = postgres.metadata.namespace.as_deref().unwrap_or_default(),
        name = postgres.metadata.name.as_deref().unwrap_or_default(),
        %error,
        "reconcile failed, retrying"
    );
    Action::requeue(Duration::from_secs(5))
}

/// Watches only the operator's own objects of the owned kinds.
fn owned_config() -> watcher::Config {
    watcher::Config::default().labels(&format!(
        "{}={}",
        labels::MANAGED_BY,
        labels::MANAGED_BY_VALUE
    ))
}

/// Runs the controllers (one per watched namespace, or one cluster-wide) until
/// `shutdown` resolves.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.to_string(),
            instance: Some(settings.instance.clone()),
        },
    );
    let namespaces: Vec<Option<String>> = if settings.watch_namespaces.is_empty() {
        vec![None]
    } else {
        settings
            .watch_namespaces
            .iter()
            .cloned()
            .map(Some)
            .collect()
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        settings,
        recorder,
        metrics,
    });
    let shutdown = futures::future::FutureExt::shared(Box::pin(shutdown));
    let controllers = namespaces.into_iter().map(|namespace| {
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        let client = client.clone();
        async move {
            macro_rules! api {
                ($kind:ty) => {
                    match &namespace {
                        Some(ns) => Api::<$kind>::namespaced(client.clone(), ns),
                        None => Api::<$kind>::all(client.clone()),
                    }
                };
            }
            // Owned objects only wake their Postgres up: their metadata is all the
            // controller needs from the watches, which keeps memory flat with many clusters.
            macro_rules! owned {
                ($kind:ty) => {
                    watcher(api!(PartialObjectMeta<$kind>), owned_config()).touched_objects()
                };
            }
            Controller::new(api!(Postgres), watcher::Config::default())
                .with_config(controller::Config::default().concurrency(CONCURRENT_RECONCILES))
                .owns_stream(owned!(StatefulSet))
                .owns_stream(owned!(Service))
                .owns_stream(owned!(Secret))
                .owns_stream(owned!(ConfigMap))
                .owns_stream(owned!(CronJob))
                .owns_stream(owned!(PodDisruptionBudget))
                .owns_stream(owned!(NetworkPolicy))
                .owns_stream(owned!(ServiceAccount))
                .owns_stream(owned!(Role))
                .owns_stream(owned!(RoleBinding))
                .graceful_shutdown_on(shutdown)
                .run(reconcile::reconcile, error_policy, ctx)
                .for_each(|result| async move {
                    if let Err(error) = result {
                        tracing::debug!(%error, "controller event");
                    }
                })
                .await;
        }
    });
    futures::future::join_all(controllers).await;
}
