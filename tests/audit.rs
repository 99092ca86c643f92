//! The audit trail and secret hygiene of one instance, end to end on a real server run by
//! the instance binary as in a pod, with PostgreSQL told to log every statement and every
//! duration (the worst case): a client's connection and disconnection, its DDL, and each
//! role change the manager makes produce the documented lines; a user's and the
//! superuser's passwords rotate within seconds; and no password (clear or as a SCRAM
//! verifier) appears on any log line or process command line.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::instance::{Instance, SpecFile, secrets_yaml};
use support::wait_until;

const CLUSTER: &str = "audit";
const POD: &str = "postgres-audit-0";
const SUPERUSER: &str = "su-Secret-9f3k";
const REPLICATION: &str = "repl-Secret-2m8q";

fn spec(alice: &str, superuser: &str) -> String {
    format!(
        "apiVersion: apps.cozystack.io/v1alpha1\nkind: Postgres\nmetadata: {{name: {CLUSTER}, namespace: tenant}}\nspec:\n  replicas: 1\n  users:\n    alice:\n      privileges: [createdb]\n  databases:\n    shop:\n      roles:\n        admin: [alice]\n  postgresql:\n    parameters:\n      log_statement: all\n      log_min_duration_statement: 0\n{}",
        secrets_yaml(CLUSTER, superuser, REPLICATION, &[("alice", alice)])
    )
}

fn json_lines(instance: &Instance) -> Vec<Value> {
    instance
        .log()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .collect()
}

fn message(line: &Value) -> &str {
    line["message"].as_str().unwrap_or_default()
}

fn audit_records(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l["target"] == "audit")
        .map(|l| {
            assert_eq!(l["actor"], "postgres-operator", "{l}");
            assert!(l["timestamp"].is_string(), "{l}");
            l["statement"].as_str().unwrap_or_default().to_string()
        })
        .collect()
}

