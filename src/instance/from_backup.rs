//! Bootstrap from a backup (`spec.bootstrap`): the first primary of a new cluster, right
//! after initdb, restores the roles and databases of a complete backup run of cluster
//! `oldName` before it serves anyone.
//!
//! Progress is kept in a file beside the data directory. It is written before initdb and
//! removed once everything is restored, so a restore cut short (a crash, a deleted pod, a
//! node lost) resumes after the restart with the run it had chosen (a newer backup landing
//! meanwhile changes nothing) and the databases it had not finished; a database it was in
//! the middle of is dropped and restored again.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::provision::{Connection, MAINTENANCE_DB};
use super::status::Hold;
use crate::api::{BootstrapSpec, PostgresSpec};
use crate::backup::access::{Access, AccessError};
use crate::backup::restore::{self, RestoreError, RestoreSettings, RunSelector};
use crate::sql::quote::ident;

#[derive(Debug, thiserror::Error)]
pub enum FromBackupError {
    #[error("backup credentials: {0}")]
    Access(#[from] AccessError),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error("restore progress file {path}: {source}")]
    Progress {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("restore progress file {path} is unreadable: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("dropping the partly restored database {database:?}: {message}")]
    Drop { database: String, message: String },
}

/// Where the backups are, as the pod's environment says (the variables of
/// `backup::access`); what it leaves unset comes from the spec's `backup` section.
#[derive(Clone, Debug)]
pub struct BackupEnvironment {
    /// `RESTIC_REPOSITORY_BASE`; default `s3:<spec.backup.s3Bucket>`.
    pub repository_base: Option<String>,
    /// `AWS_DEFAULT_REGION`; default `spec.backup.s3Region`.
    pub region: Option<String>,
    pub restic: PathBuf,
}

impl BackupEnvironment {
    /// How to restore `spec`'s source into the server reached by `postgres`, with the
    /// credentials of the environment.
    pub fn restore_settings(
        &self,
        spec: &PostgresSpec,
        source: &Progress,
        postgres: Connection,
        bin_dir: &Path,
    ) -> Result<RestoreSettings, FromBackupError> {
        let base = self
            .repository_base
            .clone()
            .unwrap_or_else(|| format!("s3:{}", spec.backup.s3_bucket.clone().unwrap_or_default()));
        let region = self
            .region
            .clone()
            .unwrap_or_else(|| spec.backup.s3_region.clone());
        let access = Access::from_env(&base, &region, self.restic.clone())?;
        Ok(RestoreSettings {
            source_cluster: source.source_cluster.clone(),
            location: access.location,
            credentials: access.credentials,
            restic: access.restic,
            postgres,
            bin_dir: Some(bin_dir.to_path_buf()),
        })
    }
}

/// What a restore has done so far.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// The cluster whose backups are restored (`bootstrap.oldName`).
    pub source_cluster: String,
    /// `latest` or the recovery time, as the spec said when the restore began.
    pub selector: String,
    /// The run, once chosen; every later attempt restores this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    #[serde(default)]
    pub globals_restored: bool,
    /// Databases restored completely.
    #[serde(default)]
    pub databases: Vec<String>,
}

/// Where the progress of the restore into `data_dir` is kept: beside it, so pg_basebackup
/// never copies it to a standby.
pub fn progress_path(data_dir: &Path) -> PathBuf {
    let mut name = data_dir.file_name().unwrap_or_default().to_os_string();
    name.push(".restore.json");
    data_dir.with_file_name(name)
}

impl Progress {
    /// A restore that has not started, from the spec.
    pub fn begin(source: &BootstrapSpec) -> Progress {
        Progress {
            source_cluster: source.old_name.clone().unwrap_or_default(),
            selector: source
                .recovery_time
                .clone()
                .filter(|time| !time.trim().is_empty())
                .unwrap_or_else(|| "latest".to_string()),
            ..Progress::default()
        }
    }

    /// The unfinished restore into `data_dir`, if any.
    pub fn load(data_dir: &Path) -> Result<Option<Progress>, FromBackupError> {
        let path = progress_path(data_dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                serde_json::from_str(&text)
                    .map(Some)
                    .map_err(|e| FromBackupError::Corrupt {
                        path,
                        message: e.to_string(),
                    })
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(FromBackupError::Progress { path, source }),
        }
    }

    /// Written whole and synced before it replaces the previous state, so a crash leaves
    /// either the old or the new progress, never half of one.
    pub fn save(&self, data_dir: &Path) -> Result<(), FromBackupError> {
        let path = progress_path(data_dir);
        let partial = path.with_extension("partial");
        let io = |source| FromBackupError::Progress {
            path: path.clone(),
            source,
        };
        let text = serde_json::to_vec_pretty(self).unwrap_or_default();
        let mut file = std::fs::File::create(&partial).map_err(io)?;
        file.write_all(&text).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&partial, &path).map_err(io)?;
        Ok(())
    }

    /// The restore is complete: the data directory is an ordinary one from now on.
    pub fn finish(data_dir: &Path) -> Result<(), FromBackupError> {
        let path = progress_path(data_dir);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(FromBackupError::Progress { path, source }),
        }
    }

