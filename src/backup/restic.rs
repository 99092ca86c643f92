//! The restic commands a backup and a restore use, with the credentials in the environment
//! of each command only, and restic's failures turned into messages a user can act on.

use std::path::PathBuf;

use serde::Deserialize;
use tokio::process::Command;

use super::s3::S3Credentials;
use super::stream::{self, PipeError};

/// Tag keys the operator puts on every snapshot.
pub const TAG_RUN: &str = "run";
pub const TAG_CLUSTER: &str = "cluster";

#[derive(Debug, thiserror::Error)]
#[error("restic {action} in {repository}: {message}")]
pub struct ResticError {
    pub repository: String,
    pub action: &'static str,
    pub message: String,
}

/// One snapshot as `restic snapshots --json` lists it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Snapshot {
    pub id: String,
    pub short_id: String,
    /// RFC 3339.
    pub time: String,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    #[serde(default)]
    pub paths: Vec<String>,
}

impl Snapshot {
    /// The value of tag `<key>=<value>`.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.iter().flatten().find_map(|tag| {
            tag.strip_prefix(key)
                .and_then(|rest| rest.strip_prefix('='))
        })
    }
}

/// What `restic backup --json` reports at the end.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct BackupSummary {
    pub snapshot_id: String,
    #[serde(default)]
    pub data_added: i64,
    #[serde(default)]
    pub total_bytes_processed: i64,
}

#[derive(Debug, Deserialize)]
struct ForgetGroup {
    #[serde(default)]
    keep: Option<Vec<Snapshot>>,
}

/// restic with one set of credentials.
#[derive(Clone, Debug)]
pub struct Restic {
    binary: PathBuf,
    credentials: S3Credentials,
    password: String,
}

impl Restic {
    pub fn new(binary: PathBuf, credentials: S3Credentials, password: String) -> Self {
        Self {
            binary,
            credentials,
            password,
        }
    }

    /// `restic -r <repository>` with the credentials, and nothing inherited that could point
    /// it elsewhere (RESTIC_REPOSITORY, a password file, a cache in an unwritable home).
    pub fn command(&self, repository: &str) -> Command {
        let mut command = Command::new(&self.binary);
        for inherited in [
            "RESTIC_REPOSITORY",
            "RESTIC_REPOSITORY_FILE",
            "RESTIC_PASSWORD_FILE",
            "RESTIC_PASSWORD_COMMAND",
            "RESTIC_KEY_HINT",
            "RESTIC_CACERT",
        ] {
            command.env_remove(inherited);
        }
        // The flag, not RESTIC_CACERT: older releases (Debian's 0.14) know only the flag.
        if let Some(ca_bundle) = &self.credentials.ca_bundle {
            command.arg("--cacert").arg(ca_bundle);
        }
        command
            .env("RESTIC_PASSWORD", &self.password)
            .env("AWS_ACCESS_KEY_ID", &self.credentials.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.credentials.secret_key)
            .env("AWS_DEFAULT_REGION", &self.credentials.region)
            .arg("--repo")
            .arg(repository)
            .arg("--no-cache")
            .arg("--option")
            .arg(format!("s3.region={}", self.credentials.region));
        command
    }

    async fn run(
        &self,
        repository: &str,
        action: &'static str,
        args: &[&str],
    ) -> Result<String, ResticError> {
        let mut command = self.command(repository);
        command.args(args);
        let started = std::time::Instant::now();
        let result = stream::output(command)
            .await
            .map_err(|error| failure(repository, action, error));
        tracing::debug!(
            repository,
            action,
            elapsed_ms = started.elapsed().as_millis() as u64,
            ok = result.is_ok(),
            "restic"
        );
        result
    }

    /// Runs `op` on `repository`; when a lock is in the way, removes the stale locks (those of
    /// killed runs; a live process keeps its own) and tries once more.
    pub async fn unlocking<T, Op, Fut>(&self, repository: &str, op: Op) -> Result<T, ResticError>
    where
        Op: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, ResticError>>,
    {
        match op().await {
            Err(error) if error.is_locked() => {
                self.unlock(repository).await?;
                op().await
            }
            other => other,
        }
    }

    /// Opens the repository, creating it when nothing is there yet. Returns whether it was
    /// created. The bucket must exist (see `s3::check_bucket`): `restic init` would make it.
    pub async fn ensure_repository(&self, repository: &str) -> Result<bool, ResticError> {
        match self.run(repository, "open", &["cat", "config"]).await {
            Ok(_) => Ok(false),
            Err(error) if is_missing_repository(&error.message) => {
                self.run(repository, "init", &["init"]).await?;
                Ok(true)
            }
            Err(error) => Err(error),
        }
    }

