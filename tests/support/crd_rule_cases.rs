//! Good and bad objects for the validation rules of our CRDs, each with the message the
//! API server refuses it with. One table, decided by the kube-rs CEL evaluation `render`
//! uses (tests/crd_cel_rules.rs) and by a real API server (tests/real_admission.rs), so
//! the two provably agree.

use serde_json::{Value, json};

/// Which part of the CRD decides a case.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DecidedBy {
    /// An `x-kubernetes-validations` CEL rule: the kube-rs evaluation decides it too.
    Cel,
    /// The OpenAPI schema (a pattern): `render` checks it outside CEL.
    Schema,
}

pub struct Case {
    /// What the case shows, for failure messages.
    pub name: &'static str,
    /// The object before, when the case is an update.
    pub old: Option<Value>,
    pub object: Value,
    /// The rule's message when the object is refused; `None` when it is accepted.
    pub refused_with: Option<&'static str>,
    pub decided_by: DecidedBy,
}

impl Case {
    fn accepts(name: &'static str, object: Value) -> Case {
        Case {
            name,
            old: None,
            object,
            refused_with: None,
            decided_by: DecidedBy::Cel,
        }
    }

    fn refuses(name: &'static str, object: Value, message: &'static str) -> Case {
        Case {
            refused_with: Some(message),
            ..Case::accepts(name, object)
        }
    }

    /// Makes the case an update from `old`.
    fn from(self, old: Value) -> Case {
        Case {
            old: Some(old),
            ..self
        }
    }

    fn by_schema(self) -> Case {
        Case {
            decided_by: DecidedBy::Schema,
            ..self
        }
    }

    /// The object's kind.
    pub fn kind(&self) -> &str {
        self.object["kind"].as_str().unwrap()
    }
}

pub fn named_postgres(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "apps.cozystack.io/v1alpha1", "kind": "Postgres", "metadata": {"name": name}, "spec": spec})
}

pub fn postgres(spec: Value) -> Value {
    named_postgres("demo", spec)
}

pub fn backup_record(spec: Value) -> Value {
    json!({"apiVersion": "apps.cozystack.io/v1alpha1", "kind": "PostgresBackup", "metadata": {"name": "b"}, "spec": spec})
}

const QUORUM_ORDER: &str = "quorum.minSyncReplicas must not exceed quorum.maxSyncReplicas";
const QUORUM_BELOW_REPLICAS: &str = "quorum.maxSyncReplicas must be less than replicas";
const DECLARED_USERS: &str = "every user listed in databases.<db>.roles must be declared in users";
const SIZE_POSITIVE: &str = "size must be a positive quantity such as 10Gi";
const SIZE_SHRINK: &str = "size may not shrink";
const STORAGE_CLASS_IMMUTABLE: &str = "storageClass is immutable once the cluster is created";
const USER_NAMES: &str = "user names must be 1-63 characters";
const DATABASE_NAMES: &str = "database names must be 1-63 printable ASCII characters";
const ROLE_KINDS: &str = "role kinds must be lowercase identifiers";
const EXTENSION_NAMES: &str = "extension names must be 1-63 letters";
const BUCKET_REQUIRED: &str = "backup.s3Bucket is required when backup.enabled is true";
const CREDENTIALS_ONCE: &str = "give backup credentials either inline";
const METADATA_NAME: &str = "metadata.name must start with a lowercase letter";
const RECORD_IMMUTABLE: &str = "a PostgresBackup spec is immutable; create a new one instead";
const RECORD_NO_DELETE: &str = "snapshotDeletionPolicy Delete is not supported yet";
const RECORD_NAMES_CLUSTER: &str = "spec.postgres must name a Postgres cluster";

