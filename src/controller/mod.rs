//! `postgres-operator controller`: the reconcile loop over `Postgres` objects.

pub mod backup_records;
pub mod cordons;
pub mod drift;
pub mod failover;
pub mod leader;
pub mod pod_roles;
pub mod reconcile;
pub mod records;
pub mod rollout;
pub mod startup;
pub mod status;
pub mod versions;

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};

use crate::api::instance_report::{CONFIG_REJECTED_ANNOTATION, RESTORING_ANNOTATION};
use crate::api::{Postgres, PostgresBackup};
use crate::manifests::monitoring::PodMonitor;
use crate::manifests::{OperatorSettings, labels};
use crate::metrics::Metrics;
use records::BackupRecords;
use versions::Versions;

pub use crate::api::FIELD_MANAGER;

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
    /// First retry delay after a failed reconcile; it doubles with each failure.
    pub retry_base: Duration,
    /// Run the HA engine (automatic failover) of every cluster.
    pub failover: bool,
    /// Where the engine reaches the instances.
    pub instance_addresses: failover::InstanceAddresses,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            operator: OperatorSettings::default(),
            watch_namespaces: Vec::new(),
            resync: Duration::from_secs(300),
            instance: "postgres-operator".to_string(),
            retry_base: Duration::from_secs(2),
            failover: true,
            instance_addresses: failover::InstanceAddresses::default(),
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Consecutive failed reconciles per `namespace/name`, for the retry backoff.
    pub failures: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    /// Versions of the owned objects: what a reconcile need not read back.
    pub versions: Arc<Versions>,
    /// Backup records by cluster.
    pub records: Arc<BackupRecords>,
    /// Cordoned nodes, from the one Nodes watch.
    pub cordons: Arc<cordons::Cordons>,
    /// Each external Service's load-balancer addresses, with the version they were read
    /// at: read again only when the Service's watch reports another version.
    pub external_addresses:
        std::sync::Mutex<std::collections::HashMap<versions::ObjectKey, (String, Vec<String>)>>,
}

impl Context {
    /// Records the outcome of a reconcile; returns the failures in a row so far.
    pub fn record_outcome(&self, key: &str, failed: bool) -> u32 {
        let Ok(mut failures) = self.failures.lock() else {
            return 0;
        };
        if failed {
            let count = failures.entry(key.to_string()).or_insert(0);
            *count = count.saturating_add(1);
            *count
        } else {
            failures.remove(key);
            0
        }
    }
}

/// Delay before the next try after `failures` failures in a row: doubling from `base`,
/// at most five minutes.
pub fn retry_delay(base: Duration, failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(16));
    base.saturating_mul(factor).min(MAX_RETRY_DELAY)
}

const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);

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
    #[error("{0}")]
    Certificates(String),
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

/// Server-side apply of `patch` to object `name` with the operator's one field manager,
/// counted in `postgres_operator_api_writes_total`; returns the applied object's
/// resourceVersion.
pub(crate) async fn apply<K>(
    ctx: &Context,
    api: &Api<K>,
    kind: &str,
    name: &str,
    patch: &(impl serde::Serialize + std::fmt::Debug),
) -> Result<Option<String>, Error>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug + kube::Resource,
{
    let applied = api
        .patch(
            name,
            &kube::api::PatchParams::apply(FIELD_MANAGER).force(),
            &kube::api::Patch::Apply(patch),
        )
        .await
        .map_err(Error::kube("apply", kind, name))?;
    ctx.metrics.count_write("apply", kind);
    Ok(applied.meta().resource_version.clone())
}

