//! The real `postgres-operator instance` binary as a test runs it: as the `postgres` OS
//! user (like the pod), with its own data directory, ports and socket directory, the
//! spec and Secrets from a YAML file (or from an API server, as in a pod), and its own
//! PID-1 reaper. Dropping the handle sends SIGTERM and, if that is not enough, kills
//! every process of the directory.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::postgres::{as_postgres, bin_dir, chown_to_postgres, command, free_port, login};

/// A spec file shared by the instances of one cluster, rewritten to change the spec.
pub struct SpecFile {
    pub path: PathBuf,
    /// The superuser's password in the Secret.
    pub superuser: String,
    _dir: tempfile::TempDir,
}

impl SpecFile {
    pub fn new(yaml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spec.yaml");
        std::fs::write(&path, yaml).unwrap();
        chown_to_postgres(dir.path());
        let snapshot = postgres_operator::instance::source::parse_snapshot(yaml).unwrap();
        Self {
            path,
            superuser: snapshot.superuser_password().unwrap().to_string(),
            _dir: dir,
        }
    }

    /// Replaces the content in one step (write and rename), as a watcher expects.
    pub fn write(&self, yaml: &str) {
        let temporary = self.path.with_extension("new");
        std::fs::write(&temporary, yaml).unwrap();
        chown_to_postgres(&temporary);
        std::fs::rename(&temporary, &self.path).unwrap();
    }
}

/// The passwords of the complete example's users (examples/complete.yaml).
pub const COMPLETE_USERS: &[(&str, &str)] = &[
    ("admin", "secure-admin-password"),
    ("app_user", "app-password"),
    ("readonly_user", "readonly-password"),
];

/// The Secrets of cluster `name` in a spec file: superuser, replication and user passwords.
pub fn secrets_yaml(
    name: &str,
    superuser: &str,
    replication: &str,
    users: &[(&str, &str)],
) -> String {
    let quote = |s: &str| serde_json::to_string(s).unwrap();
    let mut yaml = format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: postgres-{name}-superuser}}\nstringData: {{username: postgres, password: {}}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: postgres-{name}-replication}}\nstringData: {{username: streaming_replica, password: {}}}\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: postgres-{name}-credentials}}\nstringData:\n",
        quote(superuser),
        quote(replication)
    );
    if users.is_empty() {
        yaml.push_str("  {}\n");
    }
    for (user, password) in users {
        yaml.push_str(&format!("  {}: {}\n", quote(user), quote(password)));
    }
    yaml.push_str(&server_tls_yaml(name));
    yaml
}

/// The server certificate Secret of cluster `name` in namespace `tenant`, as the
/// controller issues it (a new CA each call), as a YAML document.
pub fn server_tls_yaml(name: &str) -> String {
    let secret = super::postgres::cluster_tls_secret(name);
    format!("---\n{}", serde_yaml::to_string(&secret).unwrap())
}

/// Where an instance runs and listens. The default is every instance's but those of the
/// partition test: the host's network, 127.0.0.1, peers on 127.0.0.1.
#[derive(Clone, Debug)]
pub struct Placement {
    /// The network namespace it runs in (`ip netns exec`), or the host's.
    pub netns: Option<String>,
    /// What PostgreSQL, the status port and the metrics port listen on: an address,
    /// or `0.0.0.0` (then the test reaches them on 127.0.0.1).
    pub listen: String,
    /// The host of each peer whose address is not 127.0.0.1, by pod.
    pub peer_hosts: Vec<(String, String)>,
}

impl Default for Placement {
    fn default() -> Self {
        Self {
            netns: None,
            listen: "127.0.0.1".to_string(),
            peer_hosts: Vec::new(),
        }
    }
}

impl Placement {
    /// Where the test reaches the instance's ports.
    fn reach(&self) -> String {
        if self.listen == "0.0.0.0" {
            "127.0.0.1".to_string()
        } else {
            self.listen.clone()
        }
    }

    fn peer_host(&self, pod: &str) -> &str {
        self.peer_hosts
            .iter()
            .find(|(peer, _)| peer == pod)
            .map_or("127.0.0.1", |(_, host)| host)
    }
}

pub struct Instance {
    pub pod: String,
    /// Where the test reaches its ports (127.0.0.1 unless placed elsewhere).
    pub host: String,
    /// The network namespace it runs in, if not the host's.
    pub netns: Option<String>,
    /// The superuser's password.
    pub superuser: String,
    pub port: u16,
    pub status_port: u16,
    pub metrics_port: u16,
    pub data_dir: PathBuf,
    pub socket_dir: PathBuf,
    log: PathBuf,
    args: Vec<OsString>,
    child: Option<Child>,
    root: tempfile::TempDir,
}

impl Instance {
    /// Starts pod `pod` of cluster `cluster`; `peers` are the other pods' PostgreSQL ports.
    pub fn spawn(
        spec: &SpecFile,
        cluster: &str,
        pod: &str,
        peers: &[(&str, u16)],
        extra: &[&str],
    ) -> Self {
        Self::spawn_with_env(spec, cluster, pod, peers, extra, &[])
    }

