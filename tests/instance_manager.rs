//! The `postgres-operator instance` binary end to end, as it runs in a pod (as the
//! `postgres` OS user, PID-1 reaper included), with real PostgreSQL servers on loopback
//! and the spec and Secrets from a file: bootstrap of a primary and of a streaming
//! standby, the seed's complete example provisioned, reload and ordered restarts,
//! shutdown, SIGHUP and crash handling, hostile names and spec edits.

mod support;

use std::time::{Duration, Instant};

use support::instance::{COMPLETE_USERS, Instance, SpecFile, secrets_yaml, zombies_of};
use support::postgres::column;
use support::{example, wait_until};

const PRIMARY: &str = "postgres-postgres-complete-0";
const STANDBY: &str = "postgres-postgres-complete-1";

/// A setting's value, `None` while the server does not answer (e.g. restarting).
async fn try_setting(instance: &Instance, name: &str) -> Option<String> {
    let client = instance
        .connect_as("postgres", &instance.superuser, "postgres")
        .await
        .ok()?;
    let rows = client.simple_query(&format!("SHOW {name}")).await.ok()?;
    rows.into_iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
        _ => None,
    })
}

async fn setting(instance: &Instance, name: &str) -> String {
    try_setting(instance, name)
        .await
        .expect("the server answers")
}

async fn started_at(instance: &Instance) -> String {
    column(
        &instance.admin("postgres").await,
        "SELECT pg_postmaster_start_time()::text",
    )
    .await
    .remove(0)
}

