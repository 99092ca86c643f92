//! PostgreSQL's own metrics, collected when scraped: one kept connection (statement
//! and lock timeouts set), results kept for a short while so that several scrapers do
//! not multiply the load, and concurrent scrapes waiting for one collection.

pub mod catalog;
mod queries;
pub mod volume;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio_postgres::Client;

use super::provision::{Connection, MAINTENANCE_DB};
use catalog::Kind;

/// One value of a metric of the catalog.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub metric: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

/// What the collector shows: the samples of the last collection.
#[derive(Clone, Debug, Default)]
struct Latest(Arc<Mutex<Arc<Vec<Sample>>>>);

impl Collector for Latest {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let samples = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for metric in catalog::METRICS {
            let mut of_metric = samples
                .iter()
                .filter(|s| s.metric == metric.name)
                .peekable();
            if of_metric.peek().is_none() {
                continue;
            }
            let kind = match metric.kind {
                Kind::Gauge => MetricType::Gauge,
                Kind::Counter => MetricType::Counter,
            };
            let mut family = encoder.encode_descriptor(metric.name, metric.help, None, kind)?;
            for sample in of_metric {
                let labels: Vec<(&str, &str)> = sample
                    .labels
                    .iter()
                    .map(|(k, v)| (*k, v.as_str()))
                    .collect();
                let sample_encoder = family.encode_family(&labels)?;
                match metric.kind {
                    Kind::Gauge => ConstGauge::new(sample.value).encode(sample_encoder)?,
                    Kind::Counter => ConstCounter::new(sample.value).encode(sample_encoder)?,
                }
            }
        }
        Ok(())
    }
}

/// The collection state: the kept client and when the samples were gathered.
#[derive(Default)]
struct State {
    client: Option<Client>,
    collected_at: Option<Instant>,
}

pub struct ServerMetrics {
    connection: Connection,
    data_dir: PathBuf,
    /// Samples younger than this are served again.
    keep_for: Duration,
    state: tokio::sync::Mutex<State>,
    latest: Latest,
    registry: Registry,
}

/// Bounds on what a collection may cost the server.
const STATEMENT_TIMEOUT_MS: u32 = 2_000;
const LOCK_TIMEOUT_MS: u32 = 500;
pub const APPLICATION_NAME: &str = "postgres-operator-metrics";

impl ServerMetrics {
    pub fn new(connection: Connection, data_dir: PathBuf, keep_for: Duration) -> Self {
        let latest = Latest::default();
        let mut registry = Registry::default();
        registry.register_collector(Box::new(latest.clone()));
        Self {
            connection,
            data_dir,
            keep_for,
            state: tokio::sync::Mutex::default(),
            latest,
            registry,
        }
    }

    /// Collects unless the last collection is recent; a scrape that arrives during a
    /// collection waits for it and shows its samples.
    pub async fn refresh(&self) {
        let mut state = self.state.lock().await;
        if state
            .collected_at
            .is_some_and(|at| at.elapsed() < self.keep_for)
        {
            return;
        }
        let started = Instant::now();
        let mut samples = Vec::new();
        let gathered = match self.client(&mut state).await {
            Ok(client) => Some(queries::gather(client).await),
            Err(error) => {
                tracing::debug!(%error, "metrics: cannot connect to PostgreSQL");
                state.client = None;
                None
            }
        };
        let up = gathered
            .as_ref()
            .is_some_and(|g| g.queries > 0 && !g.samples.is_empty());
        let (queries, errors) = match gathered {
            Some(g) => {
                samples.extend(g.samples);
                (g.queries, g.errors)
            }
            None => (0, Vec::new()),
        };
        if !errors.is_empty() {
            tracing::debug!(?errors, "metrics: queries failed");
        }
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        samples.push(sample(catalog::UP, flag(up)));
        samples.push(sample(
            catalog::SCRAPE_ERROR,
            flag(!up || !errors.is_empty()),
        ));
        samples.push(sample(catalog::SCRAPE_QUERIES, f64::from(queries)));
        match volume::of(&self.data_dir) {
            Ok(volume) => {
                // Bytes as f64: exact up to 8 PiB.
                samples.push(sample(catalog::VOLUME_SIZE, volume.size as f64));
                samples.push(sample(catalog::VOLUME_USED, volume.used as f64));
                samples.push(sample(catalog::VOLUME_FREE, volume.free as f64));
            }
            Err(error) => tracing::debug!(%error, "metrics: cannot stat the data directory"),
        }
        samples.push(sample(
            catalog::SCRAPE_DURATION,
            started.elapsed().as_secs_f64(),
        ));
        *self.latest.0.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(samples);
        state.collected_at = Some(Instant::now());
    }

    /// The kept client, connected again when it was closed (a restarted server).
    async fn client<'s>(&self, state: &'s mut State) -> Result<&'s Client, tokio_postgres::Error> {
        if state.client.as_ref().is_none_or(Client::is_closed) {
            let mut config = self.connection.config(MAINTENANCE_DB);
            config.application_name(APPLICATION_NAME).options(format!(
                "-c statement_timeout={STATEMENT_TIMEOUT_MS} -c lock_timeout={LOCK_TIMEOUT_MS}"
            ));
            state.client = Some(Connection::connect(&config).await?);
        }
        Ok(state.client.as_ref().expect("connected above"))
    }

    /// The samples of the last collection, as OpenMetrics text (ending with `# EOF`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    #[cfg(test)]
    fn set(&self, samples: Vec<Sample>) {
        *self.latest.0.lock().unwrap() = Arc::new(samples);
    }
}

fn sample(metric: &'static str, value: f64) -> Sample {
    Sample {
        metric,
        labels: Vec::new(),
        value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> ServerMetrics {
        let connection = Connection {
            host: "/nonexistent".to_string(),
            port: 1,
            user: "postgres".to_string(),
            password: None,
            hostaddr: None,
            verify_with: None,
        };
        ServerMetrics::new(connection, PathBuf::from("/"), Duration::from_secs(5))
    }

    #[test]
    fn samples_are_encoded_by_the_catalog_with_escaped_labels() {
        let server = metrics();
        server.set(vec![
            Sample {
                metric: catalog::COMMITS,
                labels: vec![("datname", "app \"db\"".to_string())],
                value: 42.0,
            },
            sample(catalog::UP, 1.0),
        ]);
        let text = server.encode();
        assert!(
            text.contains("# TYPE pg_database_xact_commit counter"),
            "{text}"
        );
        assert!(
            text.contains("pg_database_xact_commit_total{datname=\"app \\\"db\\\"\"} 42"),
            "{text}"
        );
        assert!(text.contains("pg_up 1"), "{text}");
        // Nothing for metrics without samples.
        assert!(!text.contains("pg_locks"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[tokio::test]
    async fn an_unreachable_server_shows_down_with_the_volume_still_measured() {
        let server = metrics();
        server.refresh().await;
        let text = server.encode();
        assert!(text.contains("pg_up 0"), "{text}");
        assert!(text.contains("pg_scrape_error 1"), "{text}");
        assert!(text.contains("pg_volume_size_bytes "), "{text}");
        assert!(!text.contains("pg_in_recovery"), "{text}");
    }
}
