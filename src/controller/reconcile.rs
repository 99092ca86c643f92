//! One reconcile of one `Postgres`: validate, build, apply what drifted, delete what the
//! spec no longer asks for, record status and events. Fetching and writing only: every
//! decision about object shapes lives in the builders.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, DynamicObject};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::status::{self, Observed};
use super::versions::{self, ObjectKey};
use super::{Context, Error, FIELD_MANAGER, pod_roles, rollout};
use crate::api::{Postgres, PostgresBackup};
use crate::ha::plan::Step;
use crate::manifests::cronjob::backup_credentials_secret;
use crate::manifests::secrets::{ExistingSecrets, RandomPasswords};
use crate::manifests::statefulset::template_hash_of;
use crate::manifests::tls::{self, RcgenIssuer, TlsError};
use crate::manifests::{Cluster, ManagedObject, desired_objects, labels, names, pod};
use crate::quantity::Quantity;
use crate::validate;

/// The cluster's backup records (from the watch), and the name of its backup credentials
/// Secret when that Secret neither exists nor is about to be applied. Reads only, and only
/// with backups on.
async fn observe_backups(
    ctx: &Context,
    cluster: &Cluster<'_>,
    desired: &[ManagedObject],
) -> Result<(Vec<PostgresBackup>, Option<String>), Error> {
    if !cluster.spec().backup.enabled {
        return Ok((Vec::new(), None));
    }
    let records = ctx.records.of(&cluster.namespace, &cluster.name);
    let secret = backup_credentials_secret(cluster);
    let applied = desired
        .iter()
        .any(|object| object.kind() == "Secret" && object.name() == secret);
    let missing = if applied {
        None
    } else {
        Api::<Secret>::namespaced(ctx.client.clone(), &cluster.namespace)
            .get_opt(&secret)
            .await
            .map_err(Error::kube("get", "Secret", &secret))?
            .is_none()
            .then_some(secret)
    };
    Ok((records, missing))
}

/// Reconciles one cluster; errors are retried by the controller with backoff.
pub async fn reconcile(postgres: Arc<Postgres>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics.reconciles.inc();
    let result = reconcile_inner(&postgres, &ctx).await;
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    let key = format!(
        "{}/{}",
        postgres.namespace().unwrap_or_default(),
        postgres.name_any()
    );
    match &result {
        Ok(_) => {
            ctx.record_outcome(&key, false);
        }
        Err(error) => {
            ctx.metrics.reconcile_errors.inc();
            // Tell the user once per failure streak (error_policy counts it), not on
            // every retry.
            let streak = ctx
                .failures
                .lock()
                .map(|f| f.get(&key).copied().unwrap_or(0))
                .unwrap_or(0);
            if streak == 0 {
                let note = error.to_string();
                event(
                    &ctx,
                    &postgres,
                    EventType::Warning,
                    "ReconcileFailed",
                    "Reconcile",
                    &note,
                )
                .await;
            }
        }
    }
    result
}