/// Clean exit on SIGTERM, and nothing of the instance left running.
fn terminate_cleanly(instance: &mut Instance) {
    let status = instance
        .terminate(Duration::from_secs(60))
        .expect("the instance exits on SIGTERM");
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        instance.log()
    );
    assert_eq!(instance.processes(), Vec::new(), "leftover processes");
    assert!(
        !instance.data_dir.join("postmaster.pid").exists(),
        "a clean shutdown removes postmaster.pid"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_complete_example_runs_as_a_primary_and_a_streaming_standby() {
    let spec = SpecFile::new(&format!(
        "{}{}",
        example("complete.yaml"),
        secrets_yaml(
            "postgres-complete",
            "su'per \"pw",
            "repl pw'\\",
            COMPLETE_USERS
        )
    ));
    let mut primary = Instance::spawn(&spec, "postgres-complete", PRIMARY, &[], &[]);
    primary.wait_ready().await;
    let mut standby = Instance::spawn(
        &spec,
        "postgres-complete",
        STANDBY,
        &[(PRIMARY, primary.port)],
        &["--smart-shutdown-seconds", "3"],
    );
    standby.wait_ready().await;

    // The declarative SQL has run once every user can log in.
    wait_until("every user logs in with its password", 60, || async {
        let mut all = true;
        for (user, password) in COMPLETE_USERS {
            all &= primary.connect_as(user, password, "myapp").await.is_ok();
        }
        all
    })
    .await;
    assert!(primary.connect_as("admin", "wrong", "myapp").await.is_err());
    let admin = primary
        .connect_as("admin", "secure-admin-password", "analytics")
        .await
        .unwrap();
    admin
        .batch_execute("CREATE TABLE report (id int); INSERT INTO report VALUES (1)")
        .await
        .unwrap();
    let extensions = column(&admin, "SELECT extname::text FROM pg_extension ORDER BY 1").await;
    for extension in ["hstore", "pg_stat_statements"] {
        assert!(
            extensions.contains(&extension.to_string()),
            "{extensions:?}"
        );
    }
    admin
        .simple_query("SELECT count(*) FROM pg_stat_statements")
        .await
        .expect("pg_stat_statements is preloaded");

    // A table created after provisioning by another admin is readable, not writable,
    // by the readonly user.
    let app = primary
        .connect_as("app_user", "app-password", "myapp")
        .await
        .unwrap();
    app.batch_execute("CREATE TABLE orders (id int); INSERT INTO orders VALUES (42)")
        .await
        .unwrap();
    let reader = primary
        .connect_as("readonly_user", "readonly-password", "myapp")
        .await
        .unwrap();
    assert_eq!(column(&reader, "SELECT id::text FROM orders").await, ["42"]);
    let denied = reader
        .batch_execute("INSERT INTO orders VALUES (1)")
        .await
        .unwrap_err();
    let message = denied
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert!(message.contains("permission denied"), "{denied:?}");
    assert!(
        primary
            .connect_as("readonly_user", "readonly-password", "analytics")
            .await
            .is_err(),
        "no CONNECT on a database it has no role in"
    );

    // Streaming: the row reaches the standby, through the standby's own slot.
    let on_standby = standby.admin("myapp").await;
    wait_until("the standby replays the row", 30, || async {
        on_standby
            .simple_query("SELECT id FROM orders")
            .await
            .is_ok()
    })
    .await;
    assert_eq!(
        column(&on_standby, "SELECT id::text FROM orders").await,
        ["42"]
    );
    let superuser = primary.admin("postgres").await;
    // The standby streams through its slot; the third pod's slot waits, ready for
    // whichever instance is promoted, and holds no WAL until it is used.
    wait_until("every peer has its slot", 30, || async {
        column(
            &superuser,
            "SELECT slot_name || ' ' || active || ' ' || (restart_lsn IS NOT NULL) \
             FROM pg_replication_slots ORDER BY 1",
        )
        .await
            == [
                "postgres_postgres_complete_1 true true",
                "postgres_postgres_complete_2 false false",
            ]
    })
    .await;
    // One healthy standby with minSyncReplicas 1: a quorum of one.
    wait_until("the standby is in the synchronous quorum", 30, || async {
        setting(&primary, "synchronous_standby_names").await == format!("ANY 1 (\"{STANDBY}\")")
    })
    .await;
    wait_until("the standby is reported as quorum", 30, || async {
        primary.status().await.is_some_and(|s| {
            s["replicas"][0]["applicationName"] == STANDBY
                && s["replicas"][0]["syncState"] == "quorum"
        })
    })
    .await;
    app.batch_execute("INSERT INTO orders VALUES (43)")
        .await
        .unwrap();

    let status = standby.status().await.unwrap();
    assert_eq!(status["role"], "standby");
    assert_eq!(status["streaming"], true);
    assert_eq!(primary.status().await.unwrap()["role"], "primary");
    assert!(
        primary
            .metrics()
            .await
            .contains("postgres_instance_primary 1")
    );
    assert!(
        standby
            .metrics()
            .await
            .contains("postgres_instance_primary 0")
    );
    assert!(
        primary
            .metrics()
            .await
            .contains("postgres_instance_sql_errors_total 0")
    );

    // Clients still connected: smart shutdown waits for them, then fast disconnects.
    let started = Instant::now();
    terminate_cleanly(&mut standby);
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "smart shutdown waited first"
    );
    drop((admin, app, reader, superuser));
    terminate_cleanly(&mut primary);
}

