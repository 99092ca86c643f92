//! PostgreSQL's own log lines leave the instance manager as JSON objects on its stdout,
//! merged with the manager's own JSON lines, each naming the cluster, namespace, pod and
//! level: real servers (PostgreSQL 15 writing `jsonlog`, 13 writing `csvlog`) run by the
//! instance binary as in a pod, a failing statement and a slow query.

mod support;

use std::path::PathBuf;

use serde_json::Value;
use support::instance::{Instance, SpecFile, secrets_yaml};
use support::postgres::{bin_dir_of, column};
use support::wait_until;

const CLUSTER: &str = "logs";
const POD: &str = "postgres-logs-0";

fn spec(version: &str) -> String {
    format!(
        "apiVersion: apps.cozystack.io/v1alpha1\nkind: Postgres\nmetadata: {{name: {CLUSTER}, namespace: tenant}}\nspec:\n  version: {version}\n  replicas: 1\n  postgresql:\n    parameters:\n      log_min_duration_statement: 200\n{}",
        secrets_yaml(CLUSTER, "su", "repl", &[])
    )
}

/// Every line of the instance's output as JSON; a line that is not a JSON object fails.
fn json_lines(instance: &Instance) -> Vec<Value> {
    instance
        .log()
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| match serde_json::from_str::<Value>(line) {
            Ok(value @ Value::Object(_)) => value,
            _ => panic!("not a JSON object on the instance's output: {line}"),
        })
        .collect()
}

fn postgres_records(lines: &[Value]) -> Vec<&Value> {
    lines
        .iter()
        .filter(|line| line["target"] == "postgres")
        .collect()
}

fn failed_statement(lines: &[Value]) -> Option<&Value> {
    postgres_records(lines).into_iter().find(|line| {
        line["record"]["error_severity"] == "ERROR"
            && line["message"]
                .as_str()
                .is_some_and(|m| m.contains("no_such_table_for_the_log"))
    })
}

fn slow_query(lines: &[Value]) -> Option<&Value> {
    postgres_records(lines).into_iter().find(|line| {
        line["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("duration:") && m.contains("pg_sleep(0.3)"))
    })
}

async fn postgres_log_lines_are_json_objects(
    version: &str,
    bin_dir: Option<PathBuf>,
    destination: &str,
) {
    let spec = SpecFile::new(&spec(version));
    let bin_dir = bin_dir.map(|dir| format!("--bin-dir={}", dir.display()));
    let mut extra = vec!["--log-format=json"];
    extra.extend(bin_dir.as_deref());
    let instance = Instance::spawn(&spec, CLUSTER, POD, &[], &extra);
    instance.wait_ready().await;
    let client = instance.admin("postgres").await;
    let major = version.trim_start_matches('v');
    assert!(column(&client, "SHOW server_version").await[0].starts_with(major));
    assert_eq!(column(&client, "SHOW log_destination").await, [destination]);
    let error = client
        .simple_query("SELECT * FROM no_such_table_for_the_log")
        .await
        .expect_err("the table does not exist");
    let refusal = error.as_db_error().expect("PostgreSQL's refusal").message();
    assert!(refusal.contains("does not exist"), "{refusal}");
    client.simple_query("SELECT pg_sleep(0.3)").await.unwrap();
    wait_until(
        "the failed statement and the slow query are logged",
        30,
        || async {
            let lines = json_lines(&instance);
            failed_statement(&lines).is_some() && slow_query(&lines).is_some()
        },
    )
    .await;

    let lines = json_lines(&instance);
    for line in &lines {
        assert_eq!(line["cluster"], CLUSTER, "{line}");
        assert_eq!(line["namespace"], "tenant", "{line}");
        assert_eq!(line["pod"], POD, "{line}");
        assert!(
            ["DEBUG", "INFO", "WARN", "ERROR"].contains(&line["level"].as_str().unwrap_or("")),
            "{line}"
        );
        assert!(line["timestamp"].as_str().is_some(), "{line}");
    }
    let failed = failed_statement(&lines).unwrap();
    assert_eq!(failed["level"], "ERROR", "{failed}");
    assert_eq!(failed["record"]["state_code"], "42P01", "{failed}");
    assert_eq!(failed["record"]["dbname"], "postgres", "{failed}");
    assert_eq!(failed["record"]["user"], "postgres", "{failed}");
    assert!(failed["record"]["pid"].is_number(), "{failed}");
    assert_eq!(
        failed["record"]["statement"], "SELECT * FROM no_such_table_for_the_log",
        "{failed}"
    );
    let timestamp = failed["timestamp"].as_str().unwrap();
    assert!(
        timestamp.as_bytes()[10] == b'T' && timestamp.ends_with('Z'),
        "RFC 3339 in UTC like the manager's own lines: {timestamp}"
    );
    let slow = slow_query(&lines).unwrap();
    assert_eq!(slow["level"], "INFO", "{slow}");
    assert_eq!(slow["record"]["error_severity"], "LOG", "{slow}");

    // Merged with the manager's own lines, and with what the postmaster printed on its
    // stderr before its collector ran.
    assert!(
        lines.iter().any(|line| line["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("postgres_operator"))),
        "no line of the manager's own"
    );
    let records = postgres_records(&lines);
    assert!(
        records.iter().any(|line| line["message"]
            .as_str()
            .is_some_and(|m| m.contains("database system is ready to accept connections"))),
        "the server's start is logged"
    );
    assert!(
        records.iter().any(|line| line["message"]
            .as_str()
            .is_some_and(|m| m.contains("redirecting log output to logging collector"))),
        "the postmaster's own stderr is forwarded"
    );

    // The collector writes into the manager's pipes, never into files of its own.
    let log_dir = instance.socket_dir().join("log");
    for entry in std::fs::read_dir(&log_dir).unwrap() {
        let entry = entry.unwrap();
        use std::os::unix::fs::FileTypeExt;
        assert!(
            entry.file_type().unwrap().is_fifo(),
            "{} is not a pipe",
            entry.path().display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_15_jsonlog_leaves_as_json_with_cluster_pod_and_level() {
    postgres_log_lines_are_json_objects("v15", None, "jsonlog").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_13_csvlog_leaves_as_the_same_json_records() {
    postgres_log_lines_are_json_objects("v13", Some(bin_dir_of(13)), "csvlog").await;
}
