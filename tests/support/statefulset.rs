//! The StatefulSet controller and the kubelet, played for one cluster against the API
//! double, with real instance managers: a pod of every ordinal below the StatefulSet's
//! `replicas`, made from its template (labels and annotations, so the template digest
//! the operator compares); a pod the operator deletes is stopped as the kubelet stops
//! one (SIGTERM, the grace period) and made again on the same data directory, as its
//! claim outlives it; an ordinal beyond `replicas` is stopped and its data directory
//! deleted (`whenScaled: Delete`), so a later scale-up clones afresh. Every action is
//! logged for the test to read the order of restarts.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres_operator::manifests::names;
use serde_json::{Value, json};

use super::apiserver::ApiServer;
use super::controller_failover::{NS, ports};
use super::instance::Instance;

/// What the kubelet did, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// A new pod, on a new data directory.
    Created(String),
    /// A pod the operator deleted, back on its data directory.
    Restarted(String),
    /// An ordinal beyond the scale: pod and data gone.
    Removed(String),
}

#[derive(Default)]
pub struct Shared {
    pub actions: Vec<(Instant, Action)>,
    /// PostgreSQL port of each running pod.
    pub ports: BTreeMap<String, u16>,
    /// Data directory of each running pod.
    pub data_dirs: BTreeMap<String, std::path::PathBuf>,
    /// Log file of each running pod.
    pub logs: BTreeMap<String, std::path::PathBuf>,
}

/// Where the StatefulSet's pods run: `node-<ordinal>` unless told otherwise.
pub fn node_of(ordinal: i32) -> String {
    format!("node-{ordinal}")
}

/// The double, running in a task until dropped.
pub struct StatefulSetDouble {
    pub shared: Arc<Mutex<Shared>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

struct Runner {
    server: ApiServer,
    cluster: String,
    superuser: String,
    env: Vec<(String, String)>,
    addresses: Arc<Mutex<BTreeMap<String, String>>>,
    /// PostgreSQL port of every ordinal the test may scale to, chosen beforehand so that
    /// every instance names every other as a peer.
    pg_ports: Vec<u16>,
    instances: BTreeMap<i32, Instance>,
    shared: Arc<Mutex<Shared>>,
}

impl StatefulSetDouble {
    /// Plays the StatefulSet `postgres-<cluster>` for up to `max_ordinals` pods.
    pub fn start(
        server: ApiServer,
        cluster: &str,
        superuser: &str,
        env: Vec<(String, String)>,
        addresses: Arc<Mutex<BTreeMap<String, String>>>,
        max_ordinals: usize,
    ) -> Self {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut runner = Runner {
            server,
            cluster: cluster.to_string(),
            superuser: superuser.to_string(),
            env,
            addresses,
            pg_ports: ports(max_ordinals),
            instances: BTreeMap::new(),
            shared: shared.clone(),
        };
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            while !stopping.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::task::block_in_place(|| runner.sync());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::task::block_in_place(move || drop(runner));
        });
        Self {
            shared,
            stop,
            task: Some(task),
        }
    }

    pub fn actions(&self) -> Vec<Action> {
        let shared = self.shared.lock().unwrap();
        shared.actions.iter().map(|(_, a)| a.clone()).collect()
    }

    pub fn port(&self, pod: &str) -> Option<u16> {
        self.shared.lock().unwrap().ports.get(pod).copied()
    }

    pub fn all_ports(&self) -> Vec<u16> {
        self.shared
            .lock()
            .unwrap()
            .ports
            .values()
            .copied()
            .collect()
    }

    /// Stops every instance (SIGTERM) and waits for them.
    pub async fn stop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for StatefulSetDouble {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (pod, path) in &self.shared.lock().unwrap().logs {
                let log = std::fs::read_to_string(path).unwrap_or_default();
                eprintln!("--- log of {pod} ---\n{log}");
            }
        }
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Runner {
    fn log(&self, action: Action) {
        eprintln!("kubelet: {action:?}");
        self.shared
            .lock()
            .unwrap()
            .actions
            .push((Instant::now(), action));
    }

    fn pod_object(&self, pod: &str, ordinal: i32, template: &Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": pod, "namespace": NS,
                            "labels": template["metadata"]["labels"].clone(),
                            "annotations": template["metadata"]["annotations"].clone()},
               "spec": {"nodeName": node_of(ordinal)}})
    }

    fn spawn(&self, pod: &str, ordinal: i32) -> Instance {
        let peers: Vec<(String, u16)> = self
            .pg_ports
            .iter()
            .enumerate()
            .filter(|(other, _)| *other as i32 != ordinal)
            .map(|(other, port)| (names::pod(&self.cluster, other as i32), *port))
            .collect();
        let peers: Vec<(&str, u16)> = peers.iter().map(|(p, port)| (p.as_str(), *port)).collect();
        Instance::spawn_from_api(
            &self.superuser,
            &self.cluster,
            pod,
            self.pg_ports[ordinal as usize],
            &peers,
            &["--fence-when-isolated", "true"],
            &self.env,
        )
    }

    fn publish(&self, pod: &str, instance: &Instance) {
        self.addresses.lock().unwrap().insert(
            pod.to_string(),
            format!("127.0.0.1:{}", instance.status_port),
        );
        let mut shared = self.shared.lock().unwrap();
        shared.ports.insert(pod.to_string(), instance.port);
        shared
            .data_dirs
            .insert(pod.to_string(), instance.data_dir.clone());
        shared
            .logs
            .insert(pod.to_string(), instance.log_path().to_path_buf());
    }

    fn sync(&mut self) {
        let Some(statefulset) =
            self.server
                .get("apps/statefulsets", NS, &names::prefix(&self.cluster))
        else {
            return;
        };
        let replicas = statefulset["spec"]["replicas"].as_i64().unwrap_or(1) as i32;
        let template = statefulset["spec"]["template"].clone();
        // Beyond the scale: highest ordinal first, pod and claim gone.
        let beyond: Vec<i32> = self
            .instances
            .keys()
            .copied()
            .filter(|o| *o >= replicas)
            .rev()
            .collect();
        for ordinal in beyond {
            let pod = names::pod(&self.cluster, ordinal);
            if let Some(mut instance) = self.instances.remove(&ordinal) {
                instance.terminate(Duration::from_secs(30));
            }
            self.server.remove("/pods", NS, &pod);
            self.addresses.lock().unwrap().remove(&pod);
            let mut shared = self.shared.lock().unwrap();
            shared.ports.remove(&pod);
            shared.data_dirs.remove(&pod);
            shared.logs.remove(&pod);
            drop(shared);
            self.log(Action::Removed(pod));
        }
        for ordinal in 0..replicas.min(self.pg_ports.len() as i32) {
            let pod = names::pod(&self.cluster, ordinal);
            if self.server.get("/pods", NS, &pod).is_some() {
                continue;
            }
            let object = self.pod_object(&pod, ordinal, &template);
            match self.instances.get_mut(&ordinal) {
                // Deleted by the operator: the kubelet stops the containers, the
                // StatefulSet makes the pod again, on the same claim.
                Some(instance) => {
                    instance.terminate(Duration::from_secs(30));
                    self.server.put("/pods", NS, object);
                    instance.restart_with_env(&self.env);
                    self.log(Action::Restarted(pod));
                }
                None => {
                    self.server.put("/pods", NS, object);
                    let instance = self.spawn(&pod, ordinal);
                    self.publish(&pod, &instance);
                    self.instances.insert(ordinal, instance);
                    self.log(Action::Created(pod));
                }
            }
        }
    }
}