    /// Snapshots of `host`, optionally only those of `path`, oldest first.
    pub async fn snapshots(
        &self,
        repository: &str,
        host: &str,
        path: Option<&str>,
    ) -> Result<Vec<Snapshot>, ResticError> {
        let mut args = vec!["snapshots", "--json", "--host", host];
        if let Some(path) = path {
            args.extend(["--path", path]);
        }
        let out = self.run(repository, "list snapshots", &args).await?;
        let mut snapshots: Vec<Snapshot> = parse_json(repository, "list snapshots", &out)?;
        snapshots.sort_by(|a, b| a.time.cmp(&b.time));
        Ok(snapshots)
    }

    /// Applies a retention policy to the snapshots of `host` and `path`; returns those kept.
    pub async fn forget_by_policy(
        &self,
        repository: &str,
        host: &str,
        path: &str,
        policy: &[String],
    ) -> Result<Vec<Snapshot>, ResticError> {
        let mut args = vec!["forget", "--json", "--host", host, "--path", path];
        args.extend(policy.iter().map(String::as_str));
        let out = self.run(repository, "forget", &args).await?;
        // restic prints nothing at all when there is no snapshot.
        if out.trim().is_empty() {
            return Ok(Vec::new());
        }
        let groups: Vec<ForgetGroup> = parse_json(repository, "forget", &out)?;
        Ok(groups
            .into_iter()
            .flat_map(|g| g.keep.unwrap_or_default())
            .collect())
    }

    /// Forgets the snapshots `ids`.
    pub async fn forget_ids(&self, repository: &str, ids: &[String]) -> Result<(), ResticError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut args = vec!["forget"];
        args.extend(ids.iter().map(String::as_str));
        self.run(repository, "forget", &args).await.map(drop)
    }

    /// Removes data no snapshot references, including what an interrupted run uploaded.
    pub async fn prune(&self, repository: &str) -> Result<(), ResticError> {
        self.run(repository, "prune", &["prune"]).await.map(drop)
    }

    /// Removes stale locks (of processes that are gone), which a killed run leaves behind.
    pub async fn unlock(&self, repository: &str) -> Result<(), ResticError> {
        self.run(repository, "unlock", &["unlock"]).await.map(drop)
    }

    /// `restic backup` of its standard input as `/<file_name>`, tagged.
    pub fn backup_command(
        &self,
        repository: &str,
        file_name: &str,
        host: &str,
        tags: &[String],
    ) -> Command {
        let mut command = self.command(repository);
        command
            .args(["backup", "--json", "--quiet", "--stdin", "--stdin-filename"])
            .arg(file_name)
            .args(["--host", host]);
        for tag in tags {
            command.arg("--tag").arg(tag);
        }
        command
    }

    /// `restic dump <snapshot> /<file_name>`: the file on standard output.
    pub fn dump_command(&self, repository: &str, snapshot: &str, file_name: &str) -> Command {
        let mut command = self.command(repository);
        command
            .args(["dump", snapshot])
            .arg(format!("/{file_name}"));
        command
    }

    /// The content of one file of a snapshot.
    pub async fn read_file(
        &self,
        repository: &str,
        snapshot: &str,
        file_name: &str,
    ) -> Result<String, ResticError> {
        stream::output(self.dump_command(repository, snapshot, file_name))
            .await
            .map_err(|error| failure(repository, "dump", error))
    }
}

/// The summary line of `restic backup --json` output.
pub fn backup_summary(repository: &str, stdout: &str) -> Result<BackupSummary, ResticError> {
    stdout
        .lines()
        .rev()
        .filter(|line| line.contains("\"summary\""))
        .find_map(|line| serde_json::from_str::<BackupSummary>(line).ok())
        .ok_or_else(|| ResticError {
            repository: repository.to_string(),
            action: "backup",
            message: format!(
                "no summary in restic's output: {}",
                stdout.chars().take(300).collect::<String>()
            ),
        })
}

fn parse_json<T: serde::de::DeserializeOwned>(
    repository: &str,
    action: &'static str,
    out: &str,
) -> Result<T, ResticError> {
    serde_json::from_str(out.trim()).map_err(|e| ResticError {
        repository: repository.to_string(),
        action,
        message: format!("unreadable JSON from restic: {e}"),
    })
}

/// A restic failure with the reason restic gave, said plainly when it is a known one.
pub fn failure(repository: &str, action: &'static str, error: PipeError) -> ResticError {
    let message = match &error {
        PipeError::Failed { stderr, .. } => explain(stderr),
        other => other.to_string(),
    };
    ResticError {
        repository: repository.to_string(),
        action,
        message,
    }
}