async fn reconcile_inner(postgres: &Postgres, ctx: &Context) -> Result<Action, Error> {
    let namespace = postgres.namespace().unwrap_or_default();
    let name = postgres.name_any();
    let key = format!("{namespace}/{name}");
    if postgres.metadata.deletion_timestamp.is_some() {
        // Owned objects go with the Postgres (owner references); data volumes stay.
        ctx.metrics.set_cluster_ready(&key, None);
        ctx.metrics.set_backup_freshness(&namespace, &name, None);
        return Ok(Action::await_change());
    }
    let cluster = Cluster::new(postgres, &namespace, &ctx.settings.operator);

    if let Err(errors) = validate::validate_spec(&postgres.spec) {
        return refuse(postgres, ctx, &key, errors.to_string()).await;
    }
    let live_statefulset = Api::<StatefulSet>::namespaced(ctx.client.clone(), &namespace)
        .get_opt(&names::prefix(&name))
        .await
        .map_err(Error::kube("get", "StatefulSet", &name))?;
    if let Some(message) = rollout::major_change(postgres, live_statefulset.as_ref()) {
        return refuse(postgres, ctx, &key, message).await;
    }

    let mut existing = existing_secrets(ctx, &namespace, &name).await?;
    if let Err(missing) = add_provided_certificates(ctx, postgres, &mut existing).await? {
        // cert-manager may still be issuing it: looked for again soon.
        return refuse_for(postgres, ctx, &key, missing, PROVIDED_SECRET_RETRY).await;
    }
    let external_addresses = external_addresses(ctx, postgres).await?;
    let mut desired = match desired_objects(
        &cluster,
        &existing,
        &external_addresses,
        &mut RandomPasswords,
        &mut RcgenIssuer,
    ) {
        Ok(desired) => desired,
        Err(error @ TlsError::Provided { .. }) => {
            return refuse(postgres, ctx, &key, error.to_string()).await;
        }
        Err(error) => return Err(Error::Certificates(error.to_string())),
    };
    warn_of_missing_names(&cluster, &existing, &external_addresses);
    keep_immutable_claim_templates(&mut desired, live_statefulset.as_ref());
    // The pods as they are before this pass: the plan of a rolling update, a drain or
    // a scale-down decides the StatefulSet's replicas and at most one step.
    let selector = selector_string(&labels::selector(&name));
    let mut pods = Api::<Pod>::namespaced(ctx.client.clone(), &namespace)
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::kube("list", "Pod", &name))?;
    let plan = rollout::plan_for(
        ctx,
        postgres,
        &pods.items,
        live_statefulset.as_ref(),
        desired_template_hash(&desired).as_deref(),
    )
    .await;
    set_replicas(&mut desired, plan.replicas);

    let mut created = Vec::new();
    for object in &desired {
        if sync_object(ctx, &namespace, object).await? == Outcome::Created {
            created.push(format!("{} {}", object.kind(), object.name()));
        }
    }
    delete_stale(ctx, postgres, &namespace, &desired).await?;
    resize_volumes(ctx, &cluster).await?;

    if !created.is_empty() {
        event(
            ctx,
            postgres,
            EventType::Normal,
            "Created",
            "Create",
            &format!("created {}", created.join(", ")),
        )
        .await;
    }
    if let Some(live) = &live_statefulset {
        let before = live
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or_default();
        if before != plan.replicas {
            let note = format!("scaled from {before} to {} instances", plan.replicas);
            event(ctx, postgres, EventType::Normal, "Scaled", "Scale", &note).await;
        }
    }

    // The StatefulSet's counts as read before this pass's apply: applying changes its
    // spec, not its status, and the StatefulSet watch brings the next change here.
    let primary = names::labelled_primary(postgres);
    pod_roles::apply_roles(ctx, &namespace, &mut pods.items, &primary).await?;
    // After the apply: a pod deleted now comes back on the template just applied.
    if let Some((reason, note)) = rollout::carry_out(ctx, postgres, &pods.items, &plan).await? {
        event(ctx, postgres, EventType::Normal, reason, "Rollout", &note).await;
    }
    let (records, missing_credentials) = observe_backups(ctx, &cluster, &desired).await?;
    let observed = Observed {
        statefulset: live_statefulset.as_ref(),
        pods: &pods.items,
        invalid: None,
        rollout: Some(status::RolloutObserved {
            updated: plan.updated.clone(),
            progress: rollout::progress(&plan, postgres.spec.replicas),
        }),
        backups: postgres
            .spec
            .backup
            .enabled
            .then_some(status::BackupsObserved {
                records: &records,
                missing_credentials,
            }),
    };
    write_status(postgres, ctx, &observed).await?;
    ctx.metrics.set_backup_freshness(
        &namespace,
        &name,
        observed
            .backups
            .as_ref()
            .and_then(|backups| backup_freshness(postgres, backups)),
    );
    let ready = postgres
        .status
        .as_ref()
        .and_then(|s| status::condition_of(s, status::READY))
        .is_some_and(|c| c.status == "True");
    ctx.metrics.set_cluster_ready(&key, Some(ready));
    Ok(Action::requeue(if plan.step == Step::Settled {
        ctx.settings.resync
    } else {
        rollout::STEP_INTERVAL.min(ctx.settings.resync)
    }))
}

