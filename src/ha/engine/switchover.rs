//! A switchover: `status.targetPrimary` names a standby while the primary runs. The
//! target must be a standby streaming from the primary; the primary stops cleanly (its
//! final checkpoint, every WAL record confirmed by its streaming standbys) and stays
//! down; the target is promoted once it has received past that checkpoint; the others,
//! the former primary too, follow it. Nothing acknowledged is lost, and the former
//! primary needs no rewind. When a step cannot be done, the former primary runs again
//! and the record names it again (`SwitchoverRefused` says why).

use std::time::{Duration, Instant};

use super::super::client;
use super::super::input::Role;
use super::super::wire::Instruction;
use super::{Announcement, Engine, Member, World, WorldError};

/// How long the target may take to be a streaming standby of the primary.
const TARGET_READY: Duration = Duration::from_secs(30);

/// How long the target may take to receive the primary's final checkpoint.
const CATCH_UP: Duration = Duration::from_secs(10);

/// How many times a primary is asked whether it runs before a recorded target is
/// taken for a failover under way.
const RUNNING_ASKS: u32 = 3;

/// How often the target is asked meanwhile.
const POLL: Duration = Duration::from_millis(20);

impl<W: World> Engine<W> {
    /// Whether `pod` answers as a running primary that is not fenced. A manager that
    /// answers "not running" is asked a few times: one slow report (a primary just
    /// promoted, a loaded machine) must not turn a switchover into a failover.
    pub(super) async fn runs_as_primary(&self, pod: &str) -> bool {
        let Ok(members) = self.world.members().await else {
            return false;
        };
        let Some(address) = address_of(&members, pod) else {
            return false;
        };
        for attempt in 0..RUNNING_ASKS {
            if attempt > 0 {
                tokio::time::sleep(self.timing.retry).await;
            }
            match client::report(&address, self.timing.report_deadline).await {
                Ok(r) if r.report.role == Role::Primary && r.report.running && !r.fenced => {
                    return true;
                }
                // Its manager answers: ask again.
                Ok(r) => tracing::info!(
                    primary = pod,
                    role = ?r.report.role,
                    running = r.report.running,
                    fenced = r.fenced,
                    "the primary answers but does not run as one"
                ),
                // Unreachable: a failover must not wait.
                Err(_) => return false,
            }
        }
        false
    }

    pub(super) async fn switch_over(&mut self, from: &str, to: &str) -> Result<(), WorldError> {
        let members = self.world.members().await?;
        let (Some(from_address), Some(to_address)) =
            (address_of(&members, from), address_of(&members, to))
        else {
            return self
                .refuse(from, to, format!("{to} is not an instance of this cluster"))
                .await;
        };
        tracing::info!(from, to, "switchover requested");
        // 1. The target streams from the primary.
        let ready_by = Instant::now() + TARGET_READY;
        loop {
            match client::report(&to_address, self.timing.report_deadline).await {
                Ok(report)
                    if report.report.role == Role::Standby
                        && report.report.running
                        && report.report.streaming_from.as_deref() == Some(from) =>
                {
                    break;
                }
                Ok(_) | Err(_) if Instant::now() < ready_by => {
                    tokio::time::sleep(self.timing.retry * 5).await;
                }
                Ok(report) => {
                    let reason = format!(
                        "{to} is not a running standby streaming from {from} (it reports {})",
                        super::describe(&report)
                    );
                    return self.refuse(from, to, reason).await;
                }
                Err(error) => {
                    return self
                        .refuse(from, to, format!("{to} does not answer: {error}"))
                        .await;
                }
            }
        }
        // 2. The primary stops cleanly and says where its last checkpoint is.
        let token = self.world.instruct_token().await;
        let stop = Instant::now();
        let handed = client::instruct(
            &from_address,
            token.as_deref(),
            &Instruction::HandOver { to: to.to_string() },
            self.timing.promote_deadline,
        )
        .await;
        let stopped_at = match handed.map(|report| report.stopped_at_lsn) {
            Ok(Some(lsn)) => lsn,
            Ok(None) => {
                return self
                    .abort(
                        from,
                        &from_address,
                        to,
                        "the primary reported no final checkpoint".to_string(),
                    )
                    .await;
            }
            Err(error) => {
                return self
                    .abort(
                        from,
                        &from_address,
                        to,
                        format!("the primary did not stop cleanly: {error}"),
                    )
                    .await;
            }
        };
        // 3. The target has received it all.
        let caught_up_by = Instant::now() + CATCH_UP;
        loop {
            let received = client::report(&to_address, self.timing.report_deadline)
                .await
                .ok()
                .and_then(|r| r.report.durable_lsn());
            if received.is_some_and(|lsn| lsn > stopped_at) {
                break;
            }
            if Instant::now() >= caught_up_by {
                let reason = format!(
                    "{to} did not receive the primary's final checkpoint in {} s",
                    CATCH_UP.as_secs()
                );
                return self.abort(from, &from_address, to, reason).await;
            }
            tokio::time::sleep(POLL).await;
        }
        // 4. The target takes over; everybody follows it.
        if let Err(error) = client::instruct(
            &to_address,
            token.as_deref(),
            &Instruction::Promote,
            self.timing.promote_deadline,
        )
        .await
        {
            // The target may have promoted after all: the failover path finishes or
            // decides from what the instances then report.
            tracing::error!(%error, to, "switchover: the promotion did not answer");
            return Err(error.into());
        }
        self.world.record_primary(to).await?;
        let write_gap = stop.elapsed();
        tracing::info!(
            from,
            to,
            write_gap_ms = write_gap.as_millis() as u64,
            "switchover complete"
        );
        self.follow(to, &members).await;
        self.world
            .announce(Announcement::SwitchoverCompleted {
                from: from.to_string(),
                to: to.to_string(),
                write_gap,
            })
            .await;
        self.sync = None;
        self.primary_lsn = None;
        Ok(())
    }

    /// The primary runs again (it was held down), and the record names it again.
    async fn abort(
        &self,
        from: &str,
        from_address: &str,
        to: &str,
        reason: String,
    ) -> Result<(), WorldError> {
        let token = self.world.instruct_token().await;
        if let Err(error) = client::instruct(
            from_address,
            token.as_deref(),
            &Instruction::Promote,
            self.timing.instruct_deadline,
        )
        .await
        {
            tracing::error!(%error, from, "switchover aborted, and the primary did not answer");
        }
        self.refuse(from, to, reason).await
    }

    async fn refuse(&self, from: &str, to: &str, reason: String) -> Result<(), WorldError> {
        tracing::warn!(from, to, %reason, "switchover refused");
        self.world.record_target(from).await?;
        self.world
            .announce(Announcement::SwitchoverRefused {
                from: from.to_string(),
                to: to.to_string(),
                reason,
            })
            .await;
        Ok(())
    }
}

fn address_of(members: &[Member], pod: &str) -> Option<String> {
    members
        .iter()
        .find(|m| m.pod == pod)
        .and_then(|m| m.address.clone())
}
