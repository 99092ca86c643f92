//! TLS with the certificates the operator issues, on real PostgreSQL servers run by the
//! instance binary: a client verifying the server (`sslmode=verify-full` against the
//! cluster's CA) succeeds for every Service name and fails for a name the certificate
//! does not hold; a standby streams over verified TLS; a renewed certificate is served
//! after a reload, with no restart and no replication connection dropped.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::Secret;
use postgres_operator::manifests::secrets::ExistingSecrets;
use postgres_operator::manifests::tls::{self, RcgenIssuerAt, desired_tls_secrets};
use postgres_operator::manifests::{Cluster, OperatorSettings};
use support::instance::{Instance, Placement, SpecFile};
use support::netns::NetNs;
use support::postgres::{bin_dir, column, free_port};
use support::wait_until;

const CLUSTER: &str = "secure";
const PRIMARY: &str = "postgres-secure-0";
const STANDBY: &str = "postgres-secure-1";
const SUPERUSER_PASSWORD: &str = "su-pw";

/// The CA and server Secrets the controller would hold at `now`, given `existing`.
fn issue(existing: &ExistingSecrets, now: SystemTime) -> ExistingSecrets {
    let postgres =
        postgres_operator::api::Postgres::new(CLUSTER, serde_yaml::from_str("{}").unwrap());
    let settings = OperatorSettings::default();
    desired_tls_secrets(
        &Cluster::new(&postgres, "tenant", &settings),
        existing,
        &[],
        &mut RcgenIssuerAt(now),
    )
    .unwrap()
    .into_iter()
    .map(|s| (s.metadata.name.clone().unwrap(), s))
    .collect()
}

fn value(secrets: &ExistingSecrets, secret: &str, key: &str) -> String {
    String::from_utf8(secrets[secret].data.as_ref().unwrap()[key].0.clone()).unwrap()
}

/// The cluster CA's certificate of `secrets` as file `file` in `dir`, for clients.
fn write_cluster_ca(secrets: &ExistingSecrets, dir: &Path, file: &str) -> std::path::PathBuf {
    let path = dir.join(file);
    std::fs::write(
        &path,
        value(secrets, &format!("postgres-{CLUSTER}-ca"), tls::CA_CERT),
    )
    .unwrap();
    path
}

fn spec_yaml(server: &Secret) -> String {
    format!(
        "apiVersion: apps.cozystack.io/v1alpha1\nkind: Postgres\nmetadata: {{name: {CLUSTER}, namespace: tenant}}\nspec:\n  replicas: 2\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: postgres-{CLUSTER}-superuser}}\nstringData: {{username: postgres, password: {SUPERUSER_PASSWORD}}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: postgres-{CLUSTER}-replication}}\nstringData: {{username: streaming_replica, password: repl}}\n---\n{}",
        serde_yaml::to_string(server).unwrap()
    )
}

