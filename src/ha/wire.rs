//! What the HA engine and the instance managers say to each other over the status port
//! (`/ha/...`): the report an instance gives, and the instructions it takes.

use serde::{Deserialize, Serialize};

use super::input::Report;

/// One instance's answer: its server's state, and on a primary the synchronous set
/// `ANY q (S)` it runs with, which the engine needs to choose safely once that primary
/// is gone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceReport {
    pub pod: String,
    #[serde(flatten)]
    pub report: Report,
    /// Primary: the `q` of `synchronous_standby_names`; 0 when asynchronous.
    #[serde(default)]
    pub sync_quorum: usize,
    /// Primary: the `S` of `synchronous_standby_names`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sync_standbys: Vec<String>,
    /// The instance was told to stop following (standby) or to stay down (primary).
    #[serde(default)]
    pub fenced: bool,
    /// A primary that handed over (switchover): where its final checkpoint is, which
    /// the new primary must have received before it is promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at_lsn: Option<u64>,
    /// Primary: the standbys streaming from it now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub streaming_standbys: Vec<String>,
    /// Primary: settings wait for a restart, the standbys have restarted, and it asks
    /// for a switchover instead (a shorter write gap than a restart in place).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub restart_wanted: bool,
    /// Settings wait for a restart of this server.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending_restart: bool,
    /// A digest of the postgresql.conf the instance last installed: equal on two
    /// instances that have taken the same spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_digest: Option<String>,
}

/// What the engine tells an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "action")]
pub enum Instruction {
    /// `primary` is being given up on: a standby stops streaming from it (so that a
    /// primary still alive can acknowledge nothing more, and the standby's WAL position
    /// stops moving); the primary itself, if it answers, stops its server and keeps it
    /// down.
    Fence { primary: String },
    /// Become the primary.
    Promote,
    /// Stream from `primary` (a primary that was fenced rewinds first).
    Follow { primary: String },
    /// A switchover to `to`: the primary stops cleanly (a fast shutdown: a final
    /// checkpoint, and every WAL record confirmed by the standbys that stream), stays
    /// down, and reports where its final checkpoint is.
    HandOver { to: String },
}

/// `ANY 2 ("a", "b")` → (2, [a, b]); `FIRST n (...)`, `n (...)` and a bare list read as
/// PostgreSQL reads them; empty → (0, []), asynchronous.
pub fn parse_sync_standby_names(setting: &str) -> (usize, Vec<String>) {
    let text = setting.trim();
    if text.is_empty() {
        return (0, Vec::new());
    }
    let (head, list) = match text.split_once('(') {
        Some((head, rest)) => (head.trim(), rest.trim_end().trim_end_matches(')')),
        None => ("", text),
    };
    let members: Vec<String> = split_names(list);
    let quorum = head
        .split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let quorum = if members.iter().any(|m| m == "*") {
        quorum
    } else {
        quorum.min(members.len())
    };
    (quorum, members)
}

/// A comma-separated list of names, double-quoted ones unquoted (`""` → `"`).
fn split_names(list: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut chars = list.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                current.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => names.push(std::mem::take(&mut current)),
            c if quoted || !c.is_whitespace() => current.push(c),
            _ => {}
        }
    }
    names.push(current);
    names.into_iter().filter(|n| !n.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::Role;
    use crate::instance::quorum::standby_names;

    #[test]
    fn the_quorum_keepers_setting_reads_back_as_written() {
        let members = vec!["postgres-demo-1".to_string(), "postgres-demo-2".to_string()];
        for quorum in 1..=2 {
            let setting = standby_names(quorum, &members);
            assert_eq!(
                parse_sync_standby_names(&setting),
                (quorum, members.clone())
            );
        }
        assert_eq!(parse_sync_standby_names(""), (0, vec![]));
    }

    #[test]
    fn other_forms_read_as_postgresql_reads_them() {
        assert_eq!(
            parse_sync_standby_names("FIRST 1 (a, \"b\"\"c\")"),
            (1, vec!["a".to_string(), "b\"c".to_string()])
        );
        assert_eq!(
            parse_sync_standby_names("a, b"),
            (1, vec!["a".to_string(), "b".to_string()])
        );
        assert_eq!(
            parse_sync_standby_names("ANY 5 (a)"),
            (1, vec!["a".to_string()])
        );
    }

    #[test]
    fn a_report_travels_as_flat_json() {
        let report = InstanceReport {
            pod: "postgres-demo-0".to_string(),
            report: Report {
                role: Role::Primary,
                running: true,
                timeline: 2,
                received_lsn: Some(100),
                replayed_lsn: None,
                streaming_from: None,
            },
            sync_quorum: 1,
            sync_standbys: vec!["postgres-demo-1".to_string()],
            fenced: false,
            stopped_at_lsn: None,
            streaming_standbys: Vec::new(),
            restart_wanted: false,
            pending_restart: false,
            config_digest: Some("1f".to_string()),
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["role"], "primary");
        assert_eq!(json["receivedLsn"], 100);
        assert_eq!(
            serde_json::from_value::<InstanceReport>(json).unwrap(),
            report
        );
        let follow: Instruction =
            serde_json::from_str(r#"{"action":"follow","primary":"postgres-demo-1"}"#).unwrap();
        assert_eq!(
            follow,
            Instruction::Follow {
                primary: "postgres-demo-1".to_string()
            }
        );
    }
}
