//! PostgreSQL's own log lines on the manager's log stream, one JSON object per line with
//! the cluster, namespace, pod and level, so a log collector (Fluent Bit, Loki, Vector)
//! needs no parser.
//!
//! The logging collector writes `jsonlog` (PostgreSQL 15 and later) or `csvlog` (13 and
//! 14) into files that are in fact named pipes the manager created before the server
//! started; the manager reads them and writes each record out. Output the collector does
//! not format (a child program's stderr) arrives on the plain `postgres` pipe, and what
//! the postmaster prints before its collector runs arrives on its own stderr: both leave
//! as records too, with the line as the message.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::telemetry::{Labels, LogFormat};

/// `log_filename`: the collector writes `postgres` (stderr), `postgres.json` and
/// `postgres.csv`.
pub const LOG_FILE_STEM: &str = "postgres";

/// Where the pipes are: a directory of the instance's run-time (not data) volume, so no
/// base backup ever copies a pipe.
pub fn log_directory(socket_dir: &Path) -> PathBuf {
    socket_dir.join("log")
}

/// What one pipe carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `jsonlog`: one JSON object per line.
    Json,
    /// `csvlog`: one CSV record, possibly over several lines.
    Csv,
    /// Plain lines: the collector's stderr file or the postmaster's own stderr.
    Plain,
}

impl Source {
    fn file_name(self) -> String {
        match self {
            Self::Json => format!("{LOG_FILE_STEM}.json"),
            Self::Csv => format!("{LOG_FILE_STEM}.csv"),
            Self::Plain => LOG_FILE_STEM.to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogPipeError {
    #[error("creating the log directory {path}: {source}")]
    Directory {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("making the log pipe {path}: {source}")]
    Pipe {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Creates the named pipes in `dir` (replacing regular files an earlier server left) and
/// starts one reader per pipe, writing every record to `sink`. The readers hold their
/// pipe open for reading and writing, so a server restart (the collector closes and
/// reopens its files) never ends them.
pub fn start(dir: &Path, sink: Sink) -> Result<(), LogPipeError> {
    std::fs::create_dir_all(dir).map_err(|source| LogPipeError::Directory {
        path: dir.display().to_string(),
        source,
    })?;
    for source in [Source::Json, Source::Csv, Source::Plain] {
        let path = dir.join(source.file_name());
        let receiver = open_pipe(&path).map_err(|e| LogPipeError::Pipe {
            path: path.display().to_string(),
            source: e,
        })?;
        tokio::spawn(forward(receiver, source, sink.clone()));
    }
    Ok(())
}

fn open_pipe(path: &Path) -> std::io::Result<tokio::net::unix::pipe::Receiver> {
    use rustix::fs::{FileType, Mode};
    match std::fs::symlink_metadata(path) {
        Ok(meta)
            if FileType::from_raw_mode(std::os::unix::fs::MetadataExt::mode(&meta))
                == FileType::Fifo => {}
        Ok(_) => {
            std::fs::remove_file(path)?;
            rustix::fs::mkfifoat(rustix::fs::CWD, path, Mode::RUSR | Mode::WUSR)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            rustix::fs::mkfifoat(rustix::fs::CWD, path, Mode::RUSR | Mode::WUSR)?;
        }
        Err(e) => return Err(e),
    }
    tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(path)
}

/// Reads records from `input` until it ends, writing each to `sink`.
pub async fn forward(input: impl AsyncRead + Unpin, source: Source, sink: Sink) {
    let mut reader = BufReader::new(input);
    let mut line = Vec::new();
    let mut csv = CsvRecords::default();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, ?source, "reading PostgreSQL's log stopped");
                return;
            }
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        let record = match source {
            Source::Csv => csv.push(text).map(|fields| from_csvlog(&fields)),
            _ if text.trim().is_empty() => None,
            Source::Json => Some(from_jsonlog(text)),
            Source::Plain => Some(from_plain(text)),
        };
        if let Some(record) = record.filter(|record| !record.is_empty()) {
            sink.write(&record);
        }
    }
}

/// Where records go: the manager's own stream (stdout), in the manager's log format.
#[derive(Clone, Debug)]
pub struct Sink {
    labels: Arc<Labels>,
    format: LogFormat,
    output: Output,
}

#[derive(Clone, Debug)]
enum Output {
    Stdout,
    Lines(Arc<Mutex<Vec<String>>>),
}

impl Sink {
    /// Lines to stdout, where the manager's own lines go.
    pub fn stdout(labels: Labels, format: LogFormat) -> Self {
        Self {
            labels: Arc::new(labels),
            format,
            output: Output::Stdout,
        }
    }

    /// Lines kept in memory, for whoever holds the returned list.
    pub fn in_memory(labels: Labels, format: LogFormat) -> (Self, Arc<Mutex<Vec<String>>>) {
        let lines = Arc::default();
        let sink = Self {
            labels: Arc::new(labels),
            format,
            output: Output::Lines(Arc::clone(&lines)),
        };
        (sink, lines)
    }

    pub fn write(&self, record: &Map<String, Value>) {
        let line = render(record, &self.labels, self.format);
        match &self.output {
            Output::Stdout => {
                // One write of the whole line under stdout's lock: records never
                // interleave with each other or with the manager's own lines.
                let _ = std::io::stdout().write_all(format!("{line}\n").as_bytes());
            }
            Output::Lines(lines) => {
                if let Ok(mut lines) = lines.lock() {
                    lines.push(line);
                }
            }
        }
    }
}

/// A `jsonlog` line as a record; a line that is not a JSON object becomes a plain one.
pub fn from_jsonlog(line: &str) -> Map<String, Value> {
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(record)) => record,
        _ => from_plain(line),
    }
}

