//! Asks PostgreSQL itself whether it takes a configuration, before the instance manager
//! installs it. Two questions, both answered without touching the running server:
//!
//! - does it read? `postgres -C` parses the candidate files exactly as a postmaster start
//!   would (syntax, unknown names, invalid or out-of-range values, the data directory's
//!   `postgresql.auto.conf` included), and is safe to run beside a live server;
//! - does it start? A throwaway postmaster on a small scratch cluster starts with the
//!   candidate files, which catches what only a start finds (shared memory that cannot
//!   be allocated, settings that contradict each other). Asked only while the server
//!   runs: otherwise the real start answers, and a failure goes back to the last good
//!   configuration. Never after installing: PostgreSQL keeps a refused restart-only
//!   setting pending even once the file no longer names it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::files::{ConfigFiles, POSTGRESQL_CONF};
use crate::manifests::config::RUNTIME_CONF;

/// PostgreSQL's verdict on a configuration it does not take.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rejection {
    /// The setting PostgreSQL names (empty when it names none).
    pub setting: String,
    /// What PostgreSQL said.
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("PostgreSQL refuses {}: {}", .0.setting, .0.message)]
    Rejected(Rejection),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("preparing the scratch cluster: {0}")]
    Initdb(String),
}

impl CheckError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| CheckError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// What to report: PostgreSQL's verdict, or why there was none.
    pub fn rejection(&self) -> Rejection {
        match self {
            CheckError::Rejected(rejection) => rejection.clone(),
            other => Rejection {
                setting: String::new(),
                message: format!("cannot check the configuration: {other}"),
            },
        }
    }
}

/// How long a scratch postmaster may take to accept connections.
const PROBE_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long it may take to stop once it has.
const PROBE_STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Runs the checks for one instance. Everything it writes lives in `dir`, beside the data
/// directory (on the same volume, which the instance may write; not inside it, where
/// pg_basebackup would copy it to the standbys).
#[derive(Clone, Debug)]
pub struct Checker {
    pub bin_dir: PathBuf,
    pub data_dir: PathBuf,
    pub dir: PathBuf,
}

impl Checker {
    /// `postgres -C` on the candidate files, read with the data directory's
    /// `postgresql.auto.conf` as the next start will read them. Blocking: a process that
    /// reads two files and exits.
    pub fn check(&self, files: &ConfigFiles) -> Result<(), CheckError> {
        let conf_dir = self.dir.join("candidate");
        write_conf_dir(&conf_dir, files)?;
        let config_file = conf_dir.join(POSTGRESQL_CONF);
        let program = self.bin_dir.join("postgres");
        let output = Command::new(&program)
            .arg("-C")
            .arg("data_directory")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-c")
            .arg(format!("config_file={}", config_file.display()))
            .stdin(Stdio::null())
            .output()
            .map_err(CheckError::io(&program))?;
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(CheckError::Rejected(rejection(
            &stderr,
            &files.postgresql_conf,
            &[],
        )))
    }

    /// Starts a scratch postmaster with the candidate files and stops it again; `changed`
    /// (the settings that differ from the running file) name the culprit when PostgreSQL
    /// does not. Blocking: about half a second (the first time, an initdb too).
    pub fn probe_start(&self, files: &ConfigFiles, changed: &[String]) -> Result<(), CheckError> {
        let cluster = self.dir.join("probe");
        self.ensure_probe_cluster(&cluster)?;
        let run_dir = self.dir.join("probe-run");
        write_conf_dir(&run_dir, files)?;
        let program = self.bin_dir.join("postgres");
        // Command-line settings win over the files: no TCP, its own socket directory,
        // and its messages on its stderr (read below), not in the instance's log pipes.
        let mut child = Command::new(&program)
            .arg("-D")
            .arg(&cluster)
            .args([
                "-c",
                "listen_addresses=",
                "-c",
                "logging_collector=off",
                "-c",
            ])
            .arg(format!(
                "config_file={}",
                run_dir.join(POSTGRESQL_CONF).display()
            ))
            .arg("-c")
            .arg(format!("unix_socket_directories={}", run_dir.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(CheckError::io(&program))?;
        let stderr = child.stderr.take();
        let log = std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut stderr) = stderr {
                let _ = stderr.read_to_string(&mut text);
            }
            text
        });
        let pid_file = cluster.join("postmaster.pid");
        let started = Instant::now();
        let outcome = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break Err(format!("the postmaster exited at start ({status})"));
            }
            if postmaster_status(&pid_file).as_deref() == Some("ready") {
                break Ok(());
            }
            if started.elapsed() > PROBE_START_TIMEOUT {
                break Err(format!(
                    "the postmaster did not start within {} s",
                    PROBE_START_TIMEOUT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        stop(&mut child);
        let stderr = log.join().unwrap_or_default();
        outcome.map_err(|fallback| {
            let mut found = rejection(&stderr, &files.postgresql_conf, changed);
            if found.message.is_empty() {
                found.message = fallback;
            }
            CheckError::Rejected(found)
        })
    }

    /// A small cluster of the same major version to start scratch postmasters on, made
    /// once (initdb) and kept.
    fn ensure_probe_cluster(&self, cluster: &Path) -> Result<(), CheckError> {
        let version = |dir: &Path| std::fs::read_to_string(dir.join("PG_VERSION")).ok();
        if cluster.join("global").is_dir() && version(cluster) == version(&self.data_dir) {
            return Ok(());
        }
        if cluster.exists() {
            std::fs::remove_dir_all(cluster).map_err(CheckError::io(cluster))?;
        }
        let program = self.bin_dir.join("initdb");
        let output = Command::new(&program)
            .arg("-D")
            .arg(cluster)
            .args(["--no-sync", "--auth=trust", "--username=postgres"])
            .stdin(Stdio::null())
            .output()
            .map_err(CheckError::io(&program))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(CheckError::Initdb(
                String::from_utf8_lossy(&output.stderr).trim().to_string(),
            ))
        }
    }
}

