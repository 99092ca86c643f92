//! Declarative SQL against a real PostgreSQL server: the seed examples' users log in,
//! admins create tables, memberships follow the lists, removed users are dropped after
//! their objects are reassigned, hostile names and injection attempts stay inert, and a
//! second pass runs no statement.

mod support;

use std::collections::BTreeMap;

use postgres_operator::api::Postgres;
use postgres_operator::sql::DesiredState;
use support::postgres::{PostgresServer, column};

fn spec_of(yaml: &str) -> Postgres {
    serde_yaml::from_str(yaml).unwrap()
}

/// Passwords as the credentials Secret would hold them: the spec's, else a fixed one.
fn desired(pg: &Postgres) -> DesiredState {
    let passwords: BTreeMap<String, String> = pg
        .spec
        .users
        .iter()
        .map(|(name, user)| {
            (
                name.clone(),
                user.password
                    .clone()
                    .unwrap_or_else(|| format!("{name}-generated")),
            )
        })
        .collect();
    DesiredState::from_spec(&pg.spec, &passwords)
}

#[tokio::test]
async fn the_complete_example_is_provisioned_and_a_second_pass_changes_nothing() {
    let server = PostgresServer::start();
    let desired = desired(&spec_of(&support::example("complete.yaml")));
    let first = server.superuser().reconcile(&desired).await.unwrap();
    assert!(first.statements > 10, "{first:?}");
    assert!(first.conflicts.is_empty());
    let second = server.superuser().reconcile(&desired).await.unwrap();
    assert_eq!(second.statements, 0, "a settled catalog needs no statement");

    for (user, password, database) in [
        ("admin", "secure-admin-password", "myapp"),
        ("app_user", "app-password", "myapp"),
        ("readonly_user", "readonly-password", "myapp"),
        ("admin", "secure-admin-password", "analytics"),
    ] {
        server
            .connect_as(user, password, database)
            .await
            .unwrap_or_else(|e| panic!("{user} in {database}: {e}"));
    }
    assert!(server.connect_as("admin", "wrong", "myapp").await.is_err());

    let app_user = server
        .connect_as("app_user", "app-password", "myapp")
        .await
        .unwrap();
    app_user
        .batch_execute("CREATE TABLE orders (id int); INSERT INTO orders VALUES (1)")
        .await
        .unwrap();
    let admin = server
        .connect_as("admin", "secure-admin-password", "analytics")
        .await
        .unwrap();
    admin
        .batch_execute("CREATE TABLE events (id int)")
        .await
        .unwrap();

    let superuser = server.admin("analytics").await;
    let extensions = column(
        &superuser,
        "SELECT extname::text FROM pg_extension ORDER BY 1",
    )
    .await;
    assert!(
        extensions.contains(&"hstore".to_string())
            && extensions.contains(&"pg_stat_statements".to_string()),
        "{extensions:?}"
    );
    let owners = column(&superuser, "SELECT datname || '=' || pg_get_userbyid(datdba) FROM pg_database WHERE datname IN ('myapp', 'analytics') ORDER BY 1").await;
    assert_eq!(owners, ["analytics=analytics_admin", "myapp=myapp_admin"]);
    let replication = column(
        &superuser,
        "SELECT rolname::text FROM pg_roles WHERE rolreplication AND rolname = 'readonly_user'",
    )
    .await;
    assert_eq!(replication, ["readonly_user"]);
}

