//! `postgres-operator controller`: the reconcile loop over `Postgres` objects.

pub mod drift;
pub mod status;