/// Fast shutdown, then SIGKILL: a scratch cluster has nothing worth waiting for.
fn stop(child: &mut Child) {
    if let Some(pid) = rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap_or(0)) {
        // ESRCH when it has already exited.
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
    }
    let deadline = Instant::now() + PROBE_STOP_TIMEOUT;
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The postmaster's state from the 8th line of `postmaster.pid` (`starting`, `ready`...).
fn postmaster_status(pid_file: &Path) -> Option<String> {
    std::fs::read_to_string(pid_file)
        .ok()?
        .lines()
        .nth(7)
        .map(|line| line.trim().to_string())
}

/// postgresql.conf and its run-time include, side by side as in the data directory.
fn write_conf_dir(dir: &Path, files: &ConfigFiles) -> Result<(), CheckError> {
    std::fs::create_dir_all(dir).map_err(CheckError::io(dir))?;
    for (name, content) in [
        (POSTGRESQL_CONF, &files.postgresql_conf),
        (RUNTIME_CONF, &files.runtime_conf),
    ] {
        let path = dir.join(name);
        write_private(&path, content)?;
    }
    Ok(())
}

/// The run-time include holds the replication password: only the owner may read it.
pub(crate) fn write_private(path: &Path, content: &str) -> Result<(), CheckError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(content.as_bytes()))
        .map_err(CheckError::io(path))
}

const SEVERITIES: &[&str] = &[
    "FATAL:  ",
    "ERROR:  ",
    "LOG:  ",
    "WARNING:  ",
    "DETAIL:  ",
    "HINT:  ",
];

/// Lines that only say that something else went wrong.
const NOISE: &[&str] = &[
    "contains errors",
    "starting PostgreSQL",
    "listening on",
    "database system is",
    "database system was",
    "aborting startup",
    "redirecting log output",
    "shutting down",
    "received fast shutdown request",
    "background worker",
];

/// A line without its prefix (whatever `log_line_prefix` says) and its severity.
fn strip_prefix(line: &str) -> (&str, &str) {
    SEVERITIES
        .iter()
        .filter_map(|severity| {
            line.rfind(severity)
                .map(|at| (severity.trim_end(), &line[at + severity.len()..]))
        })
        .max_by_key(|(_, rest)| std::cmp::Reverse(rest.len()))
        .unwrap_or(("", line.trim()))
}

/// PostgreSQL's stderr as a rejection: the first line that says what is wrong (with its
/// DETAIL and HINT), and the setting it names; else the first of `suspects` (settings
/// just changed) the message mentions, else the first of them.
pub fn rejection(stderr: &str, postgresql_conf: &str, suspects: &[String]) -> Rejection {
    let mut message: Vec<&str> = Vec::new();
    for line in stderr.lines().filter(|line| !line.trim().is_empty()) {
        let (severity, text) = strip_prefix(line);
        let follows = matches!(severity, "DETAIL:" | "HINT:");
        if message.is_empty() {
            if !follows && !NOISE.iter().any(|noise| text.contains(noise)) {
                message.push(text);
            }
        } else if follows {
            message.push(text);
        } else {
            break;
        }
    }
    let message = message.join(" ");
    let setting = quoted_parameter(&message)
        .or_else(|| syntax_error_setting(&message, postgresql_conf))
        .or_else(|| {
            suspects
                .iter()
                .filter_map(|suspect| Some((message.find(suspect.as_str())?, suspect)))
                .min_by_key(|(at, _)| *at)
                .map(|(_, suspect)| suspect)
                .or(suspects.first())
                .cloned()
        })
        .unwrap_or_default();
    Rejection { setting, message }
}

