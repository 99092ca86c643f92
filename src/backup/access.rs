//! How a pod opens the backups: the S3 keys and restic password as environment variables
//! filled from the credentials Secret, read once, with errors that name the variable and the
//! Secret key it comes from. Backup Jobs and a primary bootstrapping from a backup share this.

use std::path::PathBuf;

use super::location::{Location, LocationError};
use super::restic::Restic;
use super::s3::S3Credentials;
use crate::manifests::secrets::{BACKUP_ACCESS_KEY, BACKUP_RESTIC_PASSWORD, BACKUP_SECRET_KEY};

pub const ENV_ACCESS_KEY: &str = "AWS_ACCESS_KEY_ID";
pub const ENV_SECRET_KEY: &str = "AWS_SECRET_ACCESS_KEY";
pub const ENV_RESTIC_PASSWORD: &str = "RESTIC_PASSWORD";
pub const ENV_REGION: &str = "AWS_DEFAULT_REGION";
pub const ENV_REPOSITORY_BASE: &str = "RESTIC_REPOSITORY_BASE";
pub const ENV_RESTIC_BINARY: &str = "RESTIC_BINARY";
/// PEM CA bundle the S3 endpoint's certificate must chain to (a private CA); unset: the
/// system roots.
pub const ENV_S3_CA_FILE: &str = "S3_CA_FILE";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AccessError {
    #[error("{variable} is not set (key {key} of the backup credentials Secret)")]
    Missing {
        variable: &'static str,
        key: &'static str,
    },
    #[error(transparent)]
    Location(#[from] LocationError),
}

/// An opened backup location.
#[derive(Clone, Debug)]
pub struct Access {
    pub location: Location,
    pub credentials: S3Credentials,
    pub restic: Restic,
}

impl Access {
    /// From the process environment.
    pub fn from_env(base: &str, region: &str, restic: PathBuf) -> Result<Access, AccessError> {
        Self::from_lookup(base, region, restic, |name| std::env::var(name).ok())
    }

    /// From `lookup` (the environment, or a map in tests); empty values count as unset.
    pub fn from_lookup(
        base: &str,
        region: &str,
        restic: PathBuf,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Access, AccessError> {
        let location = Location::parse(base)?;
        let required = |variable: &'static str, key: &'static str| {
            lookup(variable)
                .filter(|value| !value.is_empty())
                .ok_or(AccessError::Missing { variable, key })
        };
        let credentials = S3Credentials {
            access_key: required(ENV_ACCESS_KEY, BACKUP_ACCESS_KEY)?,
            secret_key: required(ENV_SECRET_KEY, BACKUP_SECRET_KEY)?,
            region: region.to_string(),
            ca_bundle: lookup(ENV_S3_CA_FILE)
                .filter(|value| !value.is_empty())
                .map(PathBuf::from),
        };
        let password = required(ENV_RESTIC_PASSWORD, BACKUP_RESTIC_PASSWORD)?;
        Ok(Access {
            location,
            restic: Restic::new(restic, credentials.clone(), password),
            credentials,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(vars: &[(&str, &str)]) -> Result<Access, AccessError> {
        Access::from_lookup("s3:s3.example.com/b", "eu-west-1", "restic".into(), |n| {
            vars.iter()
                .find(|(name, _)| *name == n)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn every_secret_comes_from_its_variable() {
        let access = open(&[
            (ENV_ACCESS_KEY, "ak"),
            (ENV_SECRET_KEY, "sk"),
            (ENV_RESTIC_PASSWORD, "pw"),
        ])
        .unwrap();
        assert_eq!(access.credentials.access_key, "ak");
        assert_eq!(access.credentials.secret_key, "sk");
        assert_eq!(access.credentials.region, "eu-west-1");
        assert_eq!(access.location.bucket, "b");
        assert_eq!(access.credentials.ca_bundle, None);
    }

    #[test]
    fn a_ca_bundle_file_comes_from_its_variable() {
        let access = open(&[
            (ENV_ACCESS_KEY, "ak"),
            (ENV_SECRET_KEY, "sk"),
            (ENV_RESTIC_PASSWORD, "pw"),
            (ENV_S3_CA_FILE, "/etc/s3-ca/ca.crt"),
        ])
        .unwrap();
        assert_eq!(
            access.credentials.ca_bundle,
            Some(PathBuf::from("/etc/s3-ca/ca.crt"))
        );
    }

    #[test]
    fn a_missing_or_empty_secret_names_its_variable_and_secret_key() {
        let error = open(&[(ENV_ACCESS_KEY, "ak"), (ENV_SECRET_KEY, "")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "AWS_SECRET_ACCESS_KEY is not set (key s3SecretKey of the backup credentials Secret)"
        );
        let error = open(&[(ENV_ACCESS_KEY, "ak"), (ENV_SECRET_KEY, "sk")]).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("RESTIC_PASSWORD is not set (key resticPassword")
        );
    }
}
