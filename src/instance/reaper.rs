//! PID 1 duties. As PID 1 of the pod, the instance manager inherits every orphan (e.g.
//! backends of a postmaster that was killed) and must reap them, and it receives the
//! kubelet's signals. Reaping with `waitpid(-1)` inside the manager would steal the exit
//! status of children it waits for itself (the postmaster, pg_basebackup), so PID 1 is a
//! small parent that runs the manager as its only child: it forwards signals to it,
//! reaps whatever exits, and leaves with the manager's exit status.

use std::ffi::OsString;
use std::process::{Command, ExitCode};

use rustix::process::{Pid, Signal, WaitOptions, getpid, kill_process, set_child_subreaper, wait};
use tokio::signal::unix::{SignalKind, signal};

/// Set in the child's environment, so it runs the manager instead of another reaper.
pub const CHILD_ENV: &str = "POSTGRES_OPERATOR_REAPED";

/// Reap when PID 1 (in a pod), or when asked (tests), but never in the child itself.
pub fn should_reap(requested: bool) -> bool {
    std::env::var_os(CHILD_ENV).is_none() && (requested || getpid().is_init())
}

#[derive(Debug, thiserror::Error)]
pub enum ReaperError {
    #[error("cannot become a child subreaper: {0}")]
    Subreaper(#[source] std::io::Error),
    #[error("cannot start the instance manager: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("cannot handle signals: {0}")]
    Signals(#[source] std::io::Error),
}

/// Runs this binary again with `args` as the only child, and reaps until it exits.
pub fn run(args: Vec<OsString>) -> Result<ExitCode, ReaperError> {
    if !getpid().is_init() {
        // Orphans go to the nearest subreaper ancestor instead of the real PID 1.
        set_child_subreaper(Some(getpid())).map_err(|e| ReaperError::Subreaper(e.into()))?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ReaperError::Signals)?;
    runtime.block_on(reap(args))
}

/// What the manager handles: shutdown (TERM, INT) and a configuration reload (HUP).
const FORWARDED: [(SignalKind, Signal); 3] = [
    (SignalKind::terminate(), Signal::TERM),
    (SignalKind::interrupt(), Signal::INT),
    (SignalKind::hangup(), Signal::HUP),
];

async fn reap(args: Vec<OsString>) -> Result<ExitCode, ReaperError> {
    // Handlers first: a child that exits at once must still be seen.
    let mut children = signal(SignalKind::child()).map_err(ReaperError::Signals)?;
    let mut forwarded = Vec::new();
    for (kind, sig) in FORWARDED {
        forwarded.push((signal(kind).map_err(ReaperError::Signals)?, sig));
    }
    let exe = std::env::current_exe().map_err(ReaperError::Spawn)?;
    let child = Command::new(exe)
        .args(args)
        .env(CHILD_ENV, "1")
        .spawn()
        .map_err(ReaperError::Spawn)?;
    let Some(manager) = i32::try_from(child.id()).ok().and_then(Pid::from_raw) else {
        return Ok(ExitCode::FAILURE);
    };
    // Reaped below, never through `child`.
    drop(child);
    loop {
        if let Some(code) = reap_exited(manager) {
            return Ok(code);
        }
        let received = {
            let waits = forwarded.iter_mut().map(|(stream, sig)| {
                let sig = *sig;
                Box::pin(async move {
                    stream.recv().await;
                    sig
                })
            });
            tokio::select! {
                _ = children.recv() => None,
                (sig, _, _) = futures::future::select_all(waits) => Some(sig),
            }
        };
        if let Some(sig) = received {
            // ESRCH: the manager has just exited; the next reap sees it.
            let _ = kill_process(manager, sig);
        }
    }
}

/// Reaps every exited child; the manager's exit code once it is among them.
fn reap_exited(manager: Pid) -> Option<ExitCode> {
    loop {
        // Any child (-1): the orphans are session leaders of their own, in no group of ours.
        match wait(WaitOptions::NOHANG) {
            Ok(Some((pid, status))) => {
                if pid == manager {
                    let code = status
                        .exit_status()
                        .or_else(|| status.terminating_signal().map(|s| 128 + s))
                        .unwrap_or(1);
                    return Some(ExitCode::from(u8::try_from(code).unwrap_or(1)));
                }
                tracing::debug!(pid = pid.as_raw_nonzero().get(), "reaped an orphan");
            }
            // Nothing exited (Ok(None)), or no child left at all (ECHILD).
            Ok(None) | Err(_) => return None,
        }
    }
}