#[tokio::test]
async fn the_ha_example_and_all_six_seed_extensions_work() {
    let server = PostgresServer::start();
    let ha = desired(&spec_of(&support::example("ha.yaml")));
    server.superuser().reconcile(&ha).await.unwrap();
    server
        .connect_as("app_user", "app-password", "production")
        .await
        .unwrap();
    server
        .connect_as("monitoring_user", "monitoring-password", "production")
        .await
        .unwrap();
    let superuser = server.admin("production").await;
    let members = column(&superuser, "SELECT g.rolname || '>' || m.rolname FROM pg_auth_members a JOIN pg_roles g ON g.oid = a.roleid JOIN pg_roles m ON m.oid = a.member WHERE g.rolname LIKE 'production_%' ORDER BY 1").await;
    assert_eq!(
        members,
        [
            "production_admin>admin",
            "production_app>app_user",
            "production_monitoring>monitoring_user"
        ]
    );

    let all = spec_of(
        "apiVersion: apps.cozystack.io/v1alpha1\nkind: Postgres\nmetadata:\n  name: x\nspec:\n  databases:\n    ext:\n      extensions: [hstore, pg_stat_statements, pg_trgm, btree_gin, uuid-ossp, pgcrypto]\n",
    );
    server.superuser().reconcile(&desired(&all)).await.unwrap();
    let client = server.admin("ext").await;
    let installed = column(
        &client,
        "SELECT extname::text FROM pg_extension WHERE extname <> 'plpgsql' ORDER BY 1",
    )
    .await;
    assert_eq!(
        installed,
        [
            "btree_gin",
            "hstore",
            "pg_stat_statements",
            "pg_trgm",
            "pgcrypto",
            "uuid-ossp"
        ]
    );
    client
        .batch_execute(
            "SELECT gen_random_uuid(), uuid_generate_v4(), 'a=>1'::hstore, similarity('a', 'b')",
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn membership_follows_edits_and_removed_users_are_dropped_after_reassignment() {
    let server = PostgresServer::start();
    let before = spec_of(
        "apiVersion: apps.cozystack.io/v1alpha1\nkind: Postgres\nmetadata:\n  name: x\nspec:\n  users:\n    alice: {password: a}\n    bob: {password: b}\n  databases:\n    one:\n      roles:\n        admin: [alice, bob]\n    two:\n      roles:\n        admin: [bob]\n        readonly: [alice]\n",
    );
    server
        .superuser()
        .reconcile(&desired(&before))
        .await
        .unwrap();
    // bob owns objects in both databases.
    for database in ["one", "two"] {
        let bob = server.connect_as("bob", "b", database).await.unwrap();
        bob.batch_execute("CREATE TABLE owned_by_bob (id int)")
            .await
            .unwrap();
    }
    let after = spec_of(
        "apiVersion: apps.cozystack.io/v1alpha1\nkind: Postgres\nmetadata:\n  name: x\nspec:\n  users:\n    alice: {password: a}\n  databases:\n    one:\n      roles:\n        admin: [alice]\n    two:\n      roles:\n        admin: [alice]\n",
    );
    let report = server
        .superuser()
        .reconcile(&desired(&after))
        .await
        .unwrap();
    assert!(report.statements > 0);
    let superuser = server.admin("postgres").await;
    assert!(
        column(
            &superuser,
            "SELECT rolname::text FROM pg_roles WHERE rolname = 'bob'"
        )
        .await
        .is_empty()
    );
    // `two_readonly` stays (every database has one) but lost the member the list gave it.
    assert_eq!(
        column(
            &superuser,
            "SELECT rolname::text FROM pg_roles WHERE rolname IN ('one_readonly', 'two_readonly') ORDER BY 1"
        )
        .await,
        ["one_readonly", "two_readonly"]
    );
    let members = column(&superuser, "SELECT g.rolname || '>' || m.rolname FROM pg_auth_members a JOIN pg_roles g ON g.oid = a.roleid JOIN pg_roles m ON m.oid = a.member WHERE g.rolname ~ '^(one|two)_' ORDER BY 1").await;
    assert_eq!(members, ["one_admin>alice", "two_admin>alice"]);
    for database in ["one", "two"] {
        let client = server.admin(database).await;
        let owner = column(
            &client,
            "SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE relname = 'owned_by_bob'",
        )
        .await;
        assert_eq!(owner, [format!("{database}_admin")], "in {database}");
    }
    assert_eq!(
        server
            .superuser()
            .reconcile(&desired(&after))
            .await
            .unwrap()
            .statements,
        0
    );
}

#[tokio::test]
async fn hostile_names_and_injection_attempts_stay_inert() {
    let server = PostgresServer::start();
    let password = "it's \"quoted\"; DROP ROLE postgres; --\\";
    let spec = spec_of(&format!(
        "apiVersion: apps.cozystack.io/v1alpha1\nkind: Postgres\nmetadata:\n  name: x\nspec:\n  users:\n    Bad-User.1:\n      password: {}\n  databases:\n    \"My DB\\\"; DROP DATABASE postgres; --\":\n      roles:\n        admin: [Bad-User.1]\n",
        serde_json::to_string(password).unwrap()
    ));
    server.superuser().reconcile(&desired(&spec)).await.unwrap();
    let database = "My DB\"; DROP DATABASE postgres; --";
    let client = server
        .connect_as("Bad-User.1", password, database)
        .await
        .unwrap();
    client
        .batch_execute("CREATE TABLE t (id int)")
        .await
        .unwrap();
    let superuser = server.admin("postgres").await;
    let survivors = column(&superuser, "SELECT datname::text FROM pg_database WHERE datname = 'postgres' UNION ALL SELECT rolname::text FROM pg_roles WHERE rolname = 'postgres'").await;
    assert_eq!(survivors, ["postgres", "postgres"]);
    assert_eq!(
        server
            .superuser()
            .reconcile(&desired(&spec))
            .await
            .unwrap()
            .statements,
        0
    );
}

#[tokio::test]
async fn roles_created_by_hand_are_left_alone() {
    let server = PostgresServer::start();
    let superuser = server.admin("postgres").await;
    superuser
        .batch_execute("CREATE ROLE alice LOGIN PASSWORD 'mine'; CREATE ROLE legacy LOGIN")
        .await
        .unwrap();
    let spec = spec_of(
        "apiVersion: apps.cozystack.io/v1alpha1\nkind: Postgres\nmetadata:\n  name: x\nspec:\n  users:\n    alice: {password: theirs}\n",
    );
    let report = server.superuser().reconcile(&desired(&spec)).await.unwrap();
    assert_eq!(report.conflicts.len(), 1, "{report:?}");
    server
        .connect_as("alice", "mine", "postgres")
        .await
        .expect("the hand-made password is kept");
    assert_eq!(
        column(
            &superuser,
            "SELECT rolname::text FROM pg_roles WHERE rolname = 'legacy'"
        )
        .await,
        ["legacy"]
    );
}

#[tokio::test]
async fn readonly_reads_what_others_create_later_but_cannot_write() {
    let server = PostgresServer::start();
    let spec = spec_of(
        "apiVersion: apps.cozystack.io/v1alpha1\nkind: Postgres\nmetadata:\n  name: x\nspec:\n  users:\n    owner: {password: o}\n    writer: {password: w}\n    reader: {password: r}\n    watcher: {password: m}\n  databases:\n    shop:\n      roles:\n        admin: [owner]\n        readwrite: [writer]\n        readonly: [reader]\n        monitoring: [watcher]\n",
    );
    server.superuser().reconcile(&desired(&spec)).await.unwrap();
    // Objects created after provisioning, by two different users, in a new schema too.
    let owner = server.connect_as("owner", "o", "shop").await.unwrap();
    owner
        .batch_execute("CREATE TABLE items (id serial, name text); INSERT INTO items (name) VALUES ('a'); CREATE SCHEMA sales; CREATE TABLE sales.orders (id int); INSERT INTO sales.orders VALUES (7); CREATE FUNCTION answer() RETURNS int LANGUAGE sql AS 'SELECT 42'; CREATE TABLE notes (txt text)")
        .await
        .unwrap();
    let writer = server.connect_as("writer", "w", "shop").await.unwrap();
    writer.batch_execute("INSERT INTO items (name) VALUES ('b'); INSERT INTO notes VALUES ('n'); UPDATE sales.orders SET id = 7").await.unwrap();
    assert!(
        writer
            .batch_execute("CREATE TABLE mine (id int)")
            .await
            .is_err(),
        "readwrite changes data, not the schema"
    );

    let reader = server.connect_as("reader", "r", "shop").await.unwrap();
    let count: i64 = reader
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 2);
    let orders: i32 = reader
        .query_one("SELECT id FROM sales.orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(orders, 7);
    let notes: String = reader
        .query_one("SELECT txt FROM notes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(notes, "n");
    let answer: i32 = reader
        .query_one("SELECT answer()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(answer, 42);
    for write in [
        "INSERT INTO items (name) VALUES ('x')",
        "DELETE FROM notes",
        "CREATE TABLE mine (id int)",
        "UPDATE sales.orders SET id = 1",
    ] {
        let error = reader.batch_execute(write).await.unwrap_err();
        let message = error
            .as_db_error()
            .map(|e| e.message().to_string())
            .unwrap_or_default();
        assert!(message.contains("permission denied"), "{write}: {message}");
    }
    // Another kind only connects.
    let watcher = server.connect_as("watcher", "m", "shop").await.unwrap();
    assert!(watcher.batch_execute("SELECT * FROM items").await.is_err());
    // Nobody else may connect to the database.
    server
        .admin("postgres")
        .await
        .batch_execute("CREATE ROLE stranger LOGIN PASSWORD 's'")
        .await
        .unwrap();
    assert!(server.connect_as("stranger", "s", "shop").await.is_err());

    // Objects created by hand since are already covered: the next pass has nothing to do.
    let again = server.superuser().reconcile(&desired(&spec)).await.unwrap();
    assert_eq!(again.statements, 0, "{again:?}");
}
