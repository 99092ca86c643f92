//! Planned changes on a running cluster, end to end: the real controller against the API
//! double over HTTP, real instance managers and PostgreSQL servers on loopback, and the
//! StatefulSet controller and kubelet played by `support::statefulset` (pods made from
//! the StatefulSet's template, deleted pods restarted on their data, scaled-down claims
//! deleted). Checked under a steady writer: the order of restarts, the write gap, and
//! that no acknowledged commit is lost.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres_operator::ha::{Role, client};
use postgres_operator::manifests::{labels, names};
use serde_json::{Value, json};
use support::apiserver::ApiServer;
use support::controller_failover::{
    NS, POSTGRES, RunningController, ServedApi, event_reasons, postgres, role_label, status,
    superuser_password,
};
use support::failover::{Writer, missing_on_as};
use support::statefulset::{Action, StatefulSetDouble, node_of};
use support::{wait_for_value, wait_until};

/// A cluster run as on Kubernetes, its controller restartable.
struct Running {
    api: ServedApi,
    server: ApiServer,
    cluster: String,
    controller: RunningController,
    addresses: Arc<Mutex<BTreeMap<String, String>>>,
    pods: StatefulSetDouble,
    password: String,
}

impl Running {
    async fn start(cluster: &str, spec: Value, max_ordinals: usize) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("postgres_operator=info")
            .try_init();
        let api = ServedApi::start(ApiServer::new()).await;
        let server = api.server.clone();
        for ordinal in 0..max_ordinals as i32 {
            server.put("/nodes", "", node(&node_of(ordinal), false));
        }
        server.put(POSTGRES, NS, postgres(cluster, spec));
        let addresses: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
        let controller = RunningController::start(
            api.client().await,
            Duration::from_secs(1),
            addresses.clone(),
        );
        wait_until("the Secrets and the StatefulSet", 60, || async {
            superuser_password(&server, cluster).is_some()
                && server
                    .get("apps/statefulsets", NS, &names::prefix(cluster))
                    .is_some()
        })
        .await;
        let password = superuser_password(&server, cluster).unwrap();
        let pods = StatefulSetDouble::start(
            server.clone(),
            cluster,
            &password,
            api.env(),
            addresses.clone(),
            max_ordinals,
        );
        Self {
            api,
            server,
            cluster: cluster.to_string(),
            controller,
            addresses,
            pods,
            password,
        }
    }

    /// Three instances, `ANY 1` of 2, settled with `-0` the primary; room for
    /// `max_ordinals` pods.
    async fn start_settled(cluster: &str, max_ordinals: usize) -> Self {
        let running = Self::start(
            cluster,
            json!({"replicas": 3, "quorum": {"minSyncReplicas": 1, "maxSyncReplicas": 1}}),
            max_ordinals,
        )
        .await;
        running.wait_settled(&running.pod(0), 3, 120).await;
        running
    }

    fn pod(&self, ordinal: i32) -> String {
        names::pod(&self.cluster, ordinal)
    }

    fn primary(&self) -> Option<String> {
        status(&self.server, &self.cluster).current_primary
    }

    /// A fresh handle on `pod`'s status port (the kubelet double owns the process).
    fn instance_port(&self, pod: &str) -> Option<u16> {
        self.pods.port(pod)
    }

    /// `pod`'s report, asked on its status port as the engine asks.
    async fn report(&self, pod: &str) -> Option<postgres_operator::ha::wire::InstanceReport> {
        let address = self.addresses.lock().unwrap().get(pod).cloned()?;
        client::report(&address, Duration::from_secs(1)).await.ok()
    }

    /// Whether `pod` says it streams from `primary`.
    async fn streams(&self, pod: &str, primary: &str) -> bool {
        self.report(pod).await.is_some_and(|r| {
            r.report.role == Role::Standby && r.report.streaming_from.as_deref() == Some(primary)
        })
    }

    /// The recorded primary when it is `primary` (any, when `None`), every other pod
    /// below `replicas` streams from it, and none waits for a restart (a primary that
    /// does would hand over next); otherwise what is not there yet.
    async fn settled_on(&self, primary: Option<&str>, replicas: i32) -> Result<String, String> {
        let recorded = self.primary().ok_or("no primary recorded")?;
        if primary.is_some_and(|p| p != recorded) {
            return Err(format!("{recorded} recorded as the primary"));
        }
        let mut unsettled = Vec::new();
        for ordinal in 0..replicas {
            let pod = self.pod(ordinal);
            let Some(report) = self.report(&pod).await else {
                unsettled.push(format!("{pod}: no report"));
                continue;
            };
            let streams = report.report.role == Role::Standby
                && report.report.streaming_from.as_deref() == Some(recorded.as_str());
            if report.pending_restart || (pod != recorded && !streams) {
                unsettled.push(format!(
                    "{pod}: {:?} streaming from {:?}, pending restart {}",
                    report.report.role, report.report.streaming_from, report.pending_restart
                ));
            }
        }
        if unsettled.is_empty() {
            Ok(recorded)
        } else {
            Err(format!("primary {recorded}; {}", unsettled.join("; ")))
        }
    }

    /// Until `primary` is recorded, every other pod below `replicas` streams from it and
    /// none waits for a restart.
    async fn wait_settled(&self, primary: &str, replicas: i32, seconds: u64) {
        wait_for_value(
            &format!("{primary} is primary, every standby streams from it, nothing pending"),
            seconds,
            || self.settled_on(Some(primary), replicas),
        )
        .await;
    }

    /// As [`Self::wait_settled`] whichever the primary (a setting that needs a restart
    /// moves it); the primary.
    async fn wait_settled_anywhere(&self, replicas: i32, seconds: u64) -> String {
        wait_for_value(
            &format!("{replicas} instances settled on a primary, nothing pending"),
            seconds,
            || self.settled_on(None, replicas),
        )
        .await
    }

    fn spec_edit(&self, edit: impl FnOnce(&mut Value)) {
        let mut pg = self.server.get(POSTGRES, NS, &self.cluster).unwrap();
        edit(&mut pg["spec"]);
        self.server.put(POSTGRES, NS, pg);
    }

    fn statefulset_replicas(&self) -> i64 {
        self.server
            .get("apps/statefulsets", NS, &names::prefix(&self.cluster))
            .and_then(|s| s["spec"]["replicas"].as_i64())
            .unwrap_or(-1)
    }

    /// The operator restarted as a new process would be: a new controller.
    async fn restart_controller(&mut self) {
        self.controller.stop().await;
        self.controller = RunningController::start(
            self.api.client().await,
            Duration::from_secs(1),
            self.addresses.clone(),
        );
    }
}

