//! Controller benchmark: N Postgres objects (default 1,000) in the in-memory API double,
//! served over HTTP to a separate `postgres-operator controller` process, so the figures
//! are the operator's own: time until every cluster is settled, reconciles per cluster
//! until then, reconcile latency quantiles, API reads and writes per settled reconcile
//! (writes must be 0) and peak RSS; then where the double spent its time.
//!
//! Every cluster's HA engine runs too, against one fake instance manager in the
//! benchmark (`--instance-address-template`) that answers as a running asynchronous
//! primary and streams a heartbeat every 200 ms: a cluster is settled once its engine
//! has recorded its primary, and the figures include what watching 1,000 primaries
//! costs the operator (open streams, CPU while settled, RSS).
//!
//!   cargo bench --bench controller                        # 1,000 clusters
//!   cargo bench --bench controller -- --clusters 100      # scripts/test.sh (dev profile)
//!   cargo bench --bench controller -- --clusters 5000 --timeout-seconds 1200
//!   cargo bench --bench controller -- --no-failover       # baseline without HA engines
//!
//! The operator resyncs every cluster every `--resync-seconds` (default: N / 200, at least
//! 5), so settled clusters ask for the same 200 reconciles a second at any N and the
//! settled window (two resyncs) holds a resync of every cluster.
//!
//! It fails (exit status 101) when the clusters do not settle before the timeout, the
//! operator exits, or a settled reconcile writes; it never asserts on timings. The
//! operator dies with the benchmark on every path: a guard stops it on return and
//! panic, and the kernel kills it if the benchmark itself is killed.

#[path = "../tests/support/apiserver.rs"]
#[allow(dead_code)]
mod apiserver;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apiserver::{ApiServer, Timing};
use serde_json::{Value, json};

const NAMESPACES: usize = 10;
const POSTGRES: &str = "apps.cozystack.io/postgreses";

/// Command line: `--clusters N`, `--timeout-seconds S`, `--resync-seconds S` (cargo adds
/// `--bench`).
struct Options {
    clusters: usize,
    timeout: Duration,
    resync: Duration,
    /// `--no-failover`: the operator without its HA engines, the baseline of what
    /// watching the primaries costs.
    failover: bool,
}

impl Options {
    fn parse() -> Options {
        let mut clusters = 1000;
        let mut timeout = None;
        let mut resync = None;
        let mut failover = true;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = |name: &str| -> u64 {
                let text = args.next().unwrap_or_default();
                text.parse()
                    .unwrap_or_else(|_| panic!("{name} needs a number, got {text:?}"))
            };
            match arg.as_str() {
                "--clusters" => clusters = value(&arg) as usize,
                "--timeout-seconds" => timeout = Some(Duration::from_secs(value(&arg))),
                "--resync-seconds" => resync = Some(Duration::from_secs(value(&arg))),
                "--no-failover" => failover = false,
                // cargo bench passes --bench; a filter argument has nothing to select here.
                _ => {}
            }
        }
        // Generous: well over what settling takes, short enough that a run which never
        // settles fails CI in minutes.
        let timeout = timeout.unwrap_or(Duration::from_millis(120_000 + 120 * clusters as u64));
        let resync = resync.unwrap_or(Duration::from_secs((clusters as u64 / 200).max(5)));
        Options {
            clusters,
            timeout,
            resync,
            failover,
        }
    }
}

/// The operator process: stopped (SIGTERM, then SIGKILL) and reaped when dropped, which
/// happens on return and while a panic unwinds.
struct Operator {
    child: Child,
}

impl Operator {
    fn start(
        kubeconfig: &std::path::Path,
        metrics: SocketAddr,
        resync: Duration,
        instances: SocketAddr,
        failover: bool,
    ) -> Operator {
        let mut command = Command::new(env!("CARGO_BIN_EXE_postgres-operator"));
        command
            .args(["controller", "--leader-election", "false"])
            .args(["--instance-address-template", &instances.to_string()])
            .args(["--failover", &failover.to_string()])
            .args(["--log-format", "text"])
            .args(["--http-address", &metrics.to_string()])
            .args(["--resync-seconds", &resync.as_secs().to_string()])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // SAFETY: the closure runs between fork and exec and only makes one
        // async-signal-safe system call (prctl). A benchmark killed by a signal runs no
        // destructor: the kernel then stops the operator.
        unsafe {
            command.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(
                    rustix::process::Signal::KILL,
                ))
                .map_err(std::io::Error::from)
            });
        }
        let child = command.spawn().expect("start the operator");
        remember_for_panics(child.id());
        Operator { child }
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Peak resident set size so far (`VmHWM`).
    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .unwrap_or(f64::NAN)
    }

    /// CPU time used so far (user and system), from `/proc/PID/stat`.
    fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // The fields after the command (which may hold spaces) start at the state, field 3;
        // utime and stime are fields 14 and 15, in clock ticks of 1/100 s on Linux.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |index: usize| fields.get(index).and_then(|t| t.parse::<f64>().ok());
        match (ticks(11), ticks(12)) {
            (Some(user), Some(system)) => (user + system) / 100.0,
            _ => f64::NAN,
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        signal(self.child.id(), rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !self.running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// A panic on another thread, or with `panic = "abort"`, runs no destructor of the main
/// thread: the panic hook kills the operator in that case too.
fn remember_for_panics(pid: u32) {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        signal(pid, rustix::process::Signal::KILL);
        report(info);
    }));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
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

