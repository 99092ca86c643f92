//! A real S3-compatible server for a test: moto on loopback, with IAM authentication on
//! (wrong keys are refused as S3 would), one user whose keys the test uses, and buckets.
//! Plain HTTP, or HTTPS with a certificate of a private CA made for the test. Killed when
//! the handle drops.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use postgres_operator::backup::s3::S3Credentials;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use super::postgres::{PostgresServer, bin_dir, free_port, succeed};
use super::validators::tools_bin;

/// A private CA and a server certificate it issued for 127.0.0.1, as PEM files.
pub struct PrivateCa {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl PrivateCa {
    pub fn generate() -> Self {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "postgres-operator test CA");
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, pem: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        Self {
            ca_file: write("ca.crt", ca.pem()),
            cert_file: write("tls.crt", server.pem()),
            key_file: write("tls.key", server_key.serialize_pem()),
            _dir: dir,
        }
    }
}

pub struct S3Server {
    pub port: u16,
    /// `http://127.0.0.1:<port>` or `https://…`.
    pub endpoint: String,
    /// The keys, and the CA bundle of a server with TLS.
    pub credentials: S3Credentials,
    child: Child,
}

impl S3Server {
    /// A server with the given buckets, over plain HTTP.
    pub fn start(buckets: &[&str]) -> Self {
        Self::start_with(buckets, None)
    }

    /// A server with the given buckets, over HTTPS with a certificate of `ca`.
    pub fn start_tls(buckets: &[&str], ca: &PrivateCa) -> Self {
        Self::start_with(buckets, Some(ca))
    }

    fn start_with(buckets: &[&str], ca: Option<&PrivateCa>) -> Self {
        let port = free_port();
        let mut server = Command::new(tools_bin("moto_server"));
        server.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        if let Some(ca) = ca {
            server.arg("--ssl-cert").arg(&ca.cert_file);
            server.arg("--ssl-key").arg(&ca.key_file);
        }
        let endpoint = format!(
            "{}://127.0.0.1:{port}",
            if ca.is_some() { "https" } else { "http" }
        );
        let child = server
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "3")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server: run scripts/install-test-deps.sh");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen in 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/s3_setup.py");
        let mut setup = Command::new(tools_bin("python"));
        if let Some(ca) = ca {
            // boto3 verifies the server against this bundle.
            setup.env("AWS_CA_BUNDLE", &ca.ca_file);
        }
        let keys = succeed(
            setup.arg(script).arg(&endpoint).args(buckets),
            "s3_setup.py",
        );
        let (access_key, secret_key) = keys.trim().split_once(' ').unwrap();
        Self {
            port,
            endpoint,
            credentials: S3Credentials {
                access_key: access_key.to_string(),
                secret_key: secret_key.to_string(),
                region: "us-east-1".to_string(),
                ca_bundle: ca.map(|ca| ca.ca_file.clone()),
            },
            child,
        }
    }

    /// The restic repository base of `bucket[/prefix]` on this server.
    pub fn base(&self, bucket: &str) -> String {
        format!("s3:{}/{bucket}", self.endpoint)
    }
}

impl S3Server {
    /// The real `postgres-operator backup` of `server`'s databases as cluster `cluster` into
    /// the repository base `base`, with the environment a backup Job gets.
    pub fn backup_runner(
        &self,
        server: &PostgresServer,
        cluster: &str,
        base: &str,
        restic_password: &str,
    ) -> Command {
        let mut command = self.job_command(
            &["backup", "--cleanup-strategy=--keep-last=3"],
            cluster,
            base,
            restic_password,
        );
        command
            .env("PGHOST", &server.socket_dir)
            .env("PGPORT", server.port.to_string())
            .env("PGUSER", "postgres");
        command
    }

    /// `postgres-operator <args>` (`backup` or `restore` and their flags) with the
    /// repository's environment as a backup Job gets it (the server's is the caller's).
    pub fn job_command(
        &self,
        args: &[&str],
        cluster: &str,
        base: &str,
        restic_password: &str,
    ) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_postgres-operator"));
        command
            .args(args)
            .args(["--log-format", "text"])
            .env("CLUSTER_NAME", cluster)
            .env("RESTIC_REPOSITORY_BASE", base)
            .env("AWS_ACCESS_KEY_ID", &self.credentials.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.credentials.secret_key)
            .env("AWS_DEFAULT_REGION", &self.credentials.region)
            .env("RESTIC_PASSWORD", restic_password)
            .env(
                "S3_CA_FILE",
                self.credentials.ca_bundle.clone().unwrap_or_default(),
            )
            .env("PG_BIN_DIR", bin_dir());
        command
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
