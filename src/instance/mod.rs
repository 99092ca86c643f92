//! The instance manager's pieces that talk to PostgreSQL.

pub mod bootstrap;
pub mod provision;
pub mod status;
pub mod supervise;