/// The reconcile duration histogram: (upper bound, cumulative count) per bucket.
fn histogram(text: &str) -> Vec<(f64, f64)> {
    text.lines()
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
        .collect()
}

/// The reconciles between two scrapes, as a histogram.
fn between(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|(bound, count)| {
            let earlier = before
                .iter()
                .find(|(b, _)| b == bound)
                .map_or(0.0, |(_, c)| *c);
            (*bound, count - earlier)
        })
        .collect()
}

/// Quantile `q` in seconds, interpolated inside its bucket as Prometheus'
/// `histogram_quantile` does.
fn quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let total = buckets.last().map_or(0.0, |b| b.1);
    if total == 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return lower.0;
            }
            let share = if count > lower.1 {
                (rank - lower.1) / (count - lower.1)
            } else {
                1.0
            };
            return lower.0 + (bound - lower.0) * share;
        }
        lower = (bound, count);
    }
    f64::NAN
}

/// Clusters whose status describes their current generation (every object applied and
/// the status written for the spec as it is) and whose HA engine has recorded the
/// primary and its synchronous set.
fn settled(server: &ApiServer, failover: bool) -> usize {
    (0..NAMESPACES)
        .map(|ns| {
            server.count(POSTGRES, &format!("tenant-{ns}"), |pg| {
                let status = &pg["status"];
                let observed = &status["observedGeneration"];
                observed.is_number()
                    && *observed == pg["metadata"]["generation"]
                    && (!failover
                        || status["currentPrimary"].is_string()
                            && status["syncQuorum"].is_number()
                            && status["instancesStatus"].is_array())
            })
        })
        .sum()
}

