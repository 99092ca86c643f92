//! The configuration files an instance keeps in its data directory: postgresql.conf and
//! pg_hba.conf (rendered from the spec by the pure builders), the run-time include
//! (replication source or synchronous quorum) and `standby.signal`. Files are rewritten
//! only when their content changes, atomically, so a reload sees a whole file.

use std::path::{Path, PathBuf};

use super::postgres_logs::log_directory;
use super::tls_files::TlsPaths;
use crate::manifests::Cluster;
use crate::manifests::config::{RUNTIME_CONF, pg_hba_conf, postgresql_conf, quote_literal};
use crate::manifests::secrets::REPLICATION_USER;

pub const POSTGRESQL_CONF: &str = "postgresql.conf";
pub const PG_HBA_CONF: &str = "pg_hba.conf";
pub const STANDBY_SIGNAL: &str = "standby.signal";

/// What this instance is, with what the run-time include needs for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuntimeRole {
    /// `synchronous_standby_names` (empty: asynchronous).
    Primary { sync_standby_names: String },
    /// Streams from `primary` as `application_name`, through its own slot.
    Standby {
        primary: Endpoint,
        password: String,
        application_name: String,
    },
    /// A standby fenced off its primary: it streams from nobody (its WAL position stops
    /// moving, and a primary still alive gets no acknowledgement from it).
    Detached,
}

/// The replication slot of a standby: its pod name folded to what slot names allow.
pub fn slot_name(application_name: &str) -> String {
    application_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// A libpq connection-string value, single-quoted with `\` and `'` escaped.
pub fn conninfo_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Where this instance listens. In a pod the same as postgresql.conf says; elsewhere
/// (tests, several instances on one host) its own port and socket directory. Set here
/// rather than on the postmaster's command line, where every reload would report them
/// as changed and waiting for a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listen {
    pub port: u16,
    pub socket_dir: String,
    pub addresses: String,
}

/// Another instance's PostgreSQL as this one reaches it: by the name its certificate
/// holds, over TLS verified against the cluster's CA (`sslmode=verify-full`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The pod's name under the headless Service, which the server certificate holds.
    pub host: String,
    /// The address to connect to instead of resolving `host` (tests, where every
    /// instance is on loopback or in a network namespace).
    pub hostaddr: Option<String>,
    pub port: u16,
    /// The cluster's CA certificate, to verify the server with.
    pub ca_file: String,
}

