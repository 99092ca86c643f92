//! PostgreSQL's metrics as a real instance manager serves them, from a real primary and
//! its streaming standby, parsed by a real OpenMetrics parser and held to the catalog
//! that `docs/metrics.md` is generated from.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use postgres_operator::instance::server_metrics::catalog::{self, Kind, METRICS, Scope};
use support::failover::HaCluster;
use support::instance::Instance;
use support::validators::{ParsedFamily, parse_openmetrics};
use support::wait_until;

const DATABASES: usize = 50;

async fn scrape(instance: &Instance) -> Families {
    let text = instance.metrics().await;
    let families = parse_openmetrics(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    families.into_iter().map(|f| (f.name.clone(), f)).collect()
}

type Families = BTreeMap<String, ParsedFamily>;

/// Scrapes `instance` until `check` holds of a scrape (the cache serves an earlier
/// collection for a few seconds); that scrape.
async fn scrape_until(
    instance: &Instance,
    what: &str,
    check: impl Fn(&Families) -> bool,
) -> Families {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let families = scrape(instance).await;
        if check(&families) {
            return families;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {families:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn value(families: &Families, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let metric = catalog::find(name).unwrap();
    families.get(metric.name)?.samples.iter().find_map(|s| {
        labels
            .iter()
            .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            .then_some(s.value)
    })
}

/// Every catalog metric of `role` is there with exactly its documented labels and type,
/// and no `pg_` metric outside the catalog is.
fn check_against_catalog(families: &Families, role: Scope) {
    for metric in METRICS {
        if metric.scope != Scope::Every && metric.scope != role {
            assert!(
                !families.contains_key(metric.name),
                "{} is not for a {role:?}",
                metric.name
            );
            continue;
        }
        let family = families
            .get(metric.name)
            .unwrap_or_else(|| panic!("{} missing on the {role:?}", metric.name));
        let kind = match metric.kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        assert_eq!(family.kind, kind, "{}", metric.name);
        let documented: BTreeSet<&str> = metric.labels.iter().copied().collect();
        for sample in &family.samples {
            assert_eq!(sample.name, metric.exposed_name());
            let labels: BTreeSet<&str> = sample.labels.keys().map(String::as_str).collect();
            assert_eq!(labels, documented, "{}", metric.name);
        }
    }
    for name in families.keys().filter(|n| n.starts_with("pg_")) {
        assert!(
            catalog::find(name).is_some(),
            "{name} is not in the catalog"
        );
    }
    assert!(families.contains_key("postgres_instance_up"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_and_a_standby_export_every_documented_metric_at_a_bounded_cost() {
    let cluster = HaCluster::start(
        "mtr",
        2,
        "  replicas: 2\n  quorum: {minSyncReplicas: 0, maxSyncReplicas: 1}\n",
    )
    .await;
    let (primary, standby) = (&cluster.instances[0], &cluster.instances[1]);
    wait_until("the standby streams", 60, || async {
        cluster.streams_from(1, &primary.pod).await
    })
    .await;

    // Load: fifty databases, writes, a session idle in a transaction holding a lock.
    let admin = primary.admin("postgres").await;
    for index in 0..DATABASES {
        admin
            .batch_execute(&format!("CREATE DATABASE load_{index}"))
            .await
            .unwrap();
    }
    admin
        .batch_execute("CREATE TABLE filler AS SELECT generate_series(1, 20000) AS n")
        .await
        .unwrap();
    let idle = primary.admin("load_0").await;
    idle.batch_execute(
        "BEGIN; CREATE TABLE held (x int); LOCK TABLE held IN ACCESS EXCLUSIVE MODE",
    )
    .await
    .unwrap();
    let idle_since = Instant::now();

    // The cache serves an earlier collection for a few seconds: wait for one that
    // sees the load and the standby.
    let families = scrape_until(primary, "a collection that sees the load", |families| {
        value(families, catalog::DATABASE_SIZE, &[("datname", "load_49")]).is_some()
            && value(
                families,
                catalog::REPLICATION_SYNC,
                &[("standby", &standby.pod)],
            )
            .is_some()
            && value(families, catalog::OLDEST_IDLE_IN_XACT, &[]).is_some_and(|v| v > 0.0)
    })
    .await;
    check_against_catalog(&families, Scope::Primary);
    let databases = families[catalog::DATABASE_SIZE].samples.len();
    assert_eq!(databases, DATABASES + 1, "the load's and postgres");
    assert_eq!(value(&families, catalog::IN_RECOVERY, &[]), Some(0.0));
    assert_eq!(value(&families, catalog::UP, &[]), Some(1.0));
    assert_eq!(value(&families, catalog::SCRAPE_ERROR, &[]), Some(0.0));
    assert!(
        value(
            &families,
            catalog::CONNECTIONS,
            &[("datname", "load_0"), ("state", "idle in transaction")]
        )
        .is_some_and(|v| v >= 1.0)
    );
    assert!(
        value(
            &families,
            catalog::LOCKS,
            &[("mode", "AccessExclusiveLock")]
        )
        .is_some_and(|v| v >= 1.0)
    );
    assert!(
        value(&families, catalog::OLDEST_IDLE_IN_XACT, &[]).unwrap()
            <= idle_since.elapsed().as_secs_f64() + 1.0
    );
    for stage in ["write", "flush", "replay"] {
        let labels = [("standby", standby.pod.as_str()), ("stage", stage)];
        assert!(
            value(&families, catalog::REPLICATION_LAG_BYTES, &labels).is_some_and(|v| v >= 0.0)
        );
        assert!(value(&families, catalog::REPLICATION_LAG_SECONDS, &labels).is_some());
    }
    assert!(value(&families, catalog::WAL_WRITTEN, &[]).is_some_and(|v| v > 0.0));
    assert!(
        value(&families, catalog::COMMITS, &[("datname", "postgres")]).is_some_and(|v| v > 0.0)
    );
    let slot = "postgres_mtr_1";
    assert_eq!(
        value(&families, catalog::SLOT_ACTIVE, &[("slot", slot)]),
        Some(1.0)
    );
    let size = value(&families, catalog::VOLUME_SIZE, &[]).unwrap();
    let used = value(&families, catalog::VOLUME_USED, &[]).unwrap();
    let free = value(&families, catalog::VOLUME_FREE, &[]).unwrap();
    assert!(size > 0.0 && used > 0.0 && free > 0.0 && used + free <= size);
    let queries = value(&families, catalog::SCRAPE_QUERIES, &[]).unwrap();
    let took = value(&families, catalog::SCRAPE_DURATION, &[]).unwrap();
    eprintln!(
        "primary with {DATABASES} databases under load: one collection ran {queries} queries in {:.1} ms",
        took * 1000.0
    );
    assert!(queries <= 8.0, "{queries} queries per collection");

    // Two scrapes close together share one collection, over one kept connection.
    let first = scrape(primary).await;
    let second = scrape(primary).await;
    assert_eq!(
        value(&first, catalog::SCRAPE_DURATION, &[]),
        value(&second, catalog::SCRAPE_DURATION, &[])
    );
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    let _ = scrape(primary).await;
    let kept: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&postgres_operator::instance::server_metrics::APPLICATION_NAME],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 1, "one connection for metrics");

    // The standby: its own receive and replay figures, nothing of a primary's.
    let families = scrape_until(
        standby,
        "the standby's collection to see it streaming",
        |families| value(families, catalog::STANDBY_RECEIVING, &[]) == Some(1.0),
    )
    .await;
    check_against_catalog(&families, Scope::Standby);
    assert_eq!(value(&families, catalog::IN_RECOVERY, &[]), Some(1.0));
    assert!(value(&families, catalog::STANDBY_REPLAY_LAG_BYTES, &[]).is_some_and(|v| v >= 0.0));
    drop(idle);
}

/// `docs/metrics.md` is what the code generates.
#[test]
fn the_metrics_reference_is_up_to_date() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/metrics.md");
    let written = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        written == postgres_operator::instance::metrics::reference(),
        "docs/metrics.md is stale: cargo run -- metrics-reference > docs/metrics.md"
    );
}
