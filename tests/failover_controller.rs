//! Failover the Kubernetes way, end to end: the real controller (`controller::run`)
//! against the API double served over HTTP runs the HA engine, which drives real
//! instance managers that read their Postgres and Secrets from the double through a
//! kubeconfig (no spec file), with real PostgreSQL servers on loopback. The test plays
//! the kubelet: it puts the Pods in the double and starts the instance processes.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postgres_operator::ha::Role;
use postgres_operator::manifests::{labels, names};
use serde_json::json;
use support::apiserver::ApiServer;
use support::controller_failover::{
    EVENTS, NS, POSTGRES, RunningController, ServedApi, event_reasons, pod_object, ports, postgres,
    report, role_label, status, streams_from, superuser_password,
};
use support::failover::{Writer, missing_on_as};
use support::instance::Instance;
use support::wait_until;

const CLUSTER: &str = "kfo";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_fails_over_instances_that_read_the_api() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("postgres_operator=info")
        .try_init();
    let started = Instant::now();
    let api = ServedApi::start(ApiServer::new()).await;
    let server = api.server.clone();
    server.put(
        POSTGRES,
        NS,
        postgres(
            CLUSTER,
            json!({"replicas": 3, "quorum": {"minSyncReplicas": 1, "maxSyncReplicas": 1}}),
        ),
    );
    let pods: Vec<String> = (0..3).map(|i| names::pod(CLUSTER, i)).collect();
    // Where the engine finds each instance's status port, filled in as they start.
    let addresses: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let mut controller = RunningController::start(
        api.client().await,
        Duration::from_secs(1),
        addresses.clone(),
    );

    // The controller generates the passwords and creates the StatefulSet.
    wait_until(
        "the controller creates the Secrets and the StatefulSet",
        60,
        || async {
            superuser_password(&server, CLUSTER).is_some()
                && server
                    .get("apps/statefulsets", NS, &names::prefix(CLUSTER))
                    .is_some()
        },
    )
    .await;
    let password = superuser_password(&server, CLUSTER).unwrap();

    // No kubelet: the Pods, then their containers.
    for pod in &pods {
        server.put("/pods", NS, pod_object(&server, CLUSTER, pod));
    }
    let pg_ports = ports(pods.len());
    let env = api.env();
    let mut instances: Vec<Instance> = Vec::new();
    for (index, pod) in pods.iter().enumerate() {
        let peers: Vec<(&str, u16)> = pods
            .iter()
            .zip(&pg_ports)
            .filter(|(other, _)| *other != pod)
            .map(|(other, port)| (other.as_str(), *port))
            .collect();
        let instance = Instance::spawn_from_api(
            &password,
            CLUSTER,
            pod,
            pg_ports[index],
            &peers,
            &["--fence-when-isolated", "true"],
            &env,
        );
        addresses
            .lock()
            .unwrap()
            .insert(pod.clone(), format!("127.0.0.1:{}", instance.status_port));
        instances.push(instance);
    }
    for instance in &instances {
        instance.wait_ready().await;
    }
    eprintln!(
        "three instances ready {} ms after the start",
        started.elapsed().as_millis()
    );
    // They read the cluster from the API as a pod's Role allows (watches by name), and
    // each reports on its own Pod.
    let requests = server.requests();
    let by_name = format!("metadata.name={CLUSTER}");
    assert!(
        requests
            .iter()
            .filter(|r| r.watch && r.resource == POSTGRES)
            .filter(|r| r.field_selector.as_deref() == Some(by_name.as_str()))
            .count()
            >= pods.len()
    );
    wait_until("every instance reports on its own Pod", 30, || async {
        let requests = server.requests();
        pods.iter().all(|pod| {
            requests.iter().any(|r| {
                r.method == "PATCH" && r.resource == "/pods" && r.name.as_deref() == Some(pod)
            })
        })
    })
    .await;

    // The engine records the first primary once it runs as one, and the set it runs.
    wait_until(
        "the engine records postgres-kfo-0 as the primary",
        90,
        || async { status(&server, CLUSTER).current_primary.as_deref() == Some(pods[0].as_str()) },
    )
    .await;
    wait_until("the primary runs ANY 1 over both standbys", 90, || async {
        report(&instances[0]).await.is_some_and(|r| {
            r.report.role == Role::Primary && r.sync_quorum == 1 && r.sync_standbys.len() == 2
        })
    })
    .await;
    wait_until("the engine records the synchronous set", 60, || async {
        let status = status(&server, CLUSTER);
        status.sync_quorum == Some(1) && status.sync_standbys.len() == 2
    })
    .await;
    wait_until(
        "the role labels name postgres-kfo-0 the primary",
        60,
        || async {
            role_label(&server, &pods[0]).as_deref() == Some(labels::ROLE_PRIMARY)
                && pods[1..]
                    .iter()
                    .all(|pod| role_label(&server, pod).as_deref() == Some(labels::ROLE_REPLICA))
        },
    )
    .await;
    eprintln!(
        "primary recorded and labelled {} ms after the start",
        started.elapsed().as_millis()
    );

    let all_ports: Vec<u16> = instances.iter().map(|i| i.port).collect();
    let writer = Writer::start_as(&all_ports, &password).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // kill -9 of every process of the primary's pod.
    let old_port = instances[0].port;
    let killed = Instant::now();
    instances[0].kill();
    let first = writer.wait_ack_elsewhere(old_port, killed, 90).await;
    let rto = first.at - killed;
    eprintln!(
        "writes resumed on port {} {} ms after the kill",
        first.port,
        rto.as_millis()
    );
    let new = instances
        .iter()
        .position(|i| i.port == first.port)
        .expect("the writes resumed on an instance of the cluster");
    assert_ne!(new, 0);
    let new_primary = pods[new].clone();
    wait_until("the status names the new primary", 60, || async {
        let status = status(&server, CLUSTER);
        status.current_primary.as_deref() == Some(new_primary.as_str())
            && status.target_primary.as_deref() == Some(new_primary.as_str())
    })
    .await;
    eprintln!(
        "status.currentPrimary = {new_primary} {} ms after the kill",
        killed.elapsed().as_millis()
    );

    // The third instance streams from the new primary.
    let other = 3 - new;
    wait_until(
        "the other standby streams from the new primary",
        60,
        || async { streams_from(&instances[other], &new_primary).await },
    )
    .await;
    eprintln!(
        "{} streams from {new_primary} {} ms after the kill",
        pods[other],
        killed.elapsed().as_millis()
    );

    // Every commit acknowledged, before and after, is on the new primary.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acks = writer.acks();
    let lost = missing_on_as(first.port, &password, &acks).await;
    assert!(lost.is_empty(), "acknowledged commits lost: {lost:?}");
    eprintln!("{} acknowledged commits, none lost", acks.len());

    // The role labels follow the new target.
    wait_until("the role labels follow the new primary", 60, || async {
        pods.iter().all(|pod| {
            let role = if *pod == new_primary {
                labels::ROLE_PRIMARY
            } else {
                labels::ROLE_REPLICA
            };
            role_label(&server, pod).as_deref() == Some(role)
        })
    })
    .await;
    eprintln!(
        "role labels moved {} ms after the kill",
        killed.elapsed().as_millis()
    );

    // The failover is told as Events on the Postgres, and counted once.
    wait_until(
        "FailoverStarted and FailoverCompleted are recorded",
        30,
        || async {
            let reasons = event_reasons(&server, CLUSTER);
            reasons.iter().any(|r| r == "FailoverStarted")
                && reasons.iter().any(|r| r == "FailoverCompleted")
        },
    )
    .await;
    assert_eq!(
        controller.failovers(NS, CLUSTER),
        Some(1.0),
        "{}",
        controller.metrics.encode()
    );
    // One failover, recorded once: the target before the promotion, then the primary
    // (an engine reading its own record back from a cache that lags its writes would
    // record and announce them again).
    let engine_writes = |fields: serde_json::Value| {
        server
            .writes()
            .iter()
            .filter(|w| w.resource == format!("{POSTGRES}/status"))
            .filter(|w| w.body.as_ref().is_some_and(|b| b["status"] == fields))
            .count()
    };
    assert_eq!(engine_writes(json!({"targetPrimary": new_primary})), 1);
    assert_eq!(
        engine_writes(json!({"currentPrimary": new_primary, "targetPrimary": new_primary})),
        1
    );
    let failover_events: Vec<serde_json::Value> = server
        .list(EVENTS, NS)
        .into_iter()
        .filter(|e| {
            e["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("Failover"))
        })
        .collect();
    assert!(
        failover_events.iter().all(|e| e["series"].is_null()),
        "a failover event was published again: {failover_events:?}"
    );

    // The old primary's container restarts on its volume: it rejoins as a standby of
    // the new primary (a rewind), learning the new target from the API.
    let restarted = Instant::now();
    instances[0].restart_with_env(&env);
    wait_until("the old primary streams from the new one", 120, || async {
        streams_from(&instances[0], &new_primary).await
    })
    .await;
    eprintln!(
        "{} rejoined as a standby of {new_primary} {} ms after its restart",
        pods[0],
        restarted.elapsed().as_millis()
    );
    let log = instances[0].log();
    assert!(log.contains("rejoined the new primary's history"), "{log}");
    let acks = writer.acks();
    drop(writer);
    wait_until("the old primary has replayed every commit", 60, || async {
        missing_on_as(instances[0].port, &password, &acks)
            .await
            .is_empty()
    })
    .await;
    // Nobody failed over again meanwhile.
    assert_eq!(controller.failovers(NS, CLUSTER), Some(1.0));
    assert_eq!(
        status(&server, CLUSTER).current_primary.as_deref(),
        Some(new_primary.as_str())
    );

    // A switchover back to the old primary, asked for as a user does, with the
    // `switchover` command: the clean hand-over, not a step-down on the record.
    let back = pods[0].clone();
    let command_env = env.clone();
    let asked = Instant::now();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_postgres-operator"))
            .args([
                "switchover",
                "-n",
                NS,
                CLUSTER,
                "--to",
                &back,
                "--wait-seconds",
                "0",
            ])
            .envs(command_env)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{output:?}");
    wait_until("the switchover completes", 60, || async {
        status(&server, CLUSTER).current_primary.as_deref() == Some(pods[0].as_str())
            && role_label(&server, &pods[0]).as_deref() == Some("primary")
    })
    .await;
    eprintln!(
        "switchover back to {} done {} ms after the request",
        pods[0],
        asked.elapsed().as_millis()
    );
    wait_until("both others stream from the new primary", 60, || async {
        streams_from(&instances[1], &pods[0]).await && streams_from(&instances[2], &pods[0]).await
    })
    .await;
    let reasons = event_reasons(&server, CLUSTER);
    assert!(
        reasons.iter().any(|r| r == "SwitchoverCompleted"),
        "{reasons:?}"
    );
    // The former primary handed over cleanly: no step-down on the record, no rewind.
    let log = instances[new].log();
    assert!(log.contains("switchover: stopped cleanly"), "{log}");
    assert!(
        !log.contains("no word from the HA engine: stepping down"),
        "{log}"
    );
    assert!(log.contains("AlreadyOnHistory"), "{log}");
    assert_eq!(
        controller.failovers(NS, CLUSTER),
        Some(1.0),
        "a switchover is no failover"
    );

    controller.stop().await;
    drop(instances);
    eprintln!("whole test: {} ms", started.elapsed().as_millis());
}
