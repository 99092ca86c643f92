//! Pure builders: a `Postgres` spec in, the Kubernetes objects the operator applies out.
//! Nothing here does I/O; the controller and `render` both call [`desired_objects`].

pub mod cluster;
pub mod config;
pub mod cronjob;
pub mod labels;
pub mod names;
pub mod objects;
pub mod pod;
pub mod policy;
pub mod rbac;
pub mod resources;
pub mod secrets;
pub mod services;
pub mod statefulset;

pub use cluster::{Cluster, OperatorSettings};