const LOCKED_HINT: &str = "another restic process holds the repository lock";

impl ResticError {
    /// A lock is in the way: a live process's, or a stale one a killed run left.
    pub fn is_locked(&self) -> bool {
        self.message.starts_with(LOCKED_HINT)
    }
}

/// restic's "Fatal:" line, with a plain explanation in front of the ones users meet.
pub fn explain(stderr: &str) -> String {
    let fatal = stderr
        .lines()
        .find_map(|line| line.strip_prefix("Fatal: "))
        .unwrap_or(stderr)
        .trim()
        .to_string();
    let lower = stderr.to_ascii_lowercase();
    let hint = if lower.contains("wrong password or no key found") {
        Some("wrong restic password: the repository exists but resticPassword does not open it")
    } else if lower.contains("connection refused")
        || lower.contains("no such host")
        || lower.contains("i/o timeout")
    {
        Some("S3 endpoint unreachable")
    } else if lower.contains("access denied")
        || lower.contains("invalidaccesskeyid")
        || lower.contains("signaturedoesnotmatch")
    {
        Some("S3 rejected the credentials")
    } else if lower.contains("x509: certificate") || lower.contains("tls: failed to verify") {
        Some(
            "the S3 endpoint's certificate does not verify (an endpoint with a private CA needs backup.s3CASecretRef)",
        )
    } else if lower.contains("repository is already locked") {
        Some(LOCKED_HINT)
    } else {
        None
    };
    match hint {
        Some(hint) => format!("{hint} ({fatal})"),
        None => fatal,
    }
}

fn is_missing_repository(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    (lower.contains("unable to open config file") || lower.contains("is there a repository"))
        && (lower.contains("does not exist") || lower.contains("nosuchkey"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_in_the_way_is_recognised() {
        let locked = ResticError {
            repository: "r".to_string(),
            action: "forget",
            message: explain(
                "Fatal: unable to create lock in backend: repository is already locked by PID 7 on host by root (UID 0, GID 0)\n",
            ),
        };
        assert!(locked.is_locked());
        let other = ResticError {
            message: explain("Fatal: wrong password or no key found\n"),
            ..locked
        };
        assert!(!other.is_locked());
    }

    #[test]
    fn known_restic_failures_are_explained() {
        let wrong = explain("Fatal: wrong password or no key found\n");
        assert!(wrong.starts_with("wrong restic password"), "{wrong}");
        let refused = explain(
            "Fatal: unable to open config file: Stat: Head \"http://127.0.0.1:5999/b/c/config\": dial tcp 127.0.0.1:5999: connect: connection refused\nIs there a repository at the following location?\n",
        );
        assert!(
            refused.starts_with("S3 endpoint unreachable (unable to open config file"),
            "{refused}"
        );
        assert_eq!(explain("Fatal: something new"), "something new");
    }

    #[test]
    fn a_missing_repository_is_told_from_other_open_failures() {
        assert!(is_missing_repository(&explain(
            "Fatal: unable to open config file: Stat: The specified key does not exist.\nIs there a repository at the following location?\ns3:h/b/db"
        )));
        assert!(!is_missing_repository(&explain(
            "Fatal: wrong password or no key found"
        )));
        assert!(!is_missing_repository(&explain(
            "Fatal: unable to open config file: Stat: Access Denied.\nIs there a repository at the following location?"
        )));
    }

    #[test]
    fn the_summary_line_gives_the_snapshot_and_its_size() {
        let out = "{\"message_type\":\"status\",\"percent_done\":0}\n{\"message_type\":\"summary\",\"files_new\":1,\"data_added\":1234,\"total_bytes_processed\":5000,\"snapshot_id\":\"abcdef0123\"}\n";
        let summary = backup_summary("r", out).unwrap();
        assert_eq!(summary.snapshot_id, "abcdef0123");
        assert_eq!(summary.data_added, 1234);
        assert!(backup_summary("r", "").is_err());
    }

    #[test]
    fn tags_are_read_by_key() {
        let snapshot = Snapshot {
            id: "x".into(),
            short_id: "x".into(),
            time: "2026-01-01T00:00:00Z".into(),
            hostname: "h".into(),
            tags: Some(vec!["cluster=shop".into(), "run=20260101T000000Z".into()]),
            paths: vec![],
        };
        assert_eq!(snapshot.tag(TAG_RUN), Some("20260101T000000Z"));
        assert_eq!(snapshot.tag("runner"), None);
    }
}
