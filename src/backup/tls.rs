//! Which certificates the operator's own TLS clients trust. The S3 client: the system
//! roots, or only the CA bundle of `backup.s3CASecretRef` (only the bundle, like restic's
//! `--cacert`, so the bucket check and restic accept and refuse the same endpoints). The
//! PostgreSQL client of the backup Jobs: only the cluster's CA. Certificates are always
//! verified.

use std::path::{Path, PathBuf};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TrustError {
    #[error("no TLS root certificates: {0}")]
    SystemRoots(String),
    #[error("CA bundle {path}: {reason}")]
    Bundle { path: PathBuf, reason: String },
}

/// The TLS client configuration for an S3 endpoint; ALPN is left to the connector.
pub fn client_config(ca_bundle: Option<&Path>) -> Result<ClientConfig, TrustError> {
    let Some(path) = ca_bundle else {
        use hyper_rustls::ConfigBuilderExt;
        return Ok(ClientConfig::builder()
            .with_native_roots()
            .map_err(|e| TrustError::SystemRoots(e.to_string()))?
            .with_no_client_auth());
    };
    let bundle_error = |reason: String| TrustError::Bundle {
        path: path.to_path_buf(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    for certificate in
        CertificateDer::pem_file_iter(path).map_err(|e| bundle_error(e.to_string()))?
    {
        let certificate = certificate.map_err(|e| bundle_error(e.to_string()))?;
        roots
            .add(certificate)
            .map_err(|e| bundle_error(format!("unusable certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bundle_error("holds no PEM certificate".to_string()));
    }
    Ok(ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// How a PostgreSQL client verifies the server (libpq's `sslmode=verify-full`): the CA
/// bundle's file, for the tools run as children (`PGSSLROOTCERT`), and the client
/// configuration made from it, for the operator's own connections.
#[derive(Clone, Debug)]
pub struct ServerTrust {
    pub ca_file: PathBuf,
    pub config: std::sync::Arc<ClientConfig>,
}

impl ServerTrust {
    pub fn load(ca_file: &Path) -> Result<Self, TrustError> {
        Ok(Self {
            ca_file: ca_file.to_path_buf(),
            config: std::sync::Arc::new(client_config(Some(ca_file))?),
        })
    }
}

/// Whether a connection failed because the server's certificate did not verify (unknown
/// issuer, wrong name, expired), as opposed to the network or the protocol.
pub fn is_unverified_certificate(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(rustls::Error::InvalidCertificate(_)) = error.downcast_ref::<rustls::Error>() {
            return true;
        }
        // tokio-rustls and hyper-rustls wrap the rustls error in io::Errors, whose source()
        // skips the error they wrap.
        cause = match error
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(wrapped) => Some(wrapped),
            None => error.source(),
        };
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bundle_without_certificates_or_missing_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("ca.crt");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let error = client_config(Some(&empty)).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("CA bundle {}: holds no PEM certificate", empty.display())
        );
        let missing = dir.path().join("absent.crt");
        assert!(matches!(
            client_config(Some(&missing)),
            Err(TrustError::Bundle { path, .. }) if path == missing
        ));
    }

    #[test]
    fn only_certificate_verification_failures_count_as_unverified() {
        let unverified = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert!(is_unverified_certificate(&unverified));
        // As hyper-rustls hands it over: wrapped once more.
        assert!(is_unverified_certificate(&std::io::Error::other(
            unverified
        )));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!is_unverified_certificate(&refused));
    }
}