/// One fake instance manager for every pod: a running asynchronous primary, on
/// `/ha/report` and as a heartbeat stream on `/ha/watch`; counts the open streams.
fn fake_instances(
    runtime: &tokio::runtime::Runtime,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let report = json!({"pod": "fake", "role": "primary", "running": true, "timeline": 1,
        "receivedLsn": 100_000_000, "replayedLsn": null, "streamingFrom": null,
        "syncQuorum": 0, "fenced": false});
    let open = Arc::new(AtomicUsize::new(0));
    struct Open(Arc<AtomicUsize>);
    impl Drop for Open {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let line = format!("{report}\n");
    let counter = open.clone();
    let router = axum::Router::new()
        .route(
            "/ha/report",
            axum::routing::get(move || {
                let report = report.clone();
                async move { axum::Json(report) }
            }),
        )
        .route(
            "/ha/watch",
            axum::routing::get(move || {
                let line = line.clone();
                counter.fetch_add(1, Ordering::SeqCst);
                let guard = Open(counter.clone());
                async move {
                    let lines = futures::stream::unfold((guard, true), move |(guard, first)| {
                        let line = line.clone();
                        async move {
                            if !first {
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                            Some((Ok::<_, std::convert::Infallible>(line), (guard, false)))
                        }
                    });
                    axum::body::Body::from_stream(lines)
                }
            }),
        );
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("a port for the fake instances");
    let address = listener.local_addr().expect("the fake instances' address");
    runtime.spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (address, open)
}

fn add_clusters(server: &ApiServer, clusters: usize) {
    let example =
        std::fs::read_to_string("examples/complete.yaml").expect("examples/complete.yaml");
    let complete: Value = serde_yaml::from_str(&example).expect("the complete example parses");
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
}

fn ms(seconds: f64) -> String {
    format!("{:.1} ms", seconds * 1000.0)
}

fn per(part: f64, whole: f64) -> f64 {
    if whole > 0.0 { part / whole } else { f64::NAN }
}

fn main() {
    let options = Options::parse();
    let clusters = options.clusters;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime for the API double");
    let server = ApiServer::new();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("a port for the API double");
    let api_address = listener.local_addr().expect("the API double's address");
    runtime.spawn(server.clone().serve_http(listener));
    add_clusters(&server, clusters);

    let dir = tempfile::tempdir().expect("a temporary directory");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, ApiServer::kubeconfig(api_address)).expect("write kubeconfig");
    let metrics_address: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    // Their own threads: 1,000 heartbeat streams must not wait behind the API double.
    let instances_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime for the fake instances");
    let (instances, open_streams) = fake_instances(&instances_runtime);
    let started = Instant::now();
    let mut operator = Operator::start(
        &kubeconfig,
        metrics_address,
        options.resync,
        instances,
        options.failover,
    );

    while settled(&server, options.failover) < clusters {
        assert!(
            started.elapsed() < options.timeout,
            "{} of {clusters} clusters settled after {:?}",
            settled(&server, options.failover),
            options.timeout
        );
        assert!(operator.running(), "the operator exited");
        std::thread::sleep(Duration::from_millis(100));
    }
    let settle_time = started.elapsed();
    let settle_cpu = operator.cpu_seconds();
    let at_settled = scrape(metrics_address);

    // Settled: the next resync rounds must not write.
    std::thread::sleep(Duration::from_secs(2));
    let window_start = scrape(metrics_address);
    let (reads_before, writes_before) = (server.read_count(), server.write_count());
    let cpu_before = operator.cpu_seconds();
    let window = options.resync * 2 + Duration::from_secs(1);
    std::thread::sleep(window);
    let window_end = scrape(metrics_address);
    let settled_cpu = operator.cpu_seconds() - cpu_before;
    let settled_reads = (server.read_count() - reads_before) as f64;
    let settled_writes = (server.write_count() - writes_before) as f64;
    let rss = operator.peak_rss_mib();
    let streams = open_streams.load(std::sync::atomic::Ordering::SeqCst);
    assert!(operator.running(), "the operator exited");
    drop(operator);

    let reconciles = "postgres_operator_reconciles_total";
    let until_settled = metric(&at_settled, reconciles);
    let settled_reconciles = metric(&window_end, reconciles) - metric(&window_start, reconciles);
    let settling = histogram(&at_settled);
    let resyncs = between(&histogram(&window_start), &histogram(&window_end));
    println!("clusters:                          {clusters} in {NAMESPACES} namespaces");
    println!(
        "all settled after:                 {:.2} s",
        settle_time.as_secs_f64()
    );
    println!(
        "reconciles until settled:          {until_settled} ({:.2} per cluster)",
        until_settled / clusters as f64
    );
    println!(
        "reconcile p50 / p99 until settled: {} / {}",
        ms(quantile(&settling, 0.50)),
        ms(quantile(&settling, 0.99))
    );
    println!(
        "settled reconciles:                {settled_reconciles} in {:.0} s (resync every {} s)",
        window.as_secs_f64(),
        options.resync.as_secs()
    );
    println!(
        "settled reconcile p50 / p99:       {} / {}",
        ms(quantile(&resyncs, 0.50)),
        ms(quantile(&resyncs, 0.99))
    );
    println!(
        "API reads per settled reconcile:   {:.2}",
        per(settled_reads, settled_reconciles)
    );
    println!(
        "API writes per settled reconcile:  {:.3}",
        per(settled_writes, settled_reconciles)
    );
    println!("operator peak RSS:                 {rss:.1} MiB");
    println!(
        "HA engines:                        {streams} heartbeat streams open (one per primary), CPU while settled {:.1} % of a core",
        100.0 * settled_cpu / window.as_secs_f64()
    );
    println!(
        "operator CPU:                      {settle_cpu:.2} s until settled, {} per settled reconcile",
        ms(per(settled_cpu, settled_reconciles))
    );
    print_double_timings(&server.timings(), started.elapsed());
    assert!(
        settled_reconciles > 0.0,
        "no resync ran in the settled window"
    );
    assert_eq!(settled_writes, 0.0, "settled reconciles wrote to the API");
}

/// Where the API double spent its time, so a slow run shows whether the operator or the
/// double was the bottleneck.
fn print_double_timings(timings: &std::collections::BTreeMap<String, Timing>, run: Duration) {
    let busy: Duration = timings.values().map(|t| t.total).sum();
    println!(
        "API double busy:                   {:.1} s of {:.1} s; by request (count, mean, total):",
        busy.as_secs_f64(),
        run.as_secs_f64()
    );
    let mut kinds: Vec<_> = timings.iter().collect();
    kinds.sort_by_key(|(_, timing)| std::cmp::Reverse(timing.total));
    for (kind, timing) in kinds.into_iter().take(8) {
        let mean = timing.total.as_secs_f64() / timing.count.max(1) as f64;
        println!(
            "  {kind:<46} {:>8} {:>9} {:>7.2} s",
            timing.count,
            format!("{:.0} µs", mean * 1e6),
            timing.total.as_secs_f64()
        );
    }
}