impl Endpoint {
    /// The libpq connection parameters that reach it (no user, password or database).
    pub fn conninfo(&self) -> String {
        let mut conninfo = format!("host={}", conninfo_value(&self.host));
        if let Some(address) = &self.hostaddr {
            conninfo.push_str(&format!(" hostaddr={}", conninfo_value(address)));
        }
        conninfo.push_str(&format!(
            " port={} sslmode=verify-full sslrootcert={}",
            self.port,
            conninfo_value(&self.ca_file)
        ));
        // No client certificate: named beside the CA (where none is), or libpq would
        // look in $HOME/.postgresql, which may not be readable (a root-owned HOME).
        let dir = Path::new(&self.ca_file).parent().unwrap_or(Path::new("/"));
        conninfo.push_str(&format!(
            " sslcert={} sslkey={}",
            conninfo_value(&dir.join("client.crt").to_string_lossy()),
            conninfo_value(&dir.join("client.key").to_string_lossy())
        ));
        conninfo
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.hostaddr {
            Some(address) => write!(f, "{} ({address}):{}", self.host, self.port),
            None => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// How a standby (or its clone) connects to the primary as the replication user.
pub fn replication_conninfo(primary: &Endpoint, password: &str, application_name: &str) -> String {
    format!(
        "{} user={REPLICATION_USER} password={} application_name={}",
        primary.conninfo(),
        conninfo_value(password),
        conninfo_value(application_name)
    )
}

/// The run-time include for `role`.
pub fn runtime_conf(role: &RuntimeRole, listen: &Listen) -> String {
    let mut conf = format!(
        "# Written by the instance manager at run time; do not edit.\nport = {}\nunix_socket_directories = {}\nlisten_addresses = {}\nlog_directory = {}\n",
        listen.port,
        quote_literal(&listen.socket_dir),
        quote_literal(&listen.addresses),
        quote_literal(&log_directory(Path::new(&listen.socket_dir)).to_string_lossy())
    );
    // The server certificate the manager keeps in the run-time directory (`tls_files`):
    // every remote connection is TLS (pg_hba.conf has only `hostssl` rules for them).
    let tls = TlsPaths::under(Path::new(&listen.socket_dir));
    conf.push_str(&format!(
        "ssl = on\nssl_cert_file = {}\nssl_key_file = {}\nssl_min_protocol_version = 'TLSv1.2'\n",
        quote_literal(&tls.cert.to_string_lossy()),
        quote_literal(&tls.key.to_string_lossy()),
    ));
    match role {
        RuntimeRole::Primary { sync_standby_names } => {
            conf.push_str(&format!(
                "synchronous_standby_names = {}\n",
                quote_literal(sync_standby_names)
            ));
        }
        RuntimeRole::Standby {
            primary,
            password,
            application_name,
        } => {
            let conninfo = replication_conninfo(primary, password, application_name);
            conf.push_str(&format!(
                "primary_conninfo = {}\nprimary_slot_name = {}\nsynchronous_standby_names = ''\n",
                quote_literal(&conninfo),
                quote_literal(&slot_name(application_name))
            ));
        }
        RuntimeRole::Detached => {
            conf.push_str(
                "primary_conninfo = ''\nprimary_slot_name = ''\nsynchronous_standby_names = ''\n",
            );
        }
    }
    conf
}

/// Every file of one instance, rendered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigFiles {
    pub postgresql_conf: String,
    pub pg_hba_conf: String,
    pub runtime_conf: String,
    pub standby: bool,
}

impl ConfigFiles {
    pub fn render(cluster: &Cluster, role: &RuntimeRole, listen: &Listen) -> Self {
        Self {
            postgresql_conf: postgresql_conf(cluster),
            pg_hba_conf: pg_hba_conf(cluster),
            runtime_conf: runtime_conf(role, listen),
            standby: !matches!(role, RuntimeRole::Primary { .. }),
        }
    }

    /// Writes what differs from the files in `data_dir`; true when anything changed.
    pub fn write(&self, data_dir: &Path) -> Result<bool, FileError> {
        let mut changed = false;
        for (name, content) in [
            (POSTGRESQL_CONF, &self.postgresql_conf),
            (PG_HBA_CONF, &self.pg_hba_conf),
            (RUNTIME_CONF, &self.runtime_conf),
        ] {
            changed |= write_if_changed(&data_dir.join(name), content)?;
        }
        let signal = data_dir.join(STANDBY_SIGNAL);
        match (self.standby, signal.exists()) {
            (true, false) => {
                std::fs::write(&signal, "").map_err(|source| FileError::at(&signal, source))?;
                changed = true;
            }
            (false, true) => {
                std::fs::remove_file(&signal).map_err(|source| FileError::at(&signal, source))?;
                changed = true;
            }
            _ => {}
        }
        Ok(changed)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct FileError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl FileError {
    fn at(path: &Path, source: std::io::Error) -> Self {
        Self {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Writes the run-time include alone (the quorum keeper's change of
/// `synchronous_standby_names`); true when it changed.
pub fn write_runtime_conf(data_dir: &Path, content: &str) -> Result<bool, FileError> {
    write_if_changed(&data_dir.join(RUNTIME_CONF), content)
}

/// The manager and the quorum keeper both write the run-time include, through one
/// temporary file name: one writer at a time.
static WRITING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Replaces `path` through a temporary file and a rename; the files hold passwords, so
/// only the owner may read them.
fn write_if_changed(path: &Path, content: &str) -> Result<bool, FileError> {
    let _writing = WRITING.lock().unwrap_or_else(|e| e.into_inner());
    if std::fs::read_to_string(path).is_ok_and(|current| current == content) {
        return Ok(false);
    }
    let temporary = path.with_extension("tmp");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(|source| FileError::at(&temporary, source))?;
        file.write_all(content.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|source| FileError::at(&temporary, source))?;
    }
    std::fs::rename(&temporary, path).map_err(|source| FileError::at(path, source))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::test_support::cluster_from_yaml;

    fn listen() -> Listen {
        Listen {
            port: 5432,
            socket_dir: "/var/run/postgresql".to_string(),
            addresses: "*".to_string(),
        }
    }

    fn standby() -> RuntimeRole {
        RuntimeRole::Standby {
            primary: Endpoint {
                host: "postgres-demo-0.postgres-demo-headless".to_string(),
                hostaddr: None,
                port: 5432,
                ca_file: "/var/run/postgresql/tls/ca.crt".to_string(),
            },
            password: "it's a \\ secret".to_string(),
            application_name: "postgres-demo-1".to_string(),
        }
    }

    #[test]
    fn a_standby_streams_from_the_primary_through_its_own_slot() {
        let conf = runtime_conf(&standby(), &listen());
        assert!(conf.contains("\nport = 5432\nunix_socket_directories = '/var/run/postgresql'\nlisten_addresses = '*'\nlog_directory = '/var/run/postgresql/log'\n"));
        assert!(conf.contains(
            "primary_conninfo = 'host=''postgres-demo-0.postgres-demo-headless'' port=5432 sslmode=verify-full sslrootcert=''/var/run/postgresql/tls/ca.crt'' sslcert=''/var/run/postgresql/tls/client.crt'' sslkey=''/var/run/postgresql/tls/client.key'' user=streaming_replica password=''it\\\\''s a \\\\\\\\ secret'' application_name=''postgres-demo-1'''\n"
        ), "{conf}");
        // The server certificate the manager keeps beside the socket.
        assert!(conf.contains(
            "ssl = on\nssl_cert_file = '/var/run/postgresql/tls/server.crt'\nssl_key_file = '/var/run/postgresql/tls/server.key'\nssl_min_protocol_version = 'TLSv1.2'\n"
        ), "{conf}");
        assert!(conf.contains("primary_slot_name = 'postgres_demo_1'\n"));
        assert!(conf.contains("synchronous_standby_names = ''\n"));
    }

    #[test]
    fn an_endpoint_with_an_address_verifies_the_name_and_connects_to_the_address() {
        let endpoint = Endpoint {
            host: "postgres-demo-0.postgres-demo-headless.tenant.svc".to_string(),
            hostaddr: Some("10.0.0.7".to_string()),
            port: 6000,
            ca_file: "/run/tls/ca.crt".to_string(),
        };
        assert_eq!(
            endpoint.conninfo(),
            "host='postgres-demo-0.postgres-demo-headless.tenant.svc' hostaddr='10.0.0.7' port=6000 sslmode=verify-full sslrootcert='/run/tls/ca.crt' sslcert='/run/tls/client.crt' sslkey='/run/tls/client.key'"
        );
        assert_eq!(
            endpoint.to_string(),
            "postgres-demo-0.postgres-demo-headless.tenant.svc (10.0.0.7):6000"
        );
    }

    #[test]
    fn conninfo_values_are_quoted() {
        assert_eq!(conninfo_value("p w'\\"), "'p w\\'\\\\'");
    }

    #[test]
    fn a_primary_sets_only_the_quorum() {
        let conf = runtime_conf(
            &RuntimeRole::Primary {
                sync_standby_names: "ANY 1 (\"postgres-demo-1\")".to_string(),
            },
            &listen(),
        );
        assert!(conf.contains("synchronous_standby_names = 'ANY 1 (\"postgres-demo-1\")'\n"));
        assert!(!conf.contains("primary_conninfo"));
    }

    #[test]
    fn files_are_written_once_and_the_signal_follows_the_role() {
        let dir = tempfile::tempdir().unwrap();
        let (postgres, settings) = cluster_from_yaml("{}");
        let cluster = Cluster::new(&postgres, "ns", &settings);
        let as_standby = ConfigFiles::render(&cluster, &standby(), &listen());
        assert!(as_standby.write(dir.path()).unwrap());
        assert!(dir.path().join(STANDBY_SIGNAL).exists());
        assert!(!as_standby.write(dir.path()).unwrap(), "nothing changed");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(RUNTIME_CONF))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "holds the replication password");

        let as_primary = ConfigFiles::render(
            &cluster,
            &RuntimeRole::Primary {
                sync_standby_names: String::new(),
            },
            &listen(),
        );
        assert!(as_primary.write(dir.path()).unwrap());
        assert!(!dir.path().join(STANDBY_SIGNAL).exists());
        assert_eq!(
            std::fs::read_to_string(dir.path().join(POSTGRESQL_CONF)).unwrap(),
            postgresql_conf(&cluster)
        );
    }
}