/// When the last successful backup ended (or, with none yet, when the cluster was
/// created) and the longest interval of the schedule, for the backup age alert.
fn backup_freshness(
    postgres: &Postgres,
    backups: &status::BackupsObserved<'_>,
) -> Option<(f64, i64)> {
    let interval = crate::validate::cron::longest_interval_seconds(&postgres.spec.backup.schedule)?;
    let (_, last) = status::backup_condition(backups, postgres.metadata.generation);
    let last = last
        .and_then(|at| at.parse::<Timestamp>().ok())
        .or_else(|| postgres.metadata.creation_timestamp.as_ref().map(|t| t.0))?;
    Some((last.as_second() as f64, i64::try_from(interval).ok()?))
}

/// How soon a cluster waiting for its own certificate Secrets looks again.
const PROVIDED_SECRET_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// The spec's own certificate Secrets (`spec.certificates`), read by name into
/// `existing`; `Err` names the one that does not exist.
async fn add_provided_certificates(
    ctx: &Context,
    postgres: &Postgres,
    existing: &mut ExistingSecrets,
) -> Result<Result<(), String>, Error> {
    let Some(provided) = &postgres.spec.certificates else {
        return Ok(Ok(()));
    };
    let namespace = postgres.namespace().unwrap_or_default();
    let secrets = Api::<Secret>::namespaced(ctx.client.clone(), &namespace);
    for (field, name) in [
        ("serverTLSSecret", Some(&provided.server_tls_secret)),
        ("serverCASecret", provided.server_ca_secret.as_ref()),
    ] {
        let Some(name) = name else { continue };
        match secrets
            .get_opt(name)
            .await
            .map_err(Error::kube("get", "Secret", name))?
        {
            Some(secret) => {
                existing.insert(name.clone(), secret);
            }
            None => {
                return Ok(Err(format!(
                    "spec.certificates.{field}: Secret {name:?} not found in namespace {namespace:?}"
                )));
            }
        }
    }
    Ok(Ok(()))
}

/// The external Service's load-balancer addresses (IPs or host names), for the server
/// certificate's names; none until the load balancer has one, or without `external`.
/// Read only when the Service's watch reports a version not read yet: a settled cluster
/// reads nothing more.
async fn external_addresses(ctx: &Context, postgres: &Postgres) -> Result<Vec<String>, Error> {
    if !postgres.spec.external {
        return Ok(Vec::new());
    }
    let namespace = postgres.namespace().unwrap_or_default();
    let service_name = names::service_external(&postgres.name_any());
    let key = ObjectKey {
        kind: "Service",
        namespace: namespace.clone(),
        name: service_name.clone(),
    };
    let cached = |live: &Option<String>| -> Option<Vec<String>> {
        let known = ctx.external_addresses.lock().ok()?;
        let (version, addresses) = known.get(&key)?;
        (live.as_ref() == Some(version)).then(|| addresses.clone())
    };
    if let Some(addresses) = cached(&ctx.versions.live(&key)) {
        return Ok(addresses);
    }
    let service = Api::<Service>::namespaced(ctx.client.clone(), &namespace)
        .get_opt(&service_name)
        .await
        .map_err(Error::kube("get", "Service", &service_name))?;
    let version = service
        .as_ref()
        .and_then(|s| s.metadata.resource_version.clone());
    let addresses: Vec<String> = service
        .and_then(|s| s.status?.load_balancer?.ingress)
        .into_iter()
        .flatten()
        .filter_map(|ingress| ingress.ip.or(ingress.hostname))
        .collect();
    if let (Some(version), Ok(mut known)) = (version, ctx.external_addresses.lock()) {
        known.insert(key, (version, addresses.clone()));
    }
    Ok(addresses)
}

