//! What `pg_controldata` says of a stopped server: whether it was shut down cleanly,
//! where its last checkpoint is (a switchover's target must have received past it), and
//! the primary's settings a standby may not go below.

use std::path::Path;

use super::bootstrap::{BootstrapError, Tools, run_with_env};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlData {
    /// `Database cluster state`, e.g. `shut down`, `in production`.
    pub state: String,
    /// `Latest checkpoint location`.
    pub checkpoint_lsn: u64,
    /// The settings a hot standby needs at least as high as its primary's, with the
    /// primary's values as this data directory last saw them (from its base backup or
    /// the last parameter change it replayed).
    pub primary_settings: Vec<(&'static str, i64)>,
    /// `Database system identifier`: which initdb the data comes from.
    pub system_identifier: Option<String>,
    /// `Latest checkpoint's TimeLineID` (a standby's last restartpoint).
    pub timeline: Option<u32>,
}

/// `pg_controldata` label → setting, for every setting PostgreSQL checks on a standby.
const STANDBY_MINIMUMS: &[(&str, &str)] = &[
    ("max_connections setting", "max_connections"),
    ("max_worker_processes setting", "max_worker_processes"),
    ("max_wal_senders setting", "max_wal_senders"),
    ("max_prepared_xacts setting", "max_prepared_transactions"),
    ("max_locks_per_xact setting", "max_locks_per_transaction"),
];

/// PostgreSQL's defaults for [`STANDBY_MINIMUMS`], for a file that does not set one.
const DEFAULTS: &[(&str, i64)] = &[
    ("max_connections", 100),
    ("max_worker_processes", 8),
    ("max_wal_senders", 10),
    ("max_prepared_transactions", 0),
    ("max_locks_per_transaction", 64),
];

/// The lines that raise `conf`'s settings to the primary's where they are lower: a
/// standby started below them stops at once ("recovery aborted because of insufficient
/// parameter settings"). That happens when the spec lowers one (a scale-down lowers
/// max_wal_senders): the standbys restart before the primary does, and a standby cloned
/// from the primary before its restart carries the old values.
pub fn standby_floor_lines(conf: &str, control: &ControlData) -> String {
    control
        .primary_settings
        .iter()
        .filter_map(|(name, primary)| {
            let own = configured(conf, name)?;
            (own < *primary).then(|| format!("{name} = {primary}\n"))
        })
        .collect()
}

/// Whether `conf` lowers one of the settings a hot standby keeps at least as high as its
/// primary below what the server runs (`running`: name and value of the settings
/// pending a restart). PostgreSQL takes such a change on the primary first: a standby
/// promoted in its place would still run the old value (its floor, see
/// [`standby_floor_lines`]) and want the same restart at once, so the primary restarts
/// in place instead of handing over.
pub fn lowers_a_standby_minimum(conf: &str, running: &[(String, i64)]) -> bool {
    running.iter().any(|(name, value)| {
        STANDBY_MINIMUMS.iter().any(|(_, minimum)| minimum == name)
            && configured(conf, name).is_some_and(|wanted| wanted < *value)
    })
}

/// `name`'s value in `conf` (the last line setting it), or PostgreSQL's default.
fn configured(conf: &str, name: &str) -> Option<i64> {
    conf.lines()
        .rev()
        .find_map(|line| {
            let (key, value) = line.split_once('=')?;
            (key.trim() == name)
                .then(|| value.trim().trim_matches('\'').parse::<i64>().ok())
                .flatten()
        })
        .or_else(|| {
            DEFAULTS
                .iter()
                .find(|(default, _)| *default == name)
                .map(|(_, v)| *v)
        })
}

impl ControlData {
    /// A primary stopped by a smart or fast shutdown (its final checkpoint written).
    pub fn shut_down_cleanly(&self) -> bool {
        self.state == "shut down"
    }
}

/// `0/3000060` → 0x3000060.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.trim().split_once('/')?;
    let high = u64::from_str_radix(high, 16).ok()?;
    let low = u64::from_str_radix(low, 16).ok()?;
    Some((high << 32) | low)
}

