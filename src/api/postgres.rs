//! The `Postgres` custom resource: one highly available PostgreSQL cluster.
//!
//! Field names, types and defaults follow the Cozystack Postgres application so that
//! existing manifests (kubectl and Terraform) apply unchanged. CEL rules attached here
//! are enforced by the API server and, through [`crate::validate`], by `render`.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::presets::ResourcesPreset;

/// Default PVC size per instance.
pub const DEFAULT_SIZE: &str = "10Gi";
/// Default number of instances (primary + standbys).
pub const DEFAULT_REPLICAS: i32 = 2;
/// Default `restic forget` policy.
pub const DEFAULT_CLEANUP_STRATEGY: &str = "--keep-last=3 --keep-daily=3 --keep-within-weekly=1m";
/// Default backup schedule.
pub const DEFAULT_BACKUP_SCHEDULE: &str = "0 2 * * *";
/// Default S3 region.
pub const DEFAULT_S3_REGION: &str = "us-east-1";

/// The longest cluster name whose derived object names all stay within the 63-character
/// limit of Service names (`postgres-<name>-external-write`).
pub const MAX_NAME_LENGTH: usize = 39;

/// Desired state of a PostgreSQL cluster.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "apps.cozystack.io",
    version = "v1alpha1",
    kind = "Postgres",
    plural = "postgreses",
    singular = "postgres",
    shortname = "pg",
    namespaced,
    status = "PostgresStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.ready","description":"Instances ready to serve / instances the spec asks for"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","description":"Why the cluster is or is not ready"}"#,
    printcolumn = r#"{"name":"Primary","type":"string","jsonPath":".status.currentPrimary"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".status.version"}"#,
    printcolumn = r#"{"name":"Last Backup","type":"date","jsonPath":".status.lastBackup","description":"Completion of the last successful backup"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("self.metadata.name.size() <= 39 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must start with a lowercase letter, contain only lowercase letters, digits and '-', and be at most 39 characters (object names such as postgres-<name>-external-write must fit in 63)")
)]
#[x_kube(
    validation = Rule::new("!has(self.quorum) || !has(self.quorum.maxSyncReplicas) || self.quorum.maxSyncReplicas < self.replicas").message("quorum.maxSyncReplicas must be less than replicas").field_path(".quorum.maxSyncReplicas"),
    validation = Rule::new("!has(self.databases) || self.databases.all(db, !has(self.databases[db].roles) || self.databases[db].roles.all(kind, self.databases[db].roles[kind].all(u, has(self.users) && u in self.users)))").message("every user listed in databases.<db>.roles must be declared in users").field_path(".databases"),
    validation = Rule::new("has(self.storageClass) == has(oldSelf.storageClass) && (!has(self.storageClass) || self.storageClass == oldSelf.storageClass)").message("storageClass is immutable once the cluster is created").field_path(".storageClass"),
)]
#[serde(rename_all = "camelCase")]
pub struct PostgresSpec {
    /// Adds Service `postgres-<name>-external-write` (type LoadBalancer) to the primary.
    #[serde(default)]
    pub external: bool,

