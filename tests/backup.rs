//! Backups and restores with real parts: PostgreSQL servers on loopback, the Debian restic,
//! and a moto S3 server with authentication on.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use postgres_operator::api::{BackupPhase, PostgresBackup};
use postgres_operator::backup::location::Location;
use postgres_operator::backup::record::{Recording, Target};
use postgres_operator::backup::restic::{Restic, TAG_RUN};
use postgres_operator::backup::restore::{self, RestoreError, RestoreSettings, RunSelector};
use postgres_operator::backup::run::{BackupSettings, Run, RunReport, run_backup};
use postgres_operator::backup::s3::S3Credentials;
use postgres_operator::backup::tls::ServerTrust;
use postgres_operator::instance::provision::Connection;
use postgres_operator::instance::tls_files::TlsPaths;
use postgres_operator::validate::retention::RetentionPolicy;
use support::apiserver::ApiServer;
use support::instance::{COMPLETE_USERS, Instance, SpecFile, secrets_yaml};
use support::postgres::{PostgresServer, bin_dir, cluster_tls_secret, column, tls_material};
use support::s3::{PrivateCa, S3Server};

const CLUSTER: &str = "postgres-complete";
const BUCKET: &str = "postgres-backups";
const PASSWORD: &str = "your-restic-password";

fn restic(credentials: &S3Credentials, password: &str) -> Restic {
    Restic::new("restic".into(), credentials.clone(), password.to_string())
}

fn backup_settings(server: &PostgresServer, s3: &S3Server, policy: &str) -> BackupSettings {
    backup_settings_of(server.superuser(), s3, policy)
}

fn backup_settings_of(admin: Connection, s3: &S3Server, policy: &str) -> BackupSettings {
    BackupSettings {
        cluster: CLUSTER.to_string(),
        location: Location::parse(&s3.base(BUCKET)).unwrap(),
        credentials: s3.credentials.clone(),
        restic: restic(&s3.credentials, PASSWORD),
        postgres: admin,
        bin_dir: Some(bin_dir()),
        retention: RetentionPolicy::parse(policy).unwrap(),
        databases: Vec::new(),
    }
}

