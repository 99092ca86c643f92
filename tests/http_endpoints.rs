//! The operator's HTTP endpoints answer as probes and Prometheus expect.

use std::sync::atomic::Ordering;

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use postgres_operator::http::{Health, router};
use tower::ServiceExt;

async fn get(health: &Health, path: &str) -> (StatusCode, String) {
    let response = router(health.clone())
        .oneshot(Request::get(path).body(axum::body::Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn healthz_always_answers_and_readyz_waits_for_the_api_server() {
    let health = Health::default();
    assert_eq!(get(&health, "/healthz").await.0, StatusCode::OK);
    assert_eq!(
        get(&health, "/readyz").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    health.ready.store(true, Ordering::Relaxed);
    assert_eq!(get(&health, "/readyz").await.0, StatusCode::OK);
}

#[tokio::test]
async fn readyz_says_what_the_operator_waits_for() {
    let health = Health::default();
    health.ready.store(true, Ordering::Relaxed);
    health.wait_for(Some(
        "CustomResourceDefinition postgreses.apps.cozystack.io".into(),
    ));
    assert_eq!(
        get(&health, "/readyz").await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: waiting for CustomResourceDefinition postgreses.apps.cozystack.io".into()
        )
    );
    health.wait_for(None);
    assert_eq!(get(&health, "/readyz").await.0, StatusCode::OK);
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let health = Health::default();
    health.metrics.reconciles.inc();
    health.metrics.count_write("apply", "Service");
    let (status, body) = get(&health, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    for name in [
        "postgres_operator_reconciles_total 1",
        "postgres_operator_reconcile_errors_total",
        "postgres_operator_reconcile_duration_seconds_bucket",
        "postgres_operator_api_writes_total{verb=\"apply\",kind=\"Service\"} 1",
        "# EOF",
    ] {
        assert!(body.contains(name), "{name} missing:\n{body}");
    }
    assert_eq!(get(&health, "/nope").await.0, StatusCode::NOT_FOUND);
}
