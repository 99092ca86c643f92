//! The server certificate, its key and the cluster's CA as files PostgreSQL and libpq
//! read: copied from the `postgres-<name>-server` Secret into the run-time directory
//! (an `emptyDir`, never the data directory, so no base backup carries a key), owned by
//! the instance's user with mode 0600 as PostgreSQL demands of a key. A renewed
//! certificate is written in place (write, then rename) and the server reloads.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Where the files are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPaths {
    pub dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl TlsPaths {
    /// The files under the instance's socket directory.
    pub fn under(socket_dir: &Path) -> Self {
        let dir = socket_dir.join("tls");
        Self {
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            ca: dir.join("ca.crt"),
            dir,
        }
    }
}

/// The three PEM texts, as the Secret holds them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsMaterial {
    pub cert: String,
    pub key: String,
    pub ca: String,
}

#[derive(Debug, thiserror::Error)]
#[error("writing {path}: {source}")]
pub struct TlsFileError {
    path: String,
    #[source]
    source: std::io::Error,
}

/// Writes what differs from the files in place; true when anything changed (the server
/// must reload to serve it).
pub fn install(paths: &TlsPaths, material: &TlsMaterial) -> Result<bool, TlsFileError> {
    let failed = |path: &Path| {
        let path = path.display().to_string();
        move |source| TlsFileError { path, source }
    };
    std::fs::create_dir_all(&paths.dir).map_err(failed(&paths.dir))?;
    let mut changed = false;
    for (path, content) in [
        (&paths.cert, &material.cert),
        (&paths.key, &material.key),
        (&paths.ca, &material.ca),
    ] {
        if std::fs::read_to_string(path).ok().as_ref() == Some(content) {
            continue;
        }
        let temporary = path.with_extension("new");
        let _ = std::fs::remove_file(&temporary);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(failed(&temporary))?;
        file.write_all(content.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(failed(&temporary))?;
        std::fs::rename(&temporary, path).map_err(failed(path))?;
        changed = true;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn material(cert: &str) -> TlsMaterial {
        TlsMaterial {
            cert: cert.to_string(),
            key: "key".to_string(),
            ca: "ca".to_string(),
        }
    }

    #[test]
    fn files_are_private_and_rewritten_only_when_they_change() {
        let dir = tempfile::tempdir().unwrap();
        let paths = TlsPaths::under(dir.path());
        assert!(install(&paths, &material("one")).unwrap());
        for path in [&paths.cert, &paths.key, &paths.ca] {
            let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
        assert!(!install(&paths, &material("one")).unwrap());
        assert!(install(&paths, &material("two")).unwrap());
        assert_eq!(std::fs::read_to_string(&paths.cert).unwrap(), "two");
        assert_eq!(std::fs::read_to_string(&paths.key).unwrap(), "key");
    }
}