/// `... parameter "NAME" ...`, as PostgreSQL words unknown names and bad values.
fn quoted_parameter(message: &str) -> Option<String> {
    let (_, rest) = message.split_once("parameter \"")?;
    let (name, _) = rest.split_once('"')?;
    Some(name.to_string())
}

/// `syntax error in file "..." line N`: the setting on that line of postgresql.conf.
fn syntax_error_setting(message: &str, postgresql_conf: &str) -> Option<String> {
    let (_, rest) = message.split_once("syntax error in file \"")?;
    let (_, rest) = rest.split_once("\" line ")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let line = postgresql_conf
        .lines()
        .nth(digits.parse::<usize>().ok()?.checked_sub(1)?)?;
    let (name, _) = line.split_once('=')?;
    Some(name.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_value_names_its_parameter() {
        let stderr = "2026-12-01 05:22:30.745 GMT [10545] LOG:  invalid value for parameter \"max_connections\": \"lots\"\n\
                      2026-12-01 05:22:30.745 GMT [10545] FATAL:  configuration file \"/x/postgresql.conf\" contains errors\n";
        assert_eq!(
            rejection(stderr, "", &[]),
            Rejection {
                setting: "max_connections".to_string(),
                message: "invalid value for parameter \"max_connections\": \"lots\"".to_string(),
            }
        );
    }

    #[test]
    fn a_hint_follows_its_message_whatever_the_log_line_prefix() {
        let stderr = "x FATAL:  LOG:  invalid value for parameter \"work_mem\": \"4 parsecs\"\n\
                      x FATAL:  HINT:  Valid units for this parameter are \"B\", \"kB\".\n\
                      x FATAL:  FATAL:  configuration file \"/x/postgresql.conf\" contains errors\n";
        let found = rejection(stderr, "", &[]);
        assert_eq!(found.setting, "work_mem");
        assert_eq!(
            found.message,
            "invalid value for parameter \"work_mem\": \"4 parsecs\" Valid units for this parameter are \"B\", \"kB\"."
        );
    }

    #[test]
    fn an_unknown_name_is_the_setting() {
        let stderr = "LOG:  unrecognized configuration parameter \"no_such_setting\" in file \"/x/postgresql.conf\" line 20\n";
        assert_eq!(rejection(stderr, "", &[]).setting, "no_such_setting");
    }

    #[test]
    fn a_syntax_error_names_the_setting_on_its_line() {
        let conf = "# header\nmax_connections = 100\nwork_mem = '4MB' x\n";
        let stderr = "LOG:  syntax error in file \"/x/postgresql.conf\" line 3, near token \"x\"\n";
        assert_eq!(rejection(stderr, conf, &[]).setting, "work_mem");
    }

    #[test]
    fn a_start_failure_without_a_parameter_blames_what_changed() {
        let stderr = "postgres: superuser_reserved_connections (100) must be less than max_connections (100)\n";
        let suspects = [
            "max_connections".to_string(),
            "superuser_reserved_connections".to_string(),
        ];
        let found = rejection(stderr, "", &suspects);
        assert_eq!(
            found.setting, "superuser_reserved_connections",
            "the first it mentions"
        );
        assert!(found.message.starts_with("postgres: superuser_reserved"));
        let found = rejection(
            "FATAL:  could not map anonymous shared memory: Cannot allocate memory\n",
            "",
            &["shared_buffers".to_string()],
        );
        assert_eq!(found.setting, "shared_buffers");
    }

    #[test]
    fn the_postmaster_state_is_the_eighth_line_of_its_pid_file() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("postmaster.pid");
        assert_eq!(postmaster_status(&pid_file), None);
        std::fs::write(&pid_file, "1\n/d\n1\n5432\n/run\n*\n1 2\nready   \n").unwrap();
        assert_eq!(postmaster_status(&pid_file).as_deref(), Some("ready"));
    }
}