    /// PVC size per instance. Growing it resizes the volumes; shrinking is refused.
    #[serde(default = "default_size")]
    #[x_kube(
        validation = Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))").message("size must be a positive quantity such as 10Gi"),
        validation = Rule::new("!isQuantity(self) || !isQuantity(oldSelf) || quantity(self).compareTo(quantity(oldSelf)) >= 0").message("size may not shrink"),
    )]
    #[schemars(length(max = 32))]
    pub size: String,

    /// Number of PostgreSQL instances (primary + standbys).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1))]
    pub replicas: i32,

    /// Storage class of the data volumes; empty or unset uses the operator's default
    /// (itself empty by default: the cluster's default class). Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 253),
        regex(pattern = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)?$")
    )]
    pub storage_class: Option<String>,

    /// PostgreSQL server configuration.
    #[serde(default)]
    pub postgresql: PostgresqlSpec,

    /// Synchronous replication quorum.
    #[serde(default)]
    pub quorum: QuorumSpec,

    /// Users to create, by name (letters, digits, '.', '_', '-'; each becomes a key of the
    /// credentials Secret).
    #[serde(default)]
    #[schemars(extend("maxProperties" = 100))]
    #[x_kube(validation = Rule::new("self.all(u, u.matches('^[A-Za-z0-9._-]{1,63}$') && !u.startsWith('pg_'))").message("user names must be 1-63 characters of letters, digits, '.', '_' or '-' and must not start with pg_"))]
    pub users: BTreeMap<String, UserSpec>,

    /// Databases to create, by name.
    #[serde(default)]
    #[schemars(extend("maxProperties" = 100))]
    #[x_kube(validation = Rule::new("self.all(d, d.matches('^[ -.0-~]{1,63}$') && !d.startsWith('pg_'))").message("database names must be 1-63 printable ASCII characters other than '/' and must not start with pg_"))]
    pub databases: BTreeMap<String, DatabaseSpec>,

    /// Scheduled logical backups with restic to S3.
    #[serde(default)]
    pub backup: BackupSpec,

    /// PostgreSQL major version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<PostgresVersion>,

    /// Container image of PostgreSQL, overriding the one the operator picks for `version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// Explicit CPU and memory for each instance; wins over `resourcesPreset`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourcesSpec>,

    /// Named CPU/memory size for each instance (Cozystack presets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources_preset: Option<ResourcesPreset>,

    /// Create the cluster from another cluster's backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<BootstrapSpec>,

    /// The server certificate from Secrets of your own (e.g. cert-manager's) instead of
    /// the operator's CA and certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificates: Option<CertificatesSpec>,
}

/// Secrets (same namespace) with the server's certificate, as cert-manager writes them.
/// The operator copies them into `postgres-<name>-server`, which the instances and the
/// backup Jobs read, and follows their renewals.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct CertificatesSpec {
    /// A Secret with `tls.crt` (the server certificate, with its chain) and `tls.key`.
    /// Its names must cover those clients and standbys connect by: the Services
    /// `postgres-<name>-rw`, `-ro`, `-r` (and `-external-write`) and
    /// `*.postgres-<name>-headless`, each as `<service>.<namespace>.svc` at least.
    #[serde(rename = "serverTLSSecret")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub server_tls_secret: String,
    /// A Secret whose `ca.crt` is the CA the server certificate chains to, which standbys
    /// and backup Jobs verify it with; by default `ca.crt` of `serverTLSSecret`.
    #[serde(
        rename = "serverCASecret",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub server_ca_secret: Option<String>,
}

fn default_size() -> String {
    DEFAULT_SIZE.to_string()
}

fn default_replicas() -> i32 {
    DEFAULT_REPLICAS
}

/// PostgreSQL server configuration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
pub struct PostgresqlSpec {
    /// Any PostgreSQL setting (GUC) as a number, a string or a boolean. Settings the operator owns
    /// (replication, listening, TLS, archiving) and settings that load code are refused.
    #[serde(default = "default_parameters")]
    #[schemars(extend("maxProperties" = 500))]
    pub parameters: BTreeMap<String, ParameterValue>,
}

impl Default for PostgresqlSpec {
    fn default() -> Self {
        Self {
            parameters: default_parameters(),
        }
    }
}

fn default_parameters() -> BTreeMap<String, ParameterValue> {
    BTreeMap::from([("max_connections".to_string(), ParameterValue::Int(100))])
}

/// A PostgreSQL setting value as written in YAML: `200`, `0.9`, `"256MB"` or `true`.
#[derive(Clone, Debug, PartialEq)]
pub enum ParameterValue {
    Int(i64),
    Float(f64),
    String(String),
    Bool(bool),
}

impl fmt::Display for ParameterValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParameterValue::Int(i) => write!(f, "{i}"),
            ParameterValue::Float(x) => write!(f, "{x}"),
            ParameterValue::String(s) => f.write_str(s),
            ParameterValue::Bool(b) => f.write_str(if *b { "on" } else { "off" }),
        }
    }
}

