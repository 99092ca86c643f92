//! Checks of a Postgres spec beyond what the CRD schema and its CEL rules express
//! (identifier rules, owned parameters, cron, retention flags), one error per field path.
//! `render` uses them now; the controller refuses to act on a spec that fails them.

pub mod cron;
pub mod retention;
pub mod settings;

use std::collections::BTreeSet;
use std::fmt;
use std::sync::LazyLock;

use kube::CustomResourceExt;
use kube::core::cel::{CompiledSchema, Validator, apply_defaults, compile_schema};
use serde_json::Value;

use crate::api::{BackupSpec, BootstrapSpec, CABundleReference, Postgres, PostgresSpec};
use crate::backup::location;
use crate::quantity::Quantity;
use retention::RetentionPolicy;

/// One problem, at one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path from the object root, e.g. `spec.quorum.maxSyncReplicas` or `spec.users["a b"]`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in one object.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct ValidationErrors(pub Vec<FieldError>);

/// Settings the operator sets itself: a user value would break replication, listening,
/// TLS or archiving.
const OWNED_PARAMETERS: &[&str] = &[
    "listen_addresses",
    "port",
    "hot_standby",
    "wal_level",
    "max_wal_senders",
    "synchronous_standby_names",
    "primary_conninfo",
    "data_directory",
    "hba_file",
    // The log pipe to the instance manager (`instance::postgres_logs`).
    "logging_collector",
    "log_destination",
    "log_directory",
    "log_filename",
    "log_rotation_age",
    "log_rotation_size",
    "log_truncate_on_rotation",
];
const OWNED_PREFIXES: &[&str] = &["archive_", "ssl"];

/// Settings that let a database user run programs or load code (the list Cozystack
/// blocks too).
const CODE_LOADING_PARAMETERS: &[&str] = &[
    "archive_command",
    "restore_command",
    "archive_cleanup_command",
    "recovery_end_command",
    "ssl_passphrase_command",
    "dynamic_library_path",
    "local_preload_libraries",
    "session_preload_libraries",
    "shared_preload_libraries",
];

/// Role names PostgreSQL or the operator reserve.
const RESERVED_ROLES: &[&str] = &[
    "postgres",
    "streaming_replica",
    "public",
    "none",
    "current_user",
    "session_user",
    "current_role",
    "system_user",
];

/// Databases the operator will not take over (it would change their owner).
const RESERVED_DATABASES: &[&str] = &["postgres", "template0", "template1"];

/// PostgreSQL truncates identifiers to 63 bytes (NAMEDATALEN - 1).
const MAX_IDENTIFIER: usize = 63;

struct Errors(Vec<FieldError>);

impl Errors {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }
}

fn key_path(parent: &str, key: &str) -> String {
    format!("{parent}[{key:?}]")
}

/// Checks a spec on its own; every error is reported, not just the first.
pub fn validate_spec(spec: &PostgresSpec) -> Result<(), ValidationErrors> {
    let mut errors = Errors(Vec::new());
    check_topology(spec, &mut errors);
    check_users(spec, &mut errors);
    check_databases(spec, &mut errors);
    check_parameters(spec, &mut errors);
    // A restore reads the backups from the cluster's own backup location.
    let bucket_needed_by = if spec.backup.enabled {
        Some("spec.backup.enabled")
    } else if spec.restore_source().is_some() {
        Some("spec.bootstrap.enabled")
    } else {
        None
    };
    check_backup(&spec.backup, bucket_needed_by, &mut errors);
    if let Some(bootstrap) = &spec.bootstrap {
        check_bootstrap(bootstrap, &mut errors);
    }
    check_resources(spec, &mut errors);
    if errors.0.is_empty() {
        Ok(())
    } else {
        Err(ValidationErrors(errors.0))
    }
}

