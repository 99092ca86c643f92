//! Prometheus metrics of one instance, served on :9187.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// What the instance manager counts and observes.
pub struct InstanceMetrics {
    registry: Registry,
    pub postmaster_starts: Counter,
    pub restarts: Counter,
    pub sql_passes: Counter,
    pub sql_errors: Counter,
    pub sql_statements: Counter,
    pub config_reloads: Counter,
    pub restore_failures: Counter,
    pub config_rejections: Counter,
    pub up: Gauge,
    pub primary: Gauge,
    pub pending_restart: Gauge,
    pub replay_lag_bytes: Gauge,
    pub sync_standbys: Gauge,
    pub config_rejected: Gauge,
}

impl Default for InstanceMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("postgres_instance");
        let metrics = Self {
            postmaster_starts: Counter::default(),
            restarts: Counter::default(),
            sql_passes: Counter::default(),
            sql_errors: Counter::default(),
            sql_statements: Counter::default(),
            config_reloads: Counter::default(),
            restore_failures: Counter::default(),
            config_rejections: Counter::default(),
            up: Gauge::default(),
            primary: Gauge::default(),
            pending_restart: Gauge::default(),
            replay_lag_bytes: Gauge::default(),
            sync_standbys: Gauge::default(),
            config_rejected: Gauge::default(),
            registry: Registry::default(),
        };
        let counters = [
            (
                "postmaster_starts",
                "Postmaster starts, first one included",
                &metrics.postmaster_starts,
            ),
            (
                "restarts",
                "Restarts for settings that need one",
                &metrics.restarts,
            ),
            (
                "sql_passes",
                "Declarative SQL passes run",
                &metrics.sql_passes,
            ),
            (
                "sql_errors",
                "Declarative SQL passes that failed",
                &metrics.sql_errors,
            ),
            (
                "sql_statements",
                "Statements the declarative SQL executed",
                &metrics.sql_statements,
            ),
            (
                "config_reloads",
                "Configuration reloads after a change",
                &metrics.config_reloads,
            ),
            (
                "restore_failures",
                "Attempts of a bootstrap from backup that failed",
                &metrics.restore_failures,
            ),
            (
                "config_rejections",
                "Configurations PostgreSQL refused (not installed, or reverted)",
                &metrics.config_rejections,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        let gauges = [
            ("up", "1 when PostgreSQL answers", &metrics.up),
            (
                "primary",
                "1 on the primary, 0 on a standby",
                &metrics.primary,
            ),
            (
                "pending_restart",
                "Settings changed that wait for a restart",
                &metrics.pending_restart,
            ),
            (
                "replay_lag_bytes",
                "Standby: WAL received but not replayed yet",
                &metrics.replay_lag_bytes,
            ),
            (
                "sync_standbys",
                "Primary: standbys in the synchronous quorum list",
                &metrics.sync_standbys,
            ),
            (
                "config_rejected",
                "1 while the spec's configuration is refused and an older one runs",
                &metrics.config_rejected,
            ),
        ];
        for (name, help, gauge) in gauges {
            registry.register(name, help, gauge.clone());
        }
        Self {
            registry,
            ..metrics
        }
    }
}

impl InstanceMetrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

async fn metrics(State(metrics): State<Arc<InstanceMetrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}

/// The :9187 endpoint.
pub fn router(metrics: Arc<InstanceMetrics>) -> Router {
    Router::new()
        .route("/metrics", get(self::metrics))
        .with_state(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exposed_with_its_prefix() {
        let metrics = InstanceMetrics::default();
        metrics.sql_statements.inc_by(3);
        metrics.primary.set(1);
        let text = metrics.encode();
        assert!(
            text.contains("postgres_instance_sql_statements_total 3"),
            "{text}"
        );
        assert!(text.contains("postgres_instance_primary 1"), "{text}");
        for name in [
            "postmaster_starts",
            "restarts",
            "sql_errors",
            "config_reloads",
            "restore_failures",
            "pending_restart",
            "replay_lag_bytes",
            "sync_standbys",
            "config_rejections",
            "config_rejected",
            "up",
        ] {
            assert!(
                text.contains(&format!("postgres_instance_{name}")),
                "{name}"
            );
        }
    }
}