/// Retries a failed reconcile with exponential backoff.
fn error_policy(postgres: Arc<Postgres>, error: &Error, ctx: Arc<Context>) -> Action {
    let namespace = postgres.metadata.namespace.as_deref().unwrap_or_default();
    let name = postgres.metadata.name.as_deref().unwrap_or_default();
    let failures = ctx.record_outcome(&format!("{namespace}/{name}"), true);
    let delay = retry_delay(ctx.settings.retry_base, failures);
    tracing::warn!(namespace, name, %error, failures, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

async fn log_outcome<T: std::fmt::Debug, E: std::fmt::Display>(result: Result<T, E>) {
    if let Err(error) = result {
        tracing::debug!(%error, "controller event");
    }
}

/// Retries a failed backup-record reconcile after the base delay.
fn backup_error_policy(record: Arc<PostgresBackup>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(name = record.metadata.name.as_deref().unwrap_or_default(), %error, "backup record reconcile failed");
    Action::requeue(ctx.settings.retry_base)
}

/// What of a `Postgres` wakes its reconcile up: its generation (the spec) and the
/// primary someone asks for in `status.targetPrimary`. The rest of the status is the
/// operator's own writing, which would otherwise come back as one more reconcile of the
/// same cluster after every status write.
fn wakes_up(postgres: &Postgres) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    postgres.metadata.generation.hash(&mut hasher);
    let status = postgres.status.as_ref();
    let target = status.and_then(|s| s.target_primary.as_deref());
    target.hash(&mut hasher);
    // The role label follows the recorded primary.
    let current = status.and_then(|s| s.current_primary.as_deref());
    current.hash(&mut hasher);
    Some(hasher.finish())
}

/// What of a cluster pod wakes its Postgres up: only what its instance reports there (a
/// configuration refusal, a restore in progress). Pods change often (status, the role label this operator
/// applies), and every reconcile lists them anyway.
fn pod_report(pod: &PartialObjectMeta<Pod>) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    for annotation in [CONFIG_REJECTED_ANNOTATION, RESTORING_ANNOTATION] {
        pod.annotations().get(annotation).hash(&mut hasher);
    }
    Some(hasher.finish())
}

/// The cluster's Postgres of one of its pods, by the cluster label.
fn pod_cluster(pod: PartialObjectMeta<Pod>) -> Option<ObjectRef<Postgres>> {
    let namespace = pod.metadata.namespace.clone()?;
    let cluster = pod.labels().get(labels::CLUSTER)?;
    Some(ObjectRef::new(cluster).within(&namespace))
}

/// Watches only the database pods of clusters, not every pod of the namespace.
fn pods_config() -> watcher::Config {
    watcher::Config::default().labels(&format!(
        "{}={},{}",
        labels::NAME,
        labels::NAME_VALUE,
        labels::CLUSTER
    ))
}

/// Watches only the operator's own objects of the owned kinds.
fn owned_config() -> watcher::Config {
    watcher::Config::default().labels(&format!(
        "{}={}",
        labels::MANAGED_BY,
        labels::MANAGED_BY_VALUE
    ))
}

/// Whether the API serves PodMonitors (the Prometheus Operator's CRD is installed). Asked
/// once at start: without the CRD, every apply would fail and hold the clusters'
/// reconciles back, so they are left out with a warning instead.
async fn pod_monitors_served(client: &Client, namespace: Option<&String>) -> bool {
    // Where the operator may list: a watched namespace when it has Roles only there.
    let api = match namespace {
        Some(namespace) => Api::<PodMonitor>::namespaced(client.clone(), namespace),
        None => Api::<PodMonitor>::all(client.clone()),
    };
    match api
        .list_metadata(&kube::api::ListParams::default().limit(1))
        .await
    {
        Ok(_) => true,
        Err(kube::Error::Api(status)) if status.code == 404 => {
            tracing::warn!(
                "PodMonitors were asked for but the API does not serve monitoring.coreos.com/v1 podmonitors (is the Prometheus Operator's CRD installed?): none are created; restart the operator once it is"
            );
            false
        }
        // Not a missing CRD (e.g. a transient error): the applies will tell.
        Err(error) => {
            tracing::warn!(%error, "could not check whether PodMonitors are served");
            true
        }
    }
}