/// Every case.
pub fn cases() -> Vec<Case> {
    let roles = |user: &str| json!({"users": {"alice": {}}, "databases": {"app": {"roles": {"admin": ["alice"], "readonly": [user]}}}});
    vec![
        // quorum bounds
        Case::accepts(
            "a quorum within replicas",
            postgres(
                json!({"replicas": 3, "quorum": {"minSyncReplicas": 1, "maxSyncReplicas": 2}}),
            ),
        ),
        Case::refuses(
            "minSyncReplicas above maxSyncReplicas",
            postgres(
                json!({"replicas": 3, "quorum": {"minSyncReplicas": 2, "maxSyncReplicas": 1}}),
            ),
            QUORUM_ORDER,
        ),
        Case::refuses(
            "maxSyncReplicas equal to replicas",
            postgres(json!({"replicas": 2, "quorum": {"maxSyncReplicas": 2}})),
            QUORUM_BELOW_REPLICAS,
        ),
        Case::refuses(
            "maxSyncReplicas equal to the default replicas (2)",
            postgres(json!({"quorum": {"maxSyncReplicas": 2}})),
            QUORUM_BELOW_REPLICAS,
        ),
        Case::accepts("a single replica", postgres(json!({"replicas": 1}))),
        // role members
        Case::accepts("a role member declared in users", postgres(roles("alice"))),
        Case::refuses(
            "a role member not declared in users",
            postgres(roles("bob")),
            DECLARED_USERS,
        ),
        Case::refuses(
            "role members without any users",
            postgres(json!({"databases": {"app": {"roles": {"admin": ["alice"]}}}})),
            DECLARED_USERS,
        ),
        // size
        Case::accepts("a size in Gi", postgres(json!({"size": "1Gi"}))),
        Case::refuses(
            "a size that is no quantity",
            postgres(json!({"size": "ten"})),
            SIZE_POSITIVE,
        ),
        Case::refuses("a zero size", postgres(json!({"size": "0"})), SIZE_POSITIVE),
        Case::accepts("a growing size", postgres(json!({"size": "20Gi"})))
            .from(postgres(json!({"size": "10Gi"}))),
        Case::accepts(
            "the same size in other units",
            postgres(json!({"size": "1024Mi"})),
        )
        .from(postgres(json!({"size": "1Gi"}))),
        Case::refuses(
            "a shrinking size",
            postgres(json!({"size": "10Gi"})),
            SIZE_SHRINK,
        )
        .from(postgres(json!({"size": "20Gi"}))),
        Case::refuses(
            "1G after 1Gi (1G is smaller)",
            postgres(json!({"size": "1G"})),
            SIZE_SHRINK,
        )
        .from(postgres(json!({"size": "1Gi"}))),
        // storageClass
        Case::accepts(
            "an unchanged storageClass",
            postgres(json!({"storageClass": "a"})),
        )
        .from(postgres(json!({"storageClass": "a"}))),
        Case::refuses(
            "a changed storageClass",
            postgres(json!({"storageClass": "b"})),
            STORAGE_CLASS_IMMUTABLE,
        )
        .from(postgres(json!({"storageClass": "a"}))),
        Case::refuses(
            "a storageClass set after creation",
            postgres(json!({"storageClass": "b"})),
            STORAGE_CLASS_IMMUTABLE,
        )
        .from(postgres(json!({}))),
        Case::refuses(
            "a storageClass removed after creation",
            postgres(json!({})),
            STORAGE_CLASS_IMMUTABLE,
        )
        .from(postgres(json!({"storageClass": "a"}))),
        Case::accepts(
            "another change without a storageClass",
            postgres(json!({"replicas": 3})),
        )
        .from(postgres(json!({}))),
        Case::accepts(
            "a storageClass that is a DNS subdomain",
            postgres(json!({"storageClass": "fast-ssd.example.org"})),
        ),
        Case::refuses(
            "a storageClass that is no DNS subdomain",
            postgres(json!({"storageClass": "Fast_SSD"})),
            "should match '^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)?$'",
        )
        .by_schema(),
        Case::accepts(
            "certificates from Secrets of the user's",
            postgres(
                json!({"certificates": {"serverTLSSecret": "db-tls", "serverCASecret": "db-ca"}}),
            ),
        ),
        Case::refuses(
            "a certificate Secret name that is no Secret name",
            postgres(json!({"certificates": {"serverTLSSecret": "DB_TLS"}})),
            "should match '^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$'",
        )
        .by_schema(),
        // user, database, role kind and extension names
        Case::refuses(
            "a user name with a space",
            postgres(json!({"users": {"bad user": {}}})),
            USER_NAMES,
        ),
        Case::refuses(
            "a user name starting with pg_",
            postgres(json!({"users": {"pg_x": {}}})),
            USER_NAMES,
        ),
        Case::accepts(
            "a user name with capitals, '-' and '.'",
            postgres(json!({"users": {"App-User.1": {}}})),
        ),
        Case::refuses(
            "a database name with '/'",
            postgres(json!({"databases": {"a/b": {}}})),
            DATABASE_NAMES,
        ),
        Case::accepts(
            "a database name with capitals and a space",
            postgres(json!({"databases": {"My DB": {}}})),
        ),
        Case::refuses(
            "a role kind with capitals",
            postgres(json!({"databases": {"app": {"roles": {"Admin": []}}}})),
            ROLE_KINDS,
        ),
        Case::refuses(
            "an extension name with a space",
            postgres(json!({"databases": {"app": {"extensions": ["bad name"]}}})),
            EXTENSION_NAMES,
        ),
        Case::accepts(
            "setting values of every type",
            postgres(
                json!({"postgresql": {"parameters": {"max_connections": "100", "checkpoint_completion_target": 0.9, "fsync": true}}}),
            ),
        ),
        // backup
        Case::refuses(
            "backups enabled without a bucket",
            postgres(json!({"backup": {"enabled": true}})),
            BUCKET_REQUIRED,
        ),
        Case::accepts(
            "backups enabled with a bucket",
            postgres(json!({"backup": {"enabled": true, "s3Bucket": "s3.example.org/b"}})),
        ),
        Case::refuses(
            "backup credentials both inline and from a Secret",
            postgres(
                json!({"backup": {"s3AccessKey": "a", "credentialsSecretRef": {"name": "s"}}}),
            ),
            CREDENTIALS_ONCE,
        ),
        // metadata.name
        Case::accepts("a lowercase name", named_postgres("ok-name", json!({}))),
        Case::accepts(
            "a name of 39 characters",
            named_postgres(&"a".repeat(39), json!({})),
        ),
        Case::refuses(
            "a name of 40 characters",
            named_postgres(&"a".repeat(40), json!({})),
            METADATA_NAME,
        ),
        Case::refuses(
            "a name with capitals",
            named_postgres("Upper", json!({})),
            METADATA_NAME,
        ),
        Case::refuses(
            "a name with a dot",
            named_postgres("my.db", json!({})),
            METADATA_NAME,
        ),
        Case::refuses(
            "a name starting with a digit",
            named_postgres("1st", json!({})),
            METADATA_NAME,
        ),
        // PostgresBackup
        Case::accepts(
            "a backup record that retains its snapshots",
            backup_record(json!({"postgres": "demo", "snapshotDeletionPolicy": "Retain"})),
        ),
        Case::refuses(
            "a backup record that asks to delete its snapshots",
            backup_record(json!({"postgres": "demo", "snapshotDeletionPolicy": "Delete"})),
            RECORD_NO_DELETE,
        ),
        Case::refuses(
            "a backup record naming no cluster",
            backup_record(json!({"postgres": ""})),
            RECORD_NAMES_CLUSTER,
        ),
        Case::accepts(
            "a backup record applied again unchanged",
            backup_record(json!({"postgres": "demo"})),
        )
        .from(backup_record(json!({"postgres": "demo"}))),
        Case::refuses(
            "a backup record changed",
            backup_record(json!({"postgres": "other"})),
            RECORD_IMMUTABLE,
        )
        .from(backup_record(json!({"postgres": "demo"}))),
    ]
}