/// A plain line as a record: the severity PostgreSQL's stderr format puts before `:  `
/// when there is one.
pub fn from_plain(line: &str) -> Map<String, Value> {
    let mut record = Map::new();
    let found = SEVERITIES.iter().find_map(|severity| {
        let marker = format!("{severity}:  ");
        line.find(&marker)
            .map(|at| (*severity, &line[at + marker.len()..]))
    });
    match found {
        Some((severity, message)) => {
            record.insert("error_severity".into(), json!(severity));
            record.insert("message".into(), json!(message));
        }
        None => {
            record.insert("message".into(), json!(line));
        }
    }
    record
}

const SEVERITIES: &[&str] = &[
    "DEBUG5",
    "DEBUG4",
    "DEBUG3",
    "DEBUG2",
    "DEBUG1",
    "DEBUG",
    "LOG",
    "INFO",
    "NOTICE",
    "WARNING",
    "ERROR",
    "FATAL",
    "PANIC",
    "STATEMENT",
    "DETAIL",
    "HINT",
    "CONTEXT",
];

/// `csvlog`'s columns under the names `jsonlog` gives the same fields, in order
/// (PostgreSQL 13 has 24, 14 adds `leader_pid` and `query_id`).
const CSV_COLUMNS: &[&str] = &[
    "timestamp",
    "user",
    "dbname",
    "pid",
    "remote_host",
    "session_id",
    "line_num",
    "ps",
    "session_start",
    "vxid",
    "txid",
    "error_severity",
    "state_code",
    "message",
    "detail",
    "hint",
    "internal_query",
    "internal_position",
    "context",
    "statement",
    "cursor_position",
    "location",
    "application_name",
    "backend_type",
    "leader_pid",
    "query_id",
];

/// Fields `jsonlog` writes as numbers.
const NUMERIC: &[&str] = &[
    "pid",
    "line_num",
    "txid",
    "internal_position",
    "cursor_position",
    "leader_pid",
    "query_id",
];

/// One `csvlog` record as a `jsonlog`-like record: empty fields left out, numbers as
/// numbers, `host:port` split.
pub fn from_csvlog(fields: &[String]) -> Map<String, Value> {
    let mut record = Map::new();
    for (name, value) in CSV_COLUMNS.iter().zip(fields) {
        if value.is_empty() {
            continue;
        }
        if *name == "remote_host" {
            match value.rsplit_once(':') {
                Some((host, port)) if port.parse::<u16>().is_ok() => {
                    record.insert("remote_host".into(), json!(host));
                    record.insert("remote_port".into(), json!(port.parse::<u16>().ok()));
                }
                _ => {
                    record.insert("remote_host".into(), json!(value));
                }
            }
            continue;
        }
        let number = NUMERIC
            .contains(name)
            .then(|| value.parse::<i64>().ok())
            .flatten();
        let value = number.map_or_else(|| json!(value), |n| json!(n));
        record.insert((*name).to_string(), value);
    }
    record
}

/// Gathers `csvlog` lines into records: a record ends at a line end outside quotes (a
/// quoted field may hold line breaks; a quote inside one is doubled).
#[derive(Debug, Default)]
pub struct CsvRecords {
    pending: String,
}