/// The children of a process (the reaper's: the instance manager).
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn tune_spec(work_mem: &str, shared_buffers: &str) -> String {
    format!(
        "apiVersion: apps.cozystack.io/v1alpha1\nkind: Postgres\nmetadata: {{name: tune, namespace: tenant}}\nspec:\n  replicas: 2\n  postgresql:\n    parameters:\n      work_mem: {work_mem}\n      shared_buffers: {shared_buffers}\n{}",
        secrets_yaml("tune", "su", "repl", &[])
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_setting_applies_live_and_a_restart_setting_restarts_standbys_first() {
    let spec = SpecFile::new(&tune_spec("4MB", "32MB"));
    let primary = Instance::spawn(&spec, "tune", "postgres-tune-0", &[], &[]);
    primary.wait_ready().await;
    let standby = Instance::spawn(
        &spec,
        "tune",
        "postgres-tune-1",
        &[("postgres-tune-0", primary.port)],
        &[],
    );
    standby.wait_ready().await;
    let primary_start = started_at(&primary).await;
    let standby_start = started_at(&standby).await;

    spec.write(&tune_spec("8MB", "32MB"));
    wait_until("work_mem is reloaded on the primary", 30, || async {
        setting(&primary, "work_mem").await == "8MB"
    })
    .await;
    wait_until("work_mem is reloaded on the standby", 30, || async {
        setting(&standby, "work_mem").await == "8MB"
    })
    .await;
    assert_eq!(
        started_at(&primary).await,
        primary_start,
        "no restart for a reload"
    );

    // Hold the standby's manager: the primary must wait for it.
    let manager = children(standby.pid());
    assert_eq!(manager.len(), 1, "the reaper runs one manager");
    let pid = manager[0].to_string();
    std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap();
    spec.write(&tune_spec("8MB", "48MB"));
    wait_until("the primary reports shared_buffers pending", 30, || async {
        primary
            .status()
            .await
            .is_some_and(|s| s["pendingRestart"] == serde_json::json!(["shared_buffers"]))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        started_at(&primary).await,
        primary_start,
        "the primary waits while a standby has not restarted"
    );
    std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap();

    wait_until("the standby restarts with the new value", 60, || async {
        try_setting(&standby, "shared_buffers").await.as_deref() == Some("48MB")
    })
    .await;
    wait_until("then the primary", 60, || async {
        try_setting(&primary, "shared_buffers").await.as_deref() == Some("48MB")
    })
    .await;
    let (standby_restart, primary_restart) =
        (started_at(&standby).await, started_at(&primary).await);
    assert_ne!(standby_restart, standby_start);
    assert!(
        standby_restart < primary_restart,
        "standby restarted at {standby_restart}, primary at {primary_restart}"
    );
    assert!(
        primary
            .metrics()
            .await
            .contains("postgres_instance_restarts_total 1")
    );
    standby.wait_ready().await;
    assert_eq!(
        primary.status().await.unwrap()["pendingRestart"],
        serde_json::json!([])
    );
}

/// A reload that fails (here: the manager cannot reach the server over its socket; in
/// a restart, the server is still starting) is owed, not forgotten: once the server
/// answers, maintenance reloads the files written after it last read them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_failed_is_made_good_once_the_server_answers() {
    let spec = SpecFile::new(&tune_spec("4MB", "32MB").replace("replicas: 2", "replicas: 1"));
    let instance = Instance::spawn(&spec, "tune", "postgres-tune-0", &[], &[]);
    instance.wait_ready().await;
    let socket = instance
        .socket_dir
        .join(format!(".s.PGSQL.{}", instance.port));
    let hidden = socket.with_file_name("hidden-socket");
    std::fs::rename(&socket, &hidden).unwrap();
    // The manager's own sessions (the socket's) go: it must connect anew, and cannot.
    instance
        .connect_as("postgres", &instance.superuser, "postgres")
        .await
        .unwrap()
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND client_addr IS NULL",
        )
        .await
        .unwrap();
    spec.write(&tune_spec("8MB", "32MB").replace("replicas: 2", "replicas: 1"));
    wait_until("the reload fails", 30, || async {
        instance.log().contains("reload failed")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(setting(&instance, "work_mem").await, "4MB");

    std::fs::rename(&hidden, &socket).unwrap();
    wait_until("the owed reload applies work_mem", 30, || async {
        setting(&instance, "work_mem").await == "8MB"
    })
    .await;
    assert!(
        instance
            .log()
            .contains("the server has not read the files written last: reloading"),
        "{}",
        instance.log()
    );
    assert_eq!(
        instance.status().await.unwrap()["pendingRestart"],
        serde_json::json!([])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_postmaster_is_restarted_orphans_are_reaped_and_sigterm_is_clean() {
    let spec = SpecFile::new(&format!(
        "apiVersion: apps.cozystack.io/v1alpha1\nkind: Postgres\nmetadata: {{name: solo}}\nspec: {{replicas: 1}}\n{}",
        secrets_yaml("solo", "su", "repl", &[])
    ));
    let mut instance = Instance::spawn(&spec, "solo", "postgres-solo-0", &[], &[]);
    instance.wait_ready().await;
    let held = instance.admin("postgres").await;
    column(&held, "SELECT 1").await;
    let backends = children(instance.postmaster_pid().unwrap());
    assert!(!backends.is_empty());

    instance.kill_postmaster().await;
    // The old backends were orphaned to the reaper, which must have reaped them.
    let gone = || {
        backends
            .iter()
            .all(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
    };
    for _ in 0..300 {
        if gone() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left: Vec<String> = backends
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .collect();
    assert!(
        left.is_empty(),
        "orphaned backends left: {left:?} (reaper {})",
        instance.pid()
    );
    assert_eq!(zombies_of(instance.pid()), Vec::<u32>::new());
    let restarted = instance.postmaster_pid().unwrap();
    assert!(
        instance
            .metrics()
            .await
            .contains("postgres_instance_postmaster_starts_total 2")
    );
    // SIGHUP reaches the manager through the reaper and reloads; nothing stops.
    let reloads = |text: String| {
        text.lines()
            .find_map(|l| l.strip_prefix("postgres_instance_config_reloads_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = reloads(instance.metrics().await);
    instance.signal("HUP");
    wait_until("SIGHUP reloads the configuration", 30, || async {
        reloads(instance.metrics().await) > before
    })
    .await;
    assert_eq!(instance.postmaster_pid(), Some(restarted));
    drop(held);
    terminate_cleanly(&mut instance);
}

fn hostile_spec(users: &[(&str, &str)], yaml: &str) -> String {
    format!(
        "apiVersion: apps.cozystack.io/v1alpha1\nkind: Postgres\nmetadata: {{name: odd}}\nspec:\n{yaml}{}",
        secrets_yaml("odd", "su", "repl", users)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_edits_and_removals_go_through_the_instance() {
    let injection = "x'); DROP ROLE postgres; -- \"quoted\" pass";
    let users = [
        ("Bad-User.1", injection),
        ("UPPER.case", "it's \"fine\""),
        ("Owner-Of-Things", "o"),
    ];
    let before = "  users:\n    Bad-User.1: {}\n    UPPER.case: {}\n    Owner-Of-Things: {}\n  databases:\n    'Sales DB \"EU\"':\n      roles:\n        admin: [Bad-User.1, Owner-Of-Things]\n        readonly: [UPPER.case]\n    ops:\n      roles:\n        admin: [Owner-Of-Things]\n      extensions: [hstore, pg_stat_statements, pg_trgm, btree_gin, uuid-ossp, pgcrypto]\n";
    let spec_text = hostile_spec(&users, before);
    let parsed = postgres_operator::instance::source::parse_snapshot(&spec_text).unwrap();
    postgres_operator::validate::validate_spec(&parsed.postgres.spec)
        .expect("the hostile spec is one the API accepts");
    let spec = SpecFile::new(&spec_text);
    let instance = Instance::spawn(&spec, "odd", "postgres-odd-0", &[], &[]);
    instance.wait_ready().await;
    wait_until("the users log in", 60, || async {
        instance
            .connect_as("Bad-User.1", injection, "Sales DB \"EU\"")
            .await
            .is_ok()
            && instance
                .connect_as("Owner-Of-Things", "o", "ops")
                .await
                .is_ok()
    })
    .await;
    let superuser = instance.admin("postgres").await;
    assert_eq!(
        column(
            &superuser,
            "SELECT rolname::text FROM pg_roles WHERE rolname = 'postgres'"
        )
        .await,
        ["postgres"],
        "the injection attempt changed nothing"
    );
    let ops = instance.admin("ops").await;
    let extensions = column(&ops, "SELECT extname::text FROM pg_extension ORDER BY 1").await;
    for extension in [
        "btree_gin",
        "hstore",
        "pg_stat_statements",
        "pg_trgm",
        "pgcrypto",
        "uuid-ossp",
    ] {
        assert!(
            extensions.contains(&extension.to_string()),
            "{extension}: {extensions:?}"
        );
    }
    // The soon-removed user owns objects in two databases.
    for database in ["Sales DB \"EU\"", "ops"] {
        instance
            .connect_as("Owner-Of-Things", "o", database)
            .await
            .unwrap()
            .batch_execute("CREATE TABLE owned (id int)")
            .await
            .unwrap();
    }
    let upper = instance
        .connect_as("UPPER.case", "it's \"fine\"", "Sales DB \"EU\"")
        .await
        .unwrap();
    assert_eq!(
        column(&upper, "SELECT count(*)::text FROM owned").await,
        ["0"]
    );

    // Edit: Owner-Of-Things leaves, UPPER.case becomes an admin of Sales DB "EU".
    let after = "  users:\n    Bad-User.1: {}\n    UPPER.case: {}\n  databases:\n    'Sales DB \"EU\"':\n      roles:\n        admin: [Bad-User.1, UPPER.case]\n    ops:\n      roles:\n        admin: [Bad-User.1]\n      extensions: [hstore, pg_stat_statements, pg_trgm, btree_gin, uuid-ossp, pgcrypto]\n";
    spec.write(&hostile_spec(&users[..2], after));
    // The removed user goes last in a pass; the readonly group role of every database stays,
    // without the member its former list gave it (checked below).
    wait_until("the removed user is gone", 60, || async {
        column(
            &superuser,
            "SELECT count(*)::text FROM pg_roles WHERE rolname = 'Owner-Of-Things'",
        )
        .await
            == ["0"]
    })
    .await;
    assert_eq!(
        column(
            &superuser,
            "SELECT count(*)::text FROM pg_roles WHERE rolname = 'Sales DB \"EU\"_readonly'",
        )
        .await,
        ["1"]
    );
    let memberships = column(
        &superuser,
        "SELECT g.rolname || ' > ' || m.rolname FROM pg_auth_members a JOIN pg_roles g ON g.oid = a.roleid \
         JOIN pg_roles m ON m.oid = a.member WHERE m.rolname IN ('Bad-User.1', 'UPPER.case') ORDER BY 1",
    )
    .await;
    assert_eq!(
        memberships,
        [
            "Sales DB \"EU\"_admin > Bad-User.1",
            "Sales DB \"EU\"_admin > UPPER.case",
            "ops_admin > Bad-User.1"
        ]
    );
    for (database, owner) in [
        ("Sales DB \"EU\"", "Sales DB \"EU\"_admin"),
        ("ops", "ops_admin"),
    ] {
        let client = instance.admin(database).await;
        assert_eq!(
            column(
                &client,
                "SELECT tableowner::text FROM pg_tables WHERE tablename = 'owned'"
            )
            .await,
            [owner],
            "the removed user's table in {database} is kept, owned by the database's admin role"
        );
    }
    upper
        .batch_execute("INSERT INTO owned VALUES (1)")
        .await
        .expect("UPPER.case is an admin now");
    assert!(
        instance
            .metrics()
            .await
            .contains("postgres_instance_sql_errors_total 0")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ha_example_is_provisioned_by_its_primary() {
    let users = [
        ("admin", "very-secure-password"),
        ("app_user", "app-password"),
        ("monitoring_user", "monitoring-password"),
    ];
    let spec = SpecFile::new(&format!(
        "{}{}",
        example("ha.yaml"),
        secrets_yaml("postgres-ha", "su", "repl", &users)
    ));
    let primary = Instance::spawn(&spec, "postgres-ha", "postgres-postgres-ha-0", &[], &[]);
    primary.wait_ready().await;
    wait_until("every user logs in with its password", 60, || async {
        let mut all = true;
        for (user, password) in users {
            all &= primary
                .connect_as(user, password, "production")
                .await
                .is_ok();
        }
        all
    })
    .await;
    let admin = primary
        .connect_as("admin", "very-secure-password", "production")
        .await
        .unwrap();
    admin
        .batch_execute("CREATE TABLE events (id int)")
        .await
        .expect("the admin creates tables in its database");
    let extensions = column(&admin, "SELECT extname::text FROM pg_extension ORDER BY 1").await;
    for extension in ["btree_gin", "hstore", "pg_stat_statements", "pg_trgm"] {
        assert!(
            extensions.contains(&extension.to_string()),
            "{extensions:?}"
        );
    }
    let memberships = column(
        &admin,
        "SELECT g.rolname || ' > ' || m.rolname FROM pg_auth_members a JOIN pg_roles g ON g.oid = a.roleid \
         JOIN pg_roles m ON m.oid = a.member WHERE g.rolname LIKE 'production\\_%' ORDER BY 1",
    )
    .await;
    assert_eq!(
        memberships,
        [
            "production_admin > admin",
            "production_app > app_user",
            "production_monitoring > monitoring_user"
        ]
    );
    assert_eq!(setting(&primary, "max_connections").await, "500");
    assert_eq!(setting(&primary, "random_page_cost").await, "1.1");
}
