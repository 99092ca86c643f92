//! Carries out the planned changes of `ha::plan` for one reconcile: gathers the pods,
//! their nodes and (only when something is to be done) what the instances report now,
//! then deletes one pod or records one switchover target. The decision is `ha::plan`'s.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Preconditions};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::{Context, Error};
use crate::api::Postgres;
use crate::ha::Role;
use crate::ha::client;
use crate::ha::plan::{self, Because, Input, Member, Plan, Step};
use crate::ha::wire::InstanceReport;
use crate::manifests::labels;
use crate::manifests::statefulset::template_hash_of;

/// How soon a reconcile looks again while a change is under way: pod deletions and
/// switchovers are followed by polling, as the pod watch wakes the reconcile only for
/// configuration refusals.
pub const STEP_INTERVAL: Duration = Duration::from_secs(1);

/// An instance that does not answer within this is not streaming, for the plan.
const REPORT_DEADLINE: Duration = Duration::from_secs(1);

/// The ordinal in `postgres-<cluster>-<n>`.
fn ordinal(cluster: &str, pod: &str) -> Option<i32> {
    pod.strip_prefix(&format!("{}-", crate::manifests::names::prefix(cluster)))?
        .parse()
        .ok()
}

/// The plan's input from what the API shows; health is filled in by [`plan_for`].
pub fn input_of(
    postgres: &Postgres,
    pods: &[Pod],
    live: Option<&StatefulSet>,
    template_hash: Option<&str>,
    cordoned: impl Fn(&str) -> bool,
) -> Input {
    let cluster = postgres.cluster_name();
    let status = postgres.status.clone().unwrap_or_default();
    let live_replicas = live.and_then(|s| s.spec.as_ref()?.replicas);
    let mut members: Vec<Member> = pods
        .iter()
        .filter_map(|pod| {
            let name = pod.metadata.name.clone()?;
            Some(Member {
                ordinal: ordinal(cluster, &name)?,
                present: pod.metadata.deletion_timestamp.is_none(),
                updated: template_hash.is_some()
                    && template_hash_of(&pod.metadata) == template_hash,
                on_cordoned_node: pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_deref())
                    .is_some_and(&cordoned),
                healthy: false,
                in_sync_set: status.sync_standbys.contains(&name),
                pod: name,
            })
        })
        .collect();
    for ordinal in 0..live_replicas.unwrap_or(postgres.spec.replicas) {
        if !members.iter().any(|m| m.ordinal == ordinal) {
            members.push(Member {
                pod: crate::manifests::names::pod(cluster, ordinal),
                ordinal,
                present: false,
                updated: false,
                on_cordoned_node: false,
                healthy: false,
                in_sync_set: false,
            });
        }
    }
    members.sort_by_key(|m| m.ordinal);
    let template_applied = live.is_some_and(|live| {
        let spec = live.spec.as_ref();
        let carries = spec
            .and_then(|s| s.template.metadata.as_ref())
            .is_some_and(|m| template_hash.is_some() && template_hash_of(m) == template_hash);
        let seen = live
            .status
            .as_ref()
            .and_then(|s| s.observed_generation)
            .is_none_or(|seen| live.metadata.generation.is_none_or(|g| seen >= g));
        carries && seen
    });
    Input {
        replicas: postgres.spec.replicas,
        live_replicas,
        current_primary: status.current_primary,
        target_primary: status.target_primary,
        members,
        template_applied,
    }
}

/// Health from the instances' own reports: the primary runs as primary, and each
/// standby streams from it by its own account and by the primary's.
pub fn fill_health(input: &mut Input, reports: &[(String, Option<InstanceReport>)]) {
    let report = |pod: &str| {
        reports
            .iter()
            .find(|(name, _)| name == pod)
            .and_then(|(_, r)| r.as_ref())
    };
    let Some(primary) = input.current_primary.clone() else {
        return;
    };
    let primary_report =
        report(&primary).filter(|r| r.report.role == Role::Primary && r.report.running);
    for member in &mut input.members {
        member.healthy = match primary_report {
            None => false,
            Some(_) if member.pod == primary => true,
            Some(primary_report) => {
                primary_report.streaming_standbys.contains(&member.pod)
                    && report(&member.pod).is_some_and(|r| {
                        r.report.role == Role::Standby
                            && r.report.streaming_from.as_deref() == Some(primary.as_str())
                    })
            }
        };
        if let Some(primary_report) = primary_report {
            member.in_sync_set = primary_report.sync_standbys.contains(&member.pod);
        }
    }
}