/// Runs the controllers (one per watched namespace, or one cluster-wide) until
/// `shutdown` resolves.
pub async fn run(
    client: Client,
    mut settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    if settings.operator.pod_monitors
        && !pod_monitors_served(&client, settings.watch_namespaces.first()).await
    {
        settings.operator.pod_monitors = false;
    }
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
        failures: std::sync::Mutex::default(),
        versions: Arc::default(),
        records: Arc::default(),
        cordons: Arc::default(),
        external_addresses: std::sync::Mutex::default(),
    });
    let shutdown = futures::future::FutureExt::shared(Box::pin(shutdown));
    // Only the nodes' specs matter (cordons); their status is the bulk of a Node.
    let nodes = ctx.cordons.clone().follow(
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
            .default_backoff()
            .modify(|node| {
                node.status = None;
                node.managed_fields_mut().clear();
            }),
    );
    let nodes = futures::future::select(Box::pin(nodes), shutdown.clone());
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
            // Owned objects only wake their Postgres up, and not for the operator's own
            // writes: their metadata is all the controller needs from the watches, which
            // keeps memory flat with many clusters.
            macro_rules! owned {
                ($kind:ty) => {
                    ctx.versions.clone().track(
                        <$kind as k8s_openapi::Resource>::KIND,
                        namespace.clone(),
                        watcher(api!(PartialObjectMeta<$kind>), owned_config()).default_backoff(),
                    )
                };
            }
            let (postgres_store, postgres_writer) = reflector::store();
            let engines = {
                let ctx = ctx.clone();
                let store = postgres_store.clone();
                let shutdown = shutdown.clone();
                async move {
                    if ctx.settings.failover {
                        failover::supervise(ctx.clone(), store, shutdown).await;
                    }
                }
            };
            // Kept in memory for every cluster: without the managed fields, which no
            // reconcile reads and which a real API server makes the largest part.
            let postgres = watcher(api!(Postgres), watcher::Config::default())
                .default_backoff()
                .modify(|postgres| postgres.managed_fields_mut().clear())
                .reflect(postgres_writer)
                .applied_objects()
                .predicate_filter(wakes_up, Default::default());
            let records = ctx.records.clone().track(
                watcher(api!(PostgresBackup), watcher::Config::default())
                    .default_backoff()
                    .modify(|record| record.managed_fields_mut().clear()),
            );
            let pods = watcher(api!(PartialObjectMeta<Pod>), pods_config())
                .default_backoff()
                .modify(|pod| pod.managed_fields_mut().clear())
                .touched_objects()
                .predicate_filter(pod_report, Default::default());
            let pod_monitors = ctx.settings.operator.pod_monitors.then(|| {
                ctx.versions.clone().track(
                    "PodMonitor",
                    namespace.clone(),
                    watcher(api!(PartialObjectMeta<PodMonitor>), owned_config()).default_backoff(),
                )
            });
            let clusters = Controller::for_stream(postgres, postgres_store)
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
                .owns_stream(futures::stream::iter(pod_monitors).flatten())
                // A finished backup changes the cluster's BackupSucceeded and lastBackup.
                .watches_stream(records, |record: PostgresBackup| {
                    let namespace = record.metadata.namespace.clone().unwrap_or_default();
                    Some(ObjectRef::<Postgres>::new(&record.spec.postgres).within(&namespace))
                })
                // An instance's configuration refusal becomes ConfigurationApplied.
                .watches_stream(pods, pod_cluster)
                // A primary on a newly cordoned node must move before the drain.
                .reconcile_all_on(ctx.cordons.newly_cordoned())
                .graceful_shutdown_on(shutdown.clone())
                .run(reconcile::reconcile, error_policy, ctx.clone())
                .for_each(log_outcome);
            let backups = Controller::new(api!(PostgresBackup), watcher::Config::default())
                .graceful_shutdown_on(shutdown)
                .run(backup_records::reconcile, backup_error_policy, ctx)
                .for_each(log_outcome);
            futures::join!(clusters, backups, engines);
        }
    });
    futures::join!(futures::future::join_all(controllers), nodes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_up_to_five_minutes() {
        let base = Duration::from_secs(2);
        let delays: Vec<u64> = (1..=10).map(|n| retry_delay(base, n).as_secs()).collect();
        assert_eq!(delays, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(retry_delay(base, u32::MAX), MAX_RETRY_DELAY);
    }
}
