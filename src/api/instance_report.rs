//! What an instance tells the controller through its own Pod: the configuration
//! PostgreSQL refused, and a restore from backup in progress, as annotations. The controller watches its pods' metadata
//! anyway, so this costs no request to the instances and no write while nothing changes.

use serde::{Deserialize, Serialize};

/// Annotation on an instance's Pod while the spec's configuration is refused there;
/// absent otherwise.
pub const CONFIG_REJECTED_ANNOTATION: &str = "postgres.apps.cozystack.io/config-rejected";

/// The instance manager's field manager for what it applies to its own Pod. Not the
/// operator's: an apply of the annotation alone under the operator's name would remove
/// the role label the controller applies to the same Pod.
pub const INSTANCE_FIELD_MANAGER: &str = "postgres-operator-instance";

/// The annotation's value (compact JSON).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRejected {
    /// The setting PostgreSQL names (empty when it names none).
    pub setting: String,
    /// What PostgreSQL said.
    pub message: String,
    /// The postmaster failed to start with it and runs the last good configuration again.
    pub reverted: bool,
}

/// Annotation on an instance's Pod while it restores its data from a backup; absent
/// otherwise.
pub const RESTORING_ANNOTATION: &str = "postgres.apps.cozystack.io/restoring";

/// The field manager of the restore annotation: its own, so that applying one
/// annotation never removes the other.
pub const INSTANCE_RESTORE_FIELD_MANAGER: &str = "postgres-operator-instance-restore";

/// The restore annotation's value (compact JSON).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restoring {
    /// What the instance is doing, e.g. `restoring backup run … (2 databases done)`, or
    /// why its last attempt failed.
    pub message: String,
    /// The last attempt failed; the instance tries again.
    pub retrying: bool,
}