impl Serialize for ParameterValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ParameterValue::Int(i) => serializer.serialize_i64(*i),
            ParameterValue::Float(x) => serializer.serialize_f64(*x),
            ParameterValue::String(s) => serializer.serialize_str(s),
            ParameterValue::Bool(b) => serializer.serialize_bool(*b),
        }
    }
}

impl<'de> Deserialize<'de> for ParameterValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ParameterValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number, a string or a boolean")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ParameterValue, E> {
                Ok(ParameterValue::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ParameterValue, E> {
                i64::try_from(v)
                    .map(ParameterValue::Int)
                    .map_err(|_| E::custom(format!("{v} is too large for a PostgreSQL setting")))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<ParameterValue, E> {
                if v.is_finite() {
                    Ok(ParameterValue::Float(v))
                } else {
                    Err(E::custom("expected a finite number"))
                }
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<ParameterValue, E> {
                Ok(ParameterValue::Bool(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ParameterValue, E> {
                Ok(ParameterValue::String(v.to_string()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl JsonSchema for ParameterValue {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ParameterValue".into()
    }

    // Kubernetes structural schemas cannot express "number, string or boolean"
    // (int-or-string excludes 0.9 and true), so the value is left open here; the
    // operator refuses lists and objects when it reads the spec.
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A number, a string or a boolean.",
            "x-kubernetes-preserve-unknown-fields": true
        })
    }
}

/// Synchronous replication quorum (see the README: the quorum is computed from the
/// healthy standbys between these bounds).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minSyncReplicas <= self.maxSyncReplicas").message("quorum.minSyncReplicas must not exceed quorum.maxSyncReplicas"))]
pub struct QuorumSpec {
    /// Minimum number of synchronous standbys.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub min_sync_replicas: i32,
    /// Maximum number of synchronous standbys.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub max_sync_replicas: i32,
    /// What happens with fewer healthy standbys than `minSyncReplicas`: `preferred`
    /// (default) lets commits wait only for the healthy ones (none: asynchronous), so
    /// writes go on with fewer copies; `required` keeps waiting for `minSyncReplicas`
    /// standbys, so writes stop rather than be acknowledged with fewer copies.
    #[serde(default)]
    pub data_durability: DataDurability,
}

/// How far the synchronous quorum may shrink when standbys are missing (CloudNativePG's
/// names). The variants carry no doc comments: schemars would turn documented variants
/// into a `oneOf`, which a structural CRD schema cannot hold; the field documents them.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DataDurability {
    // Availability first.
    #[default]
    Preferred,
    // Never fewer acknowledging standbys than `minSyncReplicas`.
    Required,
}

/// A login user.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserSpec {
    /// Password; generated (and then kept) when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Grants the REPLICATION attribute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<bool>,
    /// Grants the SUPERUSER attribute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superuser: Option<bool>,
}

/// A database, its role kinds and extensions.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSpec {
    /// Role kind → users granted the group role `<db>_<kind>`. Built-in kinds: `admin`
    /// (owner), `readwrite`, `readonly`; any other kind is a group role with CONNECT.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "role_lists_schema")]
    #[x_kube(validation = Rule::new("self.all(k, k.matches('^[a-z][a-z0-9_]{0,30}$'))").message("role kinds must be lowercase identifiers of at most 31 characters (e.g. admin, readonly, app)"))]
    pub roles: BTreeMap<String, RoleMembers>,
    /// Extensions created in this database.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "extension_list_schema")]
    #[x_kube(validation = Rule::new("self.all(e, e.matches('^[A-Za-z0-9_-]{1,63}$'))").message("extension names must be 1-63 letters, digits, '_' or '-'"))]
    pub extensions: Vec<String>,
}

/// The users granted one role kind.
pub type RoleMembers = Vec<String>;

/// Bounds on the role lists keep the CEL rule that checks every member against `users`
/// within the API server's cost budget.
fn role_lists_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": 20,
        "additionalProperties": {
            "type": "array",
            "maxItems": 100,
            "items": {"type": "string", "maxLength": 63}
        }
    })
}