async fn logs_in(instance: &Instance, user: &str, password: &str, database: &str) -> bool {
    instance.connect_as(user, password, database).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_ddl_and_role_changes_are_audited_and_no_secret_is_ever_logged() {
    let spec_file = SpecFile::new(&spec("alice-Secret-1x", SUPERUSER));
    let mut instance = Instance::spawn(&spec_file, CLUSTER, POD, &[], &["--log-format=json"]);
    instance.wait_ready().await;
    wait_until("alice logs in", 30, || async {
        logs_in(&instance, "alice", "alice-Secret-1x", "shop").await
    })
    .await;

    // A client's session with DDL, then its end.
    let alice = instance
        .connect_as("alice", "alice-Secret-1x", "shop")
        .await
        .unwrap();
    alice
        .batch_execute("CREATE TABLE audit_probe (id int)")
        .await
        .unwrap();
    drop(alice);

    // Rotations: alice's password, then the superuser's, each reaches the server.
    spec_file.write(&spec("alice-Secret-2y", SUPERUSER));
    wait_until("alice's new password works", 30, || async {
        logs_in(&instance, "alice", "alice-Secret-2y", "shop").await
    })
    .await;
    assert!(!logs_in(&instance, "alice", "alice-Secret-1x", "shop").await);
    spec_file.write(&spec("alice-Secret-2y", "su-Secret-new7"));
    wait_until("the superuser's new password works", 30, || async {
        logs_in(&instance, "postgres", "su-Secret-new7", "postgres").await
    })
    .await;
    assert!(!logs_in(&instance, "postgres", SUPERUSER, "postgres").await);
    // The manager's own connection (the local socket, by peer) is unaffected.
    spec_file.write(&spec("alice-Secret-3z", "su-Secret-new7"));
    wait_until("the manager still applies the spec", 30, || async {
        logs_in(&instance, "alice", "alice-Secret-3z", "shop").await
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Logging every connection stays readable: a settled instance, probed as the
    // kubelet probes it, opens no session of its own.
    let sessions = |lines: &[Value]| {
        lines
            .iter()
            .filter(|l| message(l).starts_with("connection received: host=[local]"))
            .count()
    };
    for _ in 0..3 {
        assert!(instance.get("/readyz").await.is_some());
        assert!(instance.get("/healthz").await.is_some());
        assert!(instance.get("/ha/report").await.is_some());
    }
    let before = sessions(&json_lines(&instance));
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(instance.get("/readyz").await.is_some());
        assert!(instance.get("/ha/report").await.is_some());
    }
    let opened = sessions(&json_lines(&instance)) - before;
    assert_eq!(opened, 0, "sessions opened by a settled instance in 5 s");

    let lines = json_lines(&instance);
    let postgres: Vec<&Value> = lines.iter().filter(|l| l["target"] == "postgres").collect();
    assert!(
        postgres
            .iter()
            .any(|l| message(l).starts_with("connection authorized: user=alice database=shop")),
        "connections are logged"
    );
    assert!(
        postgres
            .iter()
            .any(|l| message(l).starts_with("disconnection: session time:")
                && message(l).contains("user=alice")),
        "disconnections are logged"
    );
    assert!(
        postgres
            .iter()
            .any(|l| message(l).contains("statement: CREATE TABLE audit_probe")),
        "DDL is logged"
    );
    let audit = audit_records(&lines);
    for expected in [
        "CREATE ROLE \"alice\"",
        "ALTER ROLE \"alice\" PASSWORD <redacted>",
        "GRANT",
    ] {
        assert!(
            audit.iter().any(|statement| statement.contains(expected)),
            "an audit record with {expected:?} in {audit:#?}"
        );
    }
    assert!(
        audit.iter().any(|s| s
            .starts_with("BEGIN; SET LOCAL synchronous_commit = local; ALTER ROLE \"postgres\"")
            && s.ends_with("PASSWORD <redacted>")),
        "the superuser's rotation is audited: {audit:#?}"
    );

    // No secret, clear or hashed, on any line or command line.
    let log = instance.log();
    let commands: String = instance
        .processes()
        .into_iter()
        .map(|(_, command)| command + "\n")
        .collect();
    for secret in [
        "alice-Secret-1x",
        "alice-Secret-2y",
        "alice-Secret-3z",
        SUPERUSER,
        "su-Secret-new7",
        REPLICATION,
        "SCRAM-SHA-256$",
    ] {
        assert!(!log.contains(secret), "{secret} in the instance's log");
        assert!(
            !commands.contains(secret),
            "{secret} on a command line:\n{commands}"
        );
    }
    instance.kill();
}

/// With pgaudit in the image: a `pgaudit.*` parameter preloads it, the extension is
/// created where a database asks for it, a client's DDL and role change get pgaudit's
/// records, and the manager's password changes get none (nor any other line).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgaudit_records_ddl_and_role_changes_and_never_the_managers_passwords() {
    let library = support::postgres::bin_dir()
        .parent()
        .unwrap()
        .join("lib/pgaudit.so");
    assert!(
        library.exists(),
        "{} is missing: scripts/install-test-deps.sh installs Debian's pgaudit",
        library.display()
    );
    let spec = |alice: &str| {
        format!(
            "apiVersion: apps.cozystack.io/v1alpha1\nkind: Postgres\nmetadata: {{name: {CLUSTER}, namespace: tenant}}\nspec:\n  replicas: 1\n  users:\n    alice: {{}}\n  databases:\n    shop:\n      roles:\n        admin: [alice]\n      extensions: [pgaudit]\n  postgresql:\n    parameters:\n      pgaudit.log: \"ddl, role\"\n{}",
            secrets_yaml(CLUSTER, SUPERUSER, REPLICATION, &[("alice", alice)])
        )
    };
    let spec_file = SpecFile::new(&spec("alice-Audit-1q"));
    let mut instance = Instance::spawn(&spec_file, CLUSTER, POD, &[], &["--log-format=json"]);
    instance.wait_ready().await;
    let shop = instance.admin("shop").await;
    wait_until("the pgaudit extension is created in shop", 30, || async {
        shop.query_opt("SELECT 1 FROM pg_extension WHERE extname = 'pgaudit'", &[])
            .await
            .unwrap()
            .is_some()
    })
    .await;
    let preloaded: String = shop
        .query_one("SELECT current_setting('shared_preload_libraries')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(preloaded.contains("pgaudit"), "{preloaded}");

    shop.batch_execute("CREATE TABLE audited (id int); CREATE ROLE auditor_probe")
        .await
        .unwrap();
    spec_file.write(&spec("alice-Audit-2w"));
    wait_until("alice's new password works", 30, || async {
        logs_in(&instance, "alice", "alice-Audit-2w", "shop").await
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let lines = json_lines(&instance);
    let audit: Vec<&str> = lines
        .iter()
        .filter(|l| l["target"] == "postgres")
        .map(message)
        .filter(|m| m.starts_with("AUDIT: SESSION,"))
        .collect();
    assert!(
        audit
            .iter()
            .any(|m| m.contains(",DDL,CREATE TABLE,") && m.contains("audited")),
        "pgaudit records the DDL: {audit:#?}"
    );
    assert!(
        audit
            .iter()
            .any(|m| m.contains(",ROLE,CREATE ROLE,") && m.contains("auditor_probe")),
        "pgaudit records the role change: {audit:#?}"
    );
    let log = instance.log();
    for secret in [
        "alice-Audit-1q",
        "alice-Audit-2w",
        SUPERUSER,
        "SCRAM-SHA-256$",
    ] {
        assert!(!log.contains(secret), "{secret} in the instance's log");
    }
    assert!(
        !audit.iter().any(|m| m.contains("PASSWORD")),
        "no password statement reaches pgaudit: {audit:#?}"
    );
    instance.kill();
}
