//! Prometheus metrics of the operator, served on `/metrics`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub verb: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub namespace: String,
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadyLabels {
    pub ready: String,
}

/// Every metric the controller updates.
pub struct Metrics {
    registry: Registry,
    pub reconciles: Counter,
    pub reconcile_errors: Counter,
    pub reconcile_duration: Histogram,
    pub api_writes: Family<WriteLabels, Counter>,
    clusters: Family<ReadyLabels, Gauge>,
    backup_failures: Family<ClusterLabels, Counter>,
    failovers: Family<ClusterLabels, Counter>,
    last_failover_seconds: Family<
        ClusterLabels,
        prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>,
    >,
    backup_last_success: Family<
        ClusterLabels,
        prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>,
    >,
    backup_interval: Family<ClusterLabels, Gauge>,
    /// Failed backup records already counted (by uid), so each failure counts once.
    failed_backups: Mutex<std::collections::BTreeSet<String>>,
    /// Readiness of every managed cluster, by namespace/name, to keep the gauge exact.
    readiness: Mutex<BTreeMap<String, bool>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("postgres_operator");
        let reconciles = Counter::default();
        let reconcile_errors = Counter::default();
        // 1 ms to ~16 s, two buckets per doubling: fine enough to tell a p99 of 100 ms
        // from one of 128 ms.
        let reconcile_duration =
            Histogram::new(exponential_buckets(0.001, std::f64::consts::SQRT_2, 29));
        let api_writes = Family::<WriteLabels, Counter>::default();
        let clusters = Family::<ReadyLabels, Gauge>::default();
        let backup_failures = Family::<ClusterLabels, Counter>::default();
        let failovers = Family::<ClusterLabels, Counter>::default();
        let last_failover_seconds = Family::default();
        let backup_last_success = Family::default();
        let backup_interval = Family::<ClusterLabels, Gauge>::default();
        registry.register(
            "backup_last_success_timestamp_seconds",
            "When the last successful backup of a cluster ended (Unix time; the time backups were enabled while none has)",
            backup_last_success.clone(),
        );
        registry.register(
            "backup_interval_seconds",
            "The longest time between two scheduled backups of a cluster",
            backup_interval.clone(),
        );
        registry.register(
            "failovers",
            "Automatic failovers completed, by cluster",
            failovers.clone(),
        );
        registry.register(
            "last_failover_seconds",
            "How long the last failover of a cluster took, from the first sign of the primary's loss to the new primary taking writes",
            last_failover_seconds.clone(),
        );
        registry.register(
            "backup_failures",
            "Backup runs that ended Failed, by cluster",
            backup_failures.clone(),
        );
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed and will be retried",
            reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of a reconcile",
            reconcile_duration.clone(),
        );
        registry.register(
            "api_writes",
            "Writes to the Kubernetes API, by verb and kind",
            api_writes.clone(),
        );
        registry.register(
            "managed_clusters",
            "Postgres clusters managed, by readiness",
            clusters.clone(),
        );
        Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            api_writes,
            clusters,
            backup_failures,
            failovers,
            last_failover_seconds,
            backup_last_success,
            backup_interval,
            failed_backups: Mutex::new(Default::default()),
            readiness: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Metrics {
    pub fn count_write(&self, verb: &str, kind: &str) {
        self.api_writes
            .get_or_create(&WriteLabels {
                verb: verb.to_string(),
                kind: kind.to_string(),
            })
            .inc();
    }

    /// Counts a failed backup record once; returns whether it was new.
    pub fn count_backup_failure(&self, uid: &str, namespace: &str, cluster: &str) -> bool {
        let Ok(mut seen) = self.failed_backups.lock() else {
            return false;
        };
        if !seen.insert(uid.to_string()) {
            return false;
        }
        self.backup_failures
            .get_or_create(&ClusterLabels {
                namespace: namespace.to_string(),
                cluster: cluster.to_string(),
            })
            .inc();
        true
    }

    /// Counts a completed failover of `namespace/cluster` and how long it took.
    pub fn count_failover(&self, namespace: &str, cluster: &str, seconds: f64) {
        let labels = ClusterLabels {
            namespace: namespace.to_string(),
            cluster: cluster.to_string(),
        };
        self.failovers.get_or_create(&labels).inc();
        self.last_failover_seconds
            .get_or_create(&labels)
            .set(seconds);
    }

    /// Records how fresh the backups of `namespace/cluster` are: when the last
    /// successful one ended and the longest time between two scheduled runs (`None`
    /// when backups are off or the cluster is gone).
    pub fn set_backup_freshness(&self, namespace: &str, cluster: &str, fresh: Option<(f64, i64)>) {
        let labels = ClusterLabels {
            namespace: namespace.to_string(),
            cluster: cluster.to_string(),
        };
        match fresh {
            Some((last_success, interval)) => {
                self.backup_last_success
                    .get_or_create(&labels)
                    .set(last_success);
                self.backup_interval.get_or_create(&labels).set(interval);
            }
            None => {
                self.backup_last_success.remove(&labels);
                self.backup_interval.remove(&labels);
            }
        }
    }

    /// Total writes so far (all verbs and kinds).
    pub fn total_writes(&self) -> u64 {
        let text = self.encode();
        text.lines()
            .filter(|l| l.starts_with("postgres_operator_api_writes_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// Records a cluster's readiness (`None` when it is gone).
    pub fn set_cluster_ready(&self, key: &str, ready: Option<bool>) {
        let Ok(mut readiness) = self.readiness.lock() else {
            return;
        };
        let previous = match ready {
            Some(ready) => readiness.insert(key.to_string(), ready),
            None => readiness.remove(key),
        };
        // Moved between the two gauges, not recounted: every reconcile records its
        // cluster, and a count would cost as much as there are clusters.
        if previous == ready {
            return;
        }
        if let Some(previous) = previous {
            self.readiness_gauge(previous).dec();
        }
        if let Some(ready) = ready {
            self.readiness_gauge(ready).inc();
        }
    }

    fn readiness_gauge(&self, ready: bool) -> Gauge {
        self.clusters
            .get_or_create(&ReadyLabels {
                ready: ready.to_string(),
            })
            .clone()
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_every_metric() {
        let metrics = Metrics::default();
        metrics.reconciles.inc();
        metrics.count_write("apply", "Secret");
        metrics.count_write("apply", "Secret");
        metrics.set_cluster_ready("ns/a", Some(true));
        metrics.set_cluster_ready("ns/b", Some(false));
        metrics.reconcile_duration.observe(0.01);
        let text = metrics.encode();
        assert!(
            text.contains("postgres_operator_reconciles_total 1"),
            "{text}"
        );
        assert!(
            text.contains("postgres_operator_api_writes_total{verb=\"apply\",kind=\"Secret\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("postgres_operator_managed_clusters{ready=\"true\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("postgres_operator_reconcile_duration_seconds_bucket"),
            "{text}"
        );
        assert_eq!(metrics.total_writes(), 2);
        metrics.set_cluster_ready("ns/b", None);
        assert!(
            metrics
                .encode()
                .contains("postgres_operator_managed_clusters{ready=\"false\"} 0")
        );
    }
}
