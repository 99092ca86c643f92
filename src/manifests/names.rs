//! Names of every object a cluster owns, in one place. For Postgres `<name>` the prefix
//! is `postgres-<name>`, as in the Cozystack application.

/// `postgres-<name>`: StatefulSet, PodDisruptionBudget, NetworkPolicy, ServiceAccount,
/// Role, RoleBinding, and the user-credentials Secret the seed documents name.
pub fn prefix(cluster: &str) -> String {
    format!("postgres-{cluster}")
}

/// Pod `ordinal` of the StatefulSet; also the instance's `application_name`.
pub fn pod(cluster: &str, ordinal: i32) -> String {
    format!("postgres-{cluster}-{ordinal}")
}

/// The pod that should be primary: the controller's target, else the current primary,
/// else ordinal 0 of a cluster that has never had one.
pub fn target_primary(postgres: &crate::api::Postgres) -> String {
    let status = postgres.status.as_ref();
    status
        .and_then(|s| s.target_primary.clone())
        .or_else(|| status.and_then(|s| s.current_primary.clone()))
        .unwrap_or_else(|| pod(&postgres.metadata.name.clone().unwrap_or_default(), 0))
}

/// The pod the `-rw` Service should select: the one the HA engine recorded as running
/// as the primary, else the one that should be (a new cluster). During a switchover
/// the label stays on the primary that still takes writes until the target runs.
pub fn labelled_primary(postgres: &crate::api::Postgres) -> String {
    postgres
        .status
        .as_ref()
        .and_then(|s| s.current_primary.clone())
        .unwrap_or_else(|| target_primary(postgres))
}

/// Service selecting the primary.
pub fn service_rw(cluster: &str) -> String {
    format!("postgres-{cluster}-rw")
}

/// Service selecting the standbys.
pub fn service_ro(cluster: &str) -> String {
    format!("postgres-{cluster}-ro")
}

/// Service selecting any instance.
pub fn service_r(cluster: &str) -> String {
    format!("postgres-{cluster}-r")
}

/// Headless Service giving each pod a stable DNS name (StatefulSet `serviceName`).
pub fn service_headless(cluster: &str) -> String {
    format!("postgres-{cluster}-headless")
}

/// LoadBalancer Service to the primary, when `external: true`.
pub fn service_external(cluster: &str) -> String {
    format!("postgres-{cluster}-external-write")
}

/// Secret with one key per user (the name the seed documents use).
pub fn secret_users(cluster: &str) -> String {
    prefix(cluster)
}

/// Secret with one key per user (the name Cozystack uses).
pub fn secret_credentials(cluster: &str) -> String {
    format!("postgres-{cluster}-credentials")
}

/// Secret with the `postgres` superuser's credentials.
pub fn secret_superuser(cluster: &str) -> String {
    format!("postgres-{cluster}-superuser")
}

/// Secret with the streaming-replication user's credentials.
pub fn secret_replication(cluster: &str) -> String {
    format!("postgres-{cluster}-replication")
}

/// Secret with the cluster's certificate authority (`ca.crt`, `ca.key`).
pub fn secret_ca(cluster: &str) -> String {
    format!("postgres-{cluster}-ca")
}

/// Secret with the server certificate (`tls.crt`, `tls.key`, `ca.crt`).
pub fn secret_server(cluster: &str) -> String {
    format!("postgres-{cluster}-server")
}

/// Secret with S3 keys and the restic password.
pub fn secret_backup(cluster: &str) -> String {
    format!("postgres-{cluster}-backup")
}

/// ConfigMap with postgresql.conf and pg_hba.conf.
pub fn config_map(cluster: &str) -> String {
    format!("postgres-{cluster}-config")
}

/// Backup CronJob.
pub fn backup_cronjob(cluster: &str) -> String {
    format!("postgres-{cluster}-backup")
}

/// PodDisruptionBudget protecting the primary.
pub fn pdb_primary(cluster: &str) -> String {
    format!("postgres-{cluster}-primary")
}

/// PodDisruptionBudget pacing standby evictions.
pub fn pdb_standbys(cluster: &str) -> String {
    prefix(cluster)
}
