//! The operator's HTTP endpoints: `/healthz` (the process serves), `/readyz` (it has
//! reached the API server and is not waiting for anything, such as its CRDs), `/metrics`
//! (Prometheus text).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

/// What the endpoints report.
#[derive(Clone, Default)]
pub struct Health {
    pub metrics: Arc<Metrics>,
    pub ready: Arc<AtomicBool>,
    /// What the operator waits for before it can work, said by `/readyz`.
    pub waiting_for: Arc<Mutex<Option<String>>>,
}

impl Health {
    /// Records what the operator now waits for (`None`: nothing).
    pub fn wait_for(&self, what: Option<String>) {
        if let Ok(mut waiting) = self.waiting_for.lock() {
            *waiting = what;
        }
    }
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(health): State<Health>) -> impl IntoResponse {
    let waiting = health.waiting_for.lock().ok().and_then(|w| w.clone());
    match (health.ready.load(Ordering::Relaxed), waiting) {
        (false, _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: connecting to the API server".to_string(),
        ),
        (true, Some(what)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: waiting for {what}"),
        ),
        (true, None) => (StatusCode::OK, "ready".to_string()),
    }
}

async fn metrics(State(health): State<Health>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        health.metrics.encode(),
    )
}

pub fn router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health)
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    address: SocketAddr,
    health: Health,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    axum::serve(listener, router(health))
        .with_graceful_shutdown(shutdown)
        .await
}
