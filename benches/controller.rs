//! Controller benchmark: N Postgres objects (default 1,000) in the in-memory API double,
//! served over HTTP to a separate `postgres-operator controller` process, so the
//! figures are the operator's own: time to reconcile every cluster, reconcile latency
//! quantiles, API writes per settled reconcile (must be 0) and peak RSS.
//!
//!   cargo bench --bench controller            # BENCH_CLUSTERS=200 for a quick run

#[path = "../tests/support/apiserver.rs"]
#[allow(dead_code)]
mod apiserver;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apiserver::ApiServer;
use serde_json::json;

const NAMESPACES: usize = 10;
const POSTGRES: &str = "apps.cozystack.io/postgreses";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scrape(address: SocketAddr) -> String {
    let Ok(mut stream) = TcpStream::connect(address) else {
        return String::new();
    };
    let _ = write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    );
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Quantile from the cumulative histogram buckets (upper bound of the bucket).
fn quantile(text: &str, q: f64) -> f64 {
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with("postgres_operator_reconcile_duration_seconds_bucket{le=\""))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((bound, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    let total = buckets.last().map(|b| b.1).unwrap_or(0.0);
    buckets
        .iter()
        .find(|(_, count)| *count >= q * total)
        .map(|b| b.0)
        .unwrap_or(f64::NAN)
}

fn peak_rss_mib(child: &Child) -> f64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

fn settled(server: &ApiServer, clusters: usize) -> usize {
    (0..NAMESPACES)
        .flat_map(|ns| server.list(POSTGRES, &format!("tenant-{ns}")))
        .filter(|pg| pg["status"]["observedGeneration"].is_number())
        .count()
        .min(clusters)
}

fn main() {
    let clusters: usize = std::env::var("BENCH_CLUSTERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = ApiServer::new();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let api_address = listener.local_addr().unwrap();
    runtime.spawn(server.clone().serve_http(listener));

    let complete: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string("examples/complete.yaml").unwrap()).unwrap();
    for i in 0..clusters {
        let spec = if i % 2 == 0 {
            complete["spec"].clone()
        } else {
            json!({"replicas": 2})
        };
        let ns = format!("tenant-{}", i % NAMESPACES);
        server.put(
            POSTGRES,
            &ns,
            json!({"apiVersion": "apps.cozystack.io/v1alpha1", "kind": "Postgres",
            "metadata": {"name": format!("pg-{i}"), "namespace": ns}, "spec": spec}),
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, ApiServer::kubeconfig(api_address)).unwrap();
    let metrics_address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let resync = 5;
    let started = Instant::now();
    let mut operator = Command::new(env!("CARGO_BIN_EXE_postgres-operator"))
        .args([
            "controller",
            "--leader-election",
            "false",
            "--log-format",
            "text",
        ])
        .args([
            "--http-address",
            &metrics_address.to_string(),
            "--resync-seconds",
            &resync.to_string(),
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();

    while settled(&server, clusters) < clusters {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "not settled after 10 minutes"
        );
        assert!(
            operator.try_wait().unwrap().is_none(),
            "the operator exited"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let all_reconciled = started.elapsed();
    let first_pass = scrape(metrics_address);

    // Settled: the next resync rounds must not write.
    std::thread::sleep(Duration::from_secs(2));
    let writes_before = server.write_count();
    let reconciles_before = metric(
        &scrape(metrics_address),
        "postgres_operator_reconciles_total",
    );
    std::thread::sleep(Duration::from_secs(resync * 2 + 1));
    let after = scrape(metrics_address);
    let settled_reconciles =
        metric(&after, "postgres_operator_reconciles_total") - reconciles_before;
    let settled_writes = server.write_count() - writes_before;
    let rss = peak_rss_mib(&operator);
    terminate(&mut operator);

    println!("clusters:                         {clusters}");
    println!(
        "time to reconcile all:            {:.2} s",
        all_reconciled.as_secs_f64()
    );
    println!(
        "first-pass reconciles:            {}",
        metric(&first_pass, "postgres_operator_reconciles_total")
    );
    println!(
        "reconcile latency p50 (bucket):   <= {:.3} s",
        quantile(&after, 0.50)
    );
    println!(
        "reconcile latency p99 (bucket):   <= {:.3} s",
        quantile(&after, 0.99)
    );
    println!("settled reconciles observed:      {settled_reconciles}");
    println!("API writes during them:           {settled_writes}");
    println!(
        "API writes per settled reconcile: {:.3}",
        if settled_reconciles > 0.0 {
            settled_writes as f64 / settled_reconciles
        } else {
            f64::NAN
        }
    );
    println!("operator peak RSS:                {rss:.1} MiB");
}

/// Stops the operator with SIGTERM (graceful), then waits.
fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    for _ in 0..50 {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}