impl CsvRecords {
    /// Adds one line (without its line break); returns the fields once a record is whole.
    pub fn push(&mut self, line: &str) -> Option<Vec<String>> {
        if !self.pending.is_empty() {
            self.pending.push('\n');
        }
        self.pending.push_str(line);
        if self.pending.matches('"').count() % 2 == 1 {
            return None;
        }
        let record = std::mem::take(&mut self.pending);
        Some(split_csv(&record))
    }
}

fn split_csv(record: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = record.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    fields.push(field);
    fields
}

/// The level a record is logged at, in the manager's own words (`tracing`'s levels).
pub fn level(record: &Map<String, Value>) -> &'static str {
    match record.get("error_severity").and_then(Value::as_str) {
        Some(s) if s.starts_with("DEBUG") => "DEBUG",
        Some("WARNING") => "WARN",
        Some("ERROR" | "FATAL" | "PANIC") => "ERROR",
        _ => "INFO",
    }
}

/// PostgreSQL's `2026-12-01 10:00:00.123 UTC` as RFC 3339 (`2026-12-01T10:00:00.123Z`),
/// like the manager's own lines; another time zone is left as written.
pub fn timestamp(record: &Map<String, Value>) -> Option<String> {
    let written = record.get("timestamp").and_then(Value::as_str)?;
    let utc = written
        .strip_suffix(" UTC")
        .or_else(|| written.strip_suffix(" GMT"));
    Some(match utc {
        Some(time) if time.len() > 10 && time.as_bytes()[10] == b' ' => {
            format!("{}T{}Z", &time[..10], &time[11..])
        }
        _ => written.to_string(),
    })
}

/// One output line (without its line break).
pub fn render(record: &Map<String, Value>, labels: &Labels, format: LogFormat) -> String {
    let message = record
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let level = level(record);
    let time = timestamp(record).unwrap_or_else(now);
    match format {
        LogFormat::Json => {
            let mut line = Map::new();
            line.insert("timestamp".into(), json!(time));
            line.insert("level".into(), json!(level));
            line.insert("message".into(), json!(message));
            line.insert("target".into(), json!("postgres"));
            line.insert("cluster".into(), json!(labels.cluster));
            line.insert("namespace".into(), json!(labels.namespace));
            line.insert("pod".into(), json!(labels.pod));
            line.insert("record".into(), Value::Object(record.clone()));
            Value::Object(line).to_string()
        }
        LogFormat::Text => {
            let mut line = format!("{time} {level:>5} postgres: ");
            if let Some(pid) = record.get("pid") {
                line.push_str(&format!("[{pid}] "));
            }
            if let Some(severity) = record.get("error_severity").and_then(Value::as_str) {
                line.push_str(&format!("{severity}: "));
            }
            line.push_str(message);
            for key in ["detail", "hint", "statement"] {
                if let Some(text) = record.get(key).and_then(Value::as_str) {
                    line.push_str(&format!(" {}: {text}", key.to_uppercase()));
                }
            }
            line
        }
    }
}