/// The plan for this reconcile. The instances are asked only when something may need
/// doing, so a settled cluster costs nothing more.
pub async fn plan_for(
    ctx: &Context,
    postgres: &Postgres,
    pods: &[Pod],
    live: Option<&StatefulSet>,
    template_hash: Option<&str>,
) -> Plan {
    let mut input = input_of(postgres, pods, live, template_hash, |node| {
        ctx.cordons.is_cordoned(node)
    });
    if plan::needs_attention(&input) {
        let namespace = postgres.namespace().unwrap_or_default();
        let cluster = postgres.cluster_name();
        let asks = input.members.iter().filter(|m| m.present).map(|m| {
            let address = ctx
                .settings
                .instance_addresses
                .address(&namespace, cluster, &m.pod);
            let pod = m.pod.clone();
            async move {
                let report = match address {
                    Some(address) => client::report(&address, REPORT_DEADLINE).await.ok(),
                    None => None,
                };
                (pod, report)
            }
        });
        let reports = futures::future::join_all(asks).await;
        fill_health(&mut input, &reports);
    }
    plan::plan(&input)
}

/// What the plan shows in the `Progressing` condition: reason and message, `None` when
/// settled.
pub fn progress(plan: &Plan, total: i32) -> Option<(&'static str, String)> {
    let updated = format!("{}/{} instances updated", plan.updated.len(), total);
    match &plan.step {
        Step::Settled => None,
        Step::Wait(waiting) => Some(("RollingUpdate", format!("{updated}; {waiting}"))),
        Step::Restart(pod) => Some(("RollingUpdate", format!("{updated}; restarting {pod}"))),
        Step::Switchover { to, because } => Some((
            match because {
                Because::RollingUpdate => "RollingUpdate",
                Because::NodeCordoned => "NodeDrain",
                Because::ScaleDown => "ScaleDown",
            },
            format!("{updated}; switching over to {to}: {because}"),
        )),
    }
}

/// Deletes the pod or records the switchover target the plan asks for; returns the
/// Event to publish (reason, note).
pub async fn carry_out(
    ctx: &Context,
    postgres: &Postgres,
    pods: &[Pod],
    plan: &Plan,
) -> Result<Option<(&'static str, String)>, Error> {
    let namespace = postgres.namespace().unwrap_or_default();
    match &plan.step {
        Step::Settled | Step::Wait(_) => Ok(None),
        Step::Restart(name) => {
            let uid = pods
                .iter()
                .find(|p| p.metadata.name.as_deref() == Some(name))
                .and_then(|p| p.metadata.uid.clone());
            // Only the pod that was looked at: never one the StatefulSet just recreated.
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid,
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            Api::<Pod>::namespaced(ctx.client.clone(), &namespace)
                .delete(name, &params)
                .await
                .map_err(Error::kube("delete", "Pod", name))?;
            ctx.metrics.count_write("delete", "Pod");
            let updated = plan.updated.len();
            Ok(Some((
                "RollingUpdate",
                format!(
                    "restarting {name} on the new pod template ({updated} of {} instances updated)",
                    postgres.spec.replicas
                ),
            )))
        }
        Step::Switchover { to, because } => {
            super::reconcile::merge_status(ctx, postgres, &json!({"targetPrimary": to})).await?;
            let from = postgres
                .status
                .as_ref()
                .and_then(|s| s.current_primary.clone())
                .unwrap_or_default();
            tracing::info!(%from, %to, %because, replicas = postgres.spec.replicas, generation = ?postgres.metadata.generation, "rollout: switchover requested");
            Ok(Some((
                "SwitchoverRequested",
                format!("switching over from {from} to {to}: {because}"),
            )))
        }
    }
}

