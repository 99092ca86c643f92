//! The HA engine in the controller: one engine per cluster while this replica leads
//! (see `ha::engine`), reaching the instances on their status port through the
//! headless Service (which publishes pods that are not ready, so a fenced standby stays
//! reachable), reading the cluster from the controller's reflector, and writing what it
//! owns in the status (`currentPrimary`, `targetPrimary`, `syncQuorum`,
//! `syncStandbys`, the `FailoverBlocked` condition) with merge patches under its own
//! field manager, so the reconcile's status writes never undo them.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource};
use serde_json::json;

use super::Context;
use crate::api::{InstanceState, Postgres};
use crate::ha::engine::{
    Announcement, Engine, Member, Recorded, SyncSet, Timing, World, WorldError,
};
use crate::manifests::names;
use crate::manifests::pod::STATUS_PORT;

/// The field manager of the engine's status writes.
pub const HA_FIELD_MANAGER: &str = "postgres-operator-ha";

/// The condition the engine owns.
pub const FAILOVER_BLOCKED: &str = "FailoverBlocked";

/// How often the set of engines is compared with the clusters.
const SUPERVISE_EVERY: Duration = Duration::from_secs(1);

/// Longest wait for one of the engine's status writes to reach the reflector's cache
/// (see `KubeWorld::wait_for_cache`), and how often the cache is looked at meanwhile.
const CACHE_CATCH_UP: Duration = Duration::from_secs(2);
const CACHE_POLL: Duration = Duration::from_millis(5);

/// Where an instance's status port answers. In a cluster: its name under the headless
/// Service. Tests replace it (instances on loopback).
/// `(namespace, cluster, pod)` → `host:port`.
type Resolve = dyn Fn(&str, &str, &str) -> Option<String> + Send + Sync;

#[derive(Clone, Default)]
pub struct InstanceAddresses(Option<Arc<Resolve>>);

impl InstanceAddresses {
    /// `resolve(namespace, cluster, pod)` instead of the headless Service's names.
    pub fn with(
        resolve: impl Fn(&str, &str, &str) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        Self(Some(Arc::new(resolve)))
    }

    pub fn address(&self, namespace: &str, cluster: &str, pod: &str) -> Option<String> {
        match &self.0 {
            Some(resolve) => resolve(namespace, cluster, pod),
            None => Some(format!(
                "{pod}.{}.{namespace}.svc:{STATUS_PORT}",
                names::service_headless(cluster)
            )),
        }
    }
}

impl fmt::Debug for InstanceAddresses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "InstanceAddresses(custom)"
        } else {
            "InstanceAddresses(headless Service)"
        })
    }
}

/// One cluster as the engine sees it through the controller.
pub struct KubeWorld {
    ctx: Arc<Context>,
    store: Store<Postgres>,
    key: ObjectRef<Postgres>,
}

impl KubeWorld {
    fn postgres(&self) -> Result<Arc<Postgres>, WorldError> {
        self.store
            .get(&self.key)
            .ok_or_else(|| format!("{} is not in the cache", self.key).into())
    }

    fn namespace(&self) -> String {
        self.key.namespace.clone().unwrap_or_default()
    }

    /// Merge-patches `status`; the written object's resourceVersion.
    async fn patch_status(&self, status: serde_json::Value) -> Result<Option<String>, WorldError> {
        let api = Api::<Postgres>::namespaced(self.ctx.client.clone(), &self.namespace());
        let patch = json!({ "status": status });
        let written = api
            .patch_status(
                &self.key.name,
                &PatchParams {
                    field_manager: Some(HA_FIELD_MANAGER.to_string()),
                    ..PatchParams::default()
                },
                &Patch::Merge(&patch),
            )
            .await?;
        self.ctx.metrics.count_write("patch status", "Postgres");
        Ok(written.metadata.resource_version)
    }

    /// Records the primary and the target, as the engine reads them back next.
    async fn record_primaries(&self, fields: serde_json::Value) -> Result<(), WorldError> {
        let version = self.patch_status(fields.clone()).await?;
        self.wait_for_cache(&fields, version).await;
        Ok(())
    }

