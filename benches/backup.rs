//! Backup and restore throughput against real parts: a PostgreSQL server on loopback with
//! one database of BENCH_BACKUP_MB MiB of table data (default 1024), the Debian restic and a
//! moto S3 server. In the same run, on the same data:
//!
//! - backup: `postgres-operator backup` (the binary the CronJob runs: bucket check,
//!   repositories, globals, the relayed dump, manifest, retention) against the plain
//!   pipeline `pg_dump -Ft | restic backup --stdin; restic forget --prune` (what Cozystack's
//!   script runs per database) into a fresh repository, alternating,
//!   each into fresh repositories (no deduplication between rounds); the target is within
//!   10 % of the plain pipeline;
//! - restore: `restore::restore` of that database beside it against the plain
//!   `restic dump | pg_restore`.
//!
//! Prints MB/s (dump bytes per second), seconds, and the runner's peak RSS (sampled).
//!
//!   cargo bench --bench backup            BENCH_BACKUP_MB=256 cargo bench --bench backup
//!
//! BENCH_VERBOSE=1 (with RUST_LOG=debug) prints the runner's log: each restic call's time.

// The tests' helpers, at the crate root (where `super::` in s3.rs finds the others).
#[path = "../tests/support/postgres.rs"]
#[allow(dead_code)]
mod postgres;
#[path = "../tests/support/s3.rs"]
#[allow(dead_code)]
mod s3;
#[path = "../tests/support/validators.rs"]
#[allow(dead_code)]
mod validators;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use postgres::{PostgresServer, bin_dir};
use postgres_operator::backup::location::Location;
use postgres_operator::backup::restic::Restic;
use postgres_operator::backup::restore::{self, RestoreSettings, RunSelector};
use s3::S3Server;

const BUCKET: &str = "bench";
const CLUSTER: &str = "bench";
const PASSWORD: &str = "bench-password";
const ROUNDS: usize = 3;

