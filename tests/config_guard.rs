//! Settings PostgreSQL refuses, applied through the spec to a running primary and
//! standby (real servers, the instance binary as in a pod): the cluster keeps serving,
//! the refusal names the setting in `/status`, the log and the metrics, a killed
//! postmaster comes back with the last good configuration, and a good value afterwards
//! is installed and clears the report. Also: a postgresql.conf edited by hand so the
//! server cannot start is rewritten and the server comes back.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::instance::{Instance, SpecFile, secrets_yaml};
use support::postgres::{column, login};
use support::wait_until;

const SUPERUSER: &str = "su";

fn spec(cluster: &str, replicas: u32, parameters: &str) -> String {
    format!(
        "apiVersion: apps.cozystack.io/v1alpha1\nkind: Postgres\nmetadata: {{name: {cluster}, namespace: tenant}}\nspec:\n  replicas: {replicas}\n  postgresql:\n    parameters:\n{parameters}{}",
        secrets_yaml(cluster, SUPERUSER, "repl", &[])
    )
}

fn work_mem(megabytes: u32) -> String {
    format!("      work_mem: {megabytes}MB\n")
}

async fn show(instance: &Instance, name: &str) -> Option<String> {
    let client = instance
        .connect_as("postgres", SUPERUSER, "postgres")
        .await
        .ok()?;
    column(
        &client,
        &format!("SELECT coalesce(current_setting('{name}', true), 'unset')"),
    )
    .await
    .into_iter()
    .next()
}

/// Runs a new login and a query on every port every 100 ms until stopped: what the
/// clients of the cluster would see. The failures, when it is stopped.
struct Clients {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Clients {
    fn start(ports: Vec<u16>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let running = stop.clone();
        let task = tokio::spawn(async move {
            let mut failures = Vec::new();
            while !running.load(Ordering::Relaxed) {
                for port in &ports {
                    let answered = match login(*port, "postgres", SUPERUSER, "postgres").await {
                        Ok(client) => client.simple_query("SELECT 1").await.map(|_| ()),
                        Err(error) => Err(error),
                    };
                    if let Err(error) = answered {
                        failures.push(format!("port {port}: {error}"));
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            failures
        });
        Self { stop, task }
    }

    async fn failures(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

fn rejected_setting(status: &serde_json::Value) -> Option<String> {
    status["configRejected"]["setting"]
        .as_str()
        .map(str::to_string)
}

/// For each `(setting, yaml value, value in force)`: the bad value through the spec is
/// refused on both instances while clients keep being served; killed postmasters come
/// back with the last good configuration; a good spec afterwards is installed and clears
/// the report.
async fn refused_on_primary_and_standby(cluster: &str, bad: &[(&str, &str, &str)]) {
    let pod = |ordinal: u32| format!("postgres-{cluster}-{ordinal}");
    let file = SpecFile::new(&spec(cluster, 2, &work_mem(4)));
    let primary = Instance::spawn(&file, cluster, &pod(0), &[], &[]);
    primary.wait_ready().await;
    let standby = Instance::spawn(&file, cluster, &pod(1), &[(&pod(0), primary.port)], &[]);
    standby.wait_ready().await;
    let instances = [&primary, &standby];

    for (round, (setting, value, in_force)) in (5..).zip(bad) {
        let started: Vec<Option<u32>> = instances.iter().map(|i| i.postmaster_pid()).collect();
        let conf = |instance: &Instance| {
            std::fs::read_to_string(instance.data_dir.join("postgresql.conf")).unwrap()
        };
        let installed: Vec<String> = instances.iter().map(|i| conf(i)).collect();
        let clients = Clients::start(vec![primary.port, standby.port]);
        file.write(&spec(
            cluster,
            2,
            &format!("{}      {setting}: {value}\n", work_mem(4)),
        ));
        for (instance, installed) in instances.iter().zip(&installed) {
            wait_until(
                &format!("{} reports {setting} refused", instance.pod),
                60,
                || async {
                    instance
                        .status()
                        .await
                        .and_then(|status| rejected_setting(&status))
                        .as_deref()
                        == Some(*setting)
                },
            )
            .await;
            let status = instance.status().await.unwrap();
            assert!(
                !status["configRejected"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .is_empty(),
                "{status}"
            );
            assert!(
                instance
                    .metrics()
                    .await
                    .contains("postgres_instance_config_rejected 1")
            );
            let log = instance.log();
            assert!(
                log.lines()
                    .any(|line| line.contains("ERROR") && line.contains(setting)),
                "the log names {setting}:\n{log}"
            );
            assert_eq!(
                &conf(instance),
                installed,
                "the running configuration stays"
            );
        }
        // Give a restart, had one been asked for, the time to happen.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let failures = clients.failures().await;
        assert!(failures.is_empty(), "clients were refused: {failures:?}");
        let now: Vec<Option<u32>> = instances.iter().map(|i| i.postmaster_pid()).collect();
        assert_eq!(now, started, "no postmaster restarted");

        for instance in instances {
            instance.kill_postmaster().await;
            assert_eq!(
                show(instance, setting).await.as_deref(),
                Some(*in_force),
                "{} restarted with the last good {setting}",
                instance.pod
            );
        }
        standby.wait_ready().await;

        file.write(&spec(cluster, 2, &work_mem(round)));
        let wanted = format!("{round}MB");
        for instance in instances {
            wait_until(
                &format!("{} installs the good spec", instance.pod),
                60,
                || async {
                    show(instance, "work_mem").await.as_deref() == Some(wanted.as_str())
                        && instance
                            .status()
                            .await
                            .is_some_and(|status| status.get("configRejected").is_none())
                },
            )
            .await;
            assert!(
                instance
                    .metrics()
                    .await
                    .contains("postgres_instance_config_rejected 0")
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_postgresql_cannot_read_are_refused_while_the_cluster_keeps_serving() {
    refused_on_primary_and_standby(
        "unread",
        &[
            ("max_connections", "lots", "100"),
            ("no_such_setting", "1", "unset"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setting_postgresql_cannot_start_with_is_refused_before_any_restart() {
    // Reads fine, yet no postmaster starts: the reserved slots must leave some over.
    refused_on_primary_and_standby(
        "unstartable",
        &[("superuser_reserved_connections", "100", "3")],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_edited_configuration_that_stops_the_server_is_rewritten() {
    let file = SpecFile::new(&spec("edited", 1, &work_mem(4)));
    let instance = Instance::spawn(&file, "edited", "postgres-edited-0", &[], &[]);
    instance.wait_ready().await;
    let conf_path = instance.data_dir.join("postgresql.conf");
    let good = std::fs::read_to_string(&conf_path).unwrap();
    // As an older operator left it: a value no postmaster starts with.
    std::fs::write(
        &conf_path,
        good.replace("max_connections = 100", "max_connections = 'lots'"),
    )
    .unwrap();
    instance.kill_postmaster().await;
    assert_eq!(std::fs::read_to_string(&conf_path).unwrap(), good);
    assert_eq!(show(&instance, "work_mem").await.as_deref(), Some("4MB"));
    // The edit is to blame, not the installed file: nothing refused.
    let log = instance.log();
    assert!(
        log.contains("failed to start with a file this manager did not write"),
        "{log}"
    );
    assert!(
        !log.contains("going back to the last good configuration"),
        "{log}"
    );
}
