//! Credentials: the password policy (spec > value already stored > random) and the
//! Secrets that hold the users', superuser's, replication and backup credentials.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use rand::RngExt;
use rand::distr::Alphanumeric;

use super::{Cluster, labels, names};

/// Superuser the instance manager connects as over the local socket.
pub const SUPERUSER: &str = "postgres";
/// Role standbys stream WAL with.
pub const REPLICATION_USER: &str = "streaming_replica";
/// Keys of the backup credentials Secret (and of a user-provided one).
pub const BACKUP_ACCESS_KEY: &str = "s3AccessKey";
pub const BACKUP_SECRET_KEY: &str = "s3SecretKey";
pub const BACKUP_RESTIC_PASSWORD: &str = "resticPassword";

/// Length of generated passwords: 32 alphanumerics carry about 190 bits.
const GENERATED_LENGTH: usize = 32;

/// Source of new passwords.
pub trait PasswordGenerator {
    fn generate(&mut self) -> String;
}

/// Passwords from the thread-local CSPRNG (ChaCha, seeded from the OS).
#[derive(Clone, Copy, Debug, Default)]
pub struct RandomPasswords;

impl PasswordGenerator for RandomPasswords {
    fn generate(&mut self) -> String {
        rand::rng()
            .sample_iter(Alphanumeric)
            .take(GENERATED_LENGTH)
            .map(char::from)
            .collect()
    }
}

/// Predictable passwords (`generated-password-1`, `-2`, …) for tests and snapshots;
/// never used by the operator itself.
#[derive(Clone, Debug, Default)]
pub struct SeededPasswords {
    issued: usize,
}

impl PasswordGenerator for SeededPasswords {
    fn generate(&mut self) -> String {
        self.issued += 1;
        format!("generated-password-{}", self.issued)
    }
}

/// Secrets of the cluster as read from the API, by name.
pub type ExistingSecrets = BTreeMap<String, Secret>;

/// The password policy: the spec's value wins; else the value already stored; else a
/// new random one. Empty values count as absent.
pub fn resolve_password(
    spec: Option<&str>,
    existing: Option<&str>,
    generator: &mut dyn PasswordGenerator,
) -> String {
    spec.filter(|p| !p.is_empty())
        .or(existing.filter(|p| !p.is_empty()))
        .map(str::to_string)
        .unwrap_or_else(|| generator.generate())
}

/// A value stored in an existing Secret, from `data` or (not yet merged) `stringData`.
fn stored(existing: &ExistingSecrets, secret: &str, key: &str) -> Option<String> {
    let secret = existing.get(secret)?;
    if let Some(ByteString(bytes)) = secret.data.as_ref().and_then(|d| d.get(key)) {
        return String::from_utf8(bytes.clone()).ok();
    }
    secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(key))
        .cloned()
}

/// Every credentials Secret the spec asks for: users (under both names in use), the
/// superuser, the replication user, and the backup keys when given inline.
pub fn desired_secrets(
    cluster: &Cluster,
    existing: &ExistingSecrets,
    generator: &mut dyn PasswordGenerator,
) -> Vec<Secret> {
    let name = &cluster.name;
    let users_secret = names::secret_users(name);
    let credentials_secret = names::secret_credentials(name);
    let passwords: BTreeMap<String, String> = cluster
        .spec()
        .users
        .iter()
        .map(|(user, spec)| {
            let current = stored(existing, &credentials_secret, user)
                .or_else(|| stored(existing, &users_secret, user));
            let password =
                resolve_password(spec.password.as_deref(), current.as_deref(), generator);
            (user.clone(), password)
        })
        .collect();

    let mut secrets = vec![
        secret(cluster, users_secret, "Opaque", &passwords),
        secret(cluster, credentials_secret, "Opaque", &passwords),
    ];
    for (secret_name, username) in [
        (names::secret_superuser(name), SUPERUSER),
        (names::secret_replication(name), REPLICATION_USER),
    ] {
        let current = stored(existing, &secret_name, "password");
        let password = resolve_password(None, current.as_deref(), generator);
        let data = BTreeMap::from([
            ("username".to_string(), username.to_string()),
            ("password".to_string(), password),
        ]);
        secrets.push(secret(
            cluster,
            secret_name,
            "kubernetes.io/basic-auth",
            &data,
        ));
    }
    if let Some(data) = inline_backup_credentials(cluster) {
        secrets.push(secret(cluster, names::secret_backup(name), "Opaque", &data));
    }
    secrets
}