/// Reads `pg_controldata`'s output.
pub fn parse(output: &str) -> Option<ControlData> {
    let field = |name: &str| {
        output.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name).then(|| value.trim().to_string())
        })
    };
    Some(ControlData {
        state: field("Database cluster state")?,
        checkpoint_lsn: parse_lsn(&field("Latest checkpoint location")?)?,
        primary_settings: STANDBY_MINIMUMS
            .iter()
            .filter_map(|(label, name)| Some((*name, field(label)?.parse().ok()?)))
            .collect(),
        system_identifier: field("Database system identifier"),
        timeline: field("Latest checkpoint's TimeLineID").and_then(|t| t.parse().ok()),
    })
}

pub fn read(tools: &Tools, data_dir: &Path) -> Result<ControlData, BootstrapError> {
    let output = run_with_env(
        &tools.wrap,
        &tools.bin_dir.join("pg_controldata"),
        &["-D".to_string(), data_dir.to_string_lossy().into_owned()],
        // The labels are translated otherwise.
        &[("LC_ALL", "C")],
    )?;
    parse(&output).ok_or_else(|| BootstrapError::Tool {
        tool: "pg_controldata".to_string(),
        message: "no cluster state or checkpoint location in its output".to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_stop_and_its_checkpoint_are_read() {
        let output = "pg_control version number:            1300\n\
                      Database cluster state:               shut down\n\
                      Latest checkpoint location:           1/3000060\n\
                      Latest checkpoint's REDO location:    1/3000028\n";
        let data = parse(output).unwrap();
        assert!(data.shut_down_cleanly());
        assert_eq!(data.checkpoint_lsn, 0x1_0300_0060);
        assert_eq!(data.system_identifier, None);
        let identified = parse(&format!(
            "{output}Database system identifier:           7441234567890123456\n\
             Latest checkpoint's TimeLineID:       3\n"
        ))
        .unwrap();
        assert_eq!(
            identified.system_identifier.as_deref(),
            Some("7441234567890123456")
        );
        assert_eq!(identified.timeline, Some(3));
        let running = parse(&output.replace("shut down", "in production")).unwrap();
        assert!(!running.shut_down_cleanly());
        assert_eq!(parse("nothing useful"), None);
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("x"), None);
    }

    #[test]
    fn a_standby_never_goes_below_the_primarys_settings_it_recorded() {
        let output = "Database cluster state:               in archive recovery\n\
                      Latest checkpoint location:           0/9000108\n\
                      max_connections setting:              100\n\
                      max_worker_processes setting:         8\n\
                      max_wal_senders setting:              12\n\
                      max_prepared_xacts setting:           5\n\
                      max_locks_per_xact setting:           64\n";
        let control = parse(output).unwrap();
        assert_eq!(control.primary_settings.len(), 5);
        // The spec lowered max_wal_senders to 10 and left the others alone.
        let conf = "max_wal_senders = 10\nmax_connections = '200'\n";
        assert_eq!(
            standby_floor_lines(conf, &control),
            "max_wal_senders = 12\nmax_prepared_transactions = 5\n"
        );
        let raised = "max_wal_senders = 16\nmax_prepared_transactions = 5\n";
        assert_eq!(standby_floor_lines(raised, &control), "");
    }

    #[test]
    fn only_lowering_a_standby_minimum_keeps_the_restart_on_the_primary() {
        let conf = "max_wal_senders = 10\nmax_connections = 200\nshared_buffers = '1GB'\n";
        let running = |pairs: &[(&str, i64)]| -> Vec<(String, i64)> {
            pairs.iter().map(|(n, v)| (n.to_string(), *v)).collect()
        };
        // A scale-down: 12 senders running, 10 wanted.
        assert!(lowers_a_standby_minimum(
            conf,
            &running(&[("max_wal_senders", 12)])
        ));
        // Raised: the standbys go first, then a switchover is the shorter gap.
        assert!(!lowers_a_standby_minimum(
            conf,
            &running(&[("max_connections", 100)])
        ));
        // Not a standby minimum at all.
        assert!(!lowers_a_standby_minimum(
            conf,
            &running(&[("shared_buffers", 999999)])
        ));
        // Unset in the file: PostgreSQL's default (8) is below 16.
        assert!(lowers_a_standby_minimum(
            conf,
            &running(&[("max_worker_processes", 16)])
        ));
        assert!(!lowers_a_standby_minimum(conf, &[]));
    }
}
