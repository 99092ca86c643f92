//! The metric names (and their labels) a scrape of an instance (:9187) or of the operator
//! (:8080) shows, from the code that exports them: the PostgreSQL catalog, the instance
//! manager's registry and the operator's. Shared by the tests of what names metrics: the
//! alerts (`tests/alerts.rs`) and the Grafana dashboards (`tests/dashboards.rs`).

use std::collections::{BTreeMap, BTreeSet};

use postgres_operator::instance::metrics::InstanceMetrics;
use postgres_operator::instance::server_metrics::catalog::METRICS;
use postgres_operator::metrics::Metrics;

/// The prefixes of our metrics: a word of a query that starts with one names a metric.
pub const PREFIXES: [&str; 3] = ["pg_", "postgres_instance_", "postgres_operator_"];

/// The labels every Kubernetes scrape configuration (ServiceMonitor, PodMonitor,
/// `kubernetes_sd_configs`) attaches to a target's samples, whatever the metric.
pub const TARGET_LABELS: [&str; 7] = [
    "namespace",
    "pod",
    "instance",
    "job",
    "container",
    "service",
    "endpoint",
];

/// Names a scrape shows for an OpenMetrics text: the families' (a counter with its
/// `_total`, a histogram with its series) and the samples'.
pub fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            match kind {
                "counter" => {
                    names.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
                _ => {
                    names.insert(name.to_string());
                }
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// The label names each sample name of an OpenMetrics text carries.
pub fn exported_labels(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut labels: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let names = labels.entry(line[..end].to_string()).or_default();
        if let Some(set) = line[end..]
            .strip_prefix('{')
            .and_then(|rest| rest.split_once('}'))
            .map(|(set, _)| set)
        {
            // Label values of our metrics hold neither `,` nor `=`.
            for pair in set.split(',').filter(|p| !p.is_empty()) {
                let (name, _) = pair.split_once('=').unwrap();
                names.insert(name.to_string());
            }
        }
    }
    labels
}

/// The operator's metrics once its families by cluster have a sample: a family with
/// labels shows nothing before its first sample.
fn operator_by_cluster() -> Metrics {
    let operator = Metrics::default();
    // A family by cluster shows once it has a cluster.
    operator.count_failover("ns", "db", 1.0);
    operator.count_backup_failure("uid", "ns", "db");
    operator.set_backup_freshness("ns", "db", Some((1.0, 86_400)));
    operator
}

/// Every metric name an instance or the operator exports, the operator's families by
/// cluster included (what the alerts are checked against).
pub fn known() -> BTreeSet<String> {
    let mut known: BTreeSet<String> = METRICS.iter().map(|m| m.exposed_name()).collect();
    known.extend(exported(&InstanceMetrics::default().encode()));
    known.extend(exported(&operator_by_cluster().encode()));
    known
}

/// Every metric name an instance or the operator exports, with the labels of its
/// samples: the catalog's for PostgreSQL's, those of the encoded text for the manager's
/// and the operator's, every operator family sampled (those by verb and kind, and by
/// readiness, too). Target labels ([`TARGET_LABELS`]) are not included.
pub fn known_labels() -> BTreeMap<String, BTreeSet<String>> {
    let operator = operator_by_cluster();
    operator.count_write("apply", "Secret");
    operator.set_cluster_ready("ns/db", Some(true));
    let operator = operator.encode();
    let instance = InstanceMetrics::default().encode();
    let mut known: BTreeMap<String, BTreeSet<String>> = known()
        .into_iter()
        .chain(exported(&operator))
        .map(|name| (name, BTreeSet::new()))
        .collect();
    for text in [instance, operator] {
        for (name, labels) in exported_labels(&text) {
            known.entry(name).or_default().extend(labels);
        }
    }
    for metric in METRICS {
        known
            .entry(metric.exposed_name())
            .or_default()
            .extend(metric.labels.iter().map(|l| l.to_string()));
    }
    known
}

/// The words of a PromQL text that name one of our metrics (by [`PREFIXES`]), in order,
/// repeats included.
pub fn named(expr: &str) -> Vec<&str> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| PREFIXES.iter().any(|p| w.starts_with(p)))
        .collect()
}
