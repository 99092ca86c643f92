//! The failover decision (DESIGN §9): when the primary is lost, which standby to
//! promote, or why none can be promoted safely.
//!
//! Under `ANY q (S)` with |S| = s, a commit is acknowledged once q members of S have
//! flushed it. If at least s − q + 1 members of S answer, at most q − 1 are silent, so
//! every acknowledged commit is on at least one member that answers, and the most
//! advanced of them holds them all. With fewer, the silent ones may be the only
//! holders of a commit the application saw acknowledged: no promotion. With q = 0
//! nothing is guaranteed; the most advanced answering standby loses the least.

use std::cmp::Reverse;
use std::time::{Duration, SystemTime};

use super::input::{Cluster, Instance, Report, Role};

/// How long a primary that does not answer at all (pod gone, node lost, hung) may
/// stay silent before a failover. Detection already waited for its own deadline; this
/// lets a short stall (CPU starvation, a paused process) pass without one.
pub const UNREACHABLE_GRACE: Duration = Duration::from_secs(1);

/// How long a primary whose instance manager answers while its server does not
/// (the supervisor restarting the postmaster after its first 1 s delay, a crash
/// recovery of a few seconds) may take before a failover.
pub const RESTART_GRACE: Duration = Duration::from_secs(5);

/// The next step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailoverDecision {
    /// The primary is healthy, or there is none yet (a new cluster bootstraps; that is
    /// not a failover).
    Nothing,
    /// The primary is unhealthy but may come back by itself before `until`.
    Wait {
        /// To record, when the status has no time yet.
        unhealthy_since: SystemTime,
        until: SystemTime,
    },
    /// A failover is due and no standby can be promoted safely; look again later.
    Blocked(Blocked),
    /// Record the standby in `status.targetPrimary`, then promote it.
    Promote(Promotion),
    /// `status.targetPrimary` names another pod than the current primary: a failover
    /// or switchover under way, finished as recorded and never chosen again, so a
    /// controller that restarts midway promotes the same pod once.
    Continue {
        target: String,
        /// Whether the target already runs as a primary.
        promoted: bool,
    },
}

/// The chosen standby and the evidence for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Promotion {
    pub pod: String,
    /// The WAL it holds.
    pub lsn: u64,
    /// The flushed WAL the old primary last reported.
    pub primary_lsn: Option<u64>,
    /// Asynchronous replication only: how many bytes of WAL the old primary had (as it
    /// last reported) that the promoted standby lacks; the commits in them are lost.
    /// Under a quorum none of those bytes holds an acknowledged commit.
    pub lost_wal_bytes: Option<u64>,
}

/// Why no standby is promoted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Blocked {
    #[error(
        "{needed} of the {synchronous} synchronous standbys must answer to be sure the promoted one holds every acknowledged commit; {}",
        answering_list(answering)
    )]
    TooFewSynchronousStandbys {
        needed: usize,
        synchronous: usize,
        answering: Vec<String>,
    },
    #[error(
        "the primary last reported ANY {quorum} of only {synchronous} standbys, a quorum that cannot tell which commits were acknowledged"
    )]
    QuorumBeyondSet { quorum: usize, synchronous: usize },
    #[error("no standby answers with its WAL position")]
    NoStandby,
    #[error("{pod} already runs as a primary")]
    OtherPrimary { pod: String },
}

/// "only a and b answer", for the blocked message.
fn answering_list(pods: &[String]) -> String {
    match pods {
        [] => "none answers".to_string(),
        [one] => format!("only {one} answers"),
        [rest @ .., last] => format!("only {} and {last} answer", rest.join(", ")),
    }
}

/// The next step for `cluster` at `now`.
pub fn decide(cluster: &Cluster, now: SystemTime) -> FailoverDecision {
    let Some(current) = cluster.current_primary.as_deref() else {
        return FailoverDecision::Nothing;
    };
    if let Some(target) = cluster.target_primary.as_deref()
        && target != current
    {
        let promoted = cluster
            .instance(target)
            .and_then(|instance| instance.report.as_ref())
            .is_some_and(runs_as_primary);
        return FailoverDecision::Continue {
            target: target.to_string(),
            promoted,
        };
    }
    let grace = match cluster.instance(current).and_then(|i| i.report.as_ref()) {
        Some(report) if runs_as_primary(report) => return FailoverDecision::Nothing,
        Some(_) => RESTART_GRACE,
        None => UNREACHABLE_GRACE,
    };
    let unhealthy_since = cluster.unhealthy_since.unwrap_or(now);
    let until = unhealthy_since
        .checked_add(grace)
        .unwrap_or(unhealthy_since);
    if now < until {
        return FailoverDecision::Wait {
            unhealthy_since,
            until,
        };
    }
    match choose(cluster, current) {
        Ok(promotion) => FailoverDecision::Promote(promotion),
        Err(blocked) => FailoverDecision::Blocked(blocked),
    }
}

