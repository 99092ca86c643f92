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

use super::server_metrics::ServerMetrics;

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
    pub min_sync_replicas: Gauge,
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
            min_sync_replicas: Gauge::default(),
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
                "min_sync_replicas",
                "Primary: the spec's quorum.minSyncReplicas",
                &metrics.min_sync_replicas,
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

type Sources = (Arc<InstanceMetrics>, Arc<ServerMetrics>);

/// The reference of every metric on :9187, in Markdown: PostgreSQL's from the
/// catalog the collector follows, the manager's from its registry.
pub fn reference() -> String {
    let mut out = String::from(
        "# Instance metrics\n\n\
         Generated by `postgres-operator metrics-reference` from the code; a test fails when \
         this file is stale.\n\n\
         Every instance serves them on `:9187/metrics` (OpenMetrics text). PostgreSQL's are \
         collected when scraped, over one kept connection (`statement_timeout` 2 s, \
         `lock_timeout` 0.5 s, `application_name` `postgres-operator-metrics`), and served \
         again to scrapes within `--metrics-cache-seconds` (5 s). Label values are bounded: \
         databases, lock modes, connection states, standbys and slots of the cluster.\n\n\
         ## PostgreSQL\n\n",
    );
    out.push_str(&super::server_metrics::catalog::markdown());
    out.push_str("\n## The instance manager\n\n| metric | type | meaning |\n|---|---|---|\n");
    let text = InstanceMetrics::default().encode();
    let mut help = std::collections::BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ")
            && let Some((name, meaning)) = rest.split_once(' ')
        {
            help.insert(name.to_string(), meaning.to_string());
        }
    }
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, kind)) = rest.split_once(' ')
        {
            let exposed = if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            let meaning = help.get(name).map(String::as_str).unwrap_or_default();
            out.push_str(&format!("| `{exposed}` | {kind} | {meaning} |\n"));
        }
    }
    out
}

async fn metrics(State((instance, server)): State<Sources>) -> impl IntoResponse {
    server.refresh().await;
    // One document: the server's families, then the manager's and their `# EOF`.
    let server_text = server.encode();
    let mut text = server_text
        .strip_suffix("# EOF\n")
        .unwrap_or(&server_text)
        .to_string();
    text.push_str(&instance.encode());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}

/// The :9187 endpoint: PostgreSQL's metrics (collected when scraped) and the
/// manager's own.
pub fn router(instance: Arc<InstanceMetrics>, server: Arc<ServerMetrics>) -> Router {
    Router::new()
        .route("/metrics", get(self::metrics))
        .with_state((instance, server))
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
            "min_sync_replicas",
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
