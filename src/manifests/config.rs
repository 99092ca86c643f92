//! PostgreSQL configuration from the spec: `postgresql.conf` (operator-owned settings,
//! then the user's), `pg_hba.conf` and the ConfigMap holding both. The synchronous
//! quorum is decided at run time by the instance (`instance::quorum`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use k8s_openapi::api::core::v1::ConfigMap;

use super::pod::{POSTGRES_PORT, SOCKET_DIR};
use super::secrets::{REPLICATION_USER, SUPERUSER};
use super::{Cluster, labels, names};
use crate::api::ParameterValue;

/// ConfigMap keys.
pub const POSTGRESQL_CONF: &str = "postgresql.conf";
pub const PG_HBA_CONF: &str = "pg_hba.conf";
/// Settings only known at run time (`primary_conninfo`, `synchronous_standby_names`),
/// written by the instance manager next to postgresql.conf in PGDATA and included last
/// so they win. pg_hba.conf lives there too (PostgreSQL's default `hba_file`).
pub const RUNTIME_CONF: &str = "operator-runtime.conf";

/// PostgreSQL's default, written explicitly as the Cozystack API documents it.
const DEFAULT_MAX_CONNECTIONS: i64 = 100;

/// Audit settings on unless `spec.postgresql.parameters` says otherwise.
pub const AUDIT_DEFAULTS: &[(&str, &str)] = &[
    ("log_connections", "on"),
    ("log_disconnections", "on"),
    ("log_statement", "ddl"),
];

/// Extensions that only work when their library is preloaded.
const PRELOADED_EXTENSIONS: &[&str] = &["pg_stat_statements", "pgaudit"];

/// A string setting as a postgresql.conf literal.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

fn render_value(value: &ParameterValue) -> String {
    match value {
        ParameterValue::Int(i) => i.to_string(),
        // Rust prints f64 without an exponent (0.9, 1.1, 100), which PostgreSQL reads.
        ParameterValue::Float(f) => f.to_string(),
        ParameterValue::String(s) => quote_literal(s),
        ParameterValue::Bool(b) => quote_literal(if *b { "on" } else { "off" }),
    }
}

/// Libraries the requested extensions need, and `pgaudit` when a `pgaudit.*` parameter
/// is set (it only reads them once loaded), sorted.
pub fn preload_libraries(cluster: &Cluster) -> Vec<String> {
    let spec = cluster.spec();
    let mut wanted: BTreeSet<&str> = spec
        .databases
        .values()
        .flat_map(|db| db.extensions.iter().map(String::as_str))
        .filter(|extension| PRELOADED_EXTENSIONS.contains(extension))
        .collect();
    if spec
        .postgresql
        .parameters
        .keys()
        .any(|name| name.to_ascii_lowercase().starts_with("pgaudit."))
    {
        wanted.insert("pgaudit");
    }
    wanted.into_iter().map(str::to_string).collect()
}

/// `jsonlog` from PostgreSQL 15; `csvlog` (read into the same records) before.
fn log_destination(cluster: &Cluster) -> &'static str {
    if cluster.spec().version().major() >= 15 {
        "jsonlog"
    } else {
        "csvlog"
    }
}

/// The full postgresql.conf.
pub fn postgresql_conf(cluster: &Cluster) -> String {
    let replicas = cluster.spec().replicas.max(1);
    // Every standby holds a sender and a slot; the rest covers pg_basebackup clones and
    // a rejoining old primary.
    let senders = (2 * replicas + 2).max(10);
    let mut owned: Vec<(&str, String)> = vec![
        ("listen_addresses", quote_literal("*")),
        ("port", POSTGRES_PORT.to_string()),
        ("unix_socket_directories", quote_literal(SOCKET_DIR)),
        ("wal_level", quote_literal("replica")),
        ("hot_standby", quote_literal("on")),
        ("max_wal_senders", senders.to_string()),
        ("max_replication_slots", senders.to_string()),
        ("wal_keep_size", quote_literal("1GB")),
        // pg_rewind needs it to bring a failed primary back as a standby.
        ("wal_log_hints", quote_literal("on")),
        ("password_encryption", quote_literal("scram-sha-256")),
        // PostgreSQL's records leave the pod as JSON through the instance manager
        // (`instance::postgres_logs`): the collector writes into the manager's pipes,
        // never rotating (a rotation would open a new file, not a pipe).
        ("logging_collector", quote_literal("on")),
        ("log_destination", quote_literal(log_destination(cluster))),
        (
            "log_filename",
            quote_literal(crate::instance::postgres_logs::LOG_FILE_STEM),
        ),
        ("log_rotation_age", "0".to_string()),
        ("log_rotation_size", "0".to_string()),
        ("log_truncate_on_rotation", quote_literal("off")),
    ];
    let libraries = preload_libraries(cluster);
    if !libraries.is_empty() {
        owned.push((
            "shared_preload_libraries",
            quote_literal(&libraries.join(",")),
        ));
    }

    let mut user: BTreeMap<&str, String> = cluster
        .spec()
        .postgresql
        .parameters
        .iter()
        .map(|(name, value)| (name.as_str(), render_value(value)))
        .collect();
    user.entry("max_connections")
        .or_insert_with(|| DEFAULT_MAX_CONNECTIONS.to_string());
    // Standbys reply at least this often: an isolated primary knows within two
    // seconds that none is there (see `instance::isolation`).
    user.entry("wal_receiver_status_interval")
        .or_insert_with(|| quote_literal("1s"));
    // The audit trail by default (README "Audit logs"): who connected, for how long, and
    // every schema or role change. The spec may turn each off.
    for (name, value) in AUDIT_DEFAULTS {
        user.entry(name).or_insert_with(|| quote_literal(value));
    }

    let mut conf = format!(
        "# postgresql.conf of Postgres {}/{}, written by postgres-operator: edit the Postgres object instead.\n\n# Owned by the operator\n",
        cluster.namespace, cluster.name
    );
    for (name, value) in owned {
        let _ = writeln!(conf, "{name} = {value}");
    }
    conf.push_str("\n# spec.postgresql.parameters\n");
    for (name, value) in user {
        let _ = writeln!(conf, "{name} = {value}");
    }
    conf.push_str(
        "\n# Set at run time by the instance manager (replication source, synchronous quorum)\n",
    );
    let _ = writeln!(conf, "include_if_exists = {}", quote_literal(RUNTIME_CONF));
    conf
}