    /// As [`Instance::spawn`], with environment variables (e.g. the backup credentials of
    /// a pod that bootstraps from a backup).
    pub fn spawn_with_env(
        spec: &SpecFile,
        cluster: &str,
        pod: &str,
        peers: &[(&str, u16)],
        extra: &[&str],
        env: &[(String, String)],
    ) -> Self {
        Self::spawn_on(spec, cluster, pod, free_port(), peers, extra, env)
    }

    /// As [`Instance::spawn_with_env`], with PostgreSQL on `port` (chosen beforehand, so
    /// that every instance of a cluster can name every other as a peer).
    pub fn spawn_on(
        spec: &SpecFile,
        cluster: &str,
        pod: &str,
        port: u16,
        peers: &[(&str, u16)],
        extra: &[&str],
        env: &[(String, String)],
    ) -> Self {
        Self::spawn_placed(
            spec,
            cluster,
            pod,
            port,
            peers,
            extra,
            env,
            &Placement::default(),
        )
    }

    /// As [`Instance::spawn_on`], placed as `placement` says (in a network namespace,
    /// listening on another address, peers elsewhere than on 127.0.0.1).
    #[allow(clippy::too_many_arguments)]
    pub fn spawn_placed(
        spec: &SpecFile,
        cluster: &str,
        pod: &str,
        port: u16,
        peers: &[(&str, u16)],
        extra: &[&str],
        env: &[(String, String)],
        placement: &Placement,
    ) -> Self {
        Self::spawn_reading(
            Some(&spec.path),
            &spec.superuser,
            cluster,
            pod,
            port,
            peers,
            extra,
            env,
            placement,
        )
    }