fn check_topology(spec: &PostgresSpec, errors: &mut Errors) {
    if spec.replicas < 1 {
        errors.add(
            "spec.replicas",
            format!("must be at least 1, got {}", spec.replicas),
        );
    }
    let quorum = &spec.quorum;
    if quorum.min_sync_replicas < 0 {
        errors.add("spec.quorum.minSyncReplicas", "must not be negative");
    }
    if quorum.max_sync_replicas < 0 {
        errors.add("spec.quorum.maxSyncReplicas", "must not be negative");
    }
    if quorum.min_sync_replicas > quorum.max_sync_replicas {
        errors.add(
            "spec.quorum.minSyncReplicas",
            format!(
                "must not exceed spec.quorum.maxSyncReplicas ({}), got {}",
                quorum.max_sync_replicas, quorum.min_sync_replicas
            ),
        );
    }
    if quorum.max_sync_replicas > 0 && quorum.max_sync_replicas >= spec.replicas {
        errors.add(
            "spec.quorum.maxSyncReplicas",
            format!(
                "must be less than spec.replicas ({}), got {}: each synchronous standby is an instance besides the primary",
                spec.replicas, quorum.max_sync_replicas
            ),
        );
    }
    if let Some(class) = spec.storage_class.as_deref()
        && !class.is_empty()
        && !is_dns_subdomain(class)
    {
        errors.add(
            "spec.storageClass",
            format!(
                "must be a StorageClass name (a DNS subdomain: at most 253 characters, dot-separated parts of lowercase letters, digits and '-' that start and end with a letter or digit), got {class:?}"
            ),
        );
    }
    if let Some(certificates) = &spec.certificates {
        for (field, name) in [
            (
                "spec.certificates.serverTLSSecret",
                Some(&certificates.server_tls_secret),
            ),
            (
                "spec.certificates.serverCASecret",
                certificates.server_ca_secret.as_ref(),
            ),
        ] {
            if let Some(name) = name
                && !is_dns_subdomain(name)
            {
                errors.add(
                    field,
                    format!("must be a Secret name (a DNS subdomain), got {name:?}"),
                );
            }
        }
    }
    match spec.size.parse::<Quantity>() {
        Ok(size) if size.is_positive() => {}
        Ok(_) => errors.add(
            "spec.size",
            format!("must be positive, got {:?}", spec.size),
        ),
        Err(e) => errors.add("spec.size", e.to_string()),
    }
}

/// A Kubernetes object name of the DNS-subdomain kind (RFC 1123), as StorageClasses have.
fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|part| {
            let bytes = part.as_bytes();
            !bytes.is_empty()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
                && bytes.first() != Some(&b'-')
                && bytes.last() != Some(&b'-')
        })
}

/// User names are keys of the credentials Secrets (`[-._a-zA-Z0-9]`) and role names.
fn check_users(spec: &PostgresSpec, errors: &mut Errors) {
    let group_roles: BTreeSet<String> = spec
        .databases
        .iter()
        .flat_map(|(db, d)| {
            d.roles
                .keys()
                .map(move |kind| format!("{db}_{kind}"))
                .chain(std::iter::once(format!("{db}_admin")))
        })
        .collect();
    for (name, user) in &spec.users {
        let path = key_path("spec.users", name);
        let valid_chars = name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if name.is_empty() || name.len() > MAX_IDENTIFIER || !valid_chars {
            errors.add(
                &path,
                format!("user name {name:?} must be 1-63 characters of letters, digits, '.', '_' or '-' (it becomes a key of the credentials Secret)"),
            );
        } else if name.starts_with("pg_") {
            errors.add(
                &path,
                format!("user name {name:?} must not start with pg_ (reserved by PostgreSQL)"),
            );
        } else if RESERVED_ROLES.contains(&name.to_ascii_lowercase().as_str()) {
            errors.add(
                &path,
                format!("user name {name:?} is reserved (by PostgreSQL or the operator)"),
            );
        } else if group_roles.contains(name) {
            errors.add(
                &path,
                format!("user name {name:?} collides with the group role the operator creates for a database role kind"),
            );
        }
        if let Some(password) = &user.password
            && password.contains('\0')
        {
            errors.add(
                format!("{path}.password"),
                "must not contain a NUL character",
            );
        }
    }
}

