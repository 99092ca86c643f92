//! Declarative SQL: users, databases, group roles and memberships as the spec says,
//! computed as statements from what the catalog holds (pure), then executed by the
//! instance manager over the local socket.

pub mod plan;
pub mod privileges;
pub mod quote;
pub mod redact;
pub mod scram;

pub use plan::{
    DesiredDatabase, DesiredState, DesiredUser, ObservedRole, ObservedState, Statement, plan,
};
