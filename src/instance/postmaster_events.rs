//! What the supervisor reports about the postmaster, as the instance manager acts on it:
//! every event is counted and logged, and a postmaster that exits on its own before it
//! ever answered is a failed start (a killed or crashed one is not).

use std::sync::Arc;

use super::metrics::InstanceMetrics;
use super::supervise::Event;

pub struct PostmasterWatch {
    metrics: Arc<InstanceMetrics>,
    /// The postmaster started last has answered a connection.
    answered: bool,
}

impl PostmasterWatch {
    pub fn new(metrics: Arc<InstanceMetrics>) -> Self {
        Self {
            metrics,
            answered: false,
        }
    }

    /// The server answered a connection.
    pub fn answered(&mut self) {
        self.answered = true;
    }

    /// The postmaster running now has answered (so it started, and runs).
    pub fn answering(&self) -> bool {
        self.answered
    }

    /// Counts and logs `event`; the exit status when it is a failed start.
    pub fn observe(&mut self, event: &Event) -> Option<String> {
        match event {
            Event::Started { pid } => {
                self.answered = false;
                self.metrics.postmaster_starts.inc();
                tracing::info!(pid, "postmaster started");
            }
            Event::Died { status, code } => {
                self.metrics.up.set(0);
                tracing::warn!(%status, "postmaster died");
                let answered = std::mem::take(&mut self.answered);
                if code.is_some_and(|code| code != 0) && !answered {
                    return Some(status.clone());
                }
            }
            Event::Restarting { mode } => {
                self.answered = false;
                self.metrics.restarts.inc();
                tracing::info!(?mode, "postmaster restarting");
            }
            Event::ShutDown { mode } => tracing::info!(?mode, "postmaster shut down"),
            Event::HeldDown { mode } => {
                self.answered = false;
                self.metrics.up.set(0);
                tracing::warn!(?mode, "postmaster held down");
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn died(code: Option<i32>) -> Event {
        Event::Died {
            status: format!("{code:?}"),
            code,
        }
    }

    #[test]
    fn an_exit_before_answering_is_a_failed_start() {
        let mut watch = PostmasterWatch::new(Arc::default());
        assert_eq!(watch.observe(&Event::Started { pid: 1 }), None);
        assert_eq!(watch.observe(&died(Some(1))), Some("Some(1)".to_string()));
    }

    #[test]
    fn a_killed_or_answering_postmaster_did_not_fail_to_start() {
        let mut watch = PostmasterWatch::new(Arc::default());
        watch.observe(&Event::Started { pid: 1 });
        assert_eq!(watch.observe(&died(None)), None, "killed by a signal");
        watch.observe(&Event::Started { pid: 2 });
        watch.answered();
        assert_eq!(watch.observe(&died(Some(1))), None, "it had started");
    }
}
