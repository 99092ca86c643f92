//! Labels and selectors shared by every object of a cluster.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// The seed documents select pods with `kubectl logs -l app=postgres`.
pub const APP: &str = "app";
pub const APP_VALUE: &str = "postgres";
pub const NAME: &str = "app.kubernetes.io/name";
pub const NAME_VALUE: &str = "postgres";
pub const INSTANCE: &str = "app.kubernetes.io/instance";
pub const COMPONENT: &str = "app.kubernetes.io/component";
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "postgres-operator";
/// `app.kubernetes.io/name` of the operator's own pods (the Helm chart sets it).
pub const OPERATOR_NAME_VALUE: &str = "postgres-operator";
pub const PART_OF: &str = "app.kubernetes.io/part-of";
/// Cluster name on every owned object; the key selectors and cleanup use.
pub const CLUSTER: &str = "postgres.apps.cozystack.io/cluster";
/// `primary` or `replica`, kept on each pod by the operator; Services select on it.
pub const ROLE: &str = "postgres.apps.cozystack.io/role";
pub const ROLE_PRIMARY: &str = "primary";
pub const ROLE_REPLICA: &str = "replica";
/// Pod ordinal of an instance (also set by the StatefulSet controller as
/// `apps.kubernetes.io/pod-index`; ours is available on every supported version).
pub const INSTANCE_NAME: &str = "postgres.apps.cozystack.io/instance";
/// On the pod template, so on every pod: a digest of the template it was made from.
/// A pod whose value differs from the StatefulSet's runs an old template and is
/// restarted by the operator's rolling update.
pub const TEMPLATE_HASH: &str = "postgres.apps.cozystack.io/template-hash";
/// On the StatefulSet: the PostgreSQL major version its data directories hold, so that
/// a change of `spec.version` is recognised as a major upgrade and refused.
pub const MAJOR_VERSION: &str = "postgres.apps.cozystack.io/major-version";

/// On `PostgresBackup` records the operator creates: `schedule` for the CronJob's runs,
/// which already run when their record appears (no Job is started for them).
pub const BACKUP_ORIGIN: &str = "postgres.apps.cozystack.io/backup-origin";
pub const BACKUP_ORIGIN_SCHEDULE: &str = "schedule";
/// On the Job of a `PostgresBackup` requested by hand: the record's name.
pub const BACKUP_RECORD: &str = "postgres.apps.cozystack.io/backup";

/// Component values.
pub const COMPONENT_DATABASE: &str = "database";
pub const COMPONENT_BACKUP: &str = "backup";

/// Labels that identify the cluster's pods; immutable once a StatefulSet exists, so
/// they never change with the spec.
pub fn selector(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME.to_string(), NAME_VALUE.to_string()),
        (INSTANCE.to_string(), cluster.to_string()),
        (CLUSTER.to_string(), cluster.to_string()),
    ])
}

/// Selector of the pods in one role (`primary` or `replica`).
pub fn role_selector(cluster: &str, role: &str) -> BTreeMap<String, String> {
    let mut labels = selector(cluster);
    labels.insert(ROLE.to_string(), role.to_string());
    labels
}

/// Labels of every object of the cluster, for `component`.
pub fn common(cluster: &str, component: &str) -> BTreeMap<String, String> {
    let mut labels = selector(cluster);
    labels.insert(APP.to_string(), APP_VALUE.to_string());
    labels.insert(COMPONENT.to_string(), component.to_string());
    labels.insert(MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string());
    labels.insert(PART_OF.to_string(), "cozystack".to_string());
    labels
}

/// A selector of exactly these labels.
pub fn match_labels(labels: BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels),
        ..LabelSelector::default()
    }
}
