//! The run manifest: written last, into the globals repository, only when every database of
//! the run is safely stored. A run without one is incomplete: restore never picks it, and
//! the next successful run forgets its snapshots.

use serde::{Deserialize, Serialize};

/// File name of the manifest inside its snapshots.
pub const MANIFEST_FILE: &str = "run.json";
/// File name of the globals dump (roles, memberships, tablespaces) inside its snapshots.
pub const GLOBALS_FILE: &str = "globals.sql";
/// Manifest format version.
pub const MANIFEST_VERSION: u32 = 1;

/// One complete backup run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunManifest {
    pub version: u32,
    pub cluster: String,
    /// Run id (UTC time of the start, `YYYYMMDDTHHMMSSZ`), also the snapshots' `run=` tag.
    pub run: String,
    pub started_at: String,
    pub completed_at: String,
    /// PostgreSQL server version the dumps were taken from (`server_version_num`).
    pub server_version: i32,
    pub globals: StoredDump,
    pub databases: Vec<DatabaseDump>,
}

/// One dump stored as a restic snapshot.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StoredDump {
    pub repository: String,
    pub snapshot: String,
    /// File name inside the snapshot.
    pub file: String,
    /// Bytes of the dump.
    pub dump_bytes: u64,
    /// Bytes the snapshot added to the repository (after deduplication and compression).
    pub added_bytes: i64,
}

/// The dump of one database.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseDump {
    pub name: String,
    /// Owner at the time of the dump.
    pub owner: String,
    #[serde(flatten)]
    pub dump: StoredDump,
}

impl RunManifest {
    pub fn database(&self, name: &str) -> Option<&DatabaseDump> {
        self.databases.iter().find(|database| database.name == name)
    }
}