/// psql as a client outside the pod: to `port` on loopback, verifying the server's
/// certificate for `host` against `ca`. What it printed, or why it failed.
fn psql_verify_full(host: &str, port: u16, ca: &Path) -> Result<String, String> {
    let conninfo = format!(
        "host={host} hostaddr=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=verify-full sslrootcert={} sslcert=/nonexistent sslkey=/nonexistent",
        ca.display()
    );
    psql(
        std::process::Command::new(bin_dir().join("psql")),
        &conninfo,
        "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
}

/// `sql` through `psql` (the command that runs it) as the superuser to `conninfo`: what
/// it printed, or why it failed.
fn psql(mut psql: std::process::Command, conninfo: &str, sql: &str) -> Result<String, String> {
    let output = psql
        .args(["-X", "-A", "-t", "-d", conninfo, "-c", sql])
        .env("PGPASSWORD", SUPERUSER_PASSWORD)
        .output()
        .unwrap();
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}

/// The serial number of the certificate the server on `port` presents, by `openssl
/// s_client` (PostgreSQL's own STARTTLS).
fn served_serial(port: u16) -> String {
    let shown = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -starttls postgres -connect 127.0.0.1:{port} </dev/null 2>/dev/null | openssl x509 -noout -serial"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&shown.stdout).trim().to_string()
}

fn serial_of(pem: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cert.pem");
    std::fs::write(&path, pem).unwrap();
    let shown = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(&path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&shown.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_and_standbys_verify_the_server_and_a_renewed_certificate_needs_no_restart() {
    let issued_at = SystemTime::now();
    let first = issue(&BTreeMap::new(), issued_at);
    let server_secret = format!("postgres-{CLUSTER}-server");
    let spec = SpecFile::new(&spec_yaml(&first[&server_secret]));
    let (primary_port, standby_port) = (free_port(), free_port());
    let spawn = |pod, port, peer, peer_port| {
        Instance::spawn_on(&spec, CLUSTER, pod, port, &[(peer, peer_port)], &[], &[])
    };
    let primary = spawn(PRIMARY, primary_port, STANDBY, standby_port);
    primary.wait_ready().await;
    let standby = spawn(STANDBY, standby_port, PRIMARY, primary_port);
    standby.wait_ready().await;

    let ca_dir = tempfile::tempdir().unwrap();
    let ca = write_cluster_ca(&first, ca_dir.path(), "ca.crt");

    // Every name a client may use: each Service in each of its forms, each instance.
    let mut names = Vec::new();
    for service in ["rw", "ro", "r"] {
        let short = format!("postgres-{CLUSTER}-{service}");
        names.push(short.clone());
        names.push(format!("{short}.tenant"));
        names.push(format!("{short}.tenant.svc"));
        names.push(format!("{short}.tenant.svc.cluster.local"));
    }
    names.push(format!("{PRIMARY}.postgres-{CLUSTER}-headless.tenant.svc"));
    names.push(format!(
        "{STANDBY}.postgres-{CLUSTER}-headless.tenant.svc.cluster.local"
    ));
    for name in &names {
        let answer =
            psql_verify_full(name, primary_port, &ca).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(answer.starts_with("t|TLSv1."), "{name}: {answer}");
    }
    // A name the certificate does not hold fails the verification.
    let refused = psql_verify_full("postgres-other-rw.tenant.svc", primary_port, &ca).unwrap_err();
    assert!(refused.contains("does not match host name"), "{refused}");
    // So does another cluster's CA.
    let other = issue(&BTreeMap::new(), issued_at);
    let other_ca = write_cluster_ca(&other, ca_dir.path(), "other-ca.crt");
    let refused = psql_verify_full(&names[0], primary_port, &other_ca).unwrap_err();
    assert!(refused.contains("certificate verify failed"), "{refused}");

    // The standby streams over TLS.
    let admin = primary.admin("postgres").await;
    let streaming = "SELECT r.pid::text || ' ' || s.ssl::text FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) WHERE r.application_name = 'postgres-secure-1'";
    wait_until("the standby streams", 60, || async {
        !column(&admin, streaming).await.is_empty()
    })
    .await;
    let stream = column(&admin, streaming).await.remove(0);
    assert!(
        stream.ends_with(" true"),
        "replication is not over TLS: {stream}"
    );
    let started = column(&admin, "SELECT pg_postmaster_start_time()::text").await;

    // The controller issues a new server certificate from the same CA, as at a renewal
    // (which the unit tests of `manifests::tls` time; here it must be valid now).
    let mut without_server = first.clone();
    without_server.remove(&server_secret);
    let renewed = issue(&without_server, SystemTime::now());
    assert_eq!(
        renewed[&format!("postgres-{CLUSTER}-ca")],
        first[&format!("postgres-{CLUSTER}-ca")]
    );
    let new_serial = serial_of(&value(&renewed, &server_secret, tls::TLS_CERT));
    assert_ne!(
        new_serial,
        serial_of(&value(&first, &server_secret, tls::TLS_CERT))
    );
    assert_eq!(
        served_serial(primary_port),
        serial_of(&value(&first, &server_secret, tls::TLS_CERT))
    );
    spec.write(&spec_yaml(&renewed[&server_secret]));
    wait_until("the renewed certificate is served", 30, || async {
        served_serial(primary_port) == new_serial && served_serial(standby_port) == new_serial
    })
    .await;
    assert!(psql_verify_full(&names[0], primary_port, &ca).is_ok());
    // No restart, and the standby's stream was not interrupted.
    assert_eq!(
        column(&admin, "SELECT pg_postmaster_start_time()::text").await,
        started
    );
    assert_eq!(column(&admin, streaming).await, [stream]);
}

/// psql from inside `netns` (another pod's network) to `address`:`port`, with `options`
/// appended to the connection string. What it printed, or why it failed.
fn psql_from(netns: &NetNs, address: &str, port: u16, options: &str) -> Result<String, String> {
    let conninfo = format!(
        "hostaddr={address} port={port} user=postgres dbname=postgres sslcert=/nonexistent sslkey=/nonexistent connect_timeout=5 {options}"
    );
    let prefix = netns.exec_prefix();
    let mut inside = std::process::Command::new(&prefix[0]);
    inside.args(&prefix[1..]).arg(bin_dir().join("psql"));
    psql(
        inside,
        &conninfo,
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
}

/// From another network (another pod), only TLS gets in: a clear-text attempt is refused
/// by pg_hba with the reason, the same login over verified TLS succeeds; from the pod
/// itself (loopback, the socket) clear text still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clear_text_connection_from_another_pod_is_refused() {
    assert!(
        NetNs::available(),
        "network namespaces need root and `ip` (scripts/install-test-deps.sh installs iproute2)"
    );
    let netns = NetNs::new();
    let first = issue(&BTreeMap::new(), SystemTime::now());
    let spec = SpecFile::new(
        &spec_yaml(&first[&format!("postgres-{CLUSTER}-server")])
            .replace("replicas: 2", "replicas: 1"),
    );
    let port = free_port();
    let placement = Placement {
        netns: None,
        listen: "0.0.0.0".to_string(),
        peer_hosts: Vec::new(),
    };
    let primary = Instance::spawn_placed(&spec, CLUSTER, PRIMARY, port, &[], &[], &[], &placement);
    primary.wait_ready().await;
    let ca_dir = tempfile::tempdir().unwrap();
    let ca = write_cluster_ca(&first, ca_dir.path(), "ca.crt");

    let refused = psql_from(&netns, &netns.host_address, port, "sslmode=disable").unwrap_err();
    assert!(
        refused.contains("pg_hba.conf rejects connection") && refused.contains("no encryption"),
        "{refused}"
    );
    let verified = psql_from(
        &netns,
        &netns.host_address,
        port,
        &format!(
            "host=postgres-{CLUSTER}-rw.tenant.svc sslmode=verify-full sslrootcert={}",
            ca.display()
        ),
    );
    assert_eq!(verified.as_deref(), Ok("t"));
    // The pod itself: loopback in clear text.
    let local = primary.admin("postgres").await;
    assert_eq!(
        column(
            &local,
            "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        )
        .await,
        ["false"]
    );
}

/// Runs `openssl` with `args` in `dir`; panics with its output when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let output = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A `kubernetes.io/tls` Secret as cert-manager writes one (`tls.crt`, `tls.key`,
/// `ca.crt`), made by `openssl` from a CA of its own: an RSA key and the names `names`.
fn cert_manager_secret(dir: &Path, names: &[&str]) -> Secret {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "30",
            "-subj",
            "/CN=tenant issuer",
        ],
    );
    let san: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
    openssl(
        dir,
        &[
            "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "tls.key", "-out",
            "tls.csr", "-subj", "/CN=db",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        format!("subjectAltName = {}\n", san.join(",")),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "tls.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            "ext.cnf",
            "-out",
            "tls.crt",
        ],
    );
    let data = ["tls.crt", "tls.key", "ca.crt"]
        .into_iter()
        .map(|key| {
            (
                key.to_string(),
                k8s_openapi::ByteString(std::fs::read(dir.join(key)).unwrap()),
            )
        })
        .collect();
    Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("my-cert".to_string()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".to_string()),
        data: Some(data),
        ..Default::default()
    }
}

/// The certificate of a cluster's own Secrets (cert-manager's, made here by openssl with
/// an RSA key) is served as the operator copies it, and verified with their CA; and the
/// operator's certificate names the external load balancer's IP address once it has
/// one, which a client verifies as an IP name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provided_certificate_and_the_external_address_are_verified_by_clients() {
    let dir = tempfile::tempdir().unwrap();
    let provided = cert_manager_secret(
        dir.path(),
        &[
            &format!("postgres-{CLUSTER}-rw.tenant.svc"),
            &format!("*.postgres-{CLUSTER}-headless.tenant.svc"),
        ],
    );
    let postgres = postgres_operator::api::Postgres::new(
        CLUSTER,
        serde_yaml::from_str("certificates: {serverTLSSecret: my-cert}").unwrap(),
    );
    let settings = OperatorSettings::default();
    let copied = tls::provided_server_secret(
        &Cluster::new(&postgres, "tenant", &settings),
        &ExistingSecrets::from([("my-cert".to_string(), provided)]),
    )
    .unwrap()
    .unwrap();
    let spec = SpecFile::new(&spec_yaml(&copied).replace("replicas: 2", "replicas: 1"));
    let instance = Instance::spawn(&spec, CLUSTER, PRIMARY, &[], &[]);
    instance.wait_ready().await;
    let ca = dir.path().join("ca.crt");
    let host = format!("postgres-{CLUSTER}-rw.tenant.svc");
    let answer = psql_verify_full(&host, instance.port, &ca).unwrap();
    assert!(answer.starts_with("t|TLSv1."), "{answer}");
    let refused = psql_verify_full(
        &format!("postgres-{CLUSTER}-ro.tenant.svc"),
        instance.port,
        &ca,
    )
    .unwrap_err();
    assert!(refused.contains("does not match host name"), "{refused}");
    drop(instance);

    // The operator's own certificate of an external cluster whose load balancer has
    // 127.0.0.1.
    let external = postgres_operator::api::Postgres::new(
        CLUSTER,
        serde_yaml::from_str("external: true").unwrap(),
    );
    let issued: ExistingSecrets = desired_tls_secrets(
        &Cluster::new(&external, "tenant", &settings),
        &ExistingSecrets::new(),
        &["127.0.0.1".to_string()],
        &mut RcgenIssuerAt(SystemTime::now()),
    )
    .unwrap()
    .into_iter()
    .map(|s| (s.metadata.name.clone().unwrap(), s))
    .collect();
    let spec = SpecFile::new(
        &spec_yaml(&issued[&format!("postgres-{CLUSTER}-server")])
            .replace("replicas: 2", "replicas: 1"),
    );
    let instance = Instance::spawn(&spec, CLUSTER, PRIMARY, &[], &[]);
    instance.wait_ready().await;
    let ca = write_cluster_ca(&issued, dir.path(), "cluster-ca.crt");
    let answer = psql_verify_full("127.0.0.1", instance.port, &ca).unwrap();
    assert!(answer.starts_with("t|TLSv1."), "{answer}");
}