fn check_databases(spec: &PostgresSpec, errors: &mut Errors) {
    let declared: Vec<&str> = spec.users.keys().map(String::as_str).collect();
    for (name, database) in &spec.databases {
        let path = key_path("spec.databases", name);
        let printable = name.bytes().all(|b| (0x20..0x7f).contains(&b));
        if name.is_empty() || name.len() > MAX_IDENTIFIER || !printable || name.contains('/') {
            errors.add(
                &path,
                format!("database name {name:?} must be 1-63 printable ASCII characters without '/' (it names the backup repository)"),
            );
        } else if name.starts_with("pg_") {
            errors.add(
                &path,
                format!("database name {name:?} must not start with pg_"),
            );
        } else if RESERVED_DATABASES.contains(&name.as_str()) {
            errors.add(
                &path,
                format!("database {name:?} is a system database the operator does not manage (it would change its owner); use another name"),
            );
        }
        for (kind, members) in &database.roles {
            let kind_path = format!("{path}.roles.{kind}");
            let valid_kind = kind.len() <= 31
                && kind.starts_with(|c: char| c.is_ascii_lowercase())
                && kind
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !valid_kind {
                errors.add(
                    &kind_path,
                    format!("role kind {kind:?} must be a lowercase identifier of at most 31 characters (e.g. admin, readonly, app)"),
                );
            } else if name.len() + 1 + kind.len() > MAX_IDENTIFIER {
                errors.add(
                    &kind_path,
                    format!("the group role name {:?} would exceed 63 bytes; shorten the database name or the kind", format!("{name}_{kind}")),
                );
            }
            let mut seen = BTreeSet::new();
            for (index, member) in members.iter().enumerate() {
                let member_path = format!("{kind_path}[{index}]");
                if !spec.users.contains_key(member) {
                    errors.add(
                        &member_path,
                        format!(
                            "user {member:?} is not declared in spec.users (declared: {})",
                            if declared.is_empty() {
                                "none".to_string()
                            } else {
                                declared.join(", ")
                            }
                        ),
                    );
                }
                if !seen.insert(member) {
                    errors.add(&member_path, format!("user {member:?} is listed twice"));
                }
            }
        }
        let mut seen = BTreeSet::new();
        for (index, extension) in database.extensions.iter().enumerate() {
            let extension_path = format!("{path}.extensions[{index}]");
            let valid = !extension.is_empty()
                && extension.len() <= MAX_IDENTIFIER
                && extension
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !valid {
                errors.add(
                    &extension_path,
                    format!(
                        "extension name {extension:?} must be 1-63 letters, digits, '_' or '-'"
                    ),
                );
            }
            if !seen.insert(extension) {
                errors.add(
                    &extension_path,
                    format!("extension {extension:?} is listed twice"),
                );
            }
        }
    }
}

fn check_parameters(spec: &PostgresSpec, errors: &mut Errors) {
    for (name, value) in &spec.postgresql.parameters {
        let path = format!("spec.postgresql.parameters.{name}");
        let lower = name.to_ascii_lowercase();
        let valid_name = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
        if !valid_name {
            errors.add(
                &path,
                format!("{name:?} is not a PostgreSQL setting name (letters, digits, '_' and '.')"),
            );
        } else if CODE_LOADING_PARAMETERS.contains(&lower.as_str()) {
            errors.add(
                &path,
                format!("{name} is not allowed: it lets database users run programs or load code (the operator adds the libraries requested extensions need)"),
            );
        } else if OWNED_PARAMETERS.contains(&lower.as_str())
            || OWNED_PREFIXES
                .iter()
                .any(|prefix| lower.starts_with(prefix))
        {
            errors.add(
                &path,
                format!("{name} is managed by the operator and cannot be set"),
            );
        } else if let Err(e) = settings::check(spec.version().major(), name, value) {
            errors.add(&path, e.to_string());
        }
        if let crate::api::ParameterValue::String(text) = value
            && text.contains(['\0', '\n', '\r'])
        {
            errors.add(&path, "values must not contain NUL or line breaks");
        }
    }
}

fn check_backup(backup: &BackupSpec, bucket_needed_by: Option<&str>, errors: &mut Errors) {
    if let Some(needed_by) = bucket_needed_by {
        match backup.s3_bucket.as_deref() {
            None | Some("") => errors.add(
                "spec.backup.s3Bucket",
                format!("is required when {needed_by} is true (restic form host/bucket[/prefix], e.g. s3.example.org/postgres-backups)"),
            ),
            Some(bucket) => {
                if let Err(reason) = location::parse_spec_bucket(bucket) {
                    errors.add(
                        "spec.backup.s3Bucket",
                        format!("{bucket:?}: {reason}; write host/bucket[/prefix] (HTTPS) or http(s)://host/bucket[/prefix], e.g. s3.example.org/postgres-backups"),
                    );
                }
            }
        }
    }
    if let Some(reference) = &backup.s3_ca_secret_ref {
        check_ca_secret_ref(reference, backup.s3_bucket.as_deref(), errors);
    }
    if let Err(e) = cron::validate_schedule(&backup.schedule) {
        errors.add("spec.backup.schedule", e.to_string());
    }
    if let Err(e) = RetentionPolicy::parse(&backup.cleanup_strategy) {
        errors.add("spec.backup.cleanupStrategy", e.to_string());
    }
    let inline = [
        ("s3AccessKey", &backup.s3_access_key),
        ("s3SecretKey", &backup.s3_secret_key),
        ("resticPassword", &backup.restic_password),
    ];
    let given: Vec<&str> = inline
        .iter()
        .filter(|(_, value)| value.as_deref().is_some_and(|v| !v.is_empty()))
        .map(|(name, _)| *name)
        .collect();
    if backup.credentials_secret_ref.is_some() && !given.is_empty() {
        errors.add(
            "spec.backup.credentialsSecretRef",
            format!("give the credentials either inline or with credentialsSecretRef, not both (inline: {})", given.join(", ")),
        );
    } else if !given.is_empty() && given.len() < inline.len() {
        let missing: Vec<&str> = inline
            .iter()
            .map(|(name, _)| *name)
            .filter(|name| !given.contains(name))
            .collect();
        errors.add(
            "spec.backup",
            format!(
                "s3AccessKey, s3SecretKey and resticPassword go together: {} given, {} missing",
                given.join(", "),
                missing.join(", ")
            ),
        );
    }
    if let Some(reference) = &backup.credentials_secret_ref
        && reference.name.is_empty()
    {
        errors.add(
            "spec.backup.credentialsSecretRef.name",
            "must name a Secret",
        );
    }
}