/// Client authentication: the instance manager as `postgres` over the local socket
/// (peer: the container runs as the `postgres` OS user); everyone else with SCRAM. From
/// another pod, TLS only (`hostssl`; a clear-text attempt meets an explicit `reject`),
/// loopback being the pod itself (`kubectl exec … psql -h localhost`, sidecars).
pub fn pg_hba_conf(_cluster: &Cluster) -> String {
    let mut hba = String::from(
        "# pg_hba.conf written by postgres-operator.\n# TYPE    DATABASE     USER                ADDRESS       METHOD\n",
    );
    let mut rules = vec![
        ("local", "all", SUPERUSER, "", "peer"),
        ("local", "all", "all", "", "scram-sha-256"),
        ("host", "all", "all", "127.0.0.1/32", "scram-sha-256"),
        ("host", "all", "all", "::1/128", "scram-sha-256"),
        (
            "host",
            "replication",
            REPLICATION_USER,
            "127.0.0.1/32",
            "scram-sha-256",
        ),
        (
            "host",
            "replication",
            REPLICATION_USER,
            "::1/128",
            "scram-sha-256",
        ),
    ];
    for address in ["0.0.0.0/0", "::0/0"] {
        rules.extend([
            (
                "hostssl",
                "replication",
                REPLICATION_USER,
                address,
                "scram-sha-256",
            ),
            ("hostssl", "all", "all", address, "scram-sha-256"),
            ("hostnossl", "all", "all", address, "reject"),
            ("hostnossl", "replication", "all", address, "reject"),
        ]);
    }
    for (kind, database, user, address, method) in rules {
        let _ = writeln!(
            hba,
            "{kind:<9} {database:<12} {user:<19} {address:<13} {method}"
        );
    }
    hba
}

