//! Planned changes without downtime (DESIGN §9): the one step the controller takes next
//! so that a new pod template, a cordoned node or a smaller `replicas` reaches a running
//! cluster. Pure: the controller gathers the pods, their nodes and what the primary
//! reports now, asks [`plan`], and carries out the single step it returns; the next
//! reconcile asks again. Nothing is remembered between steps, so a rollout interrupted
//! by an operator restart resumes from what the pods show.
//!
//! The rules:
//! - nothing is done while a failover or switchover is under way, or without a primary;
//! - a primary that is about to be removed (scale-down) or whose node is cordoned is
//!   switched over to a streaming standby first;
//! - a new pod template reaches the standbys first, one at a time, each only once every
//!   other instance is back and streaming; then the primary is switched over to an
//!   updated standby; then the former primary, now a standby, is restarted. A single
//!   instance has nobody to hand over to and is restarted in place.

use std::fmt;

use super::wire::InstanceReport;

/// One pod of the cluster, as the controller sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub pod: String,
    pub ordinal: i32,
    /// The pod object exists and is not being deleted.
    pub present: bool,
    /// It runs the StatefulSet's current pod template.
    pub updated: bool,
    /// Its node is cordoned: a drain is coming.
    pub on_cordoned_node: bool,
    /// As the primary reports now: this standby streams from it (for the primary
    /// itself: it runs and answers). False when not known.
    pub healthy: bool,
    /// Named in the primary's synchronous set.
    pub in_sync_set: bool,
}

/// What the plan is made from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    /// `spec.replicas`.
    pub replicas: i32,
    /// `spec.replicas` of the live StatefulSet, when it exists.
    pub live_replicas: Option<i32>,
    pub current_primary: Option<String>,
    pub target_primary: Option<String>,
    /// Every pod that exists, and every ordinal below the live replicas.
    pub members: Vec<Member>,
    /// The StatefulSet's controller has taken the current pod template: a pod deleted
    /// before that would come back on the old one.
    pub template_applied: bool,
}

/// Why the primary moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Because {
    /// The last instance on the old pod template is the primary.
    RollingUpdate,
    /// The primary's node is cordoned.
    NodeCordoned,
    /// The primary's ordinal goes with the scale-down.
    ScaleDown,
}

impl fmt::Display for Because {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Because::RollingUpdate => "the primary is the last instance on the old pod template",
            Because::NodeCordoned => "the primary's node is cordoned",
            Because::ScaleDown => "the primary's ordinal is removed by the scale-down",
        })
    }
}

/// Why nothing can be done now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Waiting {
    /// A failover or switchover is under way.
    Transition {
        current: String,
        target: String,
    },
    NoPrimary,
    /// A pod the StatefulSet should have is not there (yet).
    Missing(String),
    /// An instance is not back: the primary does not run, or a standby does not stream.
    NotStreaming(String),
    /// The primary must move and no standby can take over.
    NoStandby(Because),
    /// The StatefulSet has not taken the new pod template yet.
    TemplateNotApplied,
}

impl fmt::Display for Waiting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Waiting::Transition { current, target } => {
                write!(
                    f,
                    "waiting for the primary to move from {current} to {target}"
                )
            }
            Waiting::NoPrimary => f.write_str("waiting for a primary"),
            Waiting::Missing(pod) => write!(f, "waiting for pod {pod} to be created"),
            Waiting::NotStreaming(pod) => {
                write!(f, "waiting for {pod} to run and stream from the primary")
            }
            Waiting::TemplateNotApplied => {
                f.write_str("waiting for the StatefulSet to take the new pod template")
            }
            Waiting::NoStandby(because) => write!(
                f,
                "{because}, but no standby streams from it to take over (one on an uncordoned node, kept by the scale)"
            ),
        }
    }
}

/// The single next step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Every pod runs the current template, on an uncordoned node, within the scale.
    Settled,
    Wait(Waiting),
    /// Delete this pod: the StatefulSet recreates it from the current template.
    Restart(String),
    /// Record this standby as `targetPrimary`; the HA engine hands over to it.
    Switchover {
        to: String,
        because: Because,
    },
}

/// The step, and the `replicas` the StatefulSet must have meanwhile: a scale-down that
/// would remove the primary waits until the primary has moved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub replicas: i32,
    pub step: Step,
    /// Pods already on the current template, in name order.
    pub updated: Vec<String>,
}

/// Whether anything may need doing: a pod on an old template, a primary on a cordoned
/// node or beyond the new scale. When false the plan is [`Step::Settled`] whatever the
/// instances report, so a settled cluster is planned without asking them anything.
pub fn needs_attention(input: &Input) -> bool {
    let primary = primary_member(input);
    input.members.iter().any(|m| m.present && !m.updated)
        || primary.is_some_and(|p| p.on_cordoned_node || p.ordinal >= input.replicas)
}

fn primary_member(input: &Input) -> Option<&Member> {
    let current = input.current_primary.as_deref()?;
    input.members.iter().find(|m| m.pod == current)
}

