//! A cluster run as on Kubernetes, with real parts and no kubelet: the API double served
//! over HTTP, the real controller (`controller::run`, its HA engine reaching the
//! instances' status ports on loopback), and real instance managers that read their
//! Postgres and Secrets from the double through a kubeconfig (no spec file). The test
//! plays the kubelet: it puts the Pod objects and starts the instance processes. Also a
//! writer that logs in with a password read from the cluster's Secret.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::config::{KubeConfigOptions, Kubeconfig};
use postgres_operator::api::PostgresStatus;
use postgres_operator::controller::failover::InstanceAddresses;
use postgres_operator::controller::{self, Settings};
use postgres_operator::ha::Role;
use postgres_operator::ha::wire::InstanceReport;
use postgres_operator::manifests::{labels, names};
use postgres_operator::metrics::Metrics;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::apiserver::ApiServer;
use super::instance::Instance;
use super::postgres::{chown_to_postgres, free_port};

pub const NS: &str = "tenant";
pub const POSTGRES: &str = "apps.cozystack.io/postgreses";
pub const EVENTS: &str = "events.k8s.io/events";

/// The API double on a loopback port, and a kubeconfig file naming it that the
/// `postgres` OS user can read.
pub struct ServedApi {
    pub server: ApiServer,
    pub address: SocketAddr,
    pub kubeconfig: PathBuf,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

impl ServedApi {
    pub async fn start(server: ApiServer) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let task = tokio::spawn(server.clone().serve_http(listener));
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, ApiServer::kubeconfig(address)).unwrap();
        chown_to_postgres(dir.path());
        Self {
            server,
            address,
            kubeconfig,
            task,
            _dir: dir,
        }
    }

    /// The environment of a process that talks to the double (as a pod's service
    /// account would make it talk to the API server).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![(
            "KUBECONFIG".to_string(),
            self.kubeconfig.to_string_lossy().into_owned(),
        )]
    }

    /// A client of the double over HTTP, built from the same kubeconfig.
    pub async fn client(&self) -> kube::Client {
        let kubeconfig = Kubeconfig::from_yaml(&ApiServer::kubeconfig(self.address)).unwrap();
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .unwrap();
        kube::Client::try_from(config).unwrap()
    }
}

impl Drop for ServedApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `controller::run` in a task, until [`RunningController::stop`].
pub struct RunningController {
    pub metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningController {
    /// The controller, its HA engines reaching each pod at the address `addresses`
    /// holds for it (pod name → `host:port` of its status port).
    pub fn start(
        client: kube::Client,
        resync: Duration,
        addresses: Arc<Mutex<BTreeMap<String, String>>>,
    ) -> Self {
        let settings = Settings {
            resync,
            retry_base: Duration::from_millis(200),
            instance_addresses: InstanceAddresses::with(move |_namespace, _cluster, pod| {
                addresses.lock().unwrap().get(pod).cloned()
            }),
            ..Settings::default()
        };
        let metrics = Arc::new(Metrics::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(controller::run(client, settings, metrics.clone(), async {
            let _ = stopped.await;
        }));
        Self {
            metrics,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Shuts the controller down (its engines with it), aborting it if that takes long.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(10), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }

    /// The value of `postgres_operator_failovers_total` for `namespace/cluster`.
    pub fn failovers(&self, namespace: &str, cluster: &str) -> Option<f64> {
        metric_value(
            &self.metrics.encode(),
            "postgres_operator_failovers_total",
            namespace,
            cluster,
        )
    }
}

impl Drop for RunningController {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The value on the exposition line of `metric` labelled with `namespace` and `cluster`.
pub fn metric_value(text: &str, metric: &str, namespace: &str, cluster: &str) -> Option<f64> {
    text.lines()
        .filter(|line| line.starts_with(&format!("{metric}{{")))
        .filter(|line| {
            line.contains(&format!("namespace=\"{namespace}\""))
                && line.contains(&format!("cluster=\"{cluster}\""))
        })
        .find_map(|line| line.rsplit_once(' ')?.1.parse().ok())
}

/// A Postgres object of `name` in [`NS`].
pub fn postgres(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "apps.cozystack.io/v1alpha1", "kind": "Postgres",
           "metadata": {"name": name, "namespace": NS}, "spec": spec})
}

/// The Pod of an instance as the StatefulSet controller would create it: its name and
/// the cluster's selector labels (what the reconcile lists it by).
/// Pod `pod` of `cluster` as the StatefulSet controller creates it from the template the
/// controller applied: with the template's labels and annotations (its digest among them), so
/// the controller sees an up-to-date instance and does not roll it.
pub fn pod_object(server: &ApiServer, cluster: &str, pod: &str) -> Value {
    let template = server
        .get("apps/statefulsets", NS, &names::prefix(cluster))
        .map(|sts| sts["spec"]["template"]["metadata"].clone())
        .unwrap_or_else(|| json!({"labels": labels::selector(cluster)}));
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": pod, "namespace": NS,
                        "labels": template["labels"].clone(),
                        "annotations": template["annotations"].clone()}})
}

/// `key` of Secret `name` in [`NS`], as text (`data` decoded, or `stringData`).
pub fn secret_value(server: &ApiServer, name: &str, key: &str) -> Option<String> {
    let secret: Secret = serde_json::from_value(server.get("/secrets", NS, name)?).ok()?;
    if let Some(value) = secret.string_data.as_ref().and_then(|d| d.get(key)) {
        return Some(value.clone());
    }
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

/// The superuser's password the controller generated for `cluster`.
pub fn superuser_password(server: &ApiServer, cluster: &str) -> Option<String> {
    secret_value(server, &names::secret_superuser(cluster), "password")
}

/// The cluster's status in the double.
pub fn status(server: &ApiServer, cluster: &str) -> PostgresStatus {
    server
        .get(POSTGRES, NS, cluster)
        .and_then(|pg| serde_json::from_value(pg["status"].clone()).ok())
        .unwrap_or_default()
}

/// The role label of `pod` in the double.
pub fn role_label(server: &ApiServer, pod: &str) -> Option<String> {
    let pod = server.get("/pods", NS, pod)?;
    pod["metadata"]["labels"][labels::ROLE]
        .as_str()
        .map(str::to_string)
}

/// The reasons of the Events recorded about Postgres `cluster`, oldest first.
pub fn event_reasons(server: &ApiServer, cluster: &str) -> Vec<String> {
    let mut events: Vec<Value> = server
        .list(EVENTS, NS)
        .into_iter()
        .filter(|e| e["regarding"]["kind"] == "Postgres" && e["regarding"]["name"] == cluster)
        .collect();
    events.sort_by_key(|e| {
        e["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|v| v.parse::<u64>().ok())
    });
    events
        .iter()
        .filter_map(|e| e["reason"].as_str().map(str::to_string))
        .collect()
}

/// `GET /ha/report` of `instance`.
pub async fn report(instance: &Instance) -> Option<InstanceReport> {
    let (code, body) = instance.get("/ha/report").await?;
    (code == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}

/// Whether `instance` runs as a standby streaming from `primary`.
pub async fn streams_from(instance: &Instance, primary: &str) -> bool {
    report(instance).await.is_some_and(|r| {
        r.report.role == Role::Standby && r.report.streaming_from.as_deref() == Some(primary)
    })
}

/// Ports for the instances of a cluster chosen beforehand, so that every one can name
/// every other as a peer.
pub fn ports(count: usize) -> Vec<u16> {
    (0..count).map(|_| free_port()).collect()
}
