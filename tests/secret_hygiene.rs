//! Secret hygiene over a whole scenario: users with passwords, a password rotation, a
//! failing SQL statement, a backup and a restore with S3 keys and a restic password. Then
//! every log line (the instance manager's, PostgreSQL's, the backup and restore runs'),
//! every process command line seen meanwhile, and, on the operator's side, every object
//! it wrote but its Secrets (Events, status, ConfigMaps, the StatefulSet, the CronJob…) and
//! every operator log line are searched for each secret value: zero hits.

mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use postgres_operator::controller::failover::InstanceAddresses;
use postgres_operator::controller::{self, Settings};
use postgres_operator::instance::tls_files::TlsPaths;
use postgres_operator::metrics::Metrics;
use serde_json::{Value, json};
use support::apiserver::ApiServer;
use support::instance::{Instance, SpecFile, processes_mentioning, secrets_yaml};
use support::s3::S3Server;
use support::{wait_for_value, wait_until};

const CLUSTER: &str = "vault";
const POD: &str = "postgres-vault-0";
const SUPERUSER: &str = "su-Hygiene-7c1q";
const REPLICATION: &str = "repl-Hygiene-4v9w";
const ALICE: &str = "alice-Hygiene-1a";
const ALICE_ROTATED: &str = "alice-Hygiene-2b";
const RESTIC: &str = "restic-Hygiene-5k2p";
const BUCKET: &str = "hygiene";

fn spec(alice: &str) -> String {
    // `no_such_extension` fails in every pass of the manager, beside the password
    // statements: a failed statement's logged text must not carry them.
    format!(
        "apiVersion: apps.cozystack.io/v1alpha1\nkind: Postgres\nmetadata: {{name: {CLUSTER}, namespace: tenant}}\nspec:\n  replicas: 1\n  users:\n    alice: {{}}\n  databases:\n    shop:\n      roles:\n        admin: [alice]\n      extensions: [no_such_extension]\n  postgresql:\n    parameters:\n      log_statement: all\n      log_min_duration_statement: 0\n      log_min_error_statement: info\n{}",
        secrets_yaml(CLUSTER, SUPERUSER, REPLICATION, &[("alice", alice)])
    )
}