/// A certificate of the user's that clients cannot verify by some of the cluster's
/// names is allowed (they may use only some), and logged.
fn warn_of_missing_names(cluster: &Cluster, existing: &ExistingSecrets, external: &[String]) {
    let Some(provided) = &cluster.spec().certificates else {
        return;
    };
    let Some(cert) = existing
        .get(&provided.server_tls_secret)
        .and_then(|s| s.data.as_ref()?.get(tls::TLS_CERT))
        .and_then(|pem| String::from_utf8(pem.0.clone()).ok())
    else {
        return;
    };
    let missing = tls::missing_names(&cert, &tls::server_names(cluster, external));
    if !missing.is_empty() {
        tracing::warn!(
            namespace = %cluster.namespace,
            name = %cluster.name,
            secret = %provided.server_tls_secret,
            ?missing,
            "the provided server certificate does not name every host clients and standbys may use (verify-full fails for those)"
        );
    }
}

/// Records why the spec is refused, and touches nothing else.
async fn refuse(
    postgres: &Postgres,
    ctx: &Context,
    key: &str,
    message: String,
) -> Result<Action, Error> {
    refuse_for(postgres, ctx, key, message, ctx.settings.resync).await
}

/// [`refuse`], looking again after `retry`.
async fn refuse_for(
    postgres: &Postgres,
    ctx: &Context,
    key: &str,
    message: String,
    retry: std::time::Duration,
) -> Result<Action, Error> {
    let observed = Observed {
        statefulset: None,
        pods: &[],
        invalid: Some(message.clone()),
        backups: None,
        rollout: None,
    };
    if write_status(postgres, ctx, &observed).await? {
        event(
            ctx,
            postgres,
            EventType::Warning,
            "InvalidSpec",
            "Validate",
            &message,
        )
        .await;
    }
    ctx.metrics.set_cluster_ready(key, Some(false));
    Ok(Action::requeue(retry.min(ctx.settings.resync)))
}

/// The digest on the pod template this pass applies.
fn desired_template_hash(desired: &[ManagedObject]) -> Option<String> {
    desired.iter().find_map(|object| match object {
        ManagedObject::StatefulSet(statefulset) => {
            template_hash_of(statefulset.spec.as_ref()?.template.metadata.as_ref()?)
                .map(str::to_string)
        }
        _ => None,
    })
}

/// The StatefulSet's replicas as planned: a scale-down waits for the primary to move.
fn set_replicas(desired: &mut [ManagedObject], replicas: i32) {
    for object in desired.iter_mut() {
        if let ManagedObject::StatefulSet(statefulset) = object
            && let Some(spec) = statefulset.spec.as_mut()
        {
            spec.replicas = Some(replicas);
        }
    }
}