/// A change of `spec.version` on a cluster whose data is of another major version: the
/// message refusing it. The major the data holds is the one recorded on the live
/// StatefulSet.
pub fn major_change(postgres: &Postgres, live: Option<&StatefulSet>) -> Option<String> {
    let recorded: u32 = live?
        .meta()
        .annotations
        .as_ref()?
        .get(labels::MAJOR_VERSION)?
        .parse()
        .ok()?;
    let wanted = postgres.spec.version().major();
    (recorded != wanted).then(|| {
        format!(
            "spec.version: the cluster's data is PostgreSQL {recorded}; changing to v{wanted} \
             would need a major upgrade, which is not done in place (yet). Set spec.version \
             back to v{recorded}, or restore a backup into a new cluster of v{wanted} \
             (nothing was changed)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;
    use kube::api::ObjectMeta;

    fn postgres(yaml: &str, status: serde_json::Value) -> Postgres {
        let mut pg: Postgres = serde_json::from_value(json!({
            "apiVersion": "apps.cozystack.io/v1alpha1", "kind": "Postgres",
            "metadata": {"name": "db", "namespace": "ns"},
            "spec": serde_yaml::from_str::<serde_json::Value>(yaml).unwrap(),
        }))
        .unwrap();
        pg.status = serde_json::from_value(status).unwrap();
        pg
    }

    fn pod(name: &str, hash: &str, node: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                annotations: Some([(labels::TEMPLATE_HASH.to_string(), hash.to_string())].into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.to_string()),
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    fn report(pod: &str, role: Role, from: Option<&str>, streaming: &[&str]) -> InstanceReport {
        serde_json::from_value(json!({
            "pod": pod, "role": role, "running": true, "timeline": 1,
            "streamingFrom": from,
            "streamingStandbys": streaming,
            "syncQuorum": 1, "syncStandbys": ["postgres-db-1"],
        }))
        .unwrap()
    }

    #[test]
    fn pods_become_members_with_their_template_node_and_missing_ordinals() {
        let pg = postgres(
            "replicas: 3",
            json!({"currentPrimary": "postgres-db-0", "syncStandbys": ["postgres-db-1"]}),
        );
        let pods = [
            pod("postgres-db-0", "new", "n1"),
            pod("postgres-db-1", "old", "n2"),
            pod("unrelated", "new", "n1"),
        ];
        let input = input_of(&pg, &pods, None, Some("new"), |node| node == "n2");
        let summary: Vec<_> = input
            .members
            .iter()
            .map(|m| {
                (
                    m.pod.as_str(),
                    m.present,
                    m.updated,
                    m.on_cordoned_node,
                    m.in_sync_set,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("postgres-db-0", true, true, false, false),
                ("postgres-db-1", true, false, true, true),
                ("postgres-db-2", false, false, false, false),
            ]
        );
    }

    #[test]
    fn a_standby_is_healthy_only_when_it_and_the_primary_agree_it_streams() {
        let pg = postgres("replicas: 3", json!({"currentPrimary": "postgres-db-0"}));
        let pods = [
            pod("postgres-db-0", "h", "n"),
            pod("postgres-db-1", "h", "n"),
            pod("postgres-db-2", "h", "n"),
        ];
        let mut input = input_of(&pg, &pods, None, Some("h"), |_| false);
        let reports = vec![
            (
                "postgres-db-0".to_string(),
                Some(report(
                    "postgres-db-0",
                    Role::Primary,
                    None,
                    &["postgres-db-1", "postgres-db-2"],
                )),
            ),
            (
                "postgres-db-1".to_string(),
                Some(report(
                    "postgres-db-1",
                    Role::Standby,
                    Some("postgres-db-0"),
                    &[],
                )),
            ),
            // Listed by the primary (a lingering sender) but silent itself.
            ("postgres-db-2".to_string(), None),
        ];
        fill_health(&mut input, &reports);
        let healthy: Vec<bool> = input.members.iter().map(|m| m.healthy).collect();
        assert_eq!(healthy, vec![true, true, false]);
        assert!(input.members[1].in_sync_set);
        // Without the primary's word, nobody is.
        fill_health(&mut input, &reports[1..]);
        assert!(input.members.iter().all(|m| !m.healthy));
    }

    #[test]
    fn a_major_version_change_is_refused_naming_both_versions() {
        let live = StatefulSet {
            metadata: ObjectMeta {
                annotations: Some([(labels::MAJOR_VERSION.to_string(), "17".to_string())].into()),
                ..ObjectMeta::default()
            },
            ..StatefulSet::default()
        };
        let pg = postgres("version: v18", json!({}));
        let message = major_change(&pg, Some(&live)).unwrap();
        assert!(
            message.starts_with("spec.version: the cluster's data is PostgreSQL 17"),
            "{message}"
        );
        assert!(message.contains("v18"));
        assert_eq!(
            major_change(&postgres("version: v17", json!({})), Some(&live)),
            None
        );
        assert_eq!(major_change(&pg, None), None);
    }
}