/// Extension names are bounded so the CEL rule that checks each stays within the API
/// server's cost budget.
fn extension_list_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "maxItems": 50,
        "items": {"type": "string", "maxLength": 63}
    })
}

/// Backup configuration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!self.enabled || (has(self.s3Bucket) && self.s3Bucket != '')").message("backup.s3Bucket is required when backup.enabled is true").field_path(".s3Bucket"),
    validation = Rule::new("!has(self.credentialsSecretRef) || (!has(self.s3AccessKey) && !has(self.s3SecretKey) && !has(self.resticPassword))").message("give backup credentials either inline (s3AccessKey, s3SecretKey, resticPassword) or with credentialsSecretRef, not both"),
)]
pub struct BackupSpec {
    /// Enables the scheduled backups.
    #[serde(default)]
    pub enabled: bool,
    /// S3 region.
    #[serde(default = "default_s3_region")]
    pub s3_region: String,
    /// Bucket in restic form `host/bucket[/prefix]` (HTTPS), e.g.
    /// `s3.example.org/postgres-backups`, or with an explicit scheme
    /// `http(s)://host/bucket[/prefix]`. `http://` is unencrypted transport (the requests can
    /// be read on the way; restic still encrypts the backed-up data), for in-cluster S3
    /// servers without TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_bucket: Option<String>,
    /// Cron schedule (5 fields).
    #[serde(default = "default_schedule")]
    pub schedule: String,
    /// `restic forget` retention flags (only `--keep-*`).
    #[serde(default = "default_cleanup_strategy")]
    pub cleanup_strategy: String,
    /// S3 access key, copied into Secret `postgres-<name>-backup`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_access_key: Option<String>,
    /// S3 secret key, copied into Secret `postgres-<name>-backup`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_secret_key: Option<String>,
    /// Restic repository password, copied into Secret `postgres-<name>-backup`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restic_password: Option<String>,
    /// An existing Secret with keys `s3AccessKey`, `s3SecretKey` and `resticPassword`,
    /// instead of the inline values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretReference>,
    /// An existing Secret with the PEM CA certificates the HTTPS S3 endpoint's certificate
    /// must chain to, for an endpoint with a private CA. They replace the system roots for
    /// that endpoint (as restic's `--cacert` does).
    #[serde(
        rename = "s3CASecretRef",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub s3_ca_secret_ref: Option<CABundleReference>,
}

impl Default for BackupSpec {
    fn default() -> Self {
        Self {
            enabled: false,
            s3_region: default_s3_region(),
            s3_bucket: None,
            schedule: default_schedule(),
            cleanup_strategy: default_cleanup_strategy(),
            s3_access_key: None,
            s3_secret_key: None,
            restic_password: None,
            credentials_secret_ref: None,
            s3_ca_secret_ref: None,
        }
    }
}

fn default_s3_region() -> String {
    DEFAULT_S3_REGION.to_string()
}

fn default_schedule() -> String {
    DEFAULT_BACKUP_SCHEDULE.to_string()
}

fn default_cleanup_strategy() -> String {
    DEFAULT_CLEANUP_STRATEGY.to_string()
}

/// A Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct SecretReference {
    /// Name of the Secret.
    pub name: String,
}

/// A key of a Secret in the same namespace that holds PEM CA certificates.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct CABundleReference {
    /// Name of the Secret.
    pub name: String,
    /// The key holding the certificates; `ca.crt` by default, where cert-manager puts the
    /// issuing CA.
    #[serde(default = "default_ca_key")]
    pub key: String,
}

/// The key cert-manager's certificate Secrets keep the CA in.
pub const DEFAULT_CA_KEY: &str = "ca.crt";

fn default_ca_key() -> String {
    DEFAULT_CA_KEY.to_string()
}

/// Supported PostgreSQL major versions.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub enum PostgresVersion {
    #[serde(rename = "v13")]
    V13,
    #[serde(rename = "v14")]
    V14,
    #[serde(rename = "v15")]
    V15,
    #[serde(rename = "v16")]
    V16,
    #[serde(rename = "v17")]
    V17,
    #[default]
    #[serde(rename = "v18")]
    V18,
}