fn node(name: &str, unschedulable: bool) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
           "spec": {"unschedulable": unschedulable}})
}

/// The longest time between two acknowledged commits after `from`.
fn restarts_since(actions: &[Action], skip: usize) -> Vec<Action> {
    actions[skip..].to_vec()
}

async fn no_commit_lost(running: &Running, writer: &Writer, primary: &str) -> usize {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let acks = writer.acks();
    let port = running.instance_port(primary).unwrap();
    let lost = missing_on_as(port, &running.password, &acks).await;
    assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");
    acks.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_template_change_restarts_replica_replica_then_switches_over_then_the_former_primary() {
    let mut running = Running::start_settled("roll", 3).await;
    let first = running.pod(0);
    let writer = Writer::start_as(&running.pods.all_ports(), &running.password).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let created = running.pods.actions().len();
    assert_eq!(created, 3);

    // A new image: every pod must be replaced.
    let changed = Instant::now();
    running.spec_edit(|spec| spec["image"] = json!("registry.example/postgres:18.1-patched"));
    let mut saw_progressing = false;
    wait_until("a first standby is restarted", 120, || {
        let progressing = status(&running.server, "roll")
            .conditions
            .iter()
            .any(|c| c.type_ == "Progressing" && c.reason == "RollingUpdate");
        saw_progressing |= progressing;
        let restarted = running.pods.actions().len() > created;
        async move { restarted }
    })
    .await;
    // The operator goes away in the middle of the rollout; the next one resumes it.
    running.restart_controller().await;
    let mut primaries = vec![first.clone()];
    wait_until("every pod runs the new template", 240, || {
        let status = status(&running.server, "roll");
        if let Some(primary) = status.current_primary.clone()
            && primaries.last() != Some(&primary)
        {
            primaries.push(primary);
        }
        saw_progressing |= status
            .conditions
            .iter()
            .any(|c| c.type_ == "Progressing" && c.reason == "RollingUpdate");
        let done =
            status.updated_instances.len() == 3 && running.pods.actions().len() == created + 3;
        async move { done }
    })
    .await;
    let elapsed = changed.elapsed();
    let actions = restarts_since(&running.pods.actions(), created);
    eprintln!("rollout took {} ms: {actions:?}", elapsed.as_millis());
    assert!(
        saw_progressing,
        "Progressing never showed the rolling update"
    );
    // Standbys first, one at a time, then the former primary.
    let restarted: Vec<String> = actions
        .iter()
        .map(|a| match a {
            Action::Restarted(pod) => pod.clone(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        restarted[2], first,
        "the former primary last: {restarted:?}"
    );
    assert!(!restarted[..2].contains(&first));
    // One switchover, to a standby already restarted, before the former primary went.
    assert_eq!(primaries.len(), 2, "{primaries:?}");
    assert!(restarted[..2].contains(&primaries[1]));
    let new_primary = primaries[1].clone();
    running.wait_settled(&new_primary, 3, 120).await;
    // Told as Events (repeats of a reason are counted on one Event by the recorder).
    let reasons = event_reasons(&running.server, "roll");
    let at = |reason: &str| reasons.iter().position(|r| r == reason);
    assert!(
        at("RollingUpdate") < at("SwitchoverRequested"),
        "{reasons:?}"
    );
    assert!(
        at("SwitchoverRequested") < at("SwitchoverCompleted"),
        "{reasons:?}"
    );
    assert!(at("RollingUpdate").is_some(), "{reasons:?}");
    let gap = writer.longest_gap_since(changed);
    let commits = no_commit_lost(&running, &writer, &new_primary).await;
    eprintln!(
        "{commits} acknowledged commits, none lost; longest write gap during the rollout {} ms",
        gap.as_millis()
    );
    // The primary stopped taking writes only for the switchover.
    assert!(gap < Duration::from_secs(5), "write gap {gap:?}");
    running.pods.stop().await;
}

/// Whether the eviction API would let `pod` go: every PodDisruptionBudget selecting it
/// keeps its `minAvailable` among the pods it selects that run (as the disruption
/// controller counts healthy pods).
fn eviction_allowed(server: &ApiServer, pod: &str, running: &[String]) -> bool {
    let pods = server.list("/pods", NS);
    let labels_of = |name: &str| -> serde_json::Map<String, Value> {
        pods.iter()
            .find(|p| p["metadata"]["name"] == name)
            .and_then(|p| p["metadata"]["labels"].as_object().cloned())
            .unwrap_or_default()
    };
    let target = labels_of(pod);
    server
        .list("policy/poddisruptionbudgets", NS)
        .iter()
        .all(|budget| {
            let selector = budget["spec"]["selector"]["matchLabels"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            let selects = |labels: &serde_json::Map<String, Value>| {
                selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            };
            if !selects(&target) {
                return true;
            }
            let healthy = running
                .iter()
                .filter(|name| selects(&labels_of(name)))
                .count() as i64;
            // One fewer must still meet minAvailable.
            healthy > budget["spec"]["minAvailable"].as_i64().unwrap()
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cordoning_the_primarys_node_switches_over_and_the_budgets_let_the_drain_through() {
    let mut running = Running::start_settled("drain", 3).await;
    let first = running.pod(0);
    let all: Vec<String> = (0..3).map(|o| running.pod(o)).collect();
    wait_until("the role labels", 30, || async {
        role_label(&running.server, &first).as_deref() == Some(labels::ROLE_PRIMARY)
    })
    .await;
    // Before the cordon the budgets keep the primary, and let one standby go.
    assert!(!eviction_allowed(&running.server, &first, &all));
    assert!(eviction_allowed(&running.server, &all[1], &all));
    let writer = Writer::start_as(&running.pods.all_ports(), &running.password).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // `kubectl drain node-0`, first step: the cordon.
    let cordoned = Instant::now();
    running.server.put("/nodes", "", node(&node_of(0), true));
    wait_until("the primary moves off the cordoned node", 60, || async {
        running.primary().is_some_and(|p| p != first)
    })
    .await;
    let moved = cordoned.elapsed();
    let new_primary = running.primary().unwrap();
    wait_until("the labels follow", 30, || async {
        role_label(&running.server, &first).as_deref() == Some(labels::ROLE_REPLICA)
            && role_label(&running.server, &new_primary).as_deref() == Some(labels::ROLE_PRIMARY)
    })
    .await;
    running.wait_settled(&new_primary, 3, 60).await;
    eprintln!(
        "the primary left the cordoned node in {} ms",
        moved.as_millis()
    );
    let reasons = event_reasons(&running.server, "drain");
    assert!(
        reasons.iter().any(|r| r == "SwitchoverRequested"),
        "{reasons:?}"
    );

    // The drain's eviction of the old primary's pod is allowed now; the pod goes and
    // comes back (elsewhere, on a real cluster) as a standby.
    assert!(eviction_allowed(&running.server, &first, &all));
    // ... but not a second standby while the first is away: the quorum keeps one.
    let others: Vec<String> = all.iter().filter(|p| **p != first).cloned().collect();
    let standby = others.iter().find(|p| **p != new_primary).unwrap();
    assert!(!eviction_allowed(&running.server, standby, &others));
    running.server.remove("/pods", NS, &first);
    wait_until("the evicted pod streams again", 120, || async {
        running.streams(&first, &new_primary).await
    })
    .await;
    let gap = writer.longest_gap_since(cordoned);
    let commits = no_commit_lost(&running, &writer, &new_primary).await;
    eprintln!(
        "{commits} acknowledged commits, none lost; longest write gap {} ms",
        gap.as_millis()
    );
    assert!(gap < Duration::from_secs(5), "write gap {gap:?}");
    // The primary stays where it is: its node is fine.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(running.primary(), Some(new_primary));
    running.pods.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scaling_3_5_2_3_keeps_the_data_moves_the_primary_first_and_clones_afresh() {
    let mut running = Running::start_settled("scale", 5).await;
    let first = running.pod(0);
    let writer = Writer::start_as(&running.pods.all_ports(), &running.password).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Up to 5: two new instances clone and stream. More max_wal_senders need a restart,
    // which the primary takes through a switchover: it may be elsewhere now.
    running.spec_edit(|spec| spec["replicas"] = json!(5));
    let primary = running.wait_settled_anywhere(5, 180).await;
    eprintln!("5 instances settled, {primary} the primary (was {first})");

    // The primary on ordinal 4, as `postgres-operator switchover --to` would ask.
    let last = running.pod(4);
    let mut pg = running.server.get(POSTGRES, NS, "scale").unwrap();
    pg["status"]["targetPrimary"] = json!(last);
    running.server.put(POSTGRES, NS, pg);
    running.wait_settled(&last, 5, 120).await;
    let before_down = Instant::now();

    // Down to 2: the primary is switched away from ordinal 4 before anything goes.
    running.spec_edit(|spec| spec["replicas"] = json!(2));
    wait_until("the primary moves below the new scale", 60, || async {
        assert!(
            running.statefulset_replicas() == 5 || running.primary().is_some_and(|p| p != last),
            "the StatefulSet shrank while the primary was on a removed ordinal"
        );
        running
            .primary()
            .is_some_and(|p| p == running.pod(0) || p == running.pod(1))
    })
    .await;
    wait_until(
        "the StatefulSet shrinks to 2 and pods 2-4 go",
        60,
        || async {
            running.statefulset_replicas() == 2
                && (2..5).all(|o| running.pods.port(&running.pod(o)).is_none())
        },
    )
    .await;
    // Fewer max_wal_senders need a restart too.
    let primary = running.wait_settled_anywhere(2, 120).await;
    let actions = running.pods.actions();
    let removed: Vec<&Action> = actions
        .iter()
        .filter(|a| matches!(a, Action::Removed(_)))
        .collect();
    assert_eq!(removed.len(), 3, "{actions:?}");
    let gap = writer.longest_gap_since(before_down);
    let commits = no_commit_lost(&running, &writer, &primary).await;
    eprintln!(
        "{commits} acknowledged commits, none lost; longest write gap over the scale-down {} ms",
        gap.as_millis()
    );
    // The removed instances' slots no longer hold the primary's WAL.
    let port = running.instance_port(&primary).unwrap();
    let client = support::postgres::login(port, "postgres", &running.password, "postgres")
        .await
        .unwrap();
    wait_until("the removed instances' slots are dropped", 30, || async {
        let slots: Vec<String> = client
            .query("SELECT slot_name::text FROM pg_replication_slots", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        slots
            .iter()
            .all(|s| !s.ends_with("_2") && !s.ends_with("_3") && !s.ends_with("_4"))
    })
    .await;

    // Back to 3: ordinal 2 is cloned afresh (its old claim went with the scale-down).
    running.spec_edit(|spec| spec["replicas"] = json!(3));
    let primary = running.wait_settled_anywhere(3, 180).await;
    let actions = running.pods.actions();
    assert_eq!(
        actions.last(),
        Some(&Action::Created(running.pod(2))),
        "{actions:?}"
    );
    let commits = no_commit_lost(&running, &writer, &primary).await;
    assert!(commits > 0);
    running.pods.stop().await;
}