/// Every distinct command line on the machine, read from /proc every few milliseconds
/// until dropped.
struct CommandLines {
    seen: Arc<Mutex<BTreeSet<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CommandLines {
    fn watch() -> Self {
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let now = processes_mentioning("");
                    seen.lock()
                        .unwrap()
                        .extend(now.into_iter().map(|(_, command)| command));
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        Self {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn all(&self) -> String {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for CommandLines {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The PEM body lines of a private key: a key that leaked shows one of them.
fn key_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|line| line.len() >= 40 && !line.starts_with("-----"))
        .map(str::to_string)
        .collect()
}

/// Each secret found in `haystack` (named `what`).
fn leaks(what: &str, haystack: &str, secrets: &[String]) -> Vec<String> {
    secrets
        .iter()
        .filter(|secret| haystack.contains(secret.as_str()))
        .map(|secret| format!("{secret:?} in {what}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_with_rotation_a_failing_statement_a_backup_and_a_restore_leaks_no_secret() {
    let s3 = S3Server::start(&[BUCKET]);
    let commands = CommandLines::watch();
    let spec_file = SpecFile::new(&spec(ALICE));
    let instance = Instance::spawn(&spec_file, CLUSTER, POD, &[], &["--log-format=json"]);
    instance.wait_ready().await;
    wait_until("alice logs in", 30, || async {
        instance.connect_as("alice", ALICE, "shop").await.is_ok()
    })
    .await;
    wait_until("the failing extension is logged", 30, || async {
        instance.log().contains("no_such_extension")
    })
    .await;

    // A client's failing statement, then the rotation of alice's password.
    instance
        .admin("shop")
        .await
        .batch_execute("CREATE TABLE orders (id int); INSERT INTO orders VALUES (1), (2)")
        .await
        .unwrap();
    let alice = instance.connect_as("alice", ALICE, "shop").await.unwrap();
    assert!(alice.batch_execute("SELECT * FROM missing").await.is_err());
    drop(alice);
    spec_file.write(&spec(ALICE_ROTATED));
    wait_until("alice's new password works", 30, || async {
        instance
            .connect_as("alice", ALICE_ROTATED, "shop")
            .await
            .is_ok()
    })
    .await;

    // A backup and a restore as the Jobs run them: S3 keys and the restic password in
    // the environment, the primary by its Service name over verified TLS.
    let base = s3.base(BUCKET);
    let ca = TlsPaths::under(&instance.socket_dir).ca;
    let job = |args: &[&str]| {
        let mut command = s3.job_command(args, CLUSTER, &base, RESTIC);
        command
            .env("PGHOST", format!("postgres-{CLUSTER}-rw"))
            .env("PGHOSTADDR", "127.0.0.1")
            .env("PGPORT", instance.port.to_string())
            .env("PGUSER", "postgres")
            .env("PGPASSWORD", SUPERUSER)
            .env("PGSSLMODE", "verify-full")
            .env("PGSSLROOTCERT", &ca);
        command.output().unwrap()
    };
    let backup = job(&["backup", "--cleanup-strategy=--keep-last=3"]);
    assert!(backup.status.success(), "{}", text(&backup));
    let restore = job(&[
        "restore",
        "--database",
        "shop",
        "--target-database",
        "shop_copy",
    ]);
    assert!(restore.status.success(), "{}", text(&restore));
    let copy = instance.admin("shop_copy").await;
    let rows: i64 = copy
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 2);
    // The passes that follow the rotation, the restore's roles and the failing
    // extension again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let commands = {
        let all = commands.all();
        drop(commands);
        all
    };
    assert!(
        commands.contains("restic") && commands.contains("pg_dump"),
        "the backup's processes were seen:\n{commands}"
    );

    let server_key = std::fs::read_to_string(TlsPaths::under(&instance.socket_dir).key).unwrap();
    let mut secrets: Vec<String> = [
        SUPERUSER,
        REPLICATION,
        ALICE,
        ALICE_ROTATED,
        RESTIC,
        &s3.credentials.access_key,
        &s3.credentials.secret_key,
        "SCRAM-SHA-256$",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    secrets.extend(key_lines(&server_key));
    let log = instance.log();
    assert!(
        log.contains("ERROR") && log.contains("missing"),
        "the failing statements are in the log"
    );
    let mut found = leaks("the instance's log", &log, &secrets);
    found.extend(leaks("the backup's output", &text(&backup), &secrets));
    found.extend(leaks("the restore's output", &text(&restore), &secrets));
    found.extend(leaks("a command line", &commands, &secrets));
    assert!(found.is_empty(), "{found:#?}");
}

/// The operator's log lines, as JSON, into a buffer the test reads.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// This test binary's log lines, every level down to debug, from every task and thread
/// (the controller spawns its own).
fn operator_logs() -> Captured {
    static LOGS: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Captured::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || writer.clone())
            .init();
        logs
    })
    .clone()
}

const NS: &str = "tenant";
const POSTGRES: &str = "apps.cozystack.io/postgreses";
const S3_ACCESS: &str = "AKIA-Hygiene-3j8r";
const S3_SECRET: &str = "s3-Hygiene-secret-6n0t";
const RESTIC_ROTATED: &str = "restic-Hygiene-rotated-8d";

fn operator_spec(alice: &str, restic: &str) -> Value {
    json!({
        "replicas": 2,
        "users": {"alice": {"password": alice}, "bob": {}},
        "databases": {"shop": {"roles": {"admin": ["alice"], "readonly": ["bob"]}}},
        "backup": {
            "enabled": true,
            "s3Region": "us-east-1",
            "s3Bucket": "s3.example.org/backups",
            "schedule": "0 3 * * *",
            "s3AccessKey": S3_ACCESS,
            "s3SecretKey": S3_SECRET,
            "resticPassword": restic,
        }
    })
}

/// Every value of every Secret the operator keeps: generated passwords and private keys
/// (PEM body lines) included.
fn secret_values(server: &ApiServer) -> Vec<String> {
    let mut values = Vec::new();
    for secret in server.list("/secrets", NS) {
        for (key, value) in secret["data"].as_object().into_iter().flatten() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(value.as_str().unwrap_or_default())
                .unwrap();
            let value = String::from_utf8_lossy(&bytes).into_owned();
            if value.contains("PRIVATE KEY") {
                values.extend(key_lines(&value));
            } else if !value.contains("CERTIFICATE") && value.len() >= 8 && key != "username" {
                values.push(value);
            }
        }
    }
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_puts_no_secret_in_an_object_an_event_a_status_or_a_log_line() {
    let logs = operator_logs();
    let server = ApiServer::new();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controller = {
        let client = server.client();
        let settings = Settings {
            resync: Duration::from_millis(200),
            retry_base: Duration::from_millis(100),
            instance_addresses: InstanceAddresses::with(|_, _, _| None),
            ..Settings::default()
        };
        tokio::spawn(async move {
            controller::run(client, settings, Arc::new(Metrics::default()), async move {
                let _ = stopped.await;
            })
            .await;
        })
    };
    let put = |spec: Value| {
        server.put(
            POSTGRES,
            NS,
            json!({"apiVersion": "apps.cozystack.io/v1alpha1", "kind": "Postgres",
                   "metadata": {"name": CLUSTER, "namespace": NS}, "spec": spec}),
        )
    };
    let backup_secret = format!("postgres-{CLUSTER}-backup");
    let restic_in_secret = || {
        server
            .get("/secrets", NS, &backup_secret)
            .and_then(|s| s["data"]["resticPassword"].as_str().map(str::to_string))
            .map(|b64| {
                String::from_utf8(
                    base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .unwrap(),
                )
                .unwrap()
            })
    };

    put(operator_spec(ALICE, RESTIC));
    wait_until(
        "the cluster's objects and status are written",
        30,
        || async {
            server
                .get(POSTGRES, NS, CLUSTER)
                .is_some_and(|pg| pg["status"]["conditions"].is_array())
                && server
                    .get("batch/cronjobs", NS, &format!("postgres-{CLUSTER}-backup"))
                    .is_some()
                && restic_in_secret().as_deref() == Some(RESTIC)
        },
    )
    .await;
    // A rotation of a user's password and of the restic password.
    put(operator_spec(ALICE_ROTATED, RESTIC_ROTATED));
    wait_until("the rotated restic password is stored", 30, || async {
        restic_in_secret().as_deref() == Some(RESTIC_ROTATED)
    })
    .await;
    // A refused change: its Event and condition name the fault, never a value beside it.
    let mut refused = operator_spec(ALICE_ROTATED, RESTIC_ROTATED);
    refused["backup"]["schedule"] = json!("every night");
    put(refused);
    let message = wait_for_value("the refusal in the status", 30, || async {
        let pg = server.get(POSTGRES, NS, CLUSTER).ok_or("no object")?;
        let conditions = pg["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        conditions
            .iter()
            .find(|c| {
                c["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("schedule"))
            })
            .map(|c| c["message"].to_string())
            .ok_or(format!("{conditions:?}"))
    })
    .await;
    assert!(message.contains("schedule"), "{message}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), controller).await;

    let mut secrets = secret_values(&server);
    secrets.extend(
        [
            ALICE,
            ALICE_ROTATED,
            RESTIC,
            RESTIC_ROTATED,
            S3_ACCESS,
            S3_SECRET,
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    assert!(secrets.len() > 10, "{secrets:?}");
    let mut kinds = BTreeSet::new();
    let mut found = Vec::new();
    for (resource, mut object) in server.all() {
        if resource == "/secrets" {
            continue;
        }
        if resource == POSTGRES {
            // The user's own input; what the operator writes is the status.
            object["spec"] = Value::Null;
        }
        kinds.insert(resource.clone());
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        found.extend(leaks(
            &format!("{resource} {name}"),
            &object.to_string(),
            &secrets,
        ));
    }
    for expected in [
        "events.k8s.io/events",
        "/configmaps",
        "apps/statefulsets",
        "batch/cronjobs",
        POSTGRES,
    ] {
        assert!(kinds.contains(expected), "{expected} among {kinds:?}");
    }
    let log = logs.text();
    assert!(
        log.lines().count() > 5,
        "the operator's log was captured:\n{log}"
    );
    found.extend(leaks("the operator's log", &log, &secrets));
    assert!(found.is_empty(), "{found:#?}");
}