fn runs_as_primary(report: &Report) -> bool {
    report.role == Role::Primary && report.running
}

/// A synchronous set `ANY quorum (members)` under which commits may have been
/// acknowledged.
struct SyncSet<'a> {
    quorum: usize,
    members: Vec<&'a Instance>,
}

/// The sets the promoted standby must satisfy: the one the primary last reported
/// (PostgreSQL reads an empty list as asynchronous), and with `required` durability,
/// when that report is below the spec's minimum, also the one the primary may have
/// applied since (the quorum keeper lists every standby then): the report may predate
/// a spec change, and satisfying both is safe under either.
fn sync_sets<'a>(cluster: &Cluster, standbys: &[&'a Instance]) -> Vec<SyncSet<'a>> {
    let mut sets = Vec::new();
    let reported: Vec<&Instance> = standbys
        .iter()
        .copied()
        .filter(|instance| instance.in_sync_set)
        .collect();
    if cluster.sync_quorum > 0 && !reported.is_empty() {
        sets.push(SyncSet {
            quorum: cluster.sync_quorum,
            members: reported,
        });
    }
    let floor = cluster.bounds.floor();
    if floor > cluster.sync_quorum {
        sets.push(SyncSet {
            quorum: floor,
            members: standbys.to_vec(),
        });
    }
    sets
}

/// The standby to promote once the primary is given up on.
fn choose(cluster: &Cluster, current: &str) -> Result<Promotion, Blocked> {
    let standbys: Vec<&Instance> = cluster
        .instances
        .iter()
        .filter(|instance| instance.pod != current)
        .collect();
    if let Some(other) = standbys
        .iter()
        .find(|instance| instance.report.as_ref().is_some_and(runs_as_primary))
    {
        return Err(Blocked::OtherPrimary {
            pod: other.pod.clone(),
        });
    }
    let sets = sync_sets(cluster, &standbys);
    for set in &sets {
        check(set)?;
    }
    // Asynchronous: any standby; else one that was in a synchronous set.
    let candidate = |instance: &&Instance| {
        sets.is_empty()
            || sets
                .iter()
                .any(|set| set.members.iter().any(|m| m.pod == instance.pod))
    };
    let (chosen, _, lsn) = standbys
        .iter()
        .copied()
        .filter(candidate)
        .filter_map(|instance| {
            let report = instance.report.as_ref()?;
            Some((instance, report.timeline, report.answering_standby()?))
        })
        // WAL positions compare only within one history: a later timeline first.
        .max_by_key(|(instance, timeline, lsn)| (*timeline, *lsn, Reverse(ordinal(&instance.pod))))
        .ok_or(Blocked::NoStandby)?;
    Ok(Promotion {
        pod: chosen.pod.clone(),
        lsn,
        primary_lsn: cluster.primary_lsn,
        lost_wal_bytes: if sets.is_empty() {
            cluster
                .primary_lsn
                .map(|primary| primary.saturating_sub(lsn))
        } else {
            None
        },
    })
}

/// Whether enough members of `set` answer that one of them holds every commit
/// acknowledged under it.
fn check(set: &SyncSet) -> Result<(), Blocked> {
    let synchronous = set.members.len();
    if set.quorum > synchronous {
        return Err(Blocked::QuorumBeyondSet {
            quorum: set.quorum,
            synchronous,
        });
    }
    let answering: Vec<String> = set
        .members
        .iter()
        .filter(|m| {
            m.report
                .as_ref()
                .and_then(Report::answering_standby)
                .is_some()
        })
        .map(|m| m.pod.clone())
        .collect();
    let needed = synchronous - set.quorum + 1;
    if answering.len() < needed {
        return Err(Blocked::TooFewSynchronousStandbys {
            needed,
            synchronous,
            answering,
        });
    }
    Ok(())
}

/// A pod's StatefulSet ordinal (`postgres-demo-2` → 2), for a deterministic choice
/// between equally advanced standbys: the lowest ordinal, then the name.
fn ordinal(pod: &str) -> (u32, &str) {
    let number = pod
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(u32::MAX);
    (number, pod)
}

#[cfg(test)]
mod exhaustive;
#[cfg(test)]
mod tests;