impl PostgresVersion {
    /// The major version number, e.g. 17.
    pub fn major(self) -> u32 {
        match self {
            PostgresVersion::V13 => 13,
            PostgresVersion::V14 => 14,
            PostgresVersion::V15 => 15,
            PostgresVersion::V16 => 16,
            PostgresVersion::V17 => 17,
            PostgresVersion::V18 => 18,
        }
    }
}

/// Explicit compute resources of each instance (requests = limits).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct ResourcesSpec {
    /// CPU, e.g. `2` or `500m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Memory, e.g. `4Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
}

/// Create the cluster from the backups of another one, read from this cluster's
/// `backup.s3Bucket` with its credentials. Acts only on an empty first volume.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapSpec {
    /// Restore from backups instead of starting empty.
    #[serde(default)]
    pub enabled: bool,
    /// Name of the cluster whose backups are restored (it may be this cluster's own name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_name: Option<String>,
    /// Restore the latest backup run completed at or before this time (RFC 3339); empty
    /// means the latest run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_time: Option<String>,
}

/// Observed state of a PostgreSQL cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Degraded`, `ConfigurationApplied`, `BackupSucceeded`,
    /// and `Restoring` for a cluster bootstrapped from a backup.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Running PostgreSQL version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Pods running the current pod template; the others wait for the rolling update.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub updated_instances: Vec<String>,
    /// Instances that exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances: Option<i32>,
    /// Instances ready to serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_instances: Option<i32>,
    /// `readyInstances/replicas` as `kubectl get` shows it, e.g. `2/3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
    /// Pod name of the current primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_primary: Option<String>,
    /// Pod name the operator wants as primary (differs during failover/switchover).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_primary: Option<String>,
    /// The standbys named in the primary's `synchronous_standby_names`
    /// (`ANY syncQuorum (syncStandbys)`), as it last reported them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sync_standbys: Vec<String>,
    /// How many of `syncStandbys` must confirm each commit; 0 or absent: asynchronous.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_quorum: Option<i32>,
    /// Each instance as the primary last reported it, recorded when a role, a stream or
    /// a synchronous state changes (WAL positions and lag are in each instance's
    /// `/status` and metrics, which move all the time).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances_status: Vec<InstanceState>,
    /// The last automatic failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failover: Option<FailoverRecord>,
    /// Completion time of the last successful backup (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<String>,
}

/// `status.lastFailover`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverRecord {
    /// The primary that was lost.
    pub from: String,
    /// The standby promoted in its place.
    pub to: String,
    /// When the new primary took over (RFC 3339).
    pub completed_at: String,
    /// From the first sign of the loss to the new primary taking writes.
    pub seconds: f64,
    /// Asynchronous replication only: bytes of WAL the old primary had reported that
    /// the promoted standby did not have; the commits in them are lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_wal_bytes: Option<i64>,
}

/// One instance in `status.instancesStatus`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceState {
    /// The pod.
    pub name: String,
    /// `primary` or `standby`.
    pub role: String,
    /// The primary runs; a standby streams from it.
    pub ready: bool,
    /// A standby's place in the synchronous quorum: `quorum` (named in `ANY q (...)`)
    /// or `async`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_state: Option<String>,
}

impl Postgres {
    /// The name of the cluster (`metadata.name`), empty when absent.
    pub fn cluster_name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }

    /// The prefix of every object this cluster owns: `postgres-<name>`.
    pub fn prefix(&self) -> String {
        format!("postgres-{}", self.cluster_name())
    }
}

impl PostgresSpec {
    /// The backups to restore a new cluster from, when `bootstrap.enabled`.
    pub fn restore_source(&self) -> Option<&BootstrapSpec> {
        self.bootstrap
            .as_ref()
            .filter(|bootstrap| bootstrap.enabled)
    }

    /// The PostgreSQL major version, defaulted.
    pub fn version(&self) -> PostgresVersion {
        self.version.unwrap_or_default()
    }
}