fn selector_string(selector: &BTreeMap<String, String>) -> String {
    selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The cluster's Secrets as they are, so stored passwords are kept.
async fn existing_secrets(
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<ExistingSecrets, Error> {
    let selector = format!("{}={name}", labels::CLUSTER);
    let secrets = Api::<Secret>::namespaced(ctx.client.clone(), namespace)
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::kube("list", "Secret", name))?;
    Ok(secrets
        .items
        .into_iter()
        .filter_map(|s| Some((s.metadata.name.clone()?, s)))
        .collect())
}

/// A StatefulSet's volumeClaimTemplates cannot change once created: volumes are resized
/// through their claims instead, and the template keeps its original shape.
fn keep_immutable_claim_templates(desired: &mut [ManagedObject], live: Option<&StatefulSet>) {
    let Some(live_templates) = live.and_then(|s| s.spec.as_ref()?.volume_claim_templates.clone())
    else {
        return;
    };
    for object in desired.iter_mut() {
        if let ManagedObject::StatefulSet(statefulset) = object
            && let Some(spec) = statefulset.spec.as_mut()
        {
            spec.volume_claim_templates = Some(live_templates.clone());
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Unchanged,
    Created,
    Updated,
}

fn object_key(namespace: &str, kind: &'static str, name: &str) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

/// Applies `object` with server-side apply unless the live object already holds it: read
/// back only when its version is not one this operator verified for the same content, and
/// not at all when the watch knows it does not exist.
async fn sync_object(
    ctx: &Context,
    namespace: &str,
    object: &ManagedObject,
) -> Result<Outcome, Error> {
    let desired = object
        .to_json()
        .map_err(|e| Error::Serialize(e.to_string()))?;
    let key = object_key(namespace, object.kind(), object.name());
    let wanted = versions::fingerprint(&desired);
    if ctx.versions.unchanged(&key, wanted) {
        return Ok(Outcome::Unchanged);
    }
    let api = dynamic_api(ctx, namespace, &object.api_resource());
    // A new cluster's objects are known absent from the watch: applied without a read.
    let live = if ctx.versions.absent(&key) {
        None
    } else {
        api.get_opt(object.name()).await.map_err(Error::kube(
            "get",
            object.kind(),
            object.name(),
        ))?
    };
    let outcome = match &live {
        Some(live) => {
            let version = live.resource_version();
            let live = serde_json::to_value(live).map_err(|e| Error::Serialize(e.to_string()))?;
            if super::drift::contains(&live, &desired) {
                ctx.versions.verified(key, version, wanted);
                return Ok(Outcome::Unchanged);
            }
            Outcome::Updated
        }
        None => Outcome::Created,
    };
    let version = super::apply(ctx, &api, object.kind(), object.name(), &desired).await?;
    ctx.versions.verified(key, version, wanted);
    Ok(outcome)
}

fn dynamic_api(ctx: &Context, namespace: &str, resource: &ApiResource) -> Api<DynamicObject> {
    Api::namespaced_with(ctx.client.clone(), namespace, resource)
}

/// Objects the spec may stop asking for: deleted when they exist and are ours.
async fn delete_stale(
    ctx: &Context,
    postgres: &Postgres,
    namespace: &str,
    desired: &[ManagedObject],
) -> Result<(), Error> {
    let name = postgres.name_any();
    let uid = postgres.uid().unwrap_or_default();
    let optional = [
        (
            ApiResource::erase::<Service>(&()),
            "Service",
            names::service_external(&name),
        ),
        (
            ApiResource::erase::<CronJob>(&()),
            "CronJob",
            names::backup_cronjob(&name),
        ),
        (
            ApiResource::erase::<Secret>(&()),
            "Secret",
            names::secret_backup(&name),
        ),
    ];
    for (resource, kind, object_name) in optional {
        if desired
            .iter()
            .any(|o| o.kind() == kind && o.name() == object_name)
        {
            continue;
        }
        // Known absent from the watch: nothing to read, nothing to delete.
        if ctx
            .versions
            .absent(&object_key(namespace, kind, &object_name))
        {
            continue;
        }
        let api = dynamic_api(ctx, namespace, &resource);
        let Some(live) =
            api.get_opt(&object_name)
                .await
                .map_err(Error::kube("get", kind, &object_name))?
        else {
            continue;
        };
        // A backup Secret the user created is theirs: only objects we own are removed.
        if !live.owner_references().iter().any(|o| o.uid == uid) {
            continue;
        }
        api.delete(&object_name, &DeleteParams::default())
            .await
            .map_err(Error::kube("delete", kind, &object_name))?;
        ctx.metrics.count_write("delete", kind);
        event(
            ctx,
            postgres,
            EventType::Normal,
            "Deleted",
            "Delete",
            &format!("deleted {kind} {object_name}: no longer in the spec"),
        )
        .await;
    }
    Ok(())
}

/// Grows the data volume claims to `spec.size` (never shrinks: validation refuses it).
async fn resize_volumes(ctx: &Context, cluster: &Cluster<'_>) -> Result<(), Error> {
    let Ok(size) = cluster.spec().size.parse::<Quantity>() else {
        return Ok(());
    };
    let api = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &cluster.namespace);
    let claims = api
        .list(&ListParams::default().labels(&selector_string(&cluster.selector())))
        .await
        .map_err(Error::kube("list", "PersistentVolumeClaim", &cluster.name))?;
    let prefix = format!("{}-{}-", pod::DATA_VOLUME, names::prefix(&cluster.name));
    for claim in claims.items {
        let claim_name = claim.name_any();
        if !claim_name.starts_with(&prefix) {
            continue;
        }
        let current = claim
            .spec
            .as_ref()
            .and_then(|s| {
                s.resources
                    .as_ref()?
                    .requests
                    .as_ref()?
                    .get("storage")
                    .cloned()
            })
            .and_then(|q| q.0.parse::<Quantity>().ok());
        if current.is_some_and(|current| current >= size) {
            continue;
        }
        let patch = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "spec": {"resources": {"requests": {"storage": cluster.spec().size}}}});
        super::apply(ctx, &api, "PersistentVolumeClaim", &claim_name, &patch).await?;
    }
    Ok(())
}

/// Writes the status when it differs; true when it did.
async fn write_status(
    postgres: &Postgres,
    ctx: &Context,
    observed: &Observed<'_>,
) -> Result<bool, Error> {
    let desired = status::desired_status(postgres, observed, Timestamp::now());
    if postgres.status.as_ref() == Some(&desired) {
        return Ok(false);
    }
    // A merge patch of the reconcile's own fields only: the primary, the target and
    // the synchronous set belong to the HA engine (`failover.rs`), which writes them
    // between a reconcile's read and its write; an apply of the whole status would
    // put the values this reconcile read back.
    let mut fields = serde_json::to_value(&desired).map_err(|e| Error::Serialize(e.to_string()))?;
    if let Some(fields) = fields.as_object_mut() {
        for owned_by_the_engine in [
            "currentPrimary",
            "targetPrimary",
            "syncQuorum",
            "syncStandbys",
            "instancesStatus",
            "lastFailover",
        ] {
            fields.remove(owned_by_the_engine);
        }
    }
    merge_status(ctx, postgres, &fields).await?;
    Ok(true)
}

/// Merge-patches `fields` into the status of `postgres`, as the reconcile's field manager.
pub(crate) async fn merge_status(
    ctx: &Context,
    postgres: &Postgres,
    fields: &serde_json::Value,
) -> Result<(), Error> {
    let name = postgres.name_any();
    let api = Api::<Postgres>::namespaced(
        ctx.client.clone(),
        &postgres.namespace().unwrap_or_default(),
    );
    let patch = json!({ "status": fields });
    api.patch_status(
        &name,
        &PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PatchParams::default()
        },
        &Patch::Merge(&patch),
    )
    .await
    .map_err(Error::kube("patch status", "Postgres", &name))?;
    ctx.metrics.count_write("patch status", "Postgres");
    Ok(())
}

/// Publishes an event; a failure to record one never fails the reconcile.
async fn event(
    ctx: &Context,
    postgres: &Postgres,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note.chars().take(1000).collect()),
        action: action.to_string(),
        secondary: None,
    };
    match ctx
        .recorder
        .publish(&event, &postgres.object_ref(&()))
        .await
    {
        Ok(()) => ctx.metrics.count_write("create", "Event"),
        Err(e) => tracing::warn!(error = %e, reason, "cannot record event"),
    }
}