/// The backup keys when the spec gives them inline (validation guarantees all or none,
/// and never together with `credentialsSecretRef`).
fn inline_backup_credentials(cluster: &Cluster) -> Option<BTreeMap<String, String>> {
    let backup = &cluster.spec().backup;
    if backup.credentials_secret_ref.is_some() {
        return None;
    }
    let data: BTreeMap<String, String> = [
        (BACKUP_ACCESS_KEY, &backup.s3_access_key),
        (BACKUP_SECRET_KEY, &backup.s3_secret_key),
        (BACKUP_RESTIC_PASSWORD, &backup.restic_password),
    ]
    .into_iter()
    .filter_map(|(key, value)| {
        value
            .clone()
            .filter(|v| !v.is_empty())
            .map(|v| (key.to_string(), v))
    })
    .collect();
    (!data.is_empty()).then_some(data)
}

/// `data`, never `stringData`: the API server folds stringData into data, so applying it
/// again would show a difference on every reconcile.
pub(super) fn secret(
    cluster: &Cluster,
    name: String,
    type_: &str,
    values: &BTreeMap<String, String>,
) -> Secret {
    Secret {
        metadata: cluster.meta(name, labels::COMPONENT_DATABASE),
        type_: Some(type_.to_string()),
        data: Some(
            values
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
                .collect(),
        ),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::test_support::cluster_from_yaml;

    /// Fails the test if a password is generated.
    struct NoGeneration;
    impl PasswordGenerator for NoGeneration {
        fn generate(&mut self) -> String {
            panic!("a password was generated")
        }
    }

    fn value(secret: &Secret, key: &str) -> Option<String> {
        secret
            .data
            .as_ref()?
            .get(key)
            .map(|b| String::from_utf8(b.0.clone()).unwrap())
    }

    fn by_name(secrets: Vec<Secret>) -> ExistingSecrets {
        secrets
            .into_iter()
            .map(|s| (s.metadata.name.clone().unwrap(), s))
            .collect()
    }

    #[test]
    fn policy_prefers_spec_then_existing_then_random() {
        let mut generator = SeededPasswords::default();
        assert_eq!(
            resolve_password(Some("spec"), Some("old"), &mut generator),
            "spec"
        );
        assert_eq!(resolve_password(None, Some("old"), &mut generator), "old");
        assert_eq!(
            resolve_password(Some(""), Some("old"), &mut generator),
            "old"
        );
        assert_eq!(
            resolve_password(None, Some(""), &mut generator),
            "generated-password-1"
        );
        assert_eq!(
            resolve_password(None, None, &mut generator),
            "generated-password-2"
        );
    }

    #[test]
    fn random_passwords_are_long_alphanumeric_and_distinct() {
        let a = RandomPasswords.generate();
        let b = RandomPasswords.generate();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn users_secrets_hold_one_key_per_user_under_both_names() {
        let (pg, settings) = cluster_from_yaml("users:\n  alice:\n    password: a\n  bob: {}\n");
        let cluster = Cluster::new(&pg, "ns", &settings);
        let secrets = desired_secrets(
            &cluster,
            &ExistingSecrets::new(),
            &mut SeededPasswords::default(),
        );
        let names: Vec<&str> = secrets
            .iter()
            .map(|s| s.metadata.name.as_deref().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "postgres-demo",
                "postgres-demo-credentials",
                "postgres-demo-superuser",
                "postgres-demo-replication"
            ]
        );
        assert_eq!(secrets[0].data, secrets[1].data);
        assert_eq!(value(&secrets[0], "alice").as_deref(), Some("a"));
        assert_eq!(
            value(&secrets[0], "bob").as_deref(),
            Some("generated-password-1")
        );
        assert_eq!(value(&secrets[2], "username").as_deref(), Some("postgres"));
        assert_eq!(
            secrets[2].type_.as_deref(),
            Some("kubernetes.io/basic-auth")
        );
        assert_eq!(
            value(&secrets[3], "username").as_deref(),
            Some("streaming_replica")
        );
        assert!(secrets.iter().all(|s| s.string_data.is_none()));
    }

    #[test]
    fn a_second_build_keeps_every_password_without_generating() {
        let (pg, settings) = cluster_from_yaml("users:\n  alice: {}\n  bob: {}\n");
        let cluster = Cluster::new(&pg, "ns", &settings);
        let first = desired_secrets(&cluster, &ExistingSecrets::new(), &mut RandomPasswords);
        let second = desired_secrets(&cluster, &by_name(first.clone()), &mut NoGeneration);
        assert_eq!(first, second);
    }

    #[test]
    fn a_changed_spec_password_is_applied_and_a_removed_user_disappears() {
        let (pg, settings) = cluster_from_yaml("users:\n  alice: {}\n  bob: {}\n");
        let first = desired_secrets(
            &Cluster::new(&pg, "ns", &settings),
            &ExistingSecrets::new(),
            &mut SeededPasswords::default(),
        );
        let (pg, settings) = cluster_from_yaml("users:\n  alice:\n    password: new\n");
        let second = desired_secrets(
            &Cluster::new(&pg, "ns", &settings),
            &by_name(first),
            &mut NoGeneration,
        );
        assert_eq!(value(&second[1], "alice").as_deref(), Some("new"));
        assert_eq!(value(&second[1], "bob"), None);
    }

    #[test]
    fn existing_values_are_found_in_either_users_secret_and_in_string_data() {
        let (pg, settings) = cluster_from_yaml("users:\n  alice: {}\n");
        let cluster = Cluster::new(&pg, "ns", &settings);
        let mut old = Secret::default();
        old.metadata.name = Some("postgres-demo".to_string());
        old.string_data = Some(BTreeMap::from([("alice".to_string(), "kept".to_string())]));
        let existing = ExistingSecrets::from([("postgres-demo".to_string(), old)]);
        let secrets = desired_secrets(&cluster, &existing, &mut SeededPasswords::default());
        assert_eq!(value(&secrets[1], "alice").as_deref(), Some("kept"));
    }

    #[test]
    fn hostile_passwords_are_kept_byte_for_byte() {
        let password = "it's a \"quote\" \\ ; DROP TABLE x; -- é😀";
        let yaml = format!(
            "users:\n  alice:\n    password: {}\n",
            serde_json::to_string(password).unwrap()
        );
        let (pg, settings) = cluster_from_yaml(&yaml);
        let secrets = desired_secrets(
            &Cluster::new(&pg, "ns", &settings),
            &ExistingSecrets::new(),
            &mut SeededPasswords::default(),
        );
        assert_eq!(value(&secrets[0], "alice").as_deref(), Some(password));
    }

    #[test]
    fn backup_secret_only_for_inline_credentials() {
        let inline = "backup:\n  enabled: true\n  s3Bucket: s3.example.org/b\n  s3AccessKey: AK\n  s3SecretKey: SK\n  resticPassword: RP\n";
        let (pg, settings) = cluster_from_yaml(inline);
        let secrets = desired_secrets(
            &Cluster::new(&pg, "ns", &settings),
            &ExistingSecrets::new(),
            &mut SeededPasswords::default(),
        );
        let backup = secrets.last().unwrap();
        assert_eq!(
            backup.metadata.name.as_deref(),
            Some("postgres-demo-backup")
        );
        assert_eq!(value(backup, "s3AccessKey").as_deref(), Some("AK"));
        assert_eq!(value(backup, "resticPassword").as_deref(), Some("RP"));

        for spec in [
            "backup:\n  enabled: true\n  s3Bucket: s3.example.org/b\n",
            "backup:\n  enabled: true\n  s3Bucket: s3.example.org/b\n  credentialsSecretRef:\n    name: mine\n",
        ] {
            let (pg, settings) = cluster_from_yaml(spec);
            let secrets = desired_secrets(
                &Cluster::new(&pg, "ns", &settings),
                &ExistingSecrets::new(),
                &mut SeededPasswords::default(),
            );
            assert!(
                secrets
                    .iter()
                    .all(|s| s.metadata.name.as_deref() != Some("postgres-demo-backup"))
            );
        }
    }
}