    /// The engine reads the primary and the target back (`recorded`) from the
    /// reflector's cache, which the watch brings up to date some time after a write:
    /// read too early, it still holds the record from before the write. The engine must
    /// see its own writes of these (a target read back as not yet recorded is recorded
    /// and announced again; a primary read back as the old one makes the engine finish
    /// the same failover again, and count it twice). So such a write returns once the
    /// cache holds the written object, or an object with the written fields (a later
    /// write changed others), or after [`CACHE_CATCH_UP`] (a later write changed these
    /// too: that one is the record). The synchronous set needs no wait: the engine keeps
    /// the one it saw last and reads the recorded one only when it starts.
    async fn wait_for_cache(&self, written: &serde_json::Value, version: Option<String>) {
        let deadline = tokio::time::Instant::now() + CACHE_CATCH_UP;
        loop {
            if let Some(cached) = self.store.get(&self.key) {
                if version.is_some() && cached.metadata.resource_version == version {
                    return;
                }
                let status = serde_json::to_value(&cached.status).unwrap_or_default();
                if holds_fields(&status, written) {
                    return;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::debug!(cluster = %self.key, "status write not seen in the cache yet");
                return;
            }
            tokio::time::sleep(CACHE_POLL).await;
        }
    }

    async fn event(&self, type_: EventType, reason: &str, note: String) {
        let Ok(postgres) = self.postgres() else {
            return;
        };
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(note.chars().take(1000).collect()),
            action: "Failover".to_string(),
            secondary: None,
        };
        match self
            .ctx
            .recorder
            .publish(&event, &postgres.object_ref(&()))
            .await
        {
            Ok(()) => self.ctx.metrics.count_write("create", "Event"),
            Err(error) => tracing::warn!(%error, reason, "cannot record event"),
        }
    }

    /// Sets the `FailoverBlocked` condition, keeping the others as they are.
    async fn blocked_condition(&self, message: Option<&str>) -> Result<(), WorldError> {
        let postgres = self.postgres()?;
        let mut conditions = postgres
            .status
            .as_ref()
            .map(|s| s.conditions.clone())
            .unwrap_or_default();
        let (status, reason, text) = match message {
            Some(message) => ("True", "TooFewStandbys", message.to_string()),
            None => (
                "False",
                "NotBlocked",
                "the last failover was not blocked".to_string(),
            ),
        };
        let previous = conditions.iter().position(|c| c.type_ == FAILOVER_BLOCKED);
        if previous.is_none() && message.is_none() {
            return Ok(());
        }
        let transition = previous
            .map(|i| &conditions[i])
            .filter(|c| c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(Timestamp::now()));
        let condition = Condition {
            type_: FAILOVER_BLOCKED.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message: text,
            observed_generation: postgres.metadata.generation,
            last_transition_time: transition,
        };
        match previous {
            Some(i) => conditions[i] = condition,
            None => conditions.push(condition),
        }
        self.patch_status(json!({ "conditions": conditions }))
            .await?;
        Ok(())
    }
}

impl World for KubeWorld {
    async fn members(&self) -> Result<Vec<Member>, WorldError> {
        let postgres = self.postgres()?;
        let cluster = postgres.cluster_name().to_string();
        let namespace = self.namespace();
        Ok((0..postgres.spec.replicas)
            .map(|ordinal| {
                let pod = names::pod(&cluster, ordinal);
                let address = self
                    .ctx
                    .settings
                    .instance_addresses
                    .address(&namespace, &cluster, &pod);
                Member { pod, address }
            })
            .collect())
    }

    async fn recorded(&self) -> Result<Recorded, WorldError> {
        Ok(Recorded::of(&*self.postgres()?))
    }

    async fn instruct_token(&self) -> Option<String> {
        let postgres = self.postgres().ok()?;
        let name = names::secret_superuser(postgres.cluster_name());
        let secret = Api::<Secret>::namespaced(self.ctx.client.clone(), &self.namespace())
            .get_opt(&name)
            .await
            .inspect_err(|error| tracing::warn!(%error, secret = %name, "cannot read the superuser Secret for the instruct token"))
            .ok()??;
        let password = secret.data?.remove("password")?;
        let password = String::from_utf8(password.0).ok()?;
        Some(crate::ha::token::instruct_token(&password))
    }