fn restore_settings(target: &PostgresServer, s3: &S3Server) -> RestoreSettings {
    RestoreSettings {
        source_cluster: CLUSTER.to_string(),
        location: Location::parse(&s3.base(BUCKET)).unwrap(),
        credentials: s3.credentials.clone(),
        restic: restic(&s3.credentials, PASSWORD),
        postgres: target.superuser(),
        bin_dir: Some(bin_dir()),
    }
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// Runs a fixture one statement at a time (CREATE DATABASE refuses a transaction).
async fn run_script(admin: &Connection, database: &str, file: &str) {
    let client = admin.client(database).await.unwrap();
    for statement in fixture(file).split(";\n") {
        let statement: String = statement
            .lines()
            .filter(|line| !line.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        if !statement.trim().is_empty() {
            client.batch_execute(&statement).await.unwrap();
        }
    }
}

/// The complete example's roles, databases and data.
async fn load_complete_example(server: &PostgresServer) {
    let admin = server.superuser();
    run_script(&admin, "postgres", "complete_data.sql").await;
    run_script(&admin, "myapp", "myapp_data.sql").await;
    run_script(&admin, "analytics", "analytics_data.sql").await;
}

/// Everything a restore must reproduce, as text: roles (attributes, settings and comment
/// under `role <name>`, the password verifier under `password <name>`), memberships,
/// databases and owners, extensions, and per table its ACL and a checksum of every row.
async fn fingerprint(server: &PostgresServer) -> BTreeMap<String, String> {
    fingerprint_of(&server.superuser()).await
}

async fn fingerprint_of(admin: &Connection) -> BTreeMap<String, String> {
    let mut facts = BTreeMap::new();
    let postgres = admin.client("postgres").await.unwrap();
    let roles = postgres.query("SELECT rolname::text, concat_ws(' ', rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolreplication, rolbypassrls, rolconnlimit, (SELECT string_agg(s, ',') FROM pg_db_role_setting, unnest(setconfig) s WHERE setrole = a.oid), shobj_description(a.oid, 'pg_authid')), coalesce(rolpassword, '') FROM pg_authid a WHERE rolname !~ '^pg_' AND rolname <> 'postgres'", &[]).await.unwrap();
    for row in roles {
        let name: String = row.get(0);
        facts.insert(format!("role {name}"), row.get(1));
        facts.insert(format!("password {name}"), row.get(2));
    }
    let members = column(&postgres, "SELECT concat_ws(' ', r.rolname, m.rolname, admin_option) FROM pg_auth_members a JOIN pg_roles r ON r.oid = a.roleid JOIN pg_roles m ON m.oid = a.member WHERE r.rolname !~ '^pg_' ORDER BY 1").await;
    facts.insert("memberships".to_string(), members.join("\n"));
    let databases = column(&postgres, "SELECT concat_ws(' ', datname, pg_get_userbyid(datdba), datcollate, pg_encoding_to_char(encoding)) FROM pg_database WHERE NOT datistemplate AND datname <> 'postgres' ORDER BY 1").await;
    facts.insert("databases".to_string(), databases.join("\n"));
    for database in ["myapp", "analytics"] {
        let client = admin.client(database).await.unwrap();
        let extensions = column(&client, "SELECT extname FROM pg_extension ORDER BY 1").await;
        facts.insert(format!("{database} extensions"), extensions.join(","));
        let tables = column(&client, "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'v') AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e') AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1").await;
        assert!(!tables.is_empty());
        for table in tables {
            let sum = column(&client, &format!("SELECT concat_ws(' ', count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')), (SELECT relacl::text FROM pg_class WHERE oid = '{table}'::regclass), (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = '{table}'::regclass)) FROM {table} t")).await;
            facts.insert(format!("{database} {table}"), sum.join(""));
        }
        let sequences = column(&client, "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'S' ORDER BY 1").await;
        for sequence in sequences {
            let state = column(
                &client,
                &format!("SELECT concat_ws(' ', last_value, is_called) FROM {sequence}"),
            )
            .await;
            facts.insert(format!("{database} {sequence}"), state.join(""));
        }
    }
    facts
}

/// Snapshots of every repository of the cluster, by repository.
async fn snapshots_by_repository(
    restic: &Restic,
    location: &Location,
    databases: &[&str],
) -> BTreeMap<String, Vec<postgres_operator::backup::restic::Snapshot>> {
    let mut all = BTreeMap::new();
    let mut repositories = vec![location.globals_repository()];
    repositories.extend(databases.iter().map(|db| location.database_repository(db)));
    for repository in repositories {
        let snapshots = restic.snapshots(&repository, CLUSTER, None).await.unwrap();
        all.insert(repository, snapshots);
    }
    all
}

/// Every database of the latest run, and the roles `target` lacks.
async fn restore_everything(
    target: &PostgresServer,
    s3: &S3Server,
) -> Result<restore::Restored, RestoreError> {
    let settings = restore_settings(target, s3);
    restore::restore(&settings, &RunSelector::Latest, &[], None, false, true).await
}

/// One database of the latest run, without roles.
async fn restore_one(
    settings: &RestoreSettings,
    database: &str,
    target: Option<&str>,
    clean: bool,
) -> Result<restore::Restored, RestoreError> {
    let databases = [database.to_string()];
    restore::restore(
        settings,
        &RunSelector::Latest,
        &databases,
        target,
        clean,
        false,
    )
    .await
}

fn assert_completed(report: &RunReport) {
    assert!(report.succeeded(), "backup failed: {:?}", report.error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_complete_example_is_backed_up_per_database_and_restored_identically() {
    let s3 = S3Server::start(&[BUCKET]);
    let source = PostgresServer::start();
    load_complete_example(&source).await;
    let settings = backup_settings(&source, &s3, "--keep-last=5 --keep-daily=7");

    let api = ApiServer::new();
    let run = Run::now();
    let recording = Recording::start(api.client(), "default", CLUSTER, Target::Scheduled, &run)
        .await
        .unwrap();
    let running = api
        .get(
            "apps.cozystack.io/postgresbackups",
            "default",
            recording.name(),
        )
        .unwrap();
    assert_eq!(running["status"]["phase"], "Running");
    let report = run_backup(&settings, &run).await;
    recording.finish(&report).await.unwrap();
    assert_completed(&report);

    // One repository per database plus the globals, every snapshot tagged with the run.
    let databases: Vec<&str> = report
        .snapshots
        .iter()
        .map(|s| s.database.as_str())
        .collect();
    assert_eq!(databases, ["globals", "analytics", "myapp"]);
    let location = &settings.location;
    let repositories =
        snapshots_by_repository(&settings.restic, location, &["analytics", "myapp"]).await;
    for (repository, snapshots) in &repositories {
        let expected = if repository.ends_with(".globals") {
            2
        } else {
            1
        };
        assert_eq!(snapshots.len(), expected, "{repository}: {snapshots:?}");
        for snapshot in snapshots {
            assert_eq!(snapshot.tag(TAG_RUN), Some(run.id.as_str()));
            assert_eq!(snapshot.tag("cluster"), Some(CLUSTER));
            assert_eq!(snapshot.hostname, CLUSTER);
        }
    }
    assert_eq!(
        repositories[&location.database_repository("myapp")][0].paths,
        ["/myapp.dump"]
    );

    // The record, as `kubectl get postgresbackups` shows it.
    let record: PostgresBackup = serde_json::from_value(
        api.get(
            "apps.cozystack.io/postgresbackups",
            "default",
            recording.name(),
        )
        .unwrap(),
    )
    .unwrap();
    let status = record.status.unwrap();
    assert_eq!(status.phase, Some(BackupPhase::Completed));
    assert_eq!(status.snapshots.len(), 3);
    assert!(
        status
            .snapshots
            .iter()
            .all(|s| s.size_bytes.unwrap_or(0) > 0)
    );
    assert_eq!(status.snapshot_ids.unwrap().split(',').count(), 3);
    assert!(status.total_size.is_some() && status.completed_at.is_some());
    assert_eq!(
        record.metadata.labels.unwrap()["postgres.apps.cozystack.io/backup-origin"],
        "schedule"
    );

    // Restore into a fresh server: every role, membership, database, table and row.
    let target = PostgresServer::start();
    let restored = restore_everything(&target, &s3).await.unwrap();
    assert_eq!(restored.run, run.id);
    assert_eq!(restored.databases, ["analytics", "myapp"]);
    let before = fingerprint(&source).await;
    let after = fingerprint(&target).await;
    assert_eq!(before, after);
    // Restored roles log in with their old passwords.
    target
        .connect_as("app_user", "app-password", "myapp")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_with_a_private_ca_works_with_its_bundle_and_is_refused_clearly_without() {
    let ca = PrivateCa::generate();
    let s3 = S3Server::start_tls(&[BUCKET], &ca);
    assert!(s3.endpoint.starts_with("https://"));
    let source = PostgresServer::start();
    load_complete_example(&source).await;

    // Without the bundle the bucket check refuses the certificate before restic runs, and
    // restic alone refuses it too; both say what to set.
    let untrusted = S3Credentials {
        ca_bundle: None,
        ..s3.credentials.clone()
    };
    let mut settings = backup_settings(&source, &s3, "--keep-last=3");
    settings.credentials = untrusted.clone();
    settings.restic = restic(&untrusted, PASSWORD);
    let error = run_backup(&settings, &Run::now()).await.error.unwrap();
    for expected in ["does not verify", "UnknownIssuer", "backup.s3CASecretRef"] {
        assert!(error.contains(expected), "{expected:?} missing: {error}");
    }
    let error = settings
        .restic
        .ensure_repository(&settings.location.globals_repository())
        .await
        .unwrap_err();
    assert!(
        error.message.contains("certificate does not verify")
            && error.message.contains("backup.s3CASecretRef"),
        "{error}"
    );

    // With it, the real `postgres-operator backup` with a backup Job's environment
    // (S3_CA_FILE) completes.
    support::succeed(
        &mut s3.backup_runner(&source, CLUSTER, &s3.base(BUCKET), PASSWORD),
        "the backup runner",
    );

    // A restore with the bundle reproduces everything; without it, it fails the same way.
    let target = PostgresServer::start();
    let mut untrusted_restore = restore_settings(&target, &s3);
    untrusted_restore.credentials = untrusted.clone();
    untrusted_restore.restic = restic(&untrusted, PASSWORD);
    let error = restore::restore(
        &untrusted_restore,
        &RunSelector::Latest,
        &[],
        None,
        false,
        true,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(error.contains("backup.s3CASecretRef"), "{error}");
    restore_everything(&target, &s3).await.unwrap();
    assert_eq!(fingerprint(&source).await, fingerprint(&target).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_runs_with_keep_last_two_leave_two_runs_in_every_repository() {
    let s3 = S3Server::start(&[BUCKET]);
    let source = PostgresServer::start();
    let admin = source.admin("postgres").await;
    admin.batch_execute("CREATE DATABASE shop").await.unwrap();
    let shop = source.admin("shop").await;
    shop.batch_execute("CREATE TABLE t (n int)").await.unwrap();
    let settings = backup_settings(&source, &s3, "--keep-last=2");
    let mut runs = Vec::new();
    for n in 0..5 {
        shop.execute("INSERT INTO t VALUES ($1)", &[&n])
            .await
            .unwrap();
        if n == 3 {
            // A restic killed while it held a lock where retention forgets: the run clears
            // the stale lock and forgets all the same.
            plant_stale_lock(&settings.restic, &settings.location.globals_repository()).await;
        }
        // Run ids have one-second resolution.
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        let run = Run::now();
        let report = run_backup(&settings, &run).await;
        assert_completed(&report);
        runs.push(run.id);
    }
    let kept: BTreeSet<&str> = runs[3..].iter().map(String::as_str).collect();
    let repositories =
        snapshots_by_repository(&settings.restic, &settings.location, &["shop"]).await;
    for (repository, snapshots) in &repositories {
        let per_run = if repository.ends_with(".globals") {
            4
        } else {
            2
        };
        assert_eq!(snapshots.len(), per_run, "{repository}");
        let tagged: BTreeSet<&str> = snapshots.iter().filter_map(|s| s.tag(TAG_RUN)).collect();
        assert_eq!(tagged, kept, "{repository}");
    }
    assert_eq!(
        locks(&settings.restic, &settings.location.globals_repository()).await,
        ""
    );
    // The newest run restores the newest data.
    let target = PostgresServer::start();
    restore_everything(&target, &s3).await.unwrap();
    let rows = column(&target.admin("shop").await, "SELECT count(*)::text FROM t").await;
    assert_eq!(rows, ["5"]);
}

/// The lock ids of `repository`, one per line.
async fn locks(restic: &Restic, repository: &str) -> String {
    let out = restic
        .command(repository)
        .args(["list", "locks"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Starts a `restic backup` that waits on its input, and kills it once its lock is stored.
async fn plant_stale_lock(restic: &Restic, repository: &str) {
    let mut holder = restic
        .command(repository)
        .args(["backup", "--stdin", "--stdin-filename", "stuck"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while locks(restic, repository).await.is_empty() {
        assert!(std::time::Instant::now() < deadline, "no lock taken");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    holder.kill().await.unwrap();
    assert!(!locks(restic, repository).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_and_unreachable_storage_fail_clearly_and_delete_nothing() {
    let s3 = S3Server::start(&[BUCKET]);
    let source = PostgresServer::start();
    load_complete_example(&source).await;
    let good = backup_settings(&source, &s3, "--keep-last=1");
    assert_completed(&run_backup(&good, &Run::now()).await);
    let before =
        snapshots_by_repository(&good.restic, &good.location, &["analytics", "myapp"]).await;
    let data_before = fingerprint(&source).await;

    let mut wrong_password = good.clone();
    wrong_password.restic = restic(&s3.credentials, "not-the-password");
    let mut wrong_keys = good.clone();
    wrong_keys.credentials.secret_key = "wrong-secret".to_string();
    wrong_keys.restic = restic(&wrong_keys.credentials, PASSWORD);
    let mut missing_bucket = good.clone();
    missing_bucket.location = Location::parse(&s3.base("no-such-bucket")).unwrap();
    let mut unreachable = good.clone();
    let closed_port = support::postgres::free_port();
    unreachable.location =
        Location::parse(&format!("s3:http://127.0.0.1:{closed_port}/{BUCKET}")).unwrap();
    let mut missing_database = good.clone();
    missing_database.databases = vec!["myapp".to_string(), "nope".to_string()];

    for (settings, expected) in [
        (&wrong_password, "wrong restic password"),
        (
            &wrong_keys,
            "rejected the access key (SignatureDoesNotMatch",
        ),
        (
            &missing_bucket,
            "S3 bucket \"no-such-bucket\" does not exist",
        ),
        (&unreachable, "is unreachable"),
        (&missing_database, "database \"nope\" does not exist"),
    ] {
        let report = run_backup(settings, &Run::now()).await;
        let error = report.error.clone().expect(expected);
        assert!(
            error.contains(expected),
            "expected {expected:?} in {error:?}"
        );
        assert_eq!(report.forgotten, 0);
    }
    // Nothing was deleted, no bucket was created, and the cluster is as it was.
    let after =
        snapshots_by_repository(&good.restic, &good.location, &["analytics", "myapp"]).await;
    assert_eq!(before, after);
    let missing = good
        .restic
        .snapshots(&missing_bucket.location.globals_repository(), CLUSTER, None)
        .await;
    assert!(missing.is_err(), "the missing bucket was created");
    assert_eq!(fingerprint(&source).await, data_before);

    // Restores refuse to overwrite, and name what they could not find.
    let settings = restore_settings(&source, &s3);
    let error = restore_one(&settings, "myapp", None, false)
        .await
        .unwrap_err();
    assert!(
        matches!(error, RestoreError::TargetExists(ref db) if db == "myapp"),
        "{error}"
    );
    let error = restore_one(&settings, "gone", None, false)
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("database \"gone\" is not in backup run"),
        "{error}"
    );
    let error = restore::find_run(&settings, &RunSelector::parse("2001-01-01T00:00:00Z"))
        .await
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("completed at or before 2001-01-01"),
        "{error}"
    );
    assert_eq!(fingerprint(&source).await, data_before);

    // Beside the original, and in place with --clean (one transaction).
    restore_one(&settings, "myapp", Some("myapp_copy"), false)
        .await
        .unwrap();
    let copy = column(
        &source.admin("myapp_copy").await,
        "SELECT count(*)::text FROM orders",
    )
    .await;
    assert_eq!(copy, ["30000"]);
    source
        .admin("postgres")
        .await
        .batch_execute("DROP DATABASE myapp_copy")
        .await
        .unwrap();
    source
        .admin("myapp")
        .await
        .batch_execute("DELETE FROM orders WHERE id > 100")
        .await
        .unwrap();
    restore_one(&settings, "myapp", None, true).await.unwrap();
    assert_eq!(fingerprint(&source).await, data_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_run_leaves_no_complete_run_and_the_next_run_cleans_it_up() {
    let s3 = S3Server::start(&[BUCKET]);
    let source = PostgresServer::start();
    source
        .admin("postgres")
        .await
        .batch_execute("CREATE DATABASE big")
        .await
        .unwrap();
    let big = source.admin("big").await;
    big.batch_execute("CREATE TABLE t (n int, s text); INSERT INTO t VALUES (0, 'first')")
        .await
        .unwrap();
    let settings = backup_settings(&source, &s3, "--keep-last=3");
    let first = Run::now();
    assert_completed(&run_backup(&settings, &first).await);
    // Enough data that the dump is still streaming when the runner is killed.
    big.batch_execute(
        "INSERT INTO t SELECT i, repeat(md5(i::text), 3) FROM generate_series(1, 1500000) i",
    )
    .await
    .unwrap();

    let mut runner = s3
        .backup_runner(&source, CLUSTER, &s3.base(BUCKET), PASSWORD)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let streaming = || !support::instance::processes_mentioning("big.dump").is_empty();
    support::wait_for("restic storing big.dump", streaming).await;
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert!(
        runner.try_wait().unwrap().is_none(),
        "the run ended before it was interrupted"
    );
    runner.kill().unwrap();
    runner.wait().unwrap();
    // SIGKILL reaches restic at once (parent-death signal), but a process in the middle
    // of a disk write only dies when the write returns: on a loaded machine, seconds.
    support::wait_until("restic to die with its runner", 60, || async {
        !streaming()
    })
    .await;

    // No complete run but the first, and no snapshot of the interrupted one in `big`.
    let restore = restore_settings(&source, &s3);
    let latest = restore::find_run(&restore, &RunSelector::Latest)
        .await
        .unwrap();
    assert_eq!(latest.run, first.id);
    let big_repository = settings.location.database_repository("big");
    let snapshots = settings
        .restic
        .snapshots(&big_repository, CLUSTER, None)
        .await
        .unwrap();
    assert_eq!(
        snapshots
            .iter()
            .filter_map(|s| s.tag(TAG_RUN))
            .collect::<Vec<_>>(),
        [first.id.as_str()]
    );

    // The next run takes the stale lock and the uploaded leftovers away.
    let next = Run::now();
    assert_completed(&run_backup(&settings, &next).await);
    let repositories =
        snapshots_by_repository(&settings.restic, &settings.location, &["big"]).await;
    for (repository, snapshots) in &repositories {
        for snapshot in snapshots {
            let run = snapshot.tag(TAG_RUN).unwrap();
            assert!(
                run == first.id || run == next.id,
                "{repository}: leftover {snapshot:?}"
            );
        }
        let mut check = settings.restic.command(repository);
        check.arg("check");
        let out = check.output().await.unwrap();
        assert!(
            out.status.success(),
            "{repository}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut locks = settings.restic.command(&big_repository);
    locks.args(["list", "locks"]);
    let out = locks.output().await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "",
        "locks left behind"
    );
}

const RESTORED: &str = "restored";
const RESTORED_PRIMARY: &str = "postgres-restored-0";
const RESTORED_STANDBY: &str = "postgres-restored-1";
/// The restored cluster's own passwords, in its Secrets (not the old cluster's).
const NEW_PASSWORDS: &[(&str, &str)] = &[
    ("admin", "admin-new"),
    ("app_user", "app-new"),
    ("readonly_user", "readonly-new"),
];

/// What the StatefulSet gives the pods of a cluster that bootstraps from a backup (see
/// `manifests::cronjob::backup_access_env`), pointed at the test's S3 server.
fn backup_env(s3: &S3Server, restic_password: &str) -> Vec<(String, String)> {
    [
        ("RESTIC_REPOSITORY_BASE", s3.base(BUCKET)),
        ("AWS_DEFAULT_REGION", s3.credentials.region.clone()),
        ("AWS_ACCESS_KEY_ID", s3.credentials.access_key.clone()),
        ("AWS_SECRET_ACCESS_KEY", s3.credentials.secret_key.clone()),
        ("RESTIC_PASSWORD", restic_password.to_string()),
        ("RESTIC_BINARY", "restic".to_string()),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value))
    .collect()
}

/// A new cluster `name` with `spec` that bootstraps from CLUSTER's backups, with its own
/// Secrets.
fn bootstrap_spec(name: &str, spec: &str, recovery_time: Option<&str>) -> SpecFile {
    let mut postgres = format!(
        "apiVersion: apps.cozystack.io/v1alpha1\nkind: Postgres\nmetadata:\n  name: {name}\nspec:\n{spec}  bootstrap:\n    enabled: true\n    oldName: {CLUSTER}\n"
    );
    if let Some(time) = recovery_time {
        postgres.push_str(&format!("    recoveryTime: \"{time}\"\n"));
    }
    let text = format!(
        "{postgres}{}",
        secrets_yaml(name, "new-superuser", "new-replication", NEW_PASSWORDS)
    );
    let parsed = postgres_operator::instance::source::parse_snapshot(&text).unwrap();
    postgres_operator::validate::validate_spec(&parsed.postgres.spec)
        .expect("a spec the API accepts");
    SpecFile::new(&text)
}

/// The superuser of an instance over TCP.
fn instance_admin(instance: &Instance) -> Connection {
    Connection {
        host: "127.0.0.1".to_string(),
        port: instance.port,
        user: "postgres".to_string(),
        password: Some(instance.superuser.clone()),
        hostaddr: None,
        verify_with: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cluster_bootstraps_from_the_run_before_its_recovery_time_and_its_standby_follows() {
    let s3 = S3Server::start(&[BUCKET]);
    // The old cluster: the complete example run by the instance manager (so its users and
    // roles are the operator's), with the example's data.
    let example = support::example("complete.yaml");
    let old_spec = SpecFile::new(&format!(
        "{example}{}",
        secrets_yaml(CLUSTER, "old-superuser", "old-replication", COMPLETE_USERS)
    ));
    let old = Instance::spawn(&old_spec, CLUSTER, "postgres-postgres-complete-0", &[], &[]);
    old.wait_ready().await;
    let old_admin = instance_admin(&old);
    run_script(&old_admin, "myapp", "myapp_data.sql").await;
    run_script(&old_admin, "analytics", "analytics_data.sql").await;
    // What the manager's next full pass grants to a table made by someone other than the
    // database's admins (every database has a readonly role), done here so the backup
    // taken right away holds what the restored cluster's first pass grants.
    old.admin("analytics")
        .await
        .batch_execute(
            "GRANT USAGE ON SCHEMA reports TO analytics_readonly; \
             GRANT SELECT ON reports.events TO analytics_readonly",
        )
        .await
        .unwrap();
    let settings = backup_settings_of(old_admin.clone(), &s3, "--keep-last=5");
    assert_completed(&run_backup(&settings, &Run::now()).await);
    let at_first_run = fingerprint_of(&old_admin).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let recovery_time = k8s_openapi::jiff::Timestamp::now().to_string();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    old.admin("myapp")
        .await
        .batch_execute("INSERT INTO customers (name, email) VALUES ('late', 'late@example.org')")
        .await
        .unwrap();
    assert_completed(&run_backup(&settings, &Run::now()).await);

    // The same spec, as a new cluster restored from the first run.
    let spec_section = &example[example.find("spec:\n").unwrap() + "spec:\n".len()..];
    let spec = bootstrap_spec(RESTORED, spec_section, Some(&recovery_time));
    let env = backup_env(&s3, PASSWORD);
    let primary = Instance::spawn_with_env(&spec, RESTORED, RESTORED_PRIMARY, &[], &[], &env);
    primary.wait_ready().await;
    assert!(
        primary.log().contains("restore from backup complete"),
        "{}",
        primary.log()
    );
    assert!(
        !primary
            .data_dir
            .with_file_name("pgdata.restore.json")
            .exists(),
        "the progress file goes when the restore is complete"
    );

    // Everything of the first run, and nothing of the second; the spec's users have the
    // new cluster's passwords, and the operator's replication role is the new cluster's.
    let mut restored = fingerprint_of(&instance_admin(&primary)).await;
    let mut expected = at_first_run.clone();
    for user in ["admin", "app_user", "readonly_user", "streaming_replica"] {
        assert_ne!(
            restored.remove(&format!("password {user}")),
            expected.remove(&format!("password {user}")),
            "{user} keeps the old cluster's password"
        );
    }
    assert_eq!(restored, expected);
    for (user, password) in NEW_PASSWORDS {
        primary.connect_as(user, password, "myapp").await.unwrap();
    }
    assert!(
        primary
            .connect_as("app_user", "app-password", "myapp")
            .await
            .is_err()
    );

    // A standby clones the restored primary and streams from it.
    let standby = Instance::spawn_with_env(
        &spec,
        RESTORED,
        RESTORED_STANDBY,
        &[(RESTORED_PRIMARY, primary.port)],
        &[],
        &env,
    );
    standby.wait_ready().await;
    let count = "SELECT count(*)::text FROM orders";
    assert_eq!(
        column(&standby.admin("myapp").await, count).await,
        column(&primary.admin("myapp").await, count).await
    );
}

/// Count of `table` in `database` of an instance.
async fn count_rows(instance: &Instance, database: &str, table: &str) -> String {
    column(
        &instance.admin(database).await,
        &format!("SELECT count(*)::text FROM {table}"),
    )
    .await
    .remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_waits_out_a_wrong_password_and_a_cut_short_restore_resumes_its_run() {
    let s3 = S3Server::start(&[BUCKET]);
    let source = PostgresServer::start();
    let admin = source.admin("postgres").await;
    admin.batch_execute("CREATE DATABASE big").await.unwrap();
    admin.batch_execute("CREATE DATABASE small").await.unwrap();
    source
        .admin("big")
        .await
        .batch_execute(
            "CREATE TABLE t (n int, s text); INSERT INTO t SELECT i, repeat(md5(i::text), 3) FROM generate_series(1, 1000000) i",
        )
        .await
        .unwrap();
    let small = source.admin("small").await;
    small
        .batch_execute("CREATE TABLE t (n int); INSERT INTO t SELECT generate_series(1, 10)")
        .await
        .unwrap();
    let settings = backup_settings(&source, &s3, "--keep-last=5");
    let first = Run::now();
    assert_completed(&run_backup(&settings, &first).await);

    let spec = bootstrap_spec(
        "resumed",
        "  replicas: 2\n  backup:\n    s3Bucket: s3.example.org/postgres-backups\n",
        None,
    );
    let pod = "postgres-resumed-0";
    let retry = ["--restore-retry-seconds", "1"];

    // A wrong restic password: PostgreSQL answers, the pod is not ready and says why,
    // and nothing is restored.
    let mut primary = Instance::spawn_with_env(
        &spec,
        "resumed",
        pod,
        &[],
        &retry,
        &backup_env(&s3, "wrong"),
    );
    let reported = std::sync::Mutex::new(String::new());
    support::wait_until("a failed restore is reported", 60, || async {
        match primary.get("/readyz").await {
            Some((503, body)) if body.contains("restore from backup failed, retrying") => {
                *reported.lock().unwrap() = body;
                true
            }
            _ => false,
        }
    })
    .await;
    let body = reported.into_inner().unwrap();
    assert!(body.contains("wrong restic password"), "{body}");
    assert_eq!(primary.get("/healthz").await.unwrap().0, 200);
    let status = primary.status().await.unwrap();
    assert!(
        status["held"]
            .as_str()
            .unwrap()
            .contains("wrong restic password"),
        "{status}"
    );
    assert!(
        primary
            .metrics()
            .await
            .contains("postgres_instance_restore_failures_total")
    );
    let databases = column(
        &primary.admin("postgres").await,
        "SELECT datname::text FROM pg_database WHERE datname IN ('big', 'small')",
    )
    .await;
    assert_eq!(databases, Vec::<String>::new());
    assert!(
        primary
            .terminate(std::time::Duration::from_secs(60))
            .is_some()
    );

    // The right password; the pod is deleted while `big` is being restored.
    let env = backup_env(&s3, PASSWORD);
    primary.restart_with_env(&env);
    let restoring = || !support::instance::processes_mentioning("big.dump").is_empty();
    support::wait_until("big is being restored", 60, || async {
        match primary
            .connect_as("postgres", &primary.superuser, "big")
            .await
        {
            Ok(client) => client.simple_query("SELECT 1 FROM t LIMIT 1").await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
    assert!(restoring(), "big restored before it could be interrupted");
    assert_ne!(primary.get("/readyz").await.unwrap().0, 200);
    let status = primary
        .terminate(std::time::Duration::from_secs(60))
        .expect("the instance stops on SIGTERM in the middle of a restore");
    assert!(status.success(), "{status}; log:\n{}", primary.log());
    assert!(!restoring(), "restic outlived the instance");
    let progress: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(primary.data_dir.with_file_name("pgdata.restore.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(progress["run"], first.id.as_str());
    assert_eq!(progress["databases"], serde_json::json!([]));

    // A newer run lands meanwhile; the restore goes on with the run it chose.
    small
        .batch_execute("INSERT INTO t VALUES (11)")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_completed(&run_backup(&settings, &Run::now()).await);
    primary.restart_with_env(&env);
    primary.wait_ready().await;
    let log = primary.log();
    assert!(
        log.contains("dropping what an interrupted restore left"),
        "{log}"
    );
    assert_eq!(count_rows(&primary, "big", "t").await, "1000000");
    assert_eq!(count_rows(&primary, "small", "t").await, "10");
    assert!(
        !primary
            .data_dir
            .with_file_name("pgdata.restore.json")
            .exists()
    );
}

/// A backup Job's pod reaches the primary as another pod does: by the `-rw` Service's
/// name, over TLS verified against the cluster's CA (`PGSSLMODE=verify-full`), its own
/// client and pg_dump alike; with another cluster's CA it is refused before anything is
/// stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_verifies_the_primary_by_its_service_name() {
    let s3 = S3Server::start(&[BUCKET]);
    let spec = SpecFile::new(&format!(
        "apiVersion: apps.cozystack.io/v1alpha1\nkind: Postgres\nmetadata: {{name: {CLUSTER}, namespace: tenant}}\nspec:\n  replicas: 1\n  databases:\n    shop: {{}}\n{}",
        secrets_yaml(CLUSTER, "su-tls", "repl-tls", &[])
    ));
    let instance = Instance::spawn(&spec, CLUSTER, &format!("postgres-{CLUSTER}-0"), &[], &[]);
    instance.wait_ready().await;
    instance
        .admin("shop")
        .await
        .batch_execute("CREATE TABLE orders (id int); INSERT INTO orders VALUES (1), (2)")
        .await
        .unwrap();
    let by_service = |trust: ServerTrust| Connection {
        host: format!("postgres-{CLUSTER}-rw"),
        hostaddr: Some(std::net::Ipv4Addr::LOCALHOST.into()),
        verify_with: Some(trust),
        ..instance_admin(&instance)
    };
    let cluster_ca = TlsPaths::under(&instance.socket_dir).ca;
    let settings = backup_settings_of(
        by_service(ServerTrust::load(&cluster_ca).unwrap()),
        &s3,
        "--keep-last=3",
    );
    let report = run_backup(&settings, &Run::now()).await;
    assert_completed(&report);

    let other = tempfile::tempdir().unwrap();
    let other_ca = other.path().join("ca.crt");
    std::fs::write(
        &other_ca,
        tls_material(&cluster_tls_secret("another-cluster")).ca,
    )
    .unwrap();
    let refused = backup_settings_of(
        by_service(ServerTrust::load(&other_ca).unwrap()),
        &s3,
        "--keep-last=3",
    );
    let error = run_backup(&refused, &Run::now()).await.error.unwrap();
    assert!(error.contains("certificate"), "{error}");
    let runs = snapshots_by_repository(
        &restic(&s3.credentials, PASSWORD),
        &settings.location,
        &["shop"],
    )
    .await;
    // The verified run's globals, database and manifest; nothing from the refused one.
    let tag = format!("{TAG_RUN}={}", report.run);
    let snapshots: Vec<_> = runs.values().flatten().collect();
    assert_eq!(snapshots.len(), 3, "{runs:?}");
    assert!(
        snapshots
            .iter()
            .all(|s| s.tags.as_ref().is_some_and(|t| t.contains(&tag))),
        "{runs:?}"
    );
}
