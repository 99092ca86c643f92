//! The instance manager: PID 1 of each database pod. It bootstraps the data directory,
//! writes the configuration, supervises the postmaster, serves its status and runs the
//! declarative SQL on the primary.

pub mod audit;
pub mod bootstrap;
pub mod config_check;
pub mod config_guard;
pub mod controldata;
pub mod events;
pub mod files;
pub mod from_backup;
pub mod ha_api;
pub mod isolation;
pub mod kept_client;
pub mod manager;
pub mod metrics;
pub mod pod_report;
pub mod postgres_logs;
pub mod postmaster_events;
pub mod provision;
pub mod quorum;
pub mod quorum_keeper;
pub mod reaper;
pub mod rejoin;
pub mod replication_password;
pub mod server_metrics;
pub mod source;
pub mod status;
pub mod supervise;
pub mod tls_files;