    /// As [`Instance::spawn_on`], reading the cluster from the Kubernetes API instead of
    /// a spec file (as in a pod: `env` names a kubeconfig, `KUBECONFIG=...`); `superuser`
    /// is the password the test read from the cluster's Secret.
    pub fn spawn_from_api(
        superuser: &str,
        cluster: &str,
        pod: &str,
        port: u16,
        peers: &[(&str, u16)],
        extra: &[&str],
        env: &[(String, String)],
    ) -> Self {
        Self::spawn_reading(
            None,
            superuser,
            cluster,
            pod,
            port,
            peers,
            extra,
            env,
            &Placement::default(),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn_reading(
        spec_file: Option<&Path>,
        superuser: &str,
        cluster: &str,
        pod: &str,
        port: u16,
        peers: &[(&str, u16)],
        extra: &[&str],
        env: &[(String, String)],
        placement: &Placement,
    ) -> Self {
        let root = tempfile::tempdir().unwrap();
        let socket_dir = root.path().join("run");
        std::fs::create_dir(&socket_dir).unwrap();
        chown_to_postgres(root.path());
        let data_dir = root.path().join("pgdata");
        let log = root.path().join("instance.log");
        let (status_port, metrics_port) = (free_port(), free_port());
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |items: &[&dyn AsRef<std::ffi::OsStr>]| {
            args.extend(items.iter().map(|item| item.as_ref().to_os_string()));
        };
        push(&[
            &"instance",
            &"--cluster",
            &cluster,
            &"--namespace",
            &"tenant",
        ]);
        push(&[&"--pod-name", &pod, &"--data-dir", &data_dir]);
        if !extra.iter().any(|arg| arg.starts_with("--bin-dir")) {
            push(&[&"--bin-dir", &bin_dir()]);
        }
        push(&[&"--port", &port.to_string()]);
        push(&[
            &"--listen-addresses",
            &placement.listen,
            &"--socket-dir",
            &socket_dir,
        ]);
        push(&[&"--local-host", &socket_dir]);
        let listen = &placement.listen;
        push(&[&"--status-address", &format!("{listen}:{status_port}")]);
        push(&[&"--metrics-address", &format!("{listen}:{metrics_port}")]);
        if let Some(spec_file) = spec_file {
            push(&[&"--spec-file", &spec_file]);
        }
        push(&[&"--maintenance-period-ms", &"200"]);
        push(&[&"--reaper"]);
        if !extra.iter().any(|arg| arg.starts_with("--log-format")) {
            push(&[&"--log-format", &"text"]);
        }
        for (peer, peer_port) in peers {
            let host = placement.peer_host(peer);
            push(&[&"--peer", &format!("{peer}={host}:{peer_port}")]);
        }
        // Outside the failover tests no HA engine keeps a primary in contact: one
        // whose standbys are all gone must not stop its server.
        if !extra
            .iter()
            .any(|arg| arg.starts_with("--fence-when-isolated"))
        {
            push(&[&"--fence-when-isolated", &"false"]);
        }
        for arg in extra {
            push(&[arg]);
        }
        let mut instance = Self {
            pod: pod.to_string(),
            host: placement.reach(),
            netns: placement.netns.clone(),
            superuser: superuser.to_string(),
            port,
            status_port,
            metrics_port,
            data_dir,
            socket_dir,
            log,
            args,
            child: None,
            root,
        };
        instance.start(env);
        instance
    }

    fn start(&mut self, env: &[(String, String)]) {
        let program = Path::new(env!("CARGO_BIN_EXE_postgres-operator"));
        let mut cmd = match &self.netns {
            None => command(program),
            // `ip netns exec` and `setpriv` exec in place: the pid stays the reaper's.
            Some(netns) => {
                let mut cmd = std::process::Command::new("ip");
                cmd.args(["netns", "exec", netns])
                    .args(as_postgres())
                    .arg(program);
                cmd
            }
        };
        cmd.args(&self.args);
        // The test's environment must not leak in (PGHOST, PGDATA...).
        for var in [
            "PGHOST",
            "PGPORT",
            "PGDATA",
            "CLUSTER_NAME",
            "POD_NAME",
            "POD_NAMESPACE",
            "RESTIC_REPOSITORY_BASE",
            "AWS_DEFAULT_REGION",
        ] {
            cmd.env_remove(var);
        }
        cmd.envs(env.iter().map(|(name, value)| (name, value)));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Starts the instance again after it exited, on the same data directory and ports
    /// (a restarted container), with `env`.
    pub fn restart_with_env(&mut self, env: &[(String, String)]) {
        assert!(self.child.is_none(), "{} still runs", self.pod);
        self.start(env);
    }

    /// The reaper's pid (the process a kubelet would signal).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or_default()
    }

    /// The instance's socket directory (an `emptyDir` in a pod).
    pub fn socket_dir(&self) -> PathBuf {
        self.root.path().join("run")
    }

    /// The file the instance logs to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET `path` on the status port: (status code, body), `None` when not listening.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get_at(&self.host, self.status_port, path).await
    }

    pub async fn metrics(&self) -> String {
        http_get_at(&self.host, self.metrics_port, "/metrics")
            .await
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// `/status` as JSON.
    pub async fn status(&self) -> Option<serde_json::Value> {
        let (code, body) = self.get("/status").await?;
        (code == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    }

    /// Waits until `/readyz` answers 200 (a standby: streaming).
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            if self
                .get("/readyz")
                .await
                .is_some_and(|(code, _)| code == 200)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{} not ready in 90 s; log:\n{}", self.pod, self.log());
    }

    /// The superuser over TCP with its password (the socket is the instance
    /// manager's, with peer authentication), in `database`.
    pub async fn admin(&self, database: &str) -> tokio_postgres::Client {
        self.connect_as("postgres", &self.superuser, database)
            .await
            .unwrap()
    }

    /// A password login over TCP, as an application makes.
    pub async fn connect_as(
        &self,
        user: &str,
        password: &str,
        database: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        if self.host == "127.0.0.1" {
            return login(self.port, user, password, database).await;
        }
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .user(user)
            .password(password)
            .dbname(database);
        // From another network, as from another pod: TLS or nothing (pg_hba).
        super::postgres::connect_tls_unverified(&config).await
    }

    /// The postmaster's pid, from postmaster.pid.
    pub fn postmaster_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.data_dir.join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// kill -9 of the postmaster, then waits until a new one serves; returns the old pid.
    pub async fn kill_postmaster(&self) -> u32 {
        let old = self.postmaster_pid().expect("a postmaster runs");
        std::process::Command::new("kill")
            .args(["-KILL", &old.to_string()])
            .status()
            .unwrap();
        super::wait_until("a new postmaster serves", 60, || async {
            self.postmaster_pid().is_some_and(|pid| pid != old)
                && self
                    .get("/readyz")
                    .await
                    .is_some_and(|(code, _)| code == 200)
        })
        .await;
        old
    }

    /// Every live process whose command line mentions this instance's directory.
    pub fn processes(&self) -> Vec<(u32, String)> {
        processes_mentioning(&self.root.path().to_string_lossy())
    }

    /// Sends `signal` to the reaper.
    pub fn signal(&self, signal: &str) {
        // Never `kill 0`: that is the test's whole process group.
        if self.child.is_none() {
            return;
        }
        let _ = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status();
    }

    /// SIGKILL to every process of the instance at once (a lost pod or node: no
    /// shutdown, sockets closed by the kernel), then reaps the reaper; `restart_with_env`
    /// starts it again on the same data directory.
    pub fn kill(&mut self) {
        for (pid, _) in self.processes() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for the exit (as the kubelet would, within the grace period).
    pub fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        self.signal("TERM");
        let mut child = self.child.take()?;
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- log of {} ---\n{}", self.pod, self.log());
        }
        if self.child.is_some() {
            self.terminate(Duration::from_secs(30));
        }
        for (pid, _) in self.processes() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// Live processes whose command line contains `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(needle).then_some((pid, cmdline))
        })
        .collect()
}

/// Zombie children of `parent`.
pub fn zombies_of(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
                let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
                let fields: Vec<&str> = rest.split_whitespace().collect();
                fields.first() == Some(&"Z") && fields.get(1) == Some(&parent.to_string().as_str())
            })
        })
        .collect()
}

/// A minimal HTTP/1.1 GET on loopback.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_get_at("127.0.0.1", port, path).await
}

/// A minimal HTTP/1.1 GET of `host:port`.
pub async fn http_get_at(host: &str, port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect((host, port)).await.ok()?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}
