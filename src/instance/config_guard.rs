//! Which postgresql.conf an instance runs with. The spec's rendering is installed only once
//! PostgreSQL has read it (`postgres -C`) and, while the server runs, started with it (a
//! scratch postmaster, see `config_check`); otherwise the instance keeps serving with what it has and the refusal is
//! logged, counted, shown in `/status` and recorded as an event. The file a postmaster
//! last ran with is kept beside the data directory as the last good one: a start that
//! fails with a newer file goes back to it, and with none yet, to the operator's own
//! settings without the user's.
//!
//! Only postgresql.conf (the user's settings) is guarded; pg_hba.conf and the run-time
//! include are the operator's and always follow the spec and the cluster's state.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use super::config_check::{CheckError, Checker, Rejection};
use super::events::EventSink;
use super::files::ConfigFiles;
use super::metrics::InstanceMetrics;
use super::pod_report::Report;
use crate::api::Postgres;
use crate::api::instance_report::ConfigRejected;

/// The refusal in force, shared with `/status` and with whoever reports it on the Pod
/// (`pod_report`).
pub type RejectionReport = Report<ConfigRejected>;

impl Report<ConfigRejected> {
    pub fn get(&self) -> Option<Rejection> {
        self.current().map(|report| Rejection {
            setting: report.setting,
            message: report.message,
        })
    }
}

const LAST_GOOD: &str = "last-good.conf";

pub struct ConfigGuard {
    checker: Checker,
    report: RejectionReport,
    metrics: Arc<InstanceMetrics>,
    events: EventSink,
    /// postgresql.conf as this manager installed it; `None` until it has, since what a
    /// data directory holds at start-up may be anything (an older operator's file).
    current: Option<String>,
    /// The file a postmaster last ran with, every setting applied.
    last_good: Option<String>,
    /// The last rendering PostgreSQL refused, not tried again until the spec changes.
    refused: Option<String>,
    /// When `current` last changed (and so the file in the data directory).
    installed_at: SystemTime,
}

impl ConfigGuard {
    /// Keeps its files in `<data dir>.config`, beside the data directory; the refusal in
    /// force goes to `report`.
    pub fn new(
        bin_dir: PathBuf,
        data_dir: PathBuf,
        metrics: Arc<InstanceMetrics>,
        events: EventSink,
        report: RejectionReport,
    ) -> Self {
        let mut dir = data_dir.clone().into_os_string();
        dir.push(".config");
        let checker = Checker {
            bin_dir,
            data_dir,
            dir: dir.into(),
        };
        let last_good = std::fs::read_to_string(checker.dir.join(LAST_GOOD)).ok();
        Self {
            checker,
            report,
            metrics,
            events,
            current: None,
            last_good,
            refused: None,
            installed_at: SystemTime::UNIX_EPOCH,
        }
    }

    /// The postgresql.conf installed last.
    pub fn installed(&self) -> Option<&str> {
        self.current.as_deref()
    }

    pub fn report(&self) -> RejectionReport {
        self.report.clone()
    }

    /// The files to install for `candidate` (the spec's rendering): itself when
    /// PostgreSQL reads it (and, when the server is `running`, starts with it), else with
    /// the postgresql.conf in force (the current one, the last good one, or `baseline`:
    /// the operator's settings without the user's).
    pub fn admit(
        &mut self,
        candidate: ConfigFiles,
        baseline: impl FnOnce() -> String,
        postgres: &Postgres,
        running: bool,
    ) -> ConfigFiles {
        if self.current.as_ref() == Some(&candidate.postgresql_conf) {
            return candidate;
        }
        if self.refused.as_ref() != Some(&candidate.postgresql_conf) {
            let changed = changed_settings(
                self.current.as_deref().unwrap_or_default(),
                &candidate.postgresql_conf,
            );
            let verdict = blocking(|| {
                self.checker.check(&candidate)?;
                if running {
                    self.checker.probe_start(&candidate, &changed)?;
                }
                Ok(())
            });
            match verdict {
                Ok(()) => {
                    self.install(candidate.postgresql_conf.clone());
                    self.clear(postgres);
                    return candidate;
                }
                Err(error) => {
                    self.refused = Some(candidate.postgresql_conf.clone());
                    self.reject(
                        postgres,
                        Refusal::NotInstalled,
                        "the new configuration is not installed; the instance keeps its current one",
                        &error,
                    );
                }
            }
        }
        let in_force = self
            .current
            .clone()
            .or_else(|| self.last_good.clone())
            .unwrap_or_else(baseline);
        self.install(in_force.clone());
        ConfigFiles {
            postgresql_conf: in_force,
            ..candidate
        }
    }

    /// The caller writes `conf` to the data directory next.
    fn install(&mut self, conf: String) {
        if self.current.as_ref() != Some(&conf) {
            self.current = Some(conf);
            self.installed_at = SystemTime::now();
        }
    }

