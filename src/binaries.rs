//! `copy-binaries`: what the init container of database and backup pods runs, so a stock
//! PostgreSQL image gets the operator binary (instance manager, backup) and restic.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Where the operator image keeps restic.
pub const DEFAULT_RESTIC: &str = "/usr/local/bin/restic";

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("cannot locate the running binary: {0}")]
    CurrentExe(std::io::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Copies the running binary (as `postgres-operator`) and `restic` into `dir`, executable,
/// replacing older copies atomically so a restarted pod never runs a half-written file.
pub fn copy_binaries(dir: &Path, restic: &Path) -> Result<Vec<PathBuf>, CopyError> {
    let me = std::env::current_exe().map_err(CopyError::CurrentExe)?;
    let mut installed = Vec::new();
    for (source, name) in [(me.as_path(), "postgres-operator"), (restic, "restic")] {
        let target = dir.join(name);
        install(source, &target)?;
        installed.push(target);
    }
    Ok(installed)
}

fn install(source: &Path, target: &Path) -> Result<(), CopyError> {
    let partial = target.with_extension("partial");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CopyError::Io { path, source }
    };
    fs::copy(source, &partial).map_err(io(source))?;
    fs::set_permissions(&partial, fs::Permissions::from_mode(0o755)).map_err(io(&partial))?;
    fs::rename(&partial, target).map_err(io(target))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_self_and_restic_as_executables() {
        let dir = tempfile::tempdir().unwrap();
        let restic = dir.path().join("fake-restic");
        fs::write(&restic, b"#!/bin/sh\n").unwrap();
        let target = dir.path().join("out");
        fs::create_dir(&target).unwrap();
        let installed = copy_binaries(&target, &restic).unwrap();
        assert_eq!(
            installed,
            vec![target.join("postgres-operator"), target.join("restic")]
        );
        for path in installed {
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o755, "{}", path.display());
        }
        assert_eq!(fs::read(target.join("restic")).unwrap(), b"#!/bin/sh\n");
        assert!(!target.join("restic.partial").exists());
    }

    #[test]
    fn missing_restic_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = copy_binaries(dir.path(), Path::new("/nonexistent/restic")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/restic"), "{err}");
    }
}
