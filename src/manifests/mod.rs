//! Pure builders: a `Postgres` spec in, the Kubernetes objects the operator applies out.
//! Nothing here does I/O; the controller and `render` both call [`desired_objects`].

pub mod cluster;
pub mod config;
pub mod cronjob;
pub mod labels;
pub mod monitoring;
pub mod names;
pub mod objects;
pub mod pod;
pub mod policy;
pub mod rbac;
pub mod resources;
pub mod secrets;
pub mod services;
pub mod statefulset;
pub mod tls;

pub use cluster::{Cluster, OperatorSettings};
pub use objects::{ManagedObject, desired_objects};

/// Fixtures for the builders' unit tests.
#[cfg(test)]
pub(crate) mod test_support {
    use crate::api::Postgres;

    use super::OperatorSettings;

    /// A `Postgres` named `demo` with the given spec (YAML), and default settings.
    pub fn cluster_from_yaml(spec: &str) -> (Postgres, OperatorSettings) {
        let spec: crate::api::PostgresSpec = serde_yaml::from_str(spec).unwrap();
        let mut postgres = Postgres::new("demo", spec);
        postgres.metadata.uid = Some("0b1c2d3e-0000-4000-8000-000000000001".to_string());
        (postgres, OperatorSettings::default())
    }
}