/// The next step.
pub fn plan(input: &Input) -> Plan {
    let updated = {
        let mut updated: Vec<String> = input
            .members
            .iter()
            .filter(|m| m.present && m.updated && m.ordinal < input.replicas)
            .map(|m| m.pod.clone())
            .collect();
        updated.sort();
        updated
    };
    let primary = primary_member(input);
    let keep_for_primary = primary.filter(|p| p.ordinal >= input.replicas).map(|p| {
        input
            .live_replicas
            .unwrap_or(input.replicas)
            .max(p.ordinal + 1)
    });
    let replicas = keep_for_primary.unwrap_or(input.replicas);
    let step = next_step(input, replicas);
    Plan {
        replicas,
        step,
        updated,
    }
}

fn next_step(input: &Input, replicas: i32) -> Step {
    if !needs_attention(input) {
        return Step::Settled;
    }
    let Some(current) = input.current_primary.clone() else {
        return Step::Wait(Waiting::NoPrimary);
    };
    if let Some(target) = input.target_primary.clone()
        && target != current
    {
        return Step::Wait(Waiting::Transition { current, target });
    }
    let Some(primary) = primary_member(input) else {
        return Step::Wait(Waiting::NotStreaming(current));
    };
    // The ones that stay: below the scale the StatefulSet keeps.
    let kept: Vec<&Member> = input
        .members
        .iter()
        .filter(|m| m.ordinal < replicas)
        .collect();

    for because in [Because::ScaleDown, Because::NodeCordoned] {
        let must_move = match because {
            Because::ScaleDown => primary.ordinal >= input.replicas,
            _ => primary.on_cordoned_node,
        };
        if must_move {
            return match best_standby(&kept, primary, input.replicas, false) {
                Some(to) => Step::Switchover { to, because },
                None => Step::Wait(Waiting::NoStandby(because)),
            };
        }
    }

    // A rolling update: only once every kept instance is there and streaming.
    if !input.template_applied {
        return Step::Wait(Waiting::TemplateNotApplied);
    }
    if let Some(missing) = kept.iter().find(|m| !m.present) {
        return Step::Wait(Waiting::Missing(missing.pod.clone()));
    }
    if let Some(down) = kept.iter().find(|m| !m.healthy) {
        return Step::Wait(Waiting::NotStreaming(down.pod.clone()));
    }
    let mut outdated: Vec<&&Member> = kept
        .iter()
        .filter(|m| !m.updated && m.pod != primary.pod)
        .collect();
    // Standbys outside the synchronous set first: restarting one never makes the
    // primary wait for a quorum standby to come back.
    outdated.sort_by_key(|m| (m.in_sync_set, std::cmp::Reverse(m.ordinal)));
    if let Some(standby) = outdated.first() {
        return Step::Restart(standby.pod.clone());
    }
    if primary.updated {
        return Step::Settled;
    }
    if kept.len() <= 1 {
        return Step::Restart(primary.pod.clone());
    }
    match best_standby(&kept, primary, input.replicas, true) {
        Some(to) => Step::Switchover {
            to,
            because: Because::RollingUpdate,
        },
        None => Step::Wait(Waiting::NoStandby(Because::RollingUpdate)),
    }
}

/// The standby to hand over to: one that streams from the primary, stays within the
/// scale, is not on a cordoned node (and, for a rolling update, already runs the new
/// template); a synchronous one first, as it has every acknowledged commit, then the
/// lowest ordinal.
fn best_standby(
    kept: &[&Member],
    primary: &Member,
    replicas: i32,
    must_be_updated: bool,
) -> Option<String> {
    kept.iter()
        .filter(|m| {
            m.pod != primary.pod
                && m.present
                && m.healthy
                && m.ordinal < replicas
                && !m.on_cordoned_node
                && (m.updated || !must_be_updated)
        })
        .min_by_key(|m| (!m.updated, !m.in_sync_set, m.ordinal))
        .map(|m| m.pod.clone())
}

/// The standby a primary that asks to be restarted (`restart_wanted`) hands over to:
/// one streaming from it by both accounts and already running its new settings (so the
/// new primary needs no restart of its own): none pending, and the same configuration
/// as the primary's (a standby that has not seen the change yet would restart for it
/// just as it is handed the primary), a synchronous one first (it has every
/// acknowledged commit), then the first by name; `None` while there is none.
pub fn restart_switchover_target(
    primary: &InstanceReport,
    standbys: &[&InstanceReport],
) -> Option<String> {
    primary
        .streaming_standbys
        .iter()
        .filter(|pod| **pod != primary.pod)
        .filter(|pod| {
            standbys.iter().any(|s| {
                s.pod == **pod
                    && s.report.running
                    && !s.pending_restart
                    && s.config_digest == primary.config_digest
                    && s.report.streaming_from.as_deref() == Some(primary.pod.as_str())
            })
        })
        .min_by_key(|pod| (!primary.sync_standbys.contains(pod), (*pod).clone()))
        .cloned()
}

#[cfg(test)]
mod tests;