    async fn record_target(&self, pod: &str) -> Result<(), WorldError> {
        self.record_primaries(json!({ "targetPrimary": pod })).await
    }

    async fn record_primary(&self, pod: &str) -> Result<(), WorldError> {
        self.record_primaries(json!({ "currentPrimary": pod, "targetPrimary": pod }))
            .await
    }

    async fn record_sync(&self, sync: &SyncSet) -> Result<(), WorldError> {
        self.patch_status(json!({
            "syncQuorum": sync.quorum,
            "syncStandbys": sync.standbys,
        }))
        .await?;
        Ok(())
    }

    async fn record_instances(&self, instances: &[InstanceState]) -> Result<(), WorldError> {
        self.patch_status(json!({ "instancesStatus": instances }))
            .await?;
        Ok(())
    }

    /// The reconcile writes the whole condition list from what it read: one that read
    /// before the engine's write drops `FailoverBlocked`, which is put back here.
    async fn confirm_blocked(&self, message: &str) {
        let shown = self.postgres().ok().is_some_and(|postgres| {
            postgres.status.as_ref().is_some_and(|status| {
                status.conditions.iter().any(|c| {
                    c.type_ == FAILOVER_BLOCKED && c.status == "True" && c.message == message
                })
            })
        });
        if !shown && let Err(error) = self.blocked_condition(Some(message)).await {
            tracing::warn!(%error, "cannot record the FailoverBlocked condition");
        }
    }

    async fn announce(&self, announcement: Announcement) {
        match announcement {
            // Only logged (the engine does): a primary starved of CPU is suspected at
            // every stall that passes within the grace, and an Event each time would be
            // a write per stall. A failover that follows has its own Events.
            Announcement::PrimaryLost { .. } => {}
            Announcement::FailoverStarted { from, promotion } => {
                let lost = match promotion.lost_wal_bytes {
                    Some(bytes) => format!(
                        "; asynchronous replication: {bytes} bytes of the old primary's WAL are not on it"
                    ),
                    None => String::new(),
                };
                let note = format!(
                    "promoting {} (WAL at {}) in place of {from} (last reported at {}){lost}",
                    promotion.pod,
                    lsn_text(Some(promotion.lsn)),
                    lsn_text(promotion.primary_lsn),
                );
                self.event(EventType::Warning, "FailoverStarted", note)
                    .await;
            }
            Announcement::FailoverCompleted {
                ref from,
                ref to,
                elapsed,
                ..
            } => {
                let record = announcement.failover_record();
                if let Err(error) = self.patch_status(json!({ "lastFailover": record })).await {
                    tracing::warn!(%error, "cannot record the failover in the status");
                }
                self.ctx.metrics.count_failover(
                    &self.namespace(),
                    &self.key.name,
                    elapsed.as_secs_f64(),
                );
                self.event(
                    EventType::Normal,
                    "FailoverCompleted",
                    format!(
                        "{to} is the primary in place of {from}, {} ms after the primary was lost",
                        elapsed.as_millis()
                    ),
                )
                .await;
            }
            Announcement::SwitchoverCompleted {
                from,
                to,
                write_gap,
            } => {
                self.event(
                    EventType::Normal,
                    "SwitchoverCompleted",
                    format!(
                        "{to} is the primary in place of {from}; writes stopped for {} ms",
                        write_gap.as_millis()
                    ),
                )
                .await;
            }
            Announcement::SwitchoverRefused { from, to, reason } => {
                self.event(
                    EventType::Warning,
                    "SwitchoverRefused",
                    format!("no switchover from {from} to {to}: {reason}"),
                )
                .await;
            }
            Announcement::Blocked(message) => {
                if let Some(message) = &message {
                    self.event(EventType::Warning, FAILOVER_BLOCKED, message.clone())
                        .await;
                }
                if let Err(error) = self.blocked_condition(message.as_deref()).await {
                    tracing::warn!(%error, "cannot record the FailoverBlocked condition");
                }
            }
        }
    }
}

