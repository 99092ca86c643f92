//! Supervision of the postmaster: start it, restart it when it dies (with backoff), and
//! on shutdown ask for a smart shutdown, then a fast one, then an immediate one, so the
//! pod's grace period is used and no postmaster is ever left behind.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};
use std::sync::Arc;
use tokio::process::{Child, Command};

use tokio::sync::{Notify, mpsc, watch};

/// How to start the postmaster: a program (the `postgres` binary, or a wrapper that
/// execs it) and its arguments.
#[derive(Clone, Debug)]
pub struct PostmasterCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Where the postmaster's own stderr goes as records (what it prints before its
    /// logging collector runs, e.g. why it cannot start); inherited when `None`.
    pub stderr: Option<super::postgres_logs::Sink>,
}

/// Timings of restarts and of the shutdown ladder.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// First delay before restarting a dead postmaster; doubles up to `max_restart_delay`.
    pub restart_delay: Duration,
    pub max_restart_delay: Duration,
    /// Smart shutdown waits for clients to leave; after this, fast shutdown disconnects them.
    pub smart_timeout: Duration,
    /// Fast shutdown checkpoints; after this, immediate shutdown (crash recovery next start).
    pub fast_timeout: Duration,
    /// Immediate shutdown; after this, SIGKILL.
    pub immediate_timeout: Duration,
}

impl Default for Timing {
    /// Fits the 180 s grace period of the database pods.
    fn default() -> Self {
        Self {
            restart_delay: Duration::from_secs(1),
            max_restart_delay: Duration::from_secs(30),
            smart_timeout: Duration::from_secs(60),
            fast_timeout: Duration::from_secs(90),
            immediate_timeout: Duration::from_secs(15),
        }
    }
}

/// What the supervisor reports as it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Started {
        pid: u32,
    },
    Died {
        status: String,
        /// The exit code; `None` when a signal ended it. A postmaster that cannot start
        /// exits with a code (FATAL), one that is killed does not.
        code: Option<i32>,
    },
    /// Stopped on request to start again (a setting that needs a restart changed).
    Restarting {
        mode: ShutdownMode,
    },
    ShutDown {
        mode: ShutdownMode,
    },
    /// Stopped and kept down on request (fenced: a primary being given up on, or one
    /// waiting for its rewind).
    HeldDown {
        mode: ShutdownMode,
    },
}

/// The last shutdown step that was needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownMode {
    Smart,
    Fast,
    Immediate,
    Killed,
}

#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

enum Exit {
    Died(std::io::Result<ExitStatus>),
    Shutdown,
    Restart,
    Hold,
}

fn signal(child: &Child, signal: Signal) {
    let Some(pid) = child
        .id()
        .and_then(|id| Pid::from_raw(i32::try_from(id).ok()?))
    else {
        return;
    };
    // The postmaster may have just exited: ESRCH is expected then.
    let _ = kill_process(pid, signal);
}

async fn wait_for_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    tokio::time::timeout(timeout, child.wait())
        .await
        .ok()
        .and_then(Result::ok)
}

/// Shuts the postmaster down, escalating from smart (or fast, for a restart the
/// instance manager asked for) to immediate to SIGKILL.
async fn shut_down(child: &mut Child, timing: &Timing, skip: usize) -> ShutdownMode {
    let ladder = [
        (Signal::TERM, ShutdownMode::Smart, timing.smart_timeout),
        (Signal::INT, ShutdownMode::Fast, timing.fast_timeout),
        (
            Signal::QUIT,
            ShutdownMode::Immediate,
            timing.immediate_timeout,
        ),
    ];
    for (sig, mode, timeout) in ladder.into_iter().skip(skip) {
        signal(child, sig);
        if wait_for_exit(child, timeout).await.is_some() {
            return mode;
        }
        tracing::warn!(?mode, "postmaster still running, escalating");
    }
    let _ = child.kill().await;
    ShutdownMode::Killed
}