/// ConfigMap `postgres-<name>-config` with both files.
pub fn desired_config_map(cluster: &Cluster) -> ConfigMap {
    ConfigMap {
        metadata: cluster.meta(names::config_map(&cluster.name), labels::COMPONENT_DATABASE),
        data: Some(BTreeMap::from([
            (POSTGRESQL_CONF.to_string(), postgresql_conf(cluster)),
            (PG_HBA_CONF.to_string(), pg_hba_conf(cluster)),
        ])),
        ..ConfigMap::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::test_support::cluster_from_yaml;

    #[test]
    fn user_parameters_follow_owned_settings_with_literal_quoting() {
        let (pg, settings) = cluster_from_yaml(
            "postgresql:\n  parameters:\n    max_connections: 200\n    shared_buffers: 256MB\n    checkpoint_completion_target: 0.9\n    random_page_cost: 1.1\n    application_name: \"x'; DROP TABLE t; --\\\\\"\n",
        );
        let conf = postgresql_conf(&Cluster::new(&pg, "ns", &settings));
        assert!(conf.contains("\nmax_connections = 200\n"), "{conf}");
        assert!(conf.contains("\nshared_buffers = '256MB'\n"));
        assert!(conf.contains("\ncheckpoint_completion_target = 0.9\n"));
        assert!(conf.contains("\nrandom_page_cost = 1.1\n"));
        assert!(
            conf.contains("\napplication_name = 'x''; DROP TABLE t; --\\\\'\n"),
            "{conf}"
        );
        assert!(conf.find("listen_addresses").unwrap() < conf.find("max_connections").unwrap());
        assert!(
            conf.trim_end()
                .ends_with(&format!("include_if_exists = '{RUNTIME_CONF}'"))
        );
        assert!(!conf.contains("synchronous_standby_names"));
    }

    #[test]
    fn the_audit_trail_is_on_by_default_and_the_spec_may_turn_it_off() {
        let (pg, settings) = cluster_from_yaml("replicas: 1\n");
        let conf = postgresql_conf(&Cluster::new(&pg, "ns", &settings));
        for line in [
            "log_connections = 'on'",
            "log_disconnections = 'on'",
            "log_statement = 'ddl'",
        ] {
            assert!(conf.contains(&format!("\n{line}\n")), "{line} in {conf}");
        }
        let (pg, settings) = cluster_from_yaml(
            "postgresql:\n  parameters:\n    log_connections: false\n    log_statement: all\n",
        );
        let conf = postgresql_conf(&Cluster::new(&pg, "ns", &settings));
        assert!(conf.contains("\nlog_connections = 'off'\n"), "{conf}");
        assert!(conf.contains("\nlog_statement = 'all'\n"));
        assert!(conf.contains("\nlog_disconnections = 'on'\n"));
        assert_eq!(conf.matches("log_statement =").count(), 1);
    }

    #[test]
    fn pgaudit_is_preloaded_when_its_settings_or_its_extension_are_asked_for() {
        let (pg, settings) =
            cluster_from_yaml("postgresql:\n  parameters:\n    pgaudit.log: \"ddl, role\"\n");
        assert_eq!(
            preload_libraries(&Cluster::new(&pg, "ns", &settings)),
            ["pgaudit"]
        );
        let (pg, settings) =
            cluster_from_yaml("databases:\n  a:\n    extensions: [pgaudit, pg_stat_statements]\n");
        let conf = postgresql_conf(&Cluster::new(&pg, "ns", &settings));
        assert!(
            conf.contains("\nshared_preload_libraries = 'pg_stat_statements,pgaudit'\n"),
            "{conf}"
        );
        let (pg, settings) = cluster_from_yaml("replicas: 1\n");
        assert!(preload_libraries(&Cluster::new(&pg, "ns", &settings)).is_empty());
    }

    #[test]
    fn max_connections_defaults_to_100() {
        let (pg, settings) = cluster_from_yaml("postgresql:\n  parameters:\n    work_mem: 4MB\n");
        let conf = postgresql_conf(&Cluster::new(&pg, "ns", &settings));
        assert!(conf.contains("\nmax_connections = 100\n"));
    }

    #[test]
    fn pg_stat_statements_is_preloaded_when_a_database_asks_for_it() {
        let (pg, settings) = cluster_from_yaml(
            "databases:\n  a:\n    extensions: [hstore, pg_stat_statements]\n  b:\n    extensions: [pg_stat_statements]\n",
        );
        let conf = postgresql_conf(&Cluster::new(&pg, "ns", &settings));
        assert!(
            conf.contains("\nshared_preload_libraries = 'pg_stat_statements'\n"),
            "{conf}"
        );
        let (pg, settings) = cluster_from_yaml("databases:\n  a:\n    extensions: [hstore]\n");
        assert!(
            !postgresql_conf(&Cluster::new(&pg, "ns", &settings))
                .contains("shared_preload_libraries")
        );
    }

    #[test]
    fn wal_senders_scale_with_replicas() {
        let (pg, settings) = cluster_from_yaml("replicas: 7\n");
        let conf = postgresql_conf(&Cluster::new(&pg, "ns", &settings));
        assert!(conf.contains("\nmax_wal_senders = 16\n"));
        assert!(conf.contains("\nmax_replication_slots = 16\n"));
    }

    #[test]
    fn hba_lets_the_superuser_in_by_peer_and_others_by_scram_over_tls_unless_local() {
        let (pg, settings) = cluster_from_yaml("{}");
        let hba = pg_hba_conf(&Cluster::new(&pg, "ns", &settings));
        let rules: Vec<Vec<&str>> = hba
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(rules[0], ["local", "all", "postgres", "peer"]);
        // Nothing but the socket's peer rule and the refusals is not SCRAM.
        for rule in &rules[1..] {
            let method = *rule.last().unwrap();
            assert!(
                method == "scram-sha-256" || (rule[0] == "hostnossl" && method == "reject"),
                "{rule:?}"
            );
        }
        // Clear text only from the pod itself.
        for rule in rules.iter().filter(|r| r[0] == "host") {
            assert!(["127.0.0.1/32", "::1/128"].contains(&rule[3]), "{rule:?}");
        }
        for address in ["0.0.0.0/0", "::0/0"] {
            let at = |kind: &str, database: &str| {
                rules
                    .iter()
                    .position(|r| r[0] == kind && r[1] == database && r[3] == address)
                    .unwrap_or_else(|| panic!("no {kind} {database} rule for {address}"))
            };
            assert!(at("hostssl", "replication") < at("hostnossl", "replication"));
            assert!(at("hostssl", "all") < at("hostnossl", "all"));
            assert_eq!(rules[at("hostssl", "replication")][2], "streaming_replica");
        }
    }

    #[test]
    fn config_map_holds_both_files() {
        let (pg, settings) = cluster_from_yaml("{}");
        let map = desired_config_map(&Cluster::new(&pg, "ns", &settings));
        assert_eq!(map.metadata.name.as_deref(), Some("postgres-demo-config"));
        let keys: Vec<&String> = map.data.as_ref().unwrap().keys().collect();
        assert_eq!(keys, ["pg_hba.conf", "postgresql.conf"]);
    }
}
