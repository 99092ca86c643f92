//! One helper to run a real PostgreSQL server for a test: its own data directory, port
//! and socket directory, started with the Debian packaged binaries, stopped (and the
//! process reaped) when the handle drops. As root, the server runs as `postgres`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres_operator::instance::files::Endpoint;
use postgres_operator::instance::tls_files::{self, TlsMaterial, TlsPaths};

/// The newest installed PostgreSQL binaries.
pub fn bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed: run scripts/install-test-deps.sh")
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|p| p.join("postgres").exists())
        .collect();
    dirs.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop()
        .expect("no PostgreSQL server binaries under /usr/lib/postgresql")
}

/// The binaries of one major: Debian's system install, else the private prefix of
/// scripts/install-postgres-majors.sh.
pub fn bin_dir_of(major: u32) -> PathBuf {
    let system = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
    let private = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!(".tools/postgresql/{major}/bin"));
    [system, private]
        .into_iter()
        .find(|dir| dir.join("postgres").exists())
        .unwrap_or_else(|| {
            panic!("PostgreSQL {major} is not installed: run scripts/install-test-deps.sh")
        })
}

fn is_root() -> bool {
    // SAFETY-free check: /proc/self/status Uid line.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// A command that runs as `postgres` when the tests run as root (PostgreSQL refuses
/// root); `setpriv` execs in place, so the pid is the server's own.
pub fn command(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("setpriv");
        command
            .args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// The command prefix that runs a program as `postgres` (empty unless root).
pub fn as_postgres() -> Vec<String> {
    if is_root() {
        [
            "setpriv",
            "--reuid=postgres",
            "--regid=postgres",
            "--init-groups",
            "--",
        ]
        .map(String::from)
        .to_vec()
    } else {
        Vec::new()
    }
}

pub fn chown_to_postgres(path: &Path) {
    if is_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

/// A password login over TCP on loopback, as an application would make.
pub async fn login(
    port: u16,
    user: &str,
    password: &str,
    database: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .password(password)
        .dbname(database);
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A client over TLS that does not check the server's certificate (`sslmode=require`),
/// for tests about something else than TLS that reach a server from another network
/// (`tests/tls.rs` proves the verification).
pub async fn connect_tls_unverified(
    config: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AnyCertificate))
    .with_no_client_auth();
    let mut config = config.clone();
    config.ssl_mode(tokio_postgres::config::SslMode::Require);
    let (client, connection) = config
        .connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
        .await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Accepts any server certificate; signatures are still checked, so the handshake is a
/// real one.
#[derive(Debug)]
struct AnyCertificate;

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The first column of every row of `sql`, as text (simple protocol: any type).
pub async fn column(client: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    client
        .simple_query(sql)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|message| match message {
            tokio_postgres::SimpleQueryMessage::Row(row) => {
                Some(row.get(0).expect("a NULL in the first column").to_string())
            }
            _ => None,
        })
        .collect()
}

/// A port nothing listens on, for a server a test starts later. Taken below the
/// kernel's ephemeral range (32768 and up): a port the kernel hands out (`bind` to 0)
/// may meanwhile become the local end of one of the many outgoing connections the
/// tests make, and the server that wanted it fails with "address already in use". A
/// port is never handed out twice in one test process.
pub fn free_port() -> u16 {
    use rand::RngExt;
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port: u16 = rand::rng().random_range(20_000..32_000);
        if given.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
        {
            given.push(port);
            return port;
        }
    }
}

/// An initialised data directory with its own port and socket directory.
pub struct DataDir {
    pub port: u16,
    pub socket_dir: PathBuf,
    pub data_dir: PathBuf,
    root: tempfile::TempDir,
    /// The PostgreSQL binaries that initialise and run it ([`bin_dir`] unless chosen).
    bin: PathBuf,
}

impl DataDir {
    /// A place for a data directory (not created yet), owned by `postgres`.
    pub fn empty() -> Self {
        let root = tempfile::tempdir().unwrap();
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let data_dir = root.path().join("data");
        let socket_dir = root.path().join("run");
        std::fs::create_dir(&socket_dir).unwrap();
        chown_to_postgres(root.path());
        Self {
            port: free_port(),
            socket_dir,
            data_dir,
            root,
            bin: bin_dir(),
        }
    }

    /// initdb: superuser `postgres`, trusted on the local socket, SCRAM over TCP.
    pub fn init() -> Self {
        Self::init_with(&bin_dir())
    }

    /// [`DataDir::init`] with the binaries of another PostgreSQL major.
    pub fn init_with(bin: &Path) -> Self {
        let Self {
            port,
            socket_dir,
            data_dir,
            root,
            ..
        } = Self::empty();
        succeed(
            command(&bin.join("initdb"))
                .args(["-D"])
                .arg(&data_dir)
                .args([
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--data-checksums",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ]),
            "initdb",
        );
        Self {
            port,
            socket_dir,
            data_dir,
            root,
            bin: bin.to_path_buf(),
        }
    }

    /// The program and arguments that run the postmaster on this directory (through
    /// setpriv when root, which execs in place: the pid is the postmaster's).
    pub fn postmaster(&self) -> (PathBuf, Vec<String>) {
        let postgres = self.bin.join("postgres").to_string_lossy().into_owned();
        let mut args = vec![
            "-D".to_string(),
            self.data_dir.to_string_lossy().into_owned(),
            "-p".to_string(),
            self.port.to_string(),
            "-k".to_string(),
            self.socket_dir.to_string_lossy().into_owned(),
            "-c".to_string(),
            "listen_addresses=127.0.0.1".to_string(),
            "-c".to_string(),
            "fsync=off".to_string(),
            "-c".to_string(),
            "shared_preload_libraries=pg_stat_statements".to_string(),
        ];
        let tls = TlsPaths::under(&self.socket_dir);
        if tls.cert.exists() {
            for setting in [
                "ssl=on".to_string(),
                format!("ssl_cert_file={}", tls.cert.display()),
                format!("ssl_key_file={}", tls.key.display()),
            ] {
                args.extend(["-c".to_string(), setting]);
            }
        }
        let mut command = as_postgres();
        command.push(postgres);
        command.append(&mut args);
        let program = PathBuf::from(command.remove(0));
        (program, command)
    }

    /// Whether a server accepts connections on this directory's socket.
    pub fn is_ready(&self) -> bool {
        Command::new(self.bin.join("pg_isready"))
            .arg("-h")
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string(), "-q"])
            .status()
            .is_ok_and(|s| s.success())
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Serves TLS with `material` (the files where the instance manager puts them,
    /// beside the socket): the server and any standby cloned into this directory.
    pub fn with_tls(self, material: &TlsMaterial) -> Self {
        let paths = TlsPaths::under(&self.socket_dir);
        tls_files::install(&paths, material).unwrap();
        chown_to_postgres(&paths.dir);
        for file in [&paths.cert, &paths.key, &paths.ca] {
            chown_to_postgres(file);
        }
        self
    }
}

/// The server certificate Secret of cluster `name` in namespace `tenant`, as the
/// controller issues it (a new CA each call).
pub fn cluster_tls_secret(name: &str) -> k8s_openapi::api::core::v1::Secret {
    use postgres_operator::manifests::secrets::ExistingSecrets;
    use postgres_operator::manifests::tls::{RcgenIssuer, desired_tls_secrets};
    use postgres_operator::manifests::{Cluster, OperatorSettings, names};
    let spec = serde_yaml::from_str("{}").unwrap();
    let postgres = postgres_operator::api::Postgres::new(name, spec);
    let settings = OperatorSettings::default();
    desired_tls_secrets(
        &Cluster::new(&postgres, "tenant", &settings),
        &ExistingSecrets::new(),
        &[],
        &mut RcgenIssuer,
    )
    .unwrap()
    .into_iter()
    .find(|s| s.metadata.name.as_deref() == Some(names::secret_server(name).as_str()))
    .unwrap()
}

/// The certificate, key and CA of a server certificate Secret.
pub fn tls_material(secret: &k8s_openapi::api::core::v1::Secret) -> TlsMaterial {
    let value =
        |key: &str| String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap();
    TlsMaterial {
        cert: value("tls.crt"),
        key: value("tls.key"),
        ca: value("ca.crt"),
    }
}

/// How an instance of cluster `cluster` reaches pod `pod` listening on loopback `port`,
/// with the CA installed in `socket_dir`.
pub fn endpoint(cluster: &str, pod: &str, port: u16, socket_dir: &Path) -> Endpoint {
    Endpoint {
        host: format!("{pod}.postgres-{cluster}-headless.tenant.svc"),
        hostaddr: Some("127.0.0.1".to_string()),
        port,
        ca_file: TlsPaths::under(socket_dir)
            .ca
            .to_string_lossy()
            .into_owned(),
    }
}

pub struct PostgresServer {
    pub port: u16,
    pub socket_dir: PathBuf,
    pub data_dir: PathBuf,
    child: Option<Child>,
    dir: DataDir,
}

impl PostgresServer {
    /// A new data directory, with its server started.
    pub fn start() -> Self {
        Self::start_on(DataDir::init())
    }

    /// A streaming standby of this server: cloned with pg_basebackup (`-R` writes
    /// `primary_conninfo` and `standby.signal`), then started.
    pub fn start_standby(&self, application_name: &str) -> Self {
        let dir = DataDir::empty();
        succeed(
            command(&bin_dir().join("pg_basebackup"))
                .arg("-D")
                .arg(&dir.data_dir)
                .arg("-h")
                .arg(&self.socket_dir)
                .args([
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                    "-R",
                    "-X",
                    "stream",
                ])
                .args(["-d", &format!("application_name={application_name}")]),
            "pg_basebackup",
        );
        Self::start_on(dir)
    }

    /// Starts the server of an initialised data directory.
    pub fn start_on(dir: DataDir) -> Self {
        let (program, args) = dir.postmaster();
        let log = std::fs::File::create(dir.root().join("postgres.log")).unwrap();
        let child = Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut server = Self {
            port: dir.port,
            socket_dir: dir.socket_dir.clone(),
            data_dir: dir.data_dir.clone(),
            child: Some(child),
            dir,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.dir.is_ready() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let log = std::fs::read_to_string(self.dir.root().join("postgres.log"));
                panic!(
                    "postgres exited during start-up: {status}\n{}",
                    log.unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("postgres did not become ready in 30 s");
    }

    /// The superuser's connection over the socket.
    pub fn superuser(&self) -> postgres_operator::instance::provision::Connection {
        postgres_operator::instance::provision::Connection {
            host: self.socket_dir.to_string_lossy().into_owned(),
            port: self.port,
            user: "postgres".to_string(),
            password: None,
            hostaddr: None,
            verify_with: None,
        }
    }

    /// A password login over TCP, as an application would make.
    pub async fn connect_as(
        &self,
        user: &str,
        password: &str,
        database: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        login(self.port, user, password, database).await
    }

    /// The superuser over the socket, in `database`.
    pub async fn admin(&self, database: &str) -> tokio_postgres::Client {
        self.superuser().client(database).await.unwrap()
    }
}

impl Drop for PostgresServer {
    /// Fast shutdown (SIGINT), then SIGKILL if it lingers; the process is always reaped.
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Runs `command` to completion, failing the test with `what` and everything the command
/// printed unless it succeeds; returns its standard output.
pub fn succeed(command: &mut std::process::Command, what: &str) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
