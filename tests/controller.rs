//! The real kube-runtime Controller against the in-memory API double: objects appear with
//! owner references, follow spec changes, stale ones go, a settled cluster causes no
//! writes, invalid specs are refused, and API failures are retried.

mod support;

use std::sync::Arc;
use std::time::Duration;

use postgres_operator::controller::failover::InstanceAddresses;
use postgres_operator::controller::{self, Settings};
use postgres_operator::metrics::Metrics;
use serde_json::{Value, json};
use support::apiserver::{ApiServer, Fault};
use tokio::sync::oneshot;

const NS: &str = "tenant";
const POSTGRES: &str = "apps.cozystack.io/postgreses";

struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task).await;
    }
}

fn start(server: &ApiServer) -> Running {
    start_with(
        server,
        Duration::from_millis(200),
        Arc::new(Metrics::default()),
    )
}

fn start_with(server: &ApiServer, resync: Duration, metrics: Arc<Metrics>) -> Running {
    start_settings(server, test_settings(resync), metrics)
}

fn test_settings(resync: Duration) -> Settings {
    Settings {
        resync,
        retry_base: Duration::from_millis(100),
        // No instance runs behind the API double: the HA engines have nobody to ask.
        instance_addresses: InstanceAddresses::with(|_, _, _| None),
        ..Settings::default()
    }
}

fn start_settings(server: &ApiServer, settings: Settings, metrics: Arc<Metrics>) -> Running {
    let (stop, stopped) = oneshot::channel::<()>();
    let client = server.client();
    let task = tokio::spawn(async move {
        controller::run(client, settings, metrics, async move {
            let _ = stopped.await;
        })
        .await;
    });
    Running {
        stop: Some(stop),
        task,
    }
}

fn postgres(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "apps.cozystack.io/v1alpha1", "kind": "Postgres",
           "metadata": {"name": name, "namespace": NS}, "spec": spec})
}

fn example_spec(file: &str) -> Value {
    let doc: Value = serde_yaml::from_str(&support::example(file)).unwrap();
    doc["spec"].clone()
}