/// Whether the postmaster must be kept down, and how it stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HoldDown {
    /// Run it (restart it when it dies).
    #[default]
    Released,
    /// Stop it at once (immediate shutdown) and keep it down: a fenced primary.
    Immediate,
    /// Stop it cleanly (fast shutdown: a final checkpoint, every WAL record sent to the
    /// standbys that stream) and keep it down: a primary handing over in a switchover.
    Clean,
}

/// Where [`shut_down`] starts: smart on shutdown, fast for a restart, immediate for a
/// hold (a fenced primary must stop acknowledging at once; crash recovery is cheap).
const FROM_SMART: usize = 0;
const FROM_FAST: usize = 1;
const FROM_IMMEDIATE: usize = 2;

/// Runs the postmaster until `shutdown` turns true, restarting it whenever it dies, and
/// at once (fast shutdown, then start) when `restart` is notified. While `hold` is true
/// the postmaster is stopped (immediate shutdown) and not started. `events` receives
/// what happens (for status and tests).
pub async fn supervise(
    command: &PostmasterCommand,
    timing: Timing,
    mut shutdown: watch::Receiver<bool>,
    restart: Arc<Notify>,
    mut hold: watch::Receiver<HoldDown>,
    events: mpsc::UnboundedSender<Event>,
) -> Result<ShutdownMode, SuperviseError> {
    let mut delay = timing.restart_delay;
    loop {
        if *shutdown.borrow() {
            return Ok(ShutdownMode::Smart);
        }
        if *hold.borrow() != HoldDown::Released {
            tokio::select! {
                _ = hold.wait_for(|held| *held == HoldDown::Released) => {}
                _ = shutdown.wait_for(|stop| *stop) => return Ok(ShutdownMode::Smart),
            }
            delay = timing.restart_delay;
        }
        let mut child = Command::new(&command.program)
            .args(&command.args)
            .stdin(Stdio::null())
            .stderr(if command.stderr.is_some() {
                Stdio::piped()
            } else {
                Stdio::inherit()
            })
            // Dropping the supervisor (a panic, an abort) must not leave a postmaster running.
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| SuperviseError::Spawn {
                program: command.program.display().to_string(),
                source,
            })?;
        if let (Some(sink), Some(stderr)) = (&command.stderr, child.stderr.take()) {
            tokio::spawn(super::postgres_logs::forward(
                stderr,
                super::postgres_logs::Source::Plain,
                sink.clone(),
            ));
        }
        let _ = events.send(Event::Started {
            pid: child.id().unwrap_or_default(),
        });
        let exited = tokio::select! {
            status = child.wait() => Exit::Died(status),
            _ = shutdown.wait_for(|stop| *stop) => Exit::Shutdown,
            () = restart.notified() => Exit::Restart,
            _ = hold.wait_for(|held| *held != HoldDown::Released) => Exit::Hold,
        };
        let status = match exited {
            Exit::Died(status) => status,
            Exit::Shutdown => {
                let mode = shut_down(&mut child, &timing, FROM_SMART).await;
                let _ = events.send(Event::ShutDown { mode });
                return Ok(mode);
            }
            Exit::Restart => {
                let mode = shut_down(&mut child, &timing, FROM_FAST).await;
                let _ = events.send(Event::Restarting { mode });
                delay = timing.restart_delay;
                continue;
            }
            Exit::Hold => {
                let from = if *hold.borrow() == HoldDown::Clean {
                    FROM_FAST
                } else {
                    FROM_IMMEDIATE
                };
                let mode = shut_down(&mut child, &timing, from).await;
                tracing::warn!(?mode, "postmaster stopped and held down");
                let _ = events.send(Event::HeldDown { mode });
                continue;
            }
        };
        let code = status.as_ref().ok().and_then(ExitStatus::code);
        let status = status
            .map(|s| s.to_string())
            .unwrap_or_else(|e| e.to_string());
        tracing::warn!(%status, "postmaster exited; restarting");
        let _ = events.send(Event::Died { status, code });
        let stop_requested = tokio::select! {
            () = tokio::time::sleep(delay) => false,
            _ = shutdown.wait_for(|stop| *stop) => true,
        };
        if stop_requested {
            return Ok(ShutdownMode::Smart);
        }
        delay = (delay * 2).min(timing.max_restart_delay);
    }
}