    /// The server answers, having loaded its files at `loaded_at` (Unix seconds), with
    /// `pending_restart` settings not applied: once it runs with everything installed,
    /// that is the last good configuration. False while it has not read the installed
    /// file yet (its pending settings are then those of the file before).
    pub fn server_answers(&mut self, loaded_at: f64, pending_restart: bool) -> bool {
        let installed = self
            .installed_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        if loaded_at < installed {
            return false;
        }
        if pending_restart || self.current == self.last_good {
            return true;
        }
        let Some(current) = self.current.clone() else {
            return true;
        };
        let path = self.checker.dir.join(LAST_GOOD);
        let saved = std::fs::create_dir_all(&self.checker.dir)
            .map_err(|source| CheckError::Io {
                path: self.checker.dir.clone(),
                source,
            })
            .and_then(|()| super::config_check::write_private(&path, &current));
        if let Err(error) = saved {
            // Still good in memory; only a restarted manager loses it.
            tracing::warn!(%error, "cannot save the last good configuration");
        }
        self.last_good = Some(current);
        true
    }

    /// The postmaster exited while starting. When the configuration was new, it is
    /// refused and the last good one goes back (true: rewrite the files); otherwise the
    /// cause is elsewhere, and the files are only rewritten in case someone edited them.
    pub fn start_failed(&mut self, status: &str, postgres: &Postgres) -> bool {
        let on_disk = std::fs::read_to_string(self.checker.data_dir.join("postgresql.conf")).ok();
        if self.current.is_some() && on_disk != self.current {
            // Not the installed file that failed (a hand edit, or an older operator's
            // file): no evidence against the installed one, which goes back as it is.
            tracing::warn!(%status, "the postmaster failed to start with a file this manager did not write; writing the installed configuration again");
            return false;
        }
        if self.current.is_none() || self.current == self.last_good {
            tracing::warn!(%status, "the postmaster failed to start with the last good configuration");
            return false;
        }
        self.refused = self.current.take();
        // The postmaster's own words are in its log; what changed is the likely culprit.
        let changed = changed_settings(
            self.last_good.as_deref().unwrap_or_default(),
            self.refused.as_deref().unwrap_or_default(),
        );
        let error = CheckError::Rejected(Rejection {
            setting: changed.join(", "),
            message: format!("the postmaster failed to start with it ({status}); its log says why"),
        });
        self.reject(
            postgres,
            Refusal::Reverted,
            "the postmaster failed to start; going back to the last good configuration",
            &error,
        );
        true
    }

    fn reject(&self, postgres: &Postgres, refusal: Refusal, consequence: &str, error: &CheckError) {
        let rejection = error.rejection();
        tracing::error!(
            setting = %rejection.setting,
            message = %rejection.message,
            "{consequence}"
        );
        self.metrics.config_rejections.inc();
        self.metrics.config_rejected.set(1);
        let named = if rejection.setting.is_empty() {
            String::new()
        } else {
            format!(" setting {}:", rejection.setting)
        };
        let reverted = refusal == Refusal::Reverted;
        self.events.publish(
            postgres,
            true,
            if reverted {
                "ConfigReverted"
            } else {
                "ConfigRejected"
            },
            &format!("{consequence}.{named} {}", rejection.message),
        );
        self.report.set(Some(ConfigRejected {
            setting: rejection.setting,
            message: rejection.message,
            reverted,
        }));
    }

    fn clear(&self, postgres: &Postgres) {
        let Some(previous) = self.report.get() else {
            return;
        };
        tracing::info!(previous = %previous.setting, "configuration accepted; the earlier refusal is cleared");
        self.metrics.config_rejected.set(0);
        self.events.publish(
            postgres,
            false,
            "ConfigAccepted",
            "the configuration is accepted and installed",
        );
        self.report.set(None);
    }
}

/// How a configuration was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    /// Checked before installing, and not installed.
    NotInstalled,
    /// Installed, the postmaster failed to start with it, the last good one went back.
    Reverted,
}

/// The names whose `name = value` line differs between two postgresql.conf renderings.
fn changed_settings(before: &str, after: &str) -> Vec<String> {
    let lines = |conf: &str| -> std::collections::BTreeSet<String> {
        conf.lines()
            .filter(|line| !line.trim_start().starts_with('#'))
            .map(str::to_string)
            .collect()
    };
    let (before, after) = (lines(before), lines(after));
    let mut names: Vec<String> = before
        .symmetric_difference(&after)
        .filter_map(|line| Some(line.split_once('=')?.0.trim().to_string()))
        .collect();
    names.dedup();
    names
}

/// Runs a blocking step (a `postgres -C` process, tens of milliseconds; a scratch
/// postmaster, about half a second) without stalling the other tasks of a
/// multi-threaded runtime. Only a changed postgresql.conf pays for it.
fn blocking<T>(step: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|handle| handle.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(step),
        _ => step(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_changed_settings_are_those_whose_line_differs() {
        let before = "# header\nmax_connections = 100\nwork_mem = '4MB'\n";
        let after =
            "# other header\nmax_connections = 100\nwork_mem = '8MB'\nno_such_setting = 1\n";
        assert_eq!(
            changed_settings(before, after),
            ["no_such_setting", "work_mem"]
        );
    }
}