    fn selector(&self) -> RunSelector {
        match &self.run {
            Some(run) => RunSelector::Id(run.clone()),
            None => RunSelector::parse(&self.selector),
        }
    }

    /// For `/readyz` and `/status`.
    pub fn describe(&self) -> String {
        match &self.run {
            Some(run) => format!(
                "restoring backup run {run} of cluster {:?} ({} databases done)",
                self.source_cluster,
                self.databases.len()
            ),
            None if self.selector == "latest" => format!(
                "restoring the latest backup run of cluster {:?}",
                self.source_cluster
            ),
            None => format!(
                "restoring the latest backup run of cluster {:?} completed by {}",
                self.source_cluster, self.selector
            ),
        }
    }
}

/// Does what `progress` has not done yet, saving it after each step: choose the run, create
/// the roles, then restore each database. The run chosen and the number of databases.
pub async fn resume(
    settings: &RestoreSettings,
    progress: &mut Progress,
    data_dir: &Path,
    hold: &Hold,
) -> Result<(String, usize), FromBackupError> {
    hold.set(progress.describe());
    let manifest = restore::find_run(settings, &progress.selector()).await?;
    if progress.run.is_none() {
        progress.run = Some(manifest.run.clone());
        progress.save(data_dir)?;
        tracing::info!(run = %manifest.run, source = %progress.source_cluster, "restoring from backup");
    }
    if !progress.globals_restored {
        let statements = restore::restore_globals(settings, &manifest).await?;
        tracing::info!(statements, "roles restored");
        progress.globals_restored = true;
        progress.save(data_dir)?;
    }
    for database in &manifest.databases {
        if progress.databases.contains(&database.name) {
            continue;
        }
        hold.set(progress.describe());
        drop_partial(settings, &database.name).await?;
        restore::restore_database(settings, &manifest, &database.name, None, false).await?;
        progress.databases.push(database.name.clone());
        progress.save(data_dir)?;
    }
    Ok((manifest.run.clone(), manifest.databases.len()))
}

/// A database of the run that exists before its restore completed is what an earlier
/// attempt left: this cluster was empty when the restore began and serves nobody yet.
async fn drop_partial(settings: &RestoreSettings, database: &str) -> Result<(), FromBackupError> {
    let failed = |message: String| FromBackupError::Drop {
        database: database.to_string(),
        message,
    };
    let client = settings
        .postgres
        .client(MAINTENANCE_DB)
        .await
        .map_err(|e| failed(crate::backup::run::describe_pg(&e)))?;
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
        .await
        .map_err(|e| failed(crate::backup::run::describe_pg(&e)))?
        .is_some();
    if exists {
        tracing::warn!(
            database,
            "dropping what an interrupted restore left of this database"
        );
        client
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                ident(database)
            ))
            .await
            .map_err(|e| failed(crate::backup::run::describe_pg(&e)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lives_beside_the_data_directory() {
        assert_eq!(
            progress_path(Path::new("/var/lib/postgresql/data/pgdata")),
            PathBuf::from("/var/lib/postgresql/data/pgdata.restore.json")
        );
    }

    #[test]
    fn a_restore_begins_with_the_spec_and_resumes_with_the_run_it_chose() {
        let spec = BootstrapSpec {
            enabled: true,
            old_name: Some("old".to_string()),
            recovery_time: Some("2026-11-25T03:00:00Z".to_string()),
        };
        let mut progress = Progress::begin(&spec);
        assert!(matches!(progress.selector(), RunSelector::LatestBefore(_)));
        assert_eq!(
            progress.describe(),
            "restoring the latest backup run of cluster \"old\" completed by 2026-11-25T03:00:00Z"
        );
        progress.run = Some("20261125T020000Z".to_string());
        assert_eq!(
            progress.selector(),
            RunSelector::Id("20261125T020000Z".to_string())
        );
        let latest = Progress::begin(&BootstrapSpec {
            recovery_time: Some(" ".to_string()),
            ..spec
        });
        assert_eq!(latest.selector(), RunSelector::Latest);
    }

    #[test]
    fn progress_survives_a_save_and_load_and_goes_when_finished() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("pgdata");
        assert_eq!(Progress::load(&data_dir).unwrap(), None);
        let progress = Progress {
            source_cluster: "old".to_string(),
            selector: "latest".to_string(),
            run: Some("r".to_string()),
            globals_restored: true,
            databases: vec!["a".to_string()],
        };
        progress.save(&data_dir).unwrap();
        assert_eq!(Progress::load(&data_dir).unwrap(), Some(progress));
        Progress::finish(&data_dir).unwrap();
        assert_eq!(Progress::load(&data_dir).unwrap(), None);
        std::fs::write(progress_path(&data_dir), "{").unwrap();
        assert!(matches!(
            Progress::load(&data_dir),
            Err(FromBackupError::Corrupt { .. })
        ));
    }
}
