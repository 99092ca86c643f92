//! Declarative SQL benchmark against a real PostgreSQL server: one full pass that
//! creates 100 users and 50 databases (each with admin, readwrite and readonly members
//! and an extension), then no-op passes on the settled catalog (target: < 100 ms),
//! both the frequent pass (roles, passwords, memberships, databases; one kept
//! connection) and the full pass that looks inside every database.
//!
//!   cargo bench --bench sql

#[path = "../tests/support/postgres.rs"]
#[allow(dead_code)]
mod postgres;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use postgres_operator::instance::provision::{Provisioner, Scope};
use postgres_operator::sql::DesiredState;
use postgres_operator::sql::plan::{DesiredDatabase, DesiredUser};

fn desired(users: usize, databases: usize) -> DesiredState {
    let mut state = DesiredState::default();
    for u in 0..users {
        state.users.insert(
            format!("user{u}"),
            DesiredUser {
                password: format!("password-{u}"),
                replication: false,
                superuser: false,
            },
        );
    }
    for d in 0..databases {
        let member = |offset: usize| format!("user{}", (d * 2 + offset) % users);
        state.databases.insert(
            format!("db{d}"),
            DesiredDatabase {
                roles: BTreeMap::from([
                    ("admin".to_string(), vec![member(0)]),
                    ("readwrite".to_string(), vec![member(1)]),
                    ("readonly".to_string(), vec![member(2), member(3)]),
                ]),
                extensions: vec!["hstore".to_string()],
            },
        );
    }
    state
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = postgres::PostgresServer::start();
    let connection = server.superuser();
    let state = desired(100, 50);
    runtime.block_on(async {
        // The instance manager's way: one Provisioner, connections kept between passes.
        let provisioner = Provisioner::new(connection.clone());
        let started = Instant::now();
        let first = provisioner.reconcile(&state).await.unwrap();
        let full = started.elapsed();
        let mut noop = Vec::new();
        for _ in 0..10 {
            let started = Instant::now();
            let report = provisioner
                .reconcile_scoped(&state, Scope::Cluster)
                .await
                .unwrap();
            noop.push(started.elapsed());
            assert_eq!(report.statements, 0, "a settled catalog needs no statement");
        }
        noop.sort();
        let started = Instant::now();
        let observed = provisioner.observe(&state).await.unwrap();
        let observe = started.elapsed();
        // The full pass, inside every database (one connection each).
        let mut fresh = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            let report = provisioner.reconcile(&state).await.unwrap();
            assert_eq!(report.statements, 0);
            fresh.push(started.elapsed());
        }
        fresh.sort();
        // What a bare connection to every database costs, for comparison.
        let started = Instant::now();
        for d in 0..50 {
            let mut config = tokio_postgres::Config::new();
            config
                .host(&connection.host)
                .port(connection.port)
                .user("postgres")
                .dbname(format!("db{d}"));
            let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
            let task = tokio::spawn(conn);
            client.simple_query("SELECT 1").await.unwrap();
            drop(client);
            let _ = task.await;
        }
        let connects = started.elapsed();
        let started = Instant::now();
        let _ = postgres_operator::sql::plan(&state, &observed, &mut || [0; 16]);
        let planning = started.elapsed();
        println!(
            "observe: {:.1} ms, plan: {:.1} ms",
            observe.as_secs_f64() * 1000.0,
            planning.as_secs_f64() * 1000.0
        );
        let median = noop[noop.len() / 2];
        let max: Duration = noop[noop.len() - 1];
        println!("users / databases:           100 / 50");
        println!(
            "full pass:                   {:.0} ms ({} statements)",
            full.as_secs_f64() * 1000.0,
            first.statements
        );
        println!(
            "no-op pass, roles/passwords/memberships/databases (median of 10): {:.1} ms",
            median.as_secs_f64() * 1000.0
        );
        println!(
            "no-op pass, roles/passwords/memberships/databases (max of 10):    {:.1} ms",
            max.as_secs_f64() * 1000.0
        );
        println!(
            "no-op full pass, inside all 50 databases (median of 5):           {:.1} ms",
            fresh[fresh.len() / 2].as_secs_f64() * 1000.0
        );
        println!(
            "baseline, 50 bare connections one after another: {:.1} ms",
            connects.as_secs_f64() * 1000.0
        );
    });
}