fn now() -> String {
    crate::telemetry::now_rfc3339()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Labels {
        Labels {
            cluster: "db".into(),
            namespace: "tenant".into(),
            pod: "db-1".into(),
        }
    }

    #[test]
    fn a_jsonlog_record_leaves_with_cluster_pod_level_and_every_field() {
        let record = from_jsonlog(
            r#"{"timestamp":"2026-12-01 10:00:00.123 UTC","user":"app","dbname":"app","pid":42,"error_severity":"ERROR","state_code":"42P01","message":"relation \"nope\" does not exist","statement":"SELECT * FROM nope"}"#,
        );
        let line: Value =
            serde_json::from_str(&render(&record, &labels(), LogFormat::Json)).unwrap();
        assert_eq!(line["timestamp"], "2026-12-01T10:00:00.123Z");
        assert_eq!(line["level"], "ERROR");
        assert_eq!(line["target"], "postgres");
        assert_eq!(line["cluster"], "db");
        assert_eq!(line["namespace"], "tenant");
        assert_eq!(line["pod"], "db-1");
        assert_eq!(line["message"], "relation \"nope\" does not exist");
        assert_eq!(line["record"]["statement"], "SELECT * FROM nope");
        assert_eq!(line["record"]["pid"], 42);
    }

    #[test]
    fn severities_map_to_the_managers_levels() {
        for (severity, expected) in [
            ("DEBUG2", "DEBUG"),
            ("LOG", "INFO"),
            ("INFO", "INFO"),
            ("NOTICE", "INFO"),
            ("WARNING", "WARN"),
            ("ERROR", "ERROR"),
            ("FATAL", "ERROR"),
            ("PANIC", "ERROR"),
        ] {
            let mut record = Map::new();
            record.insert("error_severity".into(), json!(severity));
            assert_eq!(level(&record), expected, "{severity}");
        }
        assert_eq!(level(&Map::new()), "INFO");
    }

    #[test]
    fn a_csvlog_record_over_several_lines_becomes_one_jsonlog_like_record() {
        let mut records = CsvRecords::default();
        let lines = [
            r#"2026-12-01 10:00:00.123 UTC,"app","appdb",4242,"10.0.0.7:51234",674c1a2b.1092,3,"SELECT",2026-12-01 09:59:58 UTC,3/7,0,ERROR,42601,"syntax error at or near ""FORM""",,,,,,"SELECT 1"#,
            r#"FORM t",10,,"psql","client backend",,0"#,
        ];
        assert_eq!(records.push(lines[0]), None);
        let fields = records.push(lines[1]).unwrap();
        let record = from_csvlog(&fields);
        assert_eq!(record["message"], "syntax error at or near \"FORM\"");
        assert_eq!(record["statement"], "SELECT 1\nFORM t");
        assert_eq!(record["pid"], 4242);
        assert_eq!(record["remote_host"], "10.0.0.7");
        assert_eq!(record["remote_port"], 51234);
        assert_eq!(record["error_severity"], "ERROR");
        assert_eq!(record["state_code"], "42601");
        assert_eq!(record["cursor_position"], 10);
        assert_eq!(record["application_name"], "psql");
        assert_eq!(record["backend_type"], "client backend");
        assert_eq!(record["query_id"], 0);
        assert!(!record.contains_key("detail"), "empty fields are left out");
        assert_eq!(level(&record), "ERROR");
        // The next record starts clean.
        let next = records
            .push(r#"2026-12-01 10:00:01.000 UTC,,,7,,1.2,1,,2026-12-01 09:00:00 UTC,,0,LOG,00000,"checkpoint starting: time",,,,,,,,,"","checkpointer""#)
            .unwrap();
        assert_eq!(from_csvlog(&next)["backend_type"], "checkpointer");
    }

    #[test]
    fn a_plain_line_keeps_its_severity_when_it_has_one() {
        let record = from_plain(
            "2026-12-01 10:00:00.000 UTC [7] FATAL:  data directory \"/x\" has invalid permissions",
        );
        assert_eq!(record["error_severity"], "FATAL");
        assert_eq!(
            record["message"],
            "data directory \"/x\" has invalid permissions"
        );
        let record = from_plain("restic: snapshot 1234 saved");
        assert_eq!(record["message"], "restic: snapshot 1234 saved");
        assert_eq!(level(&record), "INFO");
        // Not JSON on the JSON pipe: kept, as a plain line.
        assert_eq!(from_jsonlog("not json")["message"], "not json");
    }

    #[test]
    fn the_text_format_reads_like_postgres_own_lines() {
        let record = from_jsonlog(
            r#"{"timestamp":"2026-12-01 10:00:00.123 UTC","pid":42,"error_severity":"LOG","message":"duration: 301.2 ms  statement: SELECT pg_sleep(0.3)"}"#,
        );
        assert_eq!(
            render(&record, &labels(), LogFormat::Text),
            "2026-12-01T10:00:00.123Z  INFO postgres: [42] LOG: duration: 301.2 ms  statement: SELECT pg_sleep(0.3)"
        );
    }

    #[test]
    fn a_time_zone_other_than_utc_is_left_as_written() {
        let mut record = Map::new();
        record.insert("timestamp".into(), json!("2026-12-01 11:00:00.000 CET"));
        assert_eq!(timestamp(&record).unwrap(), "2026-12-01 11:00:00.000 CET");
    }

    #[tokio::test]
    async fn every_line_of_a_stream_is_read_until_it_ends() {
        let (mut writer, reader) = tokio::io::duplex(64);
        let task = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            writer
                .write_all(b"{\"message\":\"one\"}\n\n{\"message\":\"two\"}\n")
                .await
                .unwrap();
        });
        let (sink, lines) = Sink::in_memory(labels(), LogFormat::Json);
        forward(reader, Source::Json, sink).await;
        task.await.unwrap();
        let messages: Vec<String> = lines
            .lock()
            .unwrap()
            .iter()
            .map(|line| serde_json::from_str::<Value>(line).unwrap()["message"].to_string())
            .collect();
        assert_eq!(messages, ["\"one\"", "\"two\""], "empty lines are skipped");
    }
}