fn names(server: &ApiServer, resource: &str) -> Vec<String> {
    server
        .list(resource, NS)
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

fn secret_value(server: &ApiServer, name: &str, key: &str) -> Option<String> {
    let secret = server.get("/secrets", NS, name)?;
    let encoded = secret["data"][key].as_str()?;
    let bytes = k8s_openapi::ByteString::deserialize_from(encoded);
    Some(String::from_utf8(bytes).unwrap())
}

trait Decode {
    fn deserialize_from(encoded: &str) -> Vec<u8>;
}

impl Decode for k8s_openapi::ByteString {
    fn deserialize_from(encoded: &str) -> Vec<u8> {
        serde_json::from_value::<k8s_openapi::ByteString>(json!(encoded))
            .unwrap()
            .0
    }
}

fn condition(server: &ApiServer, name: &str, type_: &str) -> Option<Value> {
    let pg = server.get(POSTGRES, NS, name)?;
    pg["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

/// Lets the settled cluster's StatefulSet and pods look ready, as Kubernetes would.
fn mark_ready(server: &ApiServer, name: &str, replicas: i64) {
    let sts_name = format!("postgres-{name}");
    let mut sts = server.get("apps/statefulsets", NS, &sts_name).unwrap();
    let generation = sts["metadata"]["generation"].clone();
    sts["status"] =
        json!({"replicas": replicas, "readyReplicas": replicas, "observedGeneration": generation});
    server.put("apps/statefulsets", NS, sts);
    for ordinal in 0..replicas {
        let role = if ordinal == 0 { "primary" } else { "replica" };
        server.put(
            "/pods",
            NS,
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("postgres-{name}-{ordinal}"), "namespace": NS,
                "labels": {"app.kubernetes.io/name": "postgres", "app.kubernetes.io/instance": name,
                           "postgres.apps.cozystack.io/cluster": name, "postgres.apps.cozystack.io/role": role}}}),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_example_becomes_every_object_owned_by_the_postgres() {
    let server = ApiServer::new();
    let pg = server.put(
        POSTGRES,
        NS,
        postgres("shop", example_spec("complete.yaml")),
    );
    let uid = pg["metadata"]["uid"].clone();
    let running = start(&server);
    support::wait_for("the StatefulSet exists", || {
        server
            .get("apps/statefulsets", NS, "postgres-shop")
            .is_some()
    })
    .await;
    support::wait_for("the CronJob exists", || {
        server
            .get("batch/cronjobs", NS, "postgres-shop-backup")
            .is_some()
    })
    .await;
    for (resource, expected) in [
        (
            "/services",
            vec![
                "postgres-shop-external-write",
                "postgres-shop-headless",
                "postgres-shop-r",
                "postgres-shop-ro",
                "postgres-shop-rw",
            ],
        ),
        (
            "/secrets",
            vec![
                "postgres-shop",
                "postgres-shop-backup",
                "postgres-shop-ca",
                "postgres-shop-credentials",
                "postgres-shop-replication",
                "postgres-shop-server",
                "postgres-shop-superuser",
            ],
        ),
        ("/configmaps", vec!["postgres-shop-config"]),
        (
            "policy/poddisruptionbudgets",
            vec!["postgres-shop", "postgres-shop-primary"],
        ),
        ("networking.k8s.io/networkpolicies", vec!["postgres-shop"]),
        ("/serviceaccounts", vec!["postgres-shop"]),
        ("rbac.authorization.k8s.io/roles", vec!["postgres-shop"]),
        (
            "rbac.authorization.k8s.io/rolebindings",
            vec!["postgres-shop"],
        ),
    ] {
        let mut found = names(&server, resource);
        found.sort();
        assert_eq!(found, expected, "{resource}");
        for object in server.list(resource, NS) {
            assert_eq!(
                object["metadata"]["ownerReferences"][0]["uid"], uid,
                "{resource}"
            );
            assert_eq!(
                object["metadata"]["labels"]["postgres.apps.cozystack.io/cluster"],
                "shop"
            );
        }
    }
    assert_eq!(
        secret_value(&server, "postgres-shop-credentials", "admin").as_deref(),
        Some("secure-admin-password")
    );
    support::wait_for("a Created event is recorded", || {
        server
            .list("events.k8s.io/events", NS)
            .iter()
            .any(|e| e["reason"] == "Created")
    })
    .await;
    let ready = condition(&server, "shop", "Ready").unwrap();
    assert_eq!(ready["status"], "False");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_cluster_is_reconciled_without_writes() {
    let server = ApiServer::new();
    server.put(POSTGRES, NS, postgres("calm", example_spec("ha.yaml")));
    let running = start(&server);
    wait_and_mark_ready(&server, "calm", 5).await;
    support::wait_for("the cluster is Ready", || {
        condition(&server, "calm", "Ready").is_some_and(|c| c["status"] == "True")
    })
    .await;
    assert_resyncs_write_nothing(&server, || ()).await;
    running.stop().await;
}

/// Waits for the cluster's StatefulSet, then lets it and its pods look ready.
async fn wait_and_mark_ready(server: &ApiServer, name: &str, replicas: i64) {
    support::wait_for("the StatefulSet exists", || {
        server
            .get("apps/statefulsets", NS, &format!("postgres-{name}"))
            .is_some()
    })
    .await;
    mark_ready(server, name, replicas);
}

/// Several resyncs (every 200 ms) pass, after `disturb` changed something that must not
/// matter; none may write.
async fn assert_resyncs_write_nothing(server: &ApiServer, disturb: impl FnOnce()) {
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = server.write_count();
    let reads_before = server.requests().len();
    disturb();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let writes: Vec<String> = server
        .writes()
        .into_iter()
        .skip(before)
        .map(|w| format!("{} {} {:?}", w.method, w.resource, w.name))
        .collect();
    assert!(writes.is_empty(), "a settled cluster wrote: {writes:?}");
    assert!(server.requests().len() > reads_before, "resyncs did run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_reconcile_reads_only_its_own_cluster_and_none_of_its_objects_back() {
    let server = ApiServer::new();
    server.put(
        POSTGRES,
        NS,
        postgres("calm", example_spec("complete.yaml")),
    );
    // Records of other clusters in the namespace: none of them is read by this cluster.
    for i in 0..20 {
        server.put(
            "apps.cozystack.io/postgresbackups",
            NS,
            json!({"apiVersion": "apps.cozystack.io/v1alpha1",
            "kind": "PostgresBackup", "metadata": {"name": format!("other-{i}"), "namespace": NS},
            "spec": {"postgres": "other"}}),
        );
    }
    let metrics = Arc::new(Metrics::default());
    let running = start_with(&server, Duration::from_millis(200), metrics.clone());
    wait_settled(&server, "calm").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (before, reconciles_before) = (server.requests().len(), reconciles(&metrics));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let reads: Vec<String> = server.requests()[before..]
        .iter()
        .filter(|r| r.method == "GET" && !r.watch)
        .map(|r| format!("{} {:?}", r.resource, r.name))
        .collect();
    let resyncs = reconciles(&metrics) - reconciles_before;
    assert!(resyncs >= 3, "resyncs ran: {resyncs}");
    // The cluster's Secrets (for their passwords), StatefulSet, claims and pods; the
    // count of reconciles is of finished ones, and one may be reading as the window ends.
    assert!(
        reads.len() <= 4 * (resyncs + 1),
        "{} reads in {resyncs} reconciles: {reads:?}",
        reads.len()
    );
    assert!(
        !reads.iter().any(|r| r.contains("postgresbackups")),
        "backup records come from the watch: {reads:?}"
    );
    running.stop().await;
}

fn reconciles(metrics: &Metrics) -> usize {
    let text = metrics.encode();
    text.lines()
        .find(|l| l.starts_with("postgres_operator_reconciles_total"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap()
}

/// Waits until the status describes the current spec.
async fn wait_settled(server: &ApiServer, name: &str) {
    support::wait_for("the status describes the spec", || {
        server.get(POSTGRES, NS, name).is_some_and(|pg| {
            pg["status"]["observedGeneration"].is_number()
                && pg["status"]["observedGeneration"] == pg["metadata"]["generation"]
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operators_own_status_write_does_not_wake_the_cluster_up_again() {
    let server = ApiServer::new();
    server.put(POSTGRES, NS, postgres("quiet", json!({"replicas": 2})));
    let metrics = Arc::new(Metrics::default());
    // No resync during the test: every reconcile is one something woke up.
    let running = start_with(&server, Duration::from_secs(3600), metrics.clone());
    wait_settled(&server, "quiet").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = reconciles(&metrics);

    // The StatefulSet controller reports ready instances: one reconcile writes them into
    // the status, and that write wakes nothing up.
    let mut sts = server
        .get("apps/statefulsets", NS, "postgres-quiet")
        .unwrap();
    sts["status"] = json!({"replicas": 2, "readyReplicas": 2,
        "observedGeneration": sts["metadata"]["generation"].clone()});
    server.put("apps/statefulsets", NS, sts);
    support::wait_for("the status counts the ready instances", || {
        server
            .get(POSTGRES, NS, "quiet")
            .is_some_and(|pg| pg["status"]["readyInstances"] == 2)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(reconciles(&metrics) - before, 1);

    // A change by someone else to an object wakes the cluster up, and is repaired.
    let mut config = server
        .get("/configmaps", NS, "postgres-quiet-config")
        .unwrap();
    config["data"]["postgresql.conf"] = json!("tampered");
    server.put("/configmaps", NS, config);
    support::wait_for("the config is repaired", || {
        server
            .get("/configmaps", NS, "postgres-quiet-config")
            .is_some_and(|c| c["data"]["postgresql.conf"] != "tampered")
    })
    .await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_their_role_label_once_with_only_that_label_applied() {
    let server = ApiServer::new();
    server.put(POSTGRES, NS, postgres("roles", example_spec("ha.yaml")));
    // Pods as the StatefulSet creates them; the last one carries a wrong role.
    for (ordinal, role) in [(0, None), (1, None), (2, Some("primary"))] {
        let mut pod_labels = json!({"app.kubernetes.io/name": "postgres", "app.kubernetes.io/instance": "roles",
            "postgres.apps.cozystack.io/cluster": "roles"});
        if let Some(role) = role {
            pod_labels["postgres.apps.cozystack.io/role"] = json!(role);
        }
        server.put("/pods", NS, json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("postgres-roles-{ordinal}"), "namespace": NS, "labels": pod_labels}}));
    }
    let running = start(&server);
    let role = |ordinal: i32| {
        server
            .get("/pods", NS, &format!("postgres-roles-{ordinal}"))
            .map(|p| p["metadata"]["labels"]["postgres.apps.cozystack.io/role"].clone())
    };
    support::wait_for("every pod has its role", || {
        role(0) == Some(json!("primary"))
            && role(1) == Some(json!("replica"))
            && role(2) == Some(json!("replica"))
    })
    .await;
    // Several resyncs pass: each pod was written once, with only its role label, by
    // server-side apply.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let pod_writes: Vec<_> = server
        .writes()
        .into_iter()
        .filter(|w| w.resource == "/pods")
        .collect();
    let mut written: Vec<(String, String, Value)> = pod_writes
        .iter()
        .map(|w| {
            (
                w.method.clone(),
                w.name.clone().unwrap(),
                w.body.as_ref().unwrap()["metadata"].clone(),
            )
        })
        .collect();
    written.sort_by(|a, b| a.1.cmp(&b.1));
    let role_only = |pod: &str, role: &str| {
        (
            "PATCH".to_string(),
            pod.to_string(),
            json!({"name": pod, "labels": {"postgres.apps.cozystack.io/role": role}}),
        )
    };
    assert_eq!(
        written,
        vec![
            role_only("postgres-roles-0", "primary"),
            role_only("postgres-roles-1", "replica"),
            role_only("postgres-roles-2", "replica"),
        ]
    );
    for write in &pod_writes {
        assert_eq!(
            write.content_type.as_deref(),
            Some("application/apply-patch+yaml")
        );
    }
    // The reconcile writes its status, but never claims a primary: `currentPrimary`
    // is the HA engine's, once the instance itself reports that it runs as one
    // (nothing runs behind this API double).
    support::wait_for("the reconcile's status", || {
        server
            .get(POSTGRES, NS, "roles")
            .is_some_and(|pg| pg["status"]["conditions"].is_array())
    })
    .await;
    let status = &server.get(POSTGRES, NS, "roles").unwrap()["status"];
    assert!(status.get("currentPrimary").is_none(), "{status}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_changes_reach_the_objects_and_stale_objects_go() {
    let server = ApiServer::new();
    let spec = example_spec("complete.yaml");
    server.put(POSTGRES, NS, postgres("shop", spec.clone()));
    let metrics = Arc::new(Metrics::default());
    let running = start_with(&server, Duration::from_millis(200), metrics.clone());
    support::wait_for("the CronJob exists", || {
        server
            .get("batch/cronjobs", NS, "postgres-shop-backup")
            .is_some()
    })
    .await;
    // Backups on and none yet: their age counts from the cluster's creation, against
    // the daily schedule's interval.
    let interval = format!(
        "postgres_operator_backup_interval_seconds{{namespace=\"{NS}\",cluster=\"shop\"}} 86400"
    );
    let created = format!(
        "postgres_operator_backup_last_success_timestamp_seconds{{namespace=\"{NS}\",cluster=\"shop\"}} 1767225600"
    );
    support::wait_for("the backup freshness gauges", || {
        let text = metrics.encode();
        text.contains(&interval) && text.contains(&created)
    })
    .await;
    let first_password = secret_value(&server, "postgres-shop-superuser", "password").unwrap();

    let mut changed = spec.clone();
    changed["replicas"] = json!(4);
    changed["external"] = json!(false);
    changed["backup"] = json!({"enabled": false});
    changed["users"] = json!({"admin": {"password": "rotated"}, "app_user": {}});
    changed["databases"] = json!({"myapp": {"roles": {"admin": ["admin", "app_user"]}}});
    changed["postgresql"]["parameters"]["work_mem"] = json!("8MB");
    let mut pg = server.get(POSTGRES, NS, "shop").unwrap();
    pg["spec"] = changed;
    server.put(POSTGRES, NS, pg);

    support::wait_for("the StatefulSet has 4 replicas", || {
        server
            .get("apps/statefulsets", NS, "postgres-shop")
            .is_some_and(|s| s["spec"]["replicas"] == 4)
    })
    .await;
    support::wait_for(
        "the external Service, CronJob and backup Secret are gone",
        || {
            server
                .get("/services", NS, "postgres-shop-external-write")
                .is_none()
                && server
                    .get("batch/cronjobs", NS, "postgres-shop-backup")
                    .is_none()
                && server.get("/secrets", NS, "postgres-shop-backup").is_none()
        },
    )
    .await;
    support::wait_for("the users Secret follows the spec", || {
        secret_value(&server, "postgres-shop-credentials", "admin").as_deref() == Some("rotated")
            && secret_value(&server, "postgres-shop-credentials", "readonly_user").is_none()
            && secret_value(&server, "postgres-shop", "readonly_user").is_none()
    })
    .await;
    let app_password = secret_value(&server, "postgres-shop-credentials", "app_user").unwrap();
    assert_eq!(
        app_password, "app-password",
        "a password stays when the spec drops it"
    );
    let config = server
        .get("/configmaps", NS, "postgres-shop-config")
        .unwrap();
    assert!(
        config["data"]["postgresql.conf"]
            .as_str()
            .unwrap()
            .contains("work_mem = '8MB'")
    );
    assert_eq!(
        secret_value(&server, "postgres-shop-superuser", "password").unwrap(),
        first_password
    );
    support::wait_for("a Scaled event is recorded", || {
        server
            .list("events.k8s.io/events", NS)
            .iter()
            .any(|e| e["reason"] == "Scaled")
    })
    .await;
    // Backups off: no freshness to watch.
    support::wait_for("the backup freshness gauges go", || {
        !metrics
            .encode()
            .contains("postgres_operator_backup_interval_seconds{")
    })
    .await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_passwords_survive_an_operator_restart() {
    let server = ApiServer::new();
    server.put(
        POSTGRES,
        NS,
        postgres("keep", json!({"users": {"alice": {}}})),
    );
    let running = start(&server);
    support::wait_for("the Secrets exist", || {
        secret_value(&server, "postgres-keep", "alice").is_some()
            && secret_value(&server, "postgres-keep-superuser", "password").is_some()
    })
    .await;
    let alice = secret_value(&server, "postgres-keep", "alice").unwrap();
    let superuser = secret_value(&server, "postgres-keep-superuser", "password").unwrap();
    assert_eq!(alice.len(), 32);
    running.stop().await;

    let running = start(&server);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        secret_value(&server, "postgres-keep", "alice").unwrap(),
        alice
    );
    assert_eq!(
        secret_value(&server, "postgres-keep-credentials", "alice").unwrap(),
        alice
    );
    assert_eq!(
        secret_value(&server, "postgres-keep-superuser", "password").unwrap(),
        superuser
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_spec_is_reported_and_nothing_is_applied() {
    let server = ApiServer::new();
    let spec = json!({"replicas": 2, "quorum": {"minSyncReplicas": 0, "maxSyncReplicas": 2}});
    server.put(POSTGRES, NS, postgres("bad", spec));
    let running = start(&server);
    support::wait_for("Ready=False with the validation message", || {
        condition(&server, "bad", "Ready").is_some_and(|c| {
            c["status"] == "False"
                && c["reason"] == "InvalidSpec"
                && c["message"]
                    .as_str()
                    .unwrap()
                    .contains("spec.quorum.maxSyncReplicas")
        })
    })
    .await;
    support::wait_for("a Warning event", || {
        server
            .list("events.k8s.io/events", NS)
            .iter()
            .any(|e| e["type"] == "Warning" && e["reason"] == "InvalidSpec")
    })
    .await;
    let applied: Vec<_> = server
        .writes()
        .into_iter()
        .filter(|w| {
            !w.resource.starts_with("apps.cozystack.io") && !w.resource.starts_with("events")
        })
        .collect();
    assert!(
        applied.is_empty(),
        "objects were applied for an invalid spec: {applied:?}"
    );
    let before = server.write_count();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        server.write_count(),
        before,
        "the same refusal is not written again"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_postgres_removes_owned_objects_and_keeps_the_data_volumes() {
    let server = ApiServer::new();
    server.put(POSTGRES, NS, postgres("gone", json!({})));
    let running = start(&server);
    support::wait_for("the StatefulSet exists", || {
        server
            .get("apps/statefulsets", NS, "postgres-gone")
            .is_some()
    })
    .await;
    // The StatefulSet controller creates the claims, without an owner reference.
    server.put("/persistentvolumeclaims", NS, json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "pgdata-postgres-gone-0", "namespace": NS, "labels": {"postgres.apps.cozystack.io/cluster": "gone"}}}));
    server.remove(POSTGRES, NS, "gone");
    support::wait_for("owned objects are collected", || {
        names(&server, "/services").is_empty()
            && names(&server, "/secrets").is_empty()
            && names(&server, "apps/statefulsets").is_empty()
    })
    .await;
    assert_eq!(
        names(&server, "/persistentvolumeclaims"),
        ["pgdata-postgres-gone-0"]
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_failures_are_retried_until_the_cluster_converges() {
    let server = ApiServer::new();
    server.inject(Fault {
        method: Some("PATCH"),
        resource: Some("/secrets"),
        status: Some(500),
        times: 2,
    });
    server.inject(Fault {
        method: Some("PATCH"),
        resource: Some("apps/statefulsets"),
        status: Some(409),
        times: 1,
    });
    server.inject(Fault {
        method: Some("GET"),
        resource: Some("/configmaps"),
        status: None,
        times: 2,
    });
    server.put(POSTGRES, NS, postgres("flaky", json!({})));
    let running = start(&server);
    support::wait_for("every object exists despite the failures", || {
        server
            .get("apps/statefulsets", NS, "postgres-flaky")
            .is_some()
            && server
                .get("/secrets", NS, "postgres-flaky-superuser")
                .is_some()
            && server
                .get("/configmaps", NS, "postgres-flaky-config")
                .is_some()
    })
    .await;
    assert!(
        server
            .list("events.k8s.io/events", NS)
            .iter()
            .any(|e| e["type"] == "Warning" && e["reason"] == "ReconcileFailed"),
        "the failure is reported as an event"
    );
    assert!(
        !running.task.is_finished(),
        "the controller survived the failures"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growing_size_resizes_the_live_volumes() {
    let server = ApiServer::new();
    server.put(
        POSTGRES,
        NS,
        postgres("grow", json!({"size": "10Gi", "replicas": 1})),
    );
    let running = start(&server);
    support::wait_for("the StatefulSet exists", || {
        server
            .get("apps/statefulsets", NS, "postgres-grow")
            .is_some()
    })
    .await;
    server.put("/persistentvolumeclaims", NS, json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "pgdata-postgres-grow-0", "namespace": NS, "labels": {"app.kubernetes.io/name": "postgres",
            "app.kubernetes.io/instance": "grow", "postgres.apps.cozystack.io/cluster": "grow"}},
        "spec": {"resources": {"requests": {"storage": "10Gi"}}}}));
    let mut pg = server.get(POSTGRES, NS, "grow").unwrap();
    pg["spec"]["size"] = json!("20Gi");
    server.put(POSTGRES, NS, pg);
    support::wait_for("the claim asks for 20Gi", || {
        server
            .get("/persistentvolumeclaims", NS, "pgdata-postgres-grow-0")
            .is_some_and(|c| c["spec"]["resources"]["requests"]["storage"] == "20Gi")
    })
    .await;
    let template = server
        .get("apps/statefulsets", NS, "postgres-grow")
        .unwrap();
    assert_eq!(
        template["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
        "10Gi",
        "the immutable claim template is left alone"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_records_get_a_phase_from_their_cluster() {
    let server = ApiServer::new();
    server.put(
        POSTGRES,
        NS,
        postgres("shop", example_spec("complete.yaml")),
    );
    let record = |name: &str, cluster: &str| {
        json!({"apiVersion": "apps.cozystack.io/v1alpha1", "kind": "PostgresBackup",
               "metadata": {"name": name, "namespace": NS}, "spec": {"postgres": cluster}})
    };
    server.put(
        "apps.cozystack.io/postgresbackups",
        NS,
        record("orphan", "nowhere"),
    );
    server.put(
        "apps.cozystack.io/postgresbackups",
        NS,
        record("manual", "shop"),
    );
    let running = start(&server);
    let phase = |name: &str| {
        server
            .get("apps.cozystack.io/postgresbackups", NS, name)
            .and_then(|r| r["status"]["phase"].as_str().map(str::to_string))
    };
    support::wait_for("both records have a phase", || {
        phase("orphan").is_some() && phase("manual").is_some()
    })
    .await;
    assert_eq!(phase("orphan").as_deref(), Some("Failed"));
    let orphan = server
        .get("apps.cozystack.io/postgresbackups", NS, "orphan")
        .unwrap();
    assert!(
        orphan["status"]["error"]
            .as_str()
            .unwrap()
            .contains("\"nowhere\" not found")
    );
    assert_eq!(phase("manual").as_deref(), Some("Pending"));
    support::wait_for("a BackupFailed event", || {
        server
            .list("events.k8s.io/events", NS)
            .iter()
            .any(|e| e["reason"] == "BackupFailed")
    })
    .await;
    running.stop().await;
}

const CONFIG_REJECTED: &str = "postgres.apps.cozystack.io/config-rejected";

/// Sets (or with `None` removes) the refusal an instance reports on its pod.
fn report_on_pod(server: &ApiServer, pod: &str, report: Option<Value>) {
    let mut live = server.get("/pods", NS, pod).unwrap();
    match report {
        Some(report) => {
            live["metadata"]["annotations"] = json!({CONFIG_REJECTED: report.to_string()});
        }
        None => {
            if let Some(annotations) = live["metadata"]["annotations"].as_object_mut() {
                annotations.remove(CONFIG_REJECTED);
            }
        }
    }
    server.put("/pods", NS, live);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_reported_on_a_pod_becomes_a_condition_until_it_clears() {
    let server = ApiServer::new();
    server.put(POSTGRES, NS, postgres("conf", example_spec("ha.yaml")));
    // No resync during the test: only the pod watch can bring the change.
    let running = start_with(
        &server,
        Duration::from_secs(3600),
        Arc::new(Metrics::default()),
    );
    wait_and_mark_ready(&server, "conf", 5).await;
    // Ready first: the refusal must not change it (asserted below), and on a loaded
    // machine the status may not have caught up with the ready pods yet.
    support::wait_for("the configuration is applied and the cluster ready", || {
        condition(&server, "conf", "ConfigurationApplied").is_some_and(|c| c["status"] == "True")
            && condition(&server, "conf", "Ready").is_some_and(|c| c["status"] == "True")
    })
    .await;

    report_on_pod(
        &server,
        "postgres-conf-2",
        Some(json!({"setting": "max_connections",
            "message": "invalid value for parameter \"max_connections\": \"lots\"", "reverted": false})),
    );
    support::wait_for("ConfigurationApplied is False", || {
        condition(&server, "conf", "ConfigurationApplied").is_some_and(|c| c["status"] == "False")
    })
    .await;
    let refused = condition(&server, "conf", "ConfigurationApplied").unwrap();
    assert_eq!(refused["reason"], "SettingRejected");
    let message = refused["message"].as_str().unwrap();
    assert!(message.contains("postgres-conf-2"), "{message}");
    assert!(message.contains("max_connections"), "{message}");
    assert!(
        message.contains("invalid value for parameter \"max_connections\": \"lots\""),
        "{message}"
    );
    // The instances still serve with the configuration they had.
    assert_eq!(
        condition(&server, "conf", "Ready").unwrap()["status"],
        "True"
    );

    report_on_pod(
        &server,
        "postgres-conf-2",
        Some(
            json!({"setting": "max_connections", "message": "the postmaster failed to start with it", "reverted": true}),
        ),
    );
    support::wait_for("ConfigurationReverted", || {
        condition(&server, "conf", "ConfigurationApplied")
            .is_some_and(|c| c["reason"] == "ConfigurationReverted")
    })
    .await;

    report_on_pod(&server, "postgres-conf-2", None);
    support::wait_for("ConfigurationApplied is True again", || {
        condition(&server, "conf", "ConfigurationApplied")
            .is_some_and(|c| c["status"] == "True" && c["reason"] == "Applied")
    })
    .await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_cluster_with_a_refusing_pod_is_reconciled_without_writes() {
    let server = ApiServer::new();
    server.put(POSTGRES, NS, postgres("calm", example_spec("ha.yaml")));
    let running = start(&server);
    wait_and_mark_ready(&server, "calm", 5).await;
    report_on_pod(
        &server,
        "postgres-calm-1",
        Some(json!({"setting": "work_mem", "message": "bad", "reverted": false})),
    );
    support::wait_for("ConfigurationApplied is False", || {
        condition(&server, "calm", "ConfigurationApplied").is_some_and(|c| c["status"] == "False")
    })
    .await;
    // Resyncs pass, and the pod changes in other ways; none may write.
    assert_resyncs_write_nothing(&server, || {
        let mut pod = server.get("/pods", NS, "postgres-calm-1").unwrap();
        pod["status"] = json!({"phase": "Running"});
        server.put("/pods", NS, pod);
    })
    .await;
    running.stop().await;
}

const RESTORING: &str = "postgres.apps.cozystack.io/restoring";

/// What the first instance of a cluster restored from backup reports on its pod, as the
/// instance manager writes it (not ready yet).
fn restoring_pod(server: &ApiServer, name: &str, report: Value) {
    server.put(
        "/pods",
        NS,
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("postgres-{name}-0"), "namespace": NS,
            "labels": {"app.kubernetes.io/name": "postgres", "app.kubernetes.io/instance": name,
                       "postgres.apps.cozystack.io/cluster": name, "postgres.apps.cozystack.io/role": "primary"},
            "annotations": {RESTORING: report.to_string()}}}),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_in_progress_shows_as_a_condition_until_the_primary_serves() {
    let server = ApiServer::new();
    server.put(POSTGRES, NS, postgres("back", example_spec("restore.yaml")));
    // No resync during the test: only the watches can bring the changes.
    let running = start_with(
        &server,
        Duration::from_secs(3600),
        Arc::new(Metrics::default()),
    );
    support::wait_for("Restoring is pending", || {
        condition(&server, "back", "Restoring")
            .is_some_and(|c| c["status"] == "True" && c["reason"] == "RestorePending")
    })
    .await;
    restoring_pod(
        &server,
        "back",
        json!({"message": "restoring backup run r1 of cluster \"postgres-complete\" (1 databases done)", "retrying": false}),
    );
    support::wait_for("Restoring is in progress", || {
        condition(&server, "back", "Restoring").is_some_and(|c| c["reason"] == "RestoreInProgress")
    })
    .await;
    assert_eq!(
        condition(&server, "back", "Restoring").unwrap()["message"],
        "pod postgres-back-0: restoring backup run r1 of cluster \"postgres-complete\" (1 databases done)"
    );
    // Only the annotation changes: the pod watch wakes the cluster up.
    restoring_pod(
        &server,
        "back",
        json!({"message": "restore from backup failed, retrying: wrong restic password", "retrying": true}),
    );
    support::wait_for("Restoring is retrying", || {
        condition(&server, "back", "Restoring").is_some_and(|c| {
            c["reason"] == "RestoreRetrying"
                && c["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("wrong restic password"))
        })
    })
    .await;
    mark_ready(&server, "back", 2);
    support::wait_for("the restore is complete", || {
        condition(&server, "back", "Restoring")
            .is_some_and(|c| c["status"] == "False" && c["reason"] == "RestoreComplete")
    })
    .await;
    let pg = server.get(POSTGRES, NS, "back").unwrap();
    assert_eq!(pg["status"]["ready"], "2/2");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_not_restored_from_backup_has_no_restoring_condition() {
    let server = ApiServer::new();
    server.put(POSTGRES, NS, postgres("plain", example_spec("ha.yaml")));
    let running = start(&server);
    wait_and_mark_ready(&server, "plain", 5).await;
    support::wait_for("the cluster is ready", || {
        condition(&server, "plain", "Ready").is_some_and(|c| c["status"] == "True")
    })
    .await;
    assert!(condition(&server, "plain", "Restoring").is_none());
    assert_eq!(
        server.get(POSTGRES, NS, "plain").unwrap()["status"]["ready"],
        "5/5"
    );
    running.stop().await;
}

const PODMONITORS: &str = "monitoring.coreos.com/podmonitors";

fn with_pod_monitors() -> Settings {
    let mut settings = test_settings(Duration::from_millis(200));
    settings.operator.pod_monitors = true;
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_monitor_per_cluster_when_asked_kept_and_settled_without_writes() {
    let server = ApiServer::new();
    server.put(POSTGRES, NS, postgres("mon", example_spec("ha.yaml")));
    let running = start_settings(&server, with_pod_monitors(), Arc::new(Metrics::default()));
    support::wait_for("the PodMonitor", || {
        server.get(PODMONITORS, NS, "postgres-mon").is_some()
    })
    .await;
    let monitor = server.get(PODMONITORS, NS, "postgres-mon").unwrap();
    assert_eq!(
        monitor["metadata"]["ownerReferences"][0]["kind"],
        "Postgres"
    );
    assert_eq!(
        monitor["spec"]["podMetricsEndpoints"],
        json!([{"port": "metrics", "path": "/metrics"}])
    );
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"]["postgres.apps.cozystack.io/cluster"],
        "mon"
    );
    wait_and_mark_ready(&server, "mon", 5).await;
    assert_resyncs_write_nothing(&server, || {}).await;
    // Someone deletes it: the watch brings it back.
    server.remove(PODMONITORS, NS, "postgres-mon");
    support::wait_for("the PodMonitor is back", || {
        server.get(PODMONITORS, NS, "postgres-mon").is_some()
    })
    .await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_pod_monitor_crd_clusters_are_reconciled_without_one() {
    let server = ApiServer::new();
    // No PodMonitor CRD: the operator's check at start gets a 404.
    server.unserve(PODMONITORS);
    server.put(POSTGRES, NS, postgres("nomon", example_spec("ha.yaml")));
    let running = start_settings(&server, with_pod_monitors(), Arc::new(Metrics::default()));
    wait_and_mark_ready(&server, "nomon", 5).await;
    support::wait_for("the cluster is ready", || {
        condition(&server, "nomon", "Ready").is_some_and(|c| c["status"] == "True")
    })
    .await;
    assert!(server.get(PODMONITORS, NS, "postgres-nomon").is_none());
    assert!(
        server
            .requests()
            .iter()
            .filter(|r| r.resource == PODMONITORS)
            .count()
            == 1,
        "asked once, at start, and never again"
    );
    running.stop().await;
}

/// A Secret as a JSON object for the double, named `name`, with no owner.
fn user_secret(name: &str, secret: k8s_openapi::api::core::v1::Secret) -> Value {
    let mut value = serde_json::to_value(secret).unwrap();
    value["metadata"] = json!({"name": name, "namespace": NS});
    value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_its_own_certificate_waits_for_it_then_serves_a_copy_that_follows_renewals()
{
    let server = ApiServer::new();
    let spec = json!({"replicas": 1, "certificates": {"serverTLSSecret": "my-cert"}});
    server.put(POSTGRES, NS, postgres("own", spec));
    let running = start(&server);
    support::wait_for("Ready=False naming the missing Secret", || {
        condition(&server, "own", "Ready").is_some_and(|c| {
            c["status"] == "False"
                && c["message"].as_str().unwrap().contains(
                    "spec.certificates.serverTLSSecret: Secret \"my-cert\" not found in namespace \"tenant\"",
                )
        })
    })
    .await;
    assert!(
        server
            .get("apps/statefulsets", NS, "postgres-own")
            .is_none()
    );

    // cert-manager issues it: the cluster comes up with a copy, and no CA of the operator's.
    let issued = support::postgres::cluster_tls_secret("own");
    server.put("/secrets", NS, user_secret("my-cert", issued.clone()));
    let key_of = |secret: &k8s_openapi::api::core::v1::Secret, key: &str| {
        String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
    };
    support::wait_for("the server Secret is a copy", || {
        secret_value(&server, "postgres-own-server", "tls.crt").as_deref()
            == Some(key_of(&issued, "tls.crt").as_str())
            && secret_value(&server, "postgres-own-server", "ca.crt").as_deref()
                == Some(key_of(&issued, "ca.crt").as_str())
    })
    .await;
    support::wait_for("the instances", || {
        server
            .get("apps/statefulsets", NS, "postgres-own")
            .is_some()
    })
    .await;
    assert!(server.get("/secrets", NS, "postgres-own-ca").is_none());
    let mine = server.get("/secrets", NS, "my-cert").unwrap();
    assert!(
        mine["metadata"]["ownerReferences"].is_null(),
        "the user's Secret is left alone: {mine}"
    );

    // Renewed by cert-manager: the copy follows at the next resync.
    let renewed = support::postgres::cluster_tls_secret("own");
    server.put("/secrets", NS, user_secret("my-cert", renewed.clone()));
    support::wait_for("the copy follows the renewal", || {
        secret_value(&server, "postgres-own-server", "tls.key").as_deref()
            == Some(key_of(&renewed, "tls.key").as_str())
    })
    .await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_external_address_joins_the_server_certificate_once_assigned() {
    let server = ApiServer::new();
    server.put(
        POSTGRES,
        NS,
        postgres("ext", json!({"replicas": 1, "external": true})),
    );
    let running = start(&server);
    let names = || {
        secret_value(&server, "postgres-ext-server", "tls.crt")
            .and_then(|pem| postgres_operator::manifests::tls::inspect(&pem))
            .map(|cert| cert.names)
            .unwrap_or_default()
    };
    support::wait_for("a server certificate", || !names().is_empty()).await;
    assert!(!names().contains("198.51.100.4"));
    let mut service = server
        .get("/services", NS, "postgres-ext-external-write")
        .unwrap();
    service["status"] = json!({"loadBalancer": {"ingress": [{"ip": "198.51.100.4"}]}});
    server.put("/services", NS, service);
    support::wait_for("the load balancer's address is named", || {
        names().contains("198.51.100.4")
    })
    .await;
    running.stop().await;
}
