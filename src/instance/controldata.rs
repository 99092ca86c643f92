//! What `pg_controldata` says of a stopped server: whether it was shut down cleanly,
//! and where its last checkpoint is (a switchover's target must have received past it).

use std::path::Path;

use super::bootstrap::{BootstrapError, Tools, run_with_env};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlData {
    /// `Database cluster state`, e.g. `shut down`, `in production`.
    pub state: String,
    /// `Latest checkpoint location`.
    pub checkpoint_lsn: u64,
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
        let running = parse(&output.replace("shut down", "in production")).unwrap();
        assert!(!running.shut_down_cleanly());
        assert_eq!(parse("nothing useful"), None);
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("x"), None);
    }
}