fn check_ca_secret_ref(reference: &CABundleReference, bucket: Option<&str>, errors: &mut Errors) {
    if !is_dns_subdomain(&reference.name) {
        errors.add(
            "spec.backup.s3CASecretRef.name",
            format!(
                "must name a Secret (a DNS subdomain), got {:?}",
                reference.name
            ),
        );
    }
    // The key becomes a file name in the pods; the API server would refuse others only
    // when the pod is created.
    let key_ok = !reference.key.is_empty()
        && reference.key.len() <= 253
        && reference
            .key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !matches!(reference.key.as_str(), "." | "..");
    if !key_ok {
        errors.add(
            "spec.backup.s3CASecretRef.key",
            format!(
                "must be a Secret key (letters, digits, '-', '_' and '.'), got {:?}",
                reference.key
            ),
        );
    }
    if let Some(Ok(location)) = bucket.map(location::parse_spec_bucket)
        && location.is_plain_http()
    {
        errors.add(
            "spec.backup.s3CASecretRef",
            "applies only to an https:// endpoint, and spec.backup.s3Bucket is http://",
        );
    }
}

fn check_bootstrap(bootstrap: &BootstrapSpec, errors: &mut Errors) {
    if !bootstrap.enabled {
        return;
    }
    if bootstrap.old_name.as_deref().is_none_or(str::is_empty) {
        errors.add(
            "spec.bootstrap.oldName",
            "is required when spec.bootstrap.enabled is true",
        );
    }
    if let Some(time) = bootstrap.recovery_time.as_deref().filter(|t| !t.is_empty())
        && !is_rfc3339(time)
    {
        errors.add(
            "spec.bootstrap.recoveryTime",
            format!("{time:?} is not an RFC 3339 time such as 2026-01-31T12:00:00Z"),
        );
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`.
fn is_rfc3339(text: &str) -> bool {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        bytes
            .get(range)
            .is_some_and(|b| b.iter().all(u8::is_ascii_digit))
    };
    if bytes.len() < 20
        || !digits(0..4)
        || bytes[4] != b'-'
        || !digits(5..7)
        || bytes[7] != b'-'
        || !digits(8..10)
        || !matches!(bytes[10], b'T' | b't')
        || !digits(11..13)
        || bytes[13] != b':'
        || !digits(14..16)
        || bytes[16] != b':'
        || !digits(17..19)
    {
        return false;
    }
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let end = fraction
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(fraction.len());
        if end == 0 {
            return false;
        }
        rest = &fraction[end..];
    }
    match rest.as_bytes() {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|b| b.is_ascii_digit()),
        _ => false,
    }
}

fn check_resources(spec: &PostgresSpec, errors: &mut Errors) {
    if let Some(resources) = &spec.resources {
        for (field, value) in [("cpu", &resources.cpu), ("memory", &resources.memory)] {
            if let Some(value) = value {
                match value.0.parse::<Quantity>() {
                    Ok(q) if q.is_positive() => {}
                    Ok(_) => errors.add(
                        format!("spec.resources.{field}"),
                        format!("must be positive, got {:?}", value.0),
                    ),
                    Err(e) => errors.add(format!("spec.resources.{field}"), e.to_string()),
                }
            }
        }
    }
    if spec.image.as_deref() == Some("") {
        errors.add(
            "spec.image",
            "must not be empty; omit it to use the default image",
        );
    }
}

/// Checks a change of spec: what may not change once a cluster exists.
pub fn validate_update(old: &PostgresSpec, new: &PostgresSpec) -> Result<(), ValidationErrors> {
    let mut errors = Errors(Vec::new());
    if let (Ok(before), Ok(after)) = (old.size.parse::<Quantity>(), new.size.parse::<Quantity>())
        && after < before
    {
        errors.add(
            "spec.size",
            format!("may not shrink (from {before} to {after}): volumes can only grow"),
        );
    }
    if old.storage_class != new.storage_class {
        errors.add(
            "spec.storageClass",
            format!(
                "is immutable once the cluster is created (from {:?} to {:?})",
                old.storage_class.as_deref().unwrap_or("<unset>"),
                new.storage_class.as_deref().unwrap_or("<unset>")
            ),
        );
    }
    if old.version() != new.version() {
        errors.add(
            "spec.version",
            format!(
                "cannot change from v{} to v{}: major version upgrades (pg_upgrade) are not supported yet",
                old.version().major(),
                new.version().major()
            ),
        );
    }
    if errors.0.is_empty() {
        Ok(())
    } else {
        Err(ValidationErrors(errors.0))
    }
}

/// The `Postgres` schema and its compiled CEL rules, built once.
static CRD_SCHEMA: LazyLock<(Value, CompiledSchema)> = LazyLock::new(|| {
    let schema = serde_json::to_value(Postgres::crd())
        .ok()
        .and_then(|crd| {
            crd.pointer("/spec/versions/0/schema/openAPIV3Schema")
                .cloned()
        })
        .unwrap_or(Value::Null);
    let compiled = compile_schema(&schema);
    (schema, compiled)
});

/// Evaluates the CRD's own CEL rules on a whole `Postgres` object (with the schema
/// defaults applied, as the API server does), so `render` refuses exactly what
/// `kubectl apply` would. `old` enables the transition rules (updates).
pub fn validate_with_crd_rules(
    object: &Value,
    old: Option<&Value>,
) -> Result<(), ValidationErrors> {
    let (schema, compiled) = &*CRD_SCHEMA;
    let object = apply_defaults(schema, object);
    let old = old.map(|old| apply_defaults(schema, old));
    match Validator::new().validate_compiled(compiled, &object, old.as_ref()) {
        Ok(()) => Ok(()),
        Err(failures) => Err(ValidationErrors(
            failures
                .into_vec()
                .into_iter()
                .map(|failure| FieldError {
                    path: failure.field_path.trim_start_matches('.').to_string(),
                    message: failure.message,
                })
                .collect(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> PostgresSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn an_empty_spec_gets_valid_defaults() {
        assert_eq!(validate_spec(&spec("{}")), Ok(()));
    }

    #[test]
    fn rfc3339_times() {
        for good in [
            "2026-01-31T12:00:00Z",
            "2026-01-31T12:00:00.123+02:00",
            "2026-01-31t12:00:00z",
        ] {
            assert!(is_rfc3339(good), "{good}");
        }
        for bad in [
            "2026-01-31",
            "2026-01-31 12:00:00Z",
            "2026-01-31T12:00:00",
            "2026-01-31T12:00:00.Z",
            "x",
        ] {
            assert!(!is_rfc3339(bad), "{bad}");
        }
    }

    #[test]
    fn a_bootstrap_from_backup_names_its_source_and_reads_the_backup_bucket() {
        let ok = "bootstrap:\n  enabled: true\n  oldName: old\n  recoveryTime: 2026-01-31T12:00:00Z\nbackup:\n  s3Bucket: s3.example.org/b\n";
        assert_eq!(validate_spec(&spec(ok)), Ok(()));
        let err = validate_spec(&spec(
            "bootstrap:\n  enabled: true\n  recoveryTime: yesterday\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("spec.bootstrap.oldName: is required when spec.bootstrap.enabled is true"),
            "{err}"
        );
        assert!(
            err.contains("spec.bootstrap.recoveryTime: \"yesterday\" is not an RFC 3339 time"),
            "{err}"
        );
        assert!(
            err.contains("spec.backup.s3Bucket: is required when spec.bootstrap.enabled is true"),
            "{err}"
        );
        // Disabled, nothing is needed.
        assert_eq!(
            validate_spec(&spec("bootstrap:\n  enabled: false\n")),
            Ok(())
        );
    }

    #[test]
    fn a_user_named_like_a_group_role_is_refused() {
        let err =
            validate_spec(&spec("users:\n  app_admin: {}\ndatabases:\n  app: {}\n")).unwrap_err();
        assert!(err.to_string().contains("collides"), "{err}");
    }

    #[test]
    fn update_rules() {
        let old = spec("size: 10Gi\nstorageClass: fast\n");
        assert!(validate_update(&old, &spec("size: 20Gi\nstorageClass: fast\n")).is_ok());
        let err = validate_update(&old, &spec("size: 5Gi\nstorageClass: slow\nversion: v17\n"))
            .unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["spec.size", "spec.storageClass", "spec.version"]);
    }
}
