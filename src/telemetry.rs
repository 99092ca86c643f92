//! Structured logs: JSON lines in production, human-readable text for local runs.

use std::fmt;

use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// What every line of an instance manager names: its cluster and pod, so lines from
/// many pods gathered in one place still say where they come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Labels {
    pub cluster: String,
    pub namespace: String,
    pub pod: String,
}

/// Installs the global subscriber (lines on stderr); `RUST_LOG` overrides the default
/// `info` level.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second initialisation (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The instance manager's subscriber: lines on stdout, where PostgreSQL's own records
/// go too (`instance::postgres_logs`), each JSON line carrying `labels`.
pub fn init_instance(format: LogFormat, labels: &Labels) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    let _ = match format {
        LogFormat::Json => {
            let json = tracing_subscriber::fmt::format().json().flatten_event(true);
            builder.event_format(Labelled::new(json, labels)).try_init()
        }
        LogFormat::Text => builder.try_init(),
    };
}

/// The current time as the JSON lines write it (RFC 3339, UTC).
pub fn now_rfc3339() -> String {
    let mut text = String::new();
    let _ = SystemTime.format_time(&mut Writer::new(&mut text));
    text
}

/// A JSON event format with fixed fields added at the front of every object.
struct Labelled<F> {
    inner: F,
    /// `"cluster":"…","namespace":"…","pod":"…",`
    fields: String,
}

impl<F> Labelled<F> {
    fn new(inner: F, labels: &Labels) -> Self {
        let fields = serde_json::json!({
            "cluster": labels.cluster,
            "namespace": labels.namespace,
            "pod": labels.pod,
        })
        .to_string();
        let fields = format!("{},", fields.trim_start_matches('{').trim_end_matches('}'));
        Self { inner, fields }
    }

    /// `line`, one JSON object, with the fixed fields added.
    fn label(&self, line: &str) -> String {
        match line.strip_prefix('{') {
            Some(rest) if rest.trim_start().starts_with('}') => {
                format!("{{{}{rest}", self.fields.trim_end_matches(','))
            }
            Some(rest) => format!("{{{}{rest}", self.fields),
            None => line.to_string(),
        }
    }
}

impl<S, N, F> FormatEvent<S, N> for Labelled<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        writer.write_str(&self.label(&line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labelled() -> Labelled<()> {
        Labelled::new(
            (),
            &Labels {
                cluster: "db".into(),
                namespace: "ten\"ant".into(),
                pod: "db-0".into(),
            },
        )
    }

    #[test]
    fn every_json_line_gets_the_cluster_namespace_and_pod() {
        let line = labelled().label("{\"timestamp\":\"t\",\"level\":\"INFO\",\"message\":\"m\"}\n");
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["cluster"], "db");
        assert_eq!(value["namespace"], "ten\"ant");
        assert_eq!(value["pod"], "db-0");
        assert_eq!(value["message"], "m");
        assert!(line.ends_with('\n'));
        let empty: serde_json::Value = serde_json::from_str(&labelled().label("{}")).unwrap();
        assert_eq!(empty["pod"], "db-0");
    }

    #[test]
    fn now_is_rfc3339_utc() {
        let now = now_rfc3339();
        assert_eq!(now.as_bytes()[10], b'T', "{now}");
        assert!(now.ends_with('Z'), "{now}");
    }
}
