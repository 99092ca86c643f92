//! High availability: which instance should be the primary (DESIGN §9). Pure: the
//! caller gathers what each instance reports and what the status records, asks
//! [`decide`], records the answer in `status.targetPrimary` and only then acts.

pub mod client;
mod decide;
pub mod engine;
mod input;
pub mod local;
pub mod plan;
pub mod token;
pub mod wire;

pub use decide::{Blocked, FailoverDecision, Promotion, RESTART_GRACE, UNREACHABLE_GRACE, decide};
pub use input::{Cluster, Instance, Report, Role};
