//! A Kubernetes operator for highly available PostgreSQL clusters described by
//! `apps.cozystack.io/v1alpha1 Postgres` objects.

pub mod api;
pub mod backup;
pub mod binaries;
pub mod controller;
pub mod crdgen;
pub mod ha;
pub mod http;
pub mod instance;
pub mod manifests;
pub mod metrics;
pub mod quantity;
pub mod render;
pub mod sql;
pub mod switchover_cli;
pub mod telemetry;
pub mod validate;