/// Peak resident memory of `pid` while it runs, sampled every 20 ms (KiB).
fn run_sampling_rss(command: &mut Command) -> (Duration, u64, bool) {
    let started = Instant::now();
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    loop {
        if let Ok(text) = std::fs::read_to_string(&status_path)
            && let Some(kib) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait().unwrap() {
            if !status.success() || std::env::var_os("BENCH_VERBOSE").is_some() {
                let mut stderr = String::new();
                use std::io::Read;
                child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut stderr)
                    .unwrap();
                eprintln!("{stderr}");
            }
            return (started.elapsed(), peak, status.success());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn s3_env(command: &mut Command, s3: &S3Server) {
    command
        .env("AWS_ACCESS_KEY_ID", &s3.credentials.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &s3.credentials.secret_key)
        .env("AWS_DEFAULT_REGION", &s3.credentials.region)
        .env("RESTIC_PASSWORD", PASSWORD);
}

/// `postgres-operator backup` of the cluster into `base`.
fn ours(server: &PostgresServer, s3: &S3Server, base: &str) -> (Duration, u64) {
    let mut command = s3.backup_runner(server, CLUSTER, base, PASSWORD);
    let (elapsed, rss, ok) = run_sampling_rss(&mut command);
    assert!(ok, "postgres-operator backup failed");
    (elapsed, rss)
}

/// The plain pipeline into a fresh repository `repository` (initialised first, as a first
/// run of ours initialises its own), then retention as Cozystack's script applies it.
fn plain(server: &PostgresServer, s3: &S3Server, repository: &str) -> Duration {
    let script = format!(
        "set -eo pipefail; restic --no-cache -r '{repository}' init >/dev/null; \
         '{pg_dump}' -Ft -h '{socket}' -p {port} -U postgres bench | \
         restic --no-cache -r '{repository}' backup --stdin --stdin-filename bench.dump --host {CLUSTER} --quiet; \
         restic --no-cache -r '{repository}' forget --host {CLUSTER} --keep-last=3 --prune --quiet >/dev/null",
        pg_dump = bin_dir().join("pg_dump").display(),
        socket = server.socket_dir.display(),
        port = server.port,
    );
    let mut command = Command::new("bash");
    command.args(["-c", &script]);
    s3_env(&mut command, s3);
    let (elapsed, _, ok) = run_sampling_rss(&mut command);
    assert!(ok, "plain pipeline failed");
    elapsed
}

fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let mib: u64 = std::env::var("BENCH_BACKUP_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let s3 = S3Server::start(&[BUCKET]);
    let server = PostgresServer::start();
    let started = Instant::now();
    // ~200 bytes of incompressible-looking text per row, about 4.3 M rows per GiB.
    let rows = mib * 1024 * 1024 / 250;
    runtime.block_on(async {
        server
            .admin("postgres")
            .await
            .batch_execute("CREATE DATABASE bench")
            .await
            .unwrap();
        server
            .admin("bench")
            .await
            .batch_execute(&format!(
                "CREATE TABLE t (id bigint PRIMARY KEY, payload text); \
                 INSERT INTO t SELECT i, md5(i::text) || md5((i * 7)::text) || md5((i * 13)::text) || \
                 md5((i * 17)::text) || md5((i * 19)::text) || md5((i * 23)::text) \
                 FROM generate_series(1, {rows}) i"
            ))
            .await
            .unwrap();
    });
    // The dump's size, and a warm page cache for both pipelines.
    let out = Command::new(bin_dir().join("pg_dump"))
        .args(["-Ft", "-h"])
        .arg(&server.socket_dir)
        .args(["-p", &server.port.to_string(), "-U", "postgres", "bench"])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success());
    let dump_bytes = out.stdout.len() as u64;
    drop(out);
    println!(
        "data: {mib} MiB of table data ({rows} rows), dump {:.0} MB, loaded in {:.1} s",
        dump_bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );

    let mut ours_rates = Vec::new();
    let mut plain_rates = Vec::new();
    let mut ratios = Vec::new();
    let mut peak_rss = 0;
    let mut last_base = String::new();
    for round in 0..ROUNDS {
        let plain_elapsed = plain(&server, &s3, &s3.base(&format!("{BUCKET}/plain-{round}")));
        let base = s3.base(&format!("{BUCKET}/ours-{round}"));
        let (ours_elapsed, rss) = ours(&server, &s3, &base);
        peak_rss = peak_rss.max(rss);
        println!(
            "round {round}: plain pg_dump | restic + forget --prune {:.1} s ({:.1} MB/s); postgres-operator backup {:.1} s ({:.1} MB/s), runner peak RSS {:.1} MiB",
            plain_elapsed.as_secs_f64(),
            mb_per_s(dump_bytes, plain_elapsed),
            ours_elapsed.as_secs_f64(),
            mb_per_s(dump_bytes, ours_elapsed),
            rss as f64 / 1024.0
        );
        ours_rates.push(mb_per_s(dump_bytes, ours_elapsed));
        plain_rates.push(mb_per_s(dump_bytes, plain_elapsed));
        ratios.push(plain_elapsed.as_secs_f64() / ours_elapsed.as_secs_f64());
        last_base = base;
    }
    let (ours_median, plain_median) = (median(&mut ours_rates), median(&mut plain_rates));
    println!(
        "backup (median of {ROUNDS}): postgres-operator {ours_median:.1} MB/s, plain {plain_median:.1} MB/s, ratio of each round's pair {:.2} (target >= 0.90); runner peak RSS {:.1} MiB",
        median(&mut ratios),
        peak_rss as f64 / 1024.0
    );

    // Restore of the last run's database beside it, against the plain pipeline.
    let credentials = s3.credentials.clone();
    let restic = Restic::new("restic".into(), credentials.clone(), PASSWORD.to_string());
    let settings = RestoreSettings {
        source_cluster: CLUSTER.to_string(),
        location: Location::parse(&last_base).unwrap(),
        credentials,
        restic: restic.clone(),
        postgres: server.superuser(),
        bin_dir: Some(bin_dir()),
    };
    let databases = ["bench".to_string()];
    let (ours_restore, manifest) = runtime.block_on(async {
        let manifest = restore::find_run(&settings, &RunSelector::Latest)
            .await
            .unwrap();
        let started = Instant::now();
        restore::restore(
            &settings,
            &RunSelector::Id(manifest.run.clone()),
            &databases,
            Some("bench_ours"),
            false,
            false,
        )
        .await
        .unwrap();
        (started.elapsed(), manifest)
    });
    let entry = manifest.database("bench").unwrap();
    runtime.block_on(async {
        server
            .admin("postgres")
            .await
            .batch_execute("CREATE DATABASE bench_plain")
            .await
            .unwrap();
    });
    let script = format!(
        "set -eo pipefail; restic --no-cache -r '{repository}' dump {snapshot} /{file} | \
         '{pg_restore}' --format=tar --exit-on-error --single-transaction -h '{socket}' -p {port} -U postgres -d bench_plain",
        repository = entry.dump.repository,
        snapshot = entry.dump.snapshot,
        file = entry.dump.file,
        pg_restore = bin_dir().join("pg_restore").display(),
        socket = server.socket_dir.display(),
        port = server.port,
    );
    let mut command = Command::new("bash");
    command.args(["-c", &script]);
    s3_env(&mut command, &s3);
    let (plain_restore, _, ok) = run_sampling_rss(&mut command);
    assert!(ok, "plain restore failed");
    println!(
        "restore of {mib} MiB: postgres-operator restore {:.1} s ({:.1} MB/s), plain restic dump | pg_restore {:.1} s ({:.1} MB/s)",
        ours_restore.as_secs_f64(),
        mb_per_s(dump_bytes, ours_restore),
        plain_restore.as_secs_f64(),
        mb_per_s(dump_bytes, plain_restore)
    );
}
