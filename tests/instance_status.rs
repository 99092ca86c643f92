//! The instance endpoints on real servers: a primary and a streaming standby cloned from
//! it with pg_basebackup; a row written on the primary appears on the standby.

mod support;

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres_operator::instance::config_guard::RejectionReport;
use postgres_operator::instance::kept_client::{KeptClient, KeptError};
use postgres_operator::instance::provision::Connection;
use postgres_operator::instance::status::{Hold, router};
use serde_json::Value;
use support::postgres::PostgresServer;
use tower::ServiceExt;

fn kept(connection: Connection) -> KeptClient {
    KeptClient::new(Arc::new(connection))
}

async fn get(server: &PostgresServer, path: &str) -> (StatusCode, String) {
    get_held(server, &Hold::default(), path).await
}

async fn get_held(server: &PostgresServer, hold: &Hold, path: &str) -> (StatusCode, String) {
    let response = router(
        kept(server.superuser()),
        hold.clone(),
        RejectionReport::default(),
    )
    .oneshot(Request::get(path).body(axum::body::Body::empty()).unwrap())
    .await
    .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn a_primary_and_its_streaming_standby_report_their_roles() {
    let primary = PostgresServer::start();
    assert_eq!(get(&primary, "/healthz").await.0, StatusCode::OK);
    assert_eq!(get(&primary, "/readyz").await.0, StatusCode::OK);
    let (code, body) = get(&primary, "/status").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["role"], "primary");
    assert_eq!(status["timeline"], 1);
    assert!(status["receivedLsn"].as_str().unwrap().contains('/'));
    assert!(
        status["version"]
            .as_str()
            .unwrap()
            .starts_with(char::is_numeric)
    );
    assert_eq!(status["pendingRestart"], Value::Array(vec![]));

    let standby = primary.start_standby("postgres-demo-1");
    let writer = primary.admin("postgres").await;
    writer
        .batch_execute(
            "CREATE TABLE replicated (v text); INSERT INTO replicated VALUES ('from the primary')",
        )
        .await
        .unwrap();
    let reader = standby.admin("postgres").await;
    let mut seen = None;
    for _ in 0..200 {
        if let Ok(row) = reader.query_one("SELECT v FROM replicated", &[]).await {
            seen = Some(row.get::<_, String>(0));
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        seen.as_deref(),
        Some("from the primary"),
        "the row reaches the standby"
    );

    let (code, body) = get(&standby, "/status").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["role"], "standby");
    assert_eq!(status["streaming"], true);
    assert!(status["replayedLsn"].is_string());
    assert_eq!(get(&standby, "/readyz").await.0, StatusCode::OK);

    let primary_status: Value = serde_json::from_str(&get(&primary, "/status").await.1).unwrap();
    assert_eq!(
        primary_status["replicas"][0]["applicationName"],
        "postgres-demo-1"
    );
    assert_eq!(primary_status["replicas"][0]["syncState"], "async");

    // A restart-only setting changed in the configuration is reported.
    writer
        .batch_execute("ALTER SYSTEM SET max_connections = 150")
        .await
        .unwrap();
    writer
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    let mut pending = Value::Null;
    for _ in 0..100 {
        pending = serde_json::from_str::<Value>(&get(&primary, "/status").await.1).unwrap()["pendingRestart"].clone();
        if pending != Value::Array(vec![]) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(pending, serde_json::json!(["max_connections"]));
}

#[tokio::test]
async fn a_stopped_server_is_neither_healthy_nor_ready() {
    let server = PostgresServer::start();
    let connection = server.superuser();
    drop(server);
    let response = router(
        kept(connection),
        Hold::default(),
        RejectionReport::default(),
    )
    .oneshot(
        Request::get("/healthz")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_held_instance_is_healthy_but_not_ready_and_says_why() {
    let server = PostgresServer::start();
    let hold = Hold::new("restoring from backup run 20261125T030000Z of cluster old");
    assert_eq!(get_held(&server, &hold, "/healthz").await.0, StatusCode::OK);
    let (code, body) = get_held(&server, &hold, "/readyz").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        body,
        "restoring from backup run 20261125T030000Z of cluster old"
    );
    let status: Value = serde_json::from_str(&get_held(&server, &hold, "/status").await.1).unwrap();
    assert_eq!(
        status["held"],
        "restoring from backup run 20261125T030000Z of cluster old"
    );
    hold.release();
    assert_eq!(get_held(&server, &hold, "/readyz").await.0, StatusCode::OK);
    let status: Value = serde_json::from_str(&get_held(&server, &hold, "/status").await.1).unwrap();
    assert!(status.get("held").is_none(), "{status}");
}

#[tokio::test]
async fn probes_share_one_kept_connection_and_open_another_when_it_is_cut() {
    let server = PostgresServer::start();
    let endpoints = router(
        kept(server.superuser()),
        Hold::default(),
        RejectionReport::default(),
    );
    let probe = |path: &'static str| {
        let endpoints = endpoints.clone();
        async move {
            endpoints
                .oneshot(Request::get(path).body(axum::body::Body::empty()).unwrap())
                .await
                .unwrap()
                .status()
        }
    };
    let admin = server.superuser().client("postgres").await.unwrap();
    let backends = async || {
        admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    for path in ["/healthz", "/readyz", "/status", "/healthz", "/readyz"] {
        assert_eq!(probe(path).await, StatusCode::OK, "{path}");
    }
    assert_eq!(backends().await, 1, "one session for every probe");
    admin
        .batch_execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
        )
        .await
        .unwrap();
    // The cut is seen at the latest by the next read, which drops the connection.
    let mut answers = Vec::new();
    for _ in 0..2 {
        answers.push(probe("/healthz").await);
    }
    assert_eq!(answers.last(), Some(&StatusCode::OK), "{answers:?}");
    assert_eq!(backends().await, 1);
}

#[tokio::test]
async fn a_read_waiting_for_its_turn_gives_up_at_its_deadline() {
    let server = PostgresServer::start();
    let kept = kept(server.superuser());
    let slow = {
        let kept = kept.clone();
        tokio::spawn(async move {
            kept.read(Duration::from_secs(20), async |client| {
                client.simple_query("SELECT pg_sleep(3)").await.map(drop)
            })
            .await
        })
    };
    // The slow read holds the connection now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let waited = kept
        .read(Duration::from_millis(200), async |client| {
            client.simple_query("SELECT 1").await.map(drop)
        })
        .await;
    assert!(matches!(waited, Err(KeptError::Timeout(_))), "{waited:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "it waited {:?} for the slow read",
        started.elapsed()
    );
    assert!(slow.await.unwrap().is_ok());
}
