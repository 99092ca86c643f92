//! `postgres-operator switchover` and the same binary as the `kubectl pg` plugin,
//! against the API double over HTTP: the request lands in `status.targetPrimary`
//! (through the status subresource), and bad requests are refused naming what is wrong.

mod support;

use std::process::Output;

use serde_json::json;
use support::apiserver::ApiServer;
use support::controller_failover::{NS, POSTGRES, ServedApi, postgres, status};

async fn run(program: std::path::PathBuf, api: &ServedApi, args: &[&str]) -> Output {
    let env = api.env();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(program)
            .args(&args)
            .envs(env)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn binary() -> std::path::PathBuf {
    env!("CARGO_BIN_EXE_postgres-operator").into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_request_sets_the_target_and_bad_ones_are_refused() {
    let server = ApiServer::new();
    let mut demo = postgres("demo", json!({"replicas": 3}));
    demo["status"] = json!({"currentPrimary": "postgres-demo-0",
        "targetPrimary": "postgres-demo-0", "syncStandbys": ["postgres-demo-2"]});
    server.put(POSTGRES, NS, demo);
    let api = ServedApi::start(server.clone()).await;

    // No pod named: the synchronous standby.
    let asked = run(
        binary(),
        &api,
        &["switchover", "-n", NS, "demo", "--wait-seconds", "0"],
    )
    .await;
    let stdout = String::from_utf8_lossy(&asked.stdout);
    assert!(asked.status.success(), "{asked:?}");
    assert!(
        stdout.contains("postgres-demo-0 -> postgres-demo-2"),
        "{stdout}"
    );
    let recorded = status(&server, "demo");
    assert_eq!(recorded.target_primary.as_deref(), Some("postgres-demo-2"));
    assert_eq!(recorded.current_primary.as_deref(), Some("postgres-demo-0"));

    // A second request while that one is under way.
    let again = run(
        binary(),
        &api,
        &["switchover", "-n", NS, "demo", "--wait-seconds", "0"],
    )
    .await;
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("a failover or switchover is under way"),
        "{again:?}"
    );

    // The same binary as a kubectl plugin, with a pod that is not an instance.
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("kubectl-pg");
    std::os::unix::fs::symlink(binary(), &plugin).unwrap();
    let mut done = status(&server, "demo");
    done.current_primary = done.target_primary.clone();
    let mut object = server.get(POSTGRES, NS, "demo").unwrap();
    object["status"] = serde_json::to_value(&done).unwrap();
    server.put(POSTGRES, NS, object);
    let wrong = run(
        plugin.clone(),
        &api,
        &[
            "switchover",
            "-n",
            NS,
            "demo",
            "--to",
            "postgres-demo-7",
            "--wait-seconds",
            "0",
        ],
    )
    .await;
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains(
            "--to postgres-demo-7: not an instance of demo (postgres-demo-0 to postgres-demo-2)"
        ),
        "{wrong:?}"
    );
    let named = run(
        plugin,
        &api,
        &[
            "switchover",
            "-n",
            NS,
            "demo",
            "--to",
            "postgres-demo-1",
            "--wait-seconds",
            "0",
        ],
    )
    .await;
    assert!(named.status.success(), "{named:?}");
    assert_eq!(
        status(&server, "demo").target_primary.as_deref(),
        Some("postgres-demo-1")
    );
}
