//! A real S3-compatible server for a test: moto on loopback, with IAM authentication on
//! (wrong keys are refused as S3 would), one user whose keys the test uses, and buckets.
//! Killed when the handle drops.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use postgres_operator::backup::s3::S3Credentials;

use super::postgres::{PostgresServer, bin_dir, free_port};
use super::validators::tools_bin;

pub struct S3Server {
    pub port: u16,
    pub credentials: S3Credentials,
    child: Child,
}

impl S3Server {
    /// A server with the given buckets.
    pub fn start(buckets: &[&str]) -> Self {
        let port = free_port();
        let child = Command::new(tools_bin("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
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
        let out = Command::new(tools_bin("python"))
            .arg(script)
            .arg(format!("http://127.0.0.1:{port}"))
            .args(buckets)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "s3_setup.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let keys = String::from_utf8(out.stdout).unwrap();
        let (access_key, secret_key) = keys.trim().split_once(' ').unwrap();
        Self {
            port,
            credentials: S3Credentials {
                access_key: access_key.to_string(),
                secret_key: secret_key.to_string(),
                region: "us-east-1".to_string(),
            },
            child,
        }
    }

    /// The restic repository base of `bucket[/prefix]` on this server.
    pub fn base(&self, bucket: &str) -> String {
        format!("s3:http://127.0.0.1:{}/{bucket}", self.port)
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
        let mut command = Command::new(env!("CARGO_BIN_EXE_postgres-operator"));
        command
            .args([
                "backup",
                "--log-format",
                "text",
                "--cleanup-strategy=--keep-last=3",
            ])
            .env("CLUSTER_NAME", cluster)
            .env("RESTIC_REPOSITORY_BASE", base)
            .env("AWS_ACCESS_KEY_ID", &self.credentials.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.credentials.secret_key)
            .env("AWS_DEFAULT_REGION", &self.credentials.region)
            .env("RESTIC_PASSWORD", restic_password)
            .env("PGHOST", &server.socket_dir)
            .env("PGPORT", server.port.to_string())
            .env("PGUSER", "postgres")
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