/// Whether `status` has every field of `fields` with its value (an absent field counts
/// as null or empty, as the status is serialized without them).
fn holds_fields(status: &serde_json::Value, fields: &serde_json::Value) -> bool {
    fields.as_object().is_some_and(|fields| {
        fields.iter().all(|(key, value)| match status.get(key) {
            Some(held) => held == value,
            None => value.is_null() || value.as_array().is_some_and(Vec::is_empty),
        })
    })
}

/// `0/3000060`, PostgreSQL's way of writing a WAL position.
fn lsn_text(lsn: Option<u64>) -> String {
    match lsn {
        Some(lsn) => format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF),
        None => "unknown".to_string(),
    }
}

/// Keeps one engine running per cluster in `store` (and none for clusters being
/// deleted) until `shutdown`.
pub async fn supervise(
    ctx: Arc<Context>,
    store: Store<Postgres>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut engines: HashMap<ObjectRef<Postgres>, tokio::task::JoinHandle<()>> = HashMap::new();
    let keep = async {
        // Nothing is known before the reflector's first list.
        let _ = store.wait_until_ready().await;
        loop {
            let clusters: HashMap<ObjectRef<Postgres>, Arc<Postgres>> = store
                .state()
                .into_iter()
                .filter(|postgres| postgres.metadata.deletion_timestamp.is_none())
                .map(|postgres| (ObjectRef::from_obj(&*postgres), postgres))
                .collect();
            engines.retain(|key, engine| {
                let keep = clusters.contains_key(key) && !engine.is_finished();
                if !keep {
                    engine.abort();
                }
                keep
            });
            for key in clusters.keys() {
                if engines.contains_key(key) {
                    continue;
                }
                let world = KubeWorld {
                    ctx: ctx.clone(),
                    store: store.clone(),
                    key: key.clone(),
                };
                let engine = Engine::new(world, Timing::default());
                engines.insert(key.clone(), tokio::spawn(engine.run()));
            }
            tokio::time::sleep(SUPERVISE_EVERY).await;
        }
    };
    tokio::select! {
        () = keep => {}
        () = shutdown => {}
    }
    for engine in engines.values() {
        engine.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_are_reached_through_the_headless_service() {
        let addresses = InstanceAddresses::default();
        assert_eq!(
            addresses
                .address("tenant", "demo", "postgres-demo-1")
                .as_deref(),
            Some("postgres-demo-1.postgres-demo-headless.tenant.svc:8000")
        );
        let local = InstanceAddresses::with(|_, _, pod| Some(format!("{pod}:1")));
        assert_eq!(local.address("tenant", "demo", "p").as_deref(), Some("p:1"));
    }

    #[test]
    fn a_write_is_in_the_cache_once_its_fields_are() {
        let status = json!({"currentPrimary": "p-1", "targetPrimary": "p-1", "syncQuorum": 1});
        assert!(holds_fields(&status, &json!({"targetPrimary": "p-1"})));
        assert!(holds_fields(
            &status,
            &json!({"currentPrimary": "p-1", "targetPrimary": "p-1"})
        ));
        assert!(!holds_fields(
            &status,
            &json!({"currentPrimary": "p-2", "targetPrimary": "p-2"})
        ));
        // Serialized without empty lists.
        assert!(holds_fields(
            &status,
            &json!({"syncQuorum": 1, "syncStandbys": []})
        ));
        assert!(!holds_fields(
            &status,
            &json!({"syncQuorum": 1, "syncStandbys": ["p-0"]})
        ));
        assert!(!holds_fields(
            &json!(null),
            &json!({"targetPrimary": "p-1"})
        ));
    }

    #[test]
    fn wal_positions_are_written_as_postgresql_writes_them() {
        assert_eq!(lsn_text(Some(0x3_0000_0060)), "3/60");
        assert_eq!(lsn_text(None), "unknown");
    }
}
