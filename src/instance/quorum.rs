//! Which standbys count in the synchronous quorum, and the `synchronous_standby_names`
//! that follows (DESIGN §7). Pure: [`super::quorum_keeper`] reads `pg_stat_replication`
//! on the primary a few times a second, asks [`Quorum::decide`], and applies the answer.
//!
//! A commit waits for `q` of the listed standbys, so listing one that cannot answer at
//! once freezes every commit. Only standbys that stream and have caught up are listed:
//! - a standby joins when its walsender is `streaming` (everything sent), it reports a
//!   flush position (a `pg_basebackup` WAL stream reports none), it is within
//!   [`JOIN_LAG`] bytes of the primary's flushed WAL, and it is not stalled;
//! - once listed it stays while it streams, within [`STAY_LAG`], and not stalled (the
//!   looser bound is the hysteresis: a burst of writes does not take it out and put it
//!   back), and leaves at once when its walsender goes away or stops streaming;
//! - stalled: behind the primary, and its flush position has not moved for
//!   [`STALL_AFTER`]. This is how a standby lost without a TCP reset (node loss) is
//!   dropped while its walsender still shows `streaming`, and it relies on the
//!   primary's clock only (`reply_time` is the standby's clock).
//!
//! The count `q` follows the spec's bounds ([`quorum_size`]), and rises in two steps: a
//! new standby is first listed without raising `q`, and `q` counts it only once its
//! walsender reports a `sync_state` (it has loaded a configuration naming it). A
//! walsender releases waiting commits only when its standby replies, and a reply that
//! arrives before the walsender has read the new list is ignored: raising `q` in the
//! same reload that lists the standby can leave commits waiting for the next reply
//! (up to `wal_receiver_status_interval`, 10 s by default).
//!
//! With `dataDurability: required`, `q` never goes below `minSyncReplicas`, not even for
//! the two-step raise. When fewer standbys count than that, every member is listed,
//! counted or not: commits then wait until enough of them are back and acknowledge,
//! rather than being acknowledged with fewer copies.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::api::DataDurability;

/// A standby joins when its flush position is at most this far behind the primary's:
/// two or three WAL pages of a steady writer in flight, far below what a catching-up
/// standby is behind.
pub const JOIN_LAG: u64 = 1024 * 1024;

/// A listed standby leaves when further behind than this (one WAL segment): it no
/// longer keeps up, and every commit would wait for it to write that much.
pub const STAY_LAG: u64 = 16 * 1024 * 1024;

/// A standby behind the primary whose flush position has not moved for this long is
/// stalled. A streaming standby acknowledges each write within milliseconds; half a
/// second leaves room for a slow disk while keeping a dead standby's stall well under
/// the 1 s the quorum may hold commits.
pub const STALL_AFTER: Duration = Duration::from_millis(500);

/// After a change of the setting, commits found waiting for a standby are released by
/// a small write of the keeper's own (see [`Quorum::nudge`]) during this long.
pub const NUDGE_WINDOW: Duration = Duration::from_secs(2);

/// One row of `pg_stat_replication`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalSender {
    pub application_name: String,
    /// `startup`, `catchup`, `streaming`, `backup` or `stopping`.
    pub state: String,
    /// Last WAL position the standby reported flushed; `None` when it reports none
    /// (a `pg_basebackup` WAL stream, a receiver that has not flushed yet).
    pub flush: Option<u64>,
    /// `async`, `potential`, `sync` or `quorum`: anything but `async` means the
    /// walsender has loaded a configuration that names its standby.
    pub sync_state: String,
}

impl WalSender {
    fn named_in_loaded_configuration(&self) -> bool {
        matches!(self.sync_state.as_str(), "quorum" | "sync" | "potential")
    }
}

/// What the primary reports at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replication {
    /// `pg_current_wal_flush_lsn()`: all a standby can have flushed.
    pub flushed: u64,
    pub senders: Vec<WalSender>,
}

/// The spec's quorum bounds and durability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    pub min: i32,
    pub max: i32,
    pub durability: DataDurability,
}

impl Bounds {
    /// The spec's bounds.
    pub fn of(spec: &crate::api::QuorumSpec) -> Self {
        Self {
            min: spec.min_sync_replicas,
            max: spec.max_sync_replicas,
            durability: spec.data_durability,
        }
    }

    /// `minSyncReplicas`, never negative.
    fn min(self) -> usize {
        usize::try_from(self.min).unwrap_or(0)
    }

    /// `maxSyncReplicas`, never below the minimum.
    fn max(self) -> usize {
        usize::try_from(self.max).unwrap_or(0).max(self.min())
    }

    /// The lowest `q` whatever the standbys do: `minSyncReplicas` when durability is
    /// required, else 0.
    pub fn floor(self) -> usize {
        match self.durability {
            DataDurability::Preferred => 0,
            DataDurability::Required => self.min(),
        }
    }
}

/// The outcome of one observation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The standbys that count, sorted.
    pub counted: Vec<String>,
    pub synchronous_standby_names: String,
}

/// How far a standby's flush position got, and when it was last seen moving or caught
/// up (on the primary's clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Progress {
    flush: u64,
    since: Instant,
}

/// What the quorum keeper remembers between observations.
#[derive(Clone, Debug, Default)]
pub struct Quorum {
    counted: BTreeSet<String>,
    progress: BTreeMap<String, Progress>,
    /// False until the first decision, which adopts what PostgreSQL already counts.
    observed: bool,
}

impl Quorum {
    /// Decides from one observation at `now`. `members` are the cluster's other pods:
    /// anything else streaming from the primary (a backup tool, a clone of another
    /// cluster) never counts.
    pub fn decide(
        &mut self,
        members: &BTreeSet<String>,
        seen: &Replication,
        bounds: Bounds,
        now: Instant,
    ) -> Decision {
        // Several walsenders may carry one name (a reconnect before the old one timed
        // out, a clone's WAL stream): the most advanced streaming one speaks for it.
        let mut best: BTreeMap<&str, &WalSender> = BTreeMap::new();
        for sender in &seen.senders {
            if !members.contains(&sender.application_name) || sender.state != "streaming" {
                continue;
            }
            let Some(flush) = sender.flush else { continue };
            let slot = best
                .entry(sender.application_name.as_str())
                .or_insert(sender);
            if slot.flush.is_none_or(|kept| kept < flush) {
                *slot = sender;
            }
        }
        self.progress
            .retain(|name, _| best.contains_key(name.as_str()));
        let mut counted = BTreeSet::new();
        let mut confirmed = 0;
        for (name, sender) in &best {
            let flush = sender.flush.unwrap_or_default();
            let lag = seen.flushed.saturating_sub(flush);
            let progress = self
                .progress
                .entry((*name).to_string())
                .or_insert(Progress { flush, since: now });
            if flush > progress.flush || lag == 0 {
                *progress = Progress { flush, since: now };
            }
            let stalled = lag > 0 && now.saturating_duration_since(progress.since) >= STALL_AFTER;
            // A restarted keeper adopts the standbys PostgreSQL already counts; later,
            // only its own list matters (a dropped standby's walsender still reports
            // `quorum` until it reloads).
            let listed = self.counted.contains(*name)
                || (!self.observed && sender.named_in_loaded_configuration());
            let limit = if listed { STAY_LAG } else { JOIN_LAG };
            if !stalled && lag <= limit {
                counted.insert((*name).to_string());
                confirmed += usize::from(sender.named_in_loaded_configuration());
            }
        }
        self.counted = counted;
        self.observed = true;
        let wanted = quorum_size(self.counted.len(), bounds);
        // The two-step raise: q counts only standbys whose walsender already knows it is
        // listed (at least one, or nothing would ever be listed); `required` holds its
        // floor even then, since a commit acknowledged by fewer is what it forbids.
        let quorum = wanted.min(confirmed.max(1)).max(bounds.floor());
        let counted: Vec<String> = self.counted.iter().cloned().collect();
        // Only `required` asks for more than count: PostgreSQL must then wait for
        // standbys that are away or behind, so all of them are listed and any `quorum`
        // of them that acknowledge release the commits.
        let listed: Vec<String> = if quorum > counted.len() {
            members.iter().cloned().collect()
        } else {
            counted.clone()
        };
        Decision {
            synchronous_standby_names: standby_names(quorum, &listed),
            counted,
        }
    }

    /// Whether to write a small transaction of its own so that the standbys reply:
    /// commits are waiting, and the setting changed within [`NUDGE_WINDOW`]. A commit
    /// that started waiting before the change is only released by a standby's next
    /// reply, which an idle standby sends every `wal_receiver_status_interval`.
    pub fn nudge(waiting_commits: i64, since_change: Duration) -> bool {
        waiting_commits > 0 && since_change < NUDGE_WINDOW
    }
}

/// q for `healthy` standbys (DESIGN §7): `max`; if fewer healthy standbys than that,
/// `min`; if fewer than `min`, as many as are healthy with `preferred` durability
/// (availability first), still `min` with `required` (commits wait). 0 means
/// asynchronous.
pub fn quorum_size(healthy: usize, bounds: Bounds) -> usize {
    let (min, max) = (bounds.min(), bounds.max());
    if healthy >= max {
        max
    } else if healthy >= min {
        min
    } else {
        healthy.max(bounds.floor())
    }
}

/// `ANY q ("a", "b")`, or empty (asynchronous) when q is 0.
pub fn standby_names(quorum: usize, standbys: &[String]) -> String {
    if quorum == 0 || standbys.is_empty() {
        return String::new();
    }
    let sorted: BTreeSet<&String> = standbys.iter().collect();
    let list: Vec<String> = sorted
        .iter()
        .map(|name| format!("\"{}\"", name.replace('"', "\"\"")))
        .collect();
    format!("ANY {quorum} ({})", list.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "postgres-demo-1";
    const B: &str = "postgres-demo-2";
    const MB: u64 = 1024 * 1024;
    const BOUNDS: Bounds = bounds(1, 2, DataDurability::Preferred);

    const fn bounds(min: i32, max: i32, durability: DataDurability) -> Bounds {
        Bounds {
            min,
            max,
            durability,
        }
    }

    /// `ANY q (...)` over `names`, as PostgreSQL reads it.
    fn any(quorum: usize, names: &[&str]) -> String {
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        standby_names(quorum, &names)
    }

    fn members() -> BTreeSet<String> {
        [A, B].into_iter().map(String::from).collect()
    }

    fn sender(name: &str, state: &str, flush: Option<u64>, sync_state: &str) -> WalSender {
        WalSender {
            application_name: name.to_string(),
            state: state.to_string(),
            flush,
            sync_state: sync_state.to_string(),
        }
    }

    fn seen(flushed: u64, senders: &[WalSender]) -> Replication {
        Replication {
            flushed,
            senders: senders.to_vec(),
        }
    }

    /// A keeper that has listed A and B, both loaded: `ANY 2`.
    fn settled(now: Instant) -> Quorum {
        let mut quorum = Quorum::default();
        let both = seen(
            100 * MB,
            &[
                sender(A, "streaming", Some(100 * MB), "quorum"),
                sender(B, "streaming", Some(100 * MB), "quorum"),
            ],
        );
        let decision = quorum.decide(&members(), &both, BOUNDS, now);
        assert_eq!(
            decision.synchronous_standby_names,
            format!("ANY 2 (\"{A}\", \"{B}\")")
        );
        quorum
    }

    #[test]
    fn a_fresh_keeper_counts_only_streaming_caught_up_members() {
        let now = Instant::now();
        // (what B's walsender shows, whether B counts)
        let cases: &[(WalSender, bool)] = &[
            (sender(B, "streaming", Some(100 * MB), "async"), true),
            (
                sender(B, "streaming", Some(100 * MB - JOIN_LAG), "async"),
                true,
            ),
            (
                sender(B, "streaming", Some(100 * MB - JOIN_LAG - 1), "async"),
                false,
            ),
            (sender(B, "catchup", Some(100 * MB), "async"), false),
            (sender(B, "startup", Some(100 * MB), "async"), false),
            (sender(B, "stopping", Some(100 * MB), "quorum"), false),
            // A base backup, and the WAL stream of a pg_basebackup clone.
            (sender(B, "backup", None, "async"), false),
            (sender(B, "streaming", None, "async"), false),
            // Already counted by PostgreSQL: the looser bound applies.
            (
                sender(B, "streaming", Some(100 * MB - STAY_LAG), "quorum"),
                true,
            ),
            (
                sender(B, "streaming", Some(100 * MB - STAY_LAG - 1), "quorum"),
                false,
            ),
            (
                sender(B, "streaming", Some(100 * MB - 2 * MB), "potential"),
                true,
            ),
            (
                sender(B, "streaming", Some(100 * MB - 2 * MB), "sync"),
                true,
            ),
            // Not a pod of this cluster.
            (
                sender("pg_receivewal", "streaming", Some(100 * MB), "async"),
                false,
            ),
        ];
        for (b, counts) in cases {
            let mut quorum = Quorum::default();
            let a = sender(A, "streaming", Some(100 * MB), "quorum");
            let decision = quorum.decide(&members(), &seen(100 * MB, &[a, b.clone()]), BOUNDS, now);
            assert_eq!(
                decision.counted.contains(&B.to_string()),
                *counts,
                "{b:?}: {decision:?}"
            );
            assert!(decision.counted.contains(&A.to_string()));
        }
    }

    #[test]
    fn a_listed_standby_stays_through_a_burst_and_leaves_beyond_the_segment_bound() {
        let now = Instant::now();
        // (B's lag while A keeps up, whether B still counts)
        let cases = [
            (0, true),
            (JOIN_LAG + 1, true),
            (STAY_LAG, true),
            (STAY_LAG + 1, false),
        ];
        for (lag, counts) in cases {
            let mut quorum = settled(now);
            // B moved since, so it is not stalled: only the distance matters.
            let b = sender(B, "streaming", Some(200 * MB - lag), "async");
            let a = sender(A, "streaming", Some(200 * MB), "quorum");
            let decision = quorum.decide(&members(), &seen(200 * MB, &[a, b]), BOUNDS, now);
            assert_eq!(
                decision.counted.contains(&B.to_string()),
                counts,
                "lag {lag}: {decision:?}"
            );
        }
    }

    #[test]
    fn a_standby_that_disconnects_or_stops_streaming_leaves_at_once() {
        let now = Instant::now();
        let a = sender(A, "streaming", Some(100 * MB), "quorum");
        for b in [
            None,
            Some(sender(B, "catchup", Some(100 * MB), "quorum")),
            Some(sender(B, "stopping", Some(100 * MB), "quorum")),
            Some(sender(B, "streaming", None, "quorum")),
        ] {
            let mut quorum = settled(now);
            let senders: Vec<WalSender> =
                [Some(a.clone()), b.clone()].into_iter().flatten().collect();
            let decision = quorum.decide(&members(), &seen(100 * MB, &senders), BOUNDS, now);
            assert_eq!(decision.counted, [A], "{b:?}");
            assert_eq!(
                decision.synchronous_standby_names,
                format!("ANY 1 (\"{A}\")"),
                "{b:?}"
            );
        }
    }

    #[test]
    fn a_standby_whose_flush_stops_moving_while_behind_is_dropped_after_the_stall_bound() {
        let start = Instant::now();
        // (time since B last moved, B behind, whether B still counts)
        let cases = [
            (Duration::ZERO, true, true),
            (STALL_AFTER - Duration::from_millis(1), true, true),
            (STALL_AFTER, true, false),
            (Duration::from_secs(30), true, false),
            // Nothing to acknowledge: an idle standby is not stalled.
            (Duration::from_secs(30), false, true),
        ];
        for (elapsed, behind, counts) in cases {
            let mut quorum = settled(start);
            let flushed = if behind { 100 * MB + 8192 } else { 100 * MB };
            let later = start + elapsed;
            let a = sender(A, "streaming", Some(flushed), "quorum");
            let b = sender(B, "streaming", Some(100 * MB), "quorum");
            let decision = quorum.decide(&members(), &seen(flushed, &[a, b]), BOUNDS, later);
            assert_eq!(
                decision.counted.contains(&B.to_string()),
                counts,
                "{elapsed:?} behind {behind}: {decision:?}"
            );
        }
    }

    #[test]
    fn a_standby_that_keeps_moving_is_not_stalled_however_long_it_stays_behind() {
        let start = Instant::now();
        let mut quorum = settled(start);
        for step in 1..=20u64 {
            let now = start + STALL_AFTER * u32::try_from(step).unwrap();
            let flushed = 100 * MB + step * MB;
            let a = sender(A, "streaming", Some(flushed), "quorum");
            let b = sender(B, "streaming", Some(flushed - MB / 2), "quorum");
            let decision = quorum.decide(&members(), &seen(flushed, &[a, b]), BOUNDS, now);
            assert_eq!(decision.counted, [A, B], "step {step}");
        }
    }

    #[test]
    fn a_stalled_standby_rejoins_only_once_it_moves_and_is_caught_up_again() {
        let start = Instant::now();
        let mut quorum = settled(start);
        let stuck = sender(B, "streaming", Some(100 * MB), "quorum");
        let a = |flush| sender(A, "streaming", Some(flush), "quorum");
        let later = start + STALL_AFTER;
        let decision = quorum.decide(
            &members(),
            &seen(101 * MB, &[a(101 * MB), stuck.clone()]),
            BOUNDS,
            later,
        );
        assert_eq!(decision.counted, [A]);
        // Still stuck: stays out (its walsender still says quorum until the reload).
        let decision = quorum.decide(
            &members(),
            &seen(102 * MB, &[a(102 * MB), stuck]),
            BOUNDS,
            later + STALL_AFTER,
        );
        assert_eq!(decision.counted, [A]);
        // It moves, but is more than JOIN_LAG behind: not yet.
        let moving = sender(B, "streaming", Some(100 * MB + 1), "async");
        let decision = quorum.decide(
            &members(),
            &seen(102 * MB, &[a(102 * MB), moving]),
            BOUNDS,
            later + STALL_AFTER,
        );
        assert_eq!(decision.counted, [A]);
        // Caught up.
        let caught_up = sender(B, "streaming", Some(102 * MB), "async");
        let decision = quorum.decide(
            &members(),
            &seen(102 * MB, &[a(102 * MB), caught_up]),
            BOUNDS,
            later + STALL_AFTER,
        );
        assert_eq!(decision.counted, [A, B]);
    }

    #[test]
    fn a_dropped_standby_is_not_adopted_back_while_its_walsender_still_reports_quorum() {
        let now = Instant::now();
        let mut quorum = settled(now);
        let a = sender(A, "streaming", Some(200 * MB), "quorum");
        let far = sender(B, "streaming", Some(200 * MB - STAY_LAG - 1), "quorum");
        let decision = quorum.decide(&members(), &seen(200 * MB, &[a.clone(), far]), BOUNDS, now);
        assert_eq!(decision.counted, [A]);
        let nearer = sender(B, "streaming", Some(200 * MB - 2 * MB), "quorum");
        let decision = quorum.decide(&members(), &seen(200 * MB, &[a, nearer]), BOUNDS, now);
        assert_eq!(decision.counted, [A]);
    }

    #[test]
    fn the_count_rises_only_after_the_new_standby_knows_it_is_listed() {
        let now = Instant::now();
        let mut quorum = Quorum::default();
        let a = sender(A, "streaming", Some(MB), "quorum");
        // Listed by an earlier keeper alone: ANY 1 (A).
        let decision = quorum.decide(&members(), &seen(MB, std::slice::from_ref(&a)), BOUNDS, now);
        assert_eq!(
            decision.synchronous_standby_names,
            format!("ANY 1 (\"{A}\")")
        );
        // B caught up: listed, q unchanged.
        let b = sender(B, "streaming", Some(MB), "async");
        let decision = quorum.decide(&members(), &seen(MB, &[a.clone(), b]), BOUNDS, now);
        assert_eq!(
            decision.synchronous_standby_names,
            format!("ANY 1 (\"{A}\", \"{B}\")")
        );
        // B's walsender has read the list: q rises.
        let b = sender(B, "streaming", Some(MB), "quorum");
        let decision = quorum.decide(&members(), &seen(MB, &[a, b]), BOUNDS, now);
        assert_eq!(
            decision.synchronous_standby_names,
            format!("ANY 2 (\"{A}\", \"{B}\")")
        );
    }

    #[test]
    fn from_asynchronous_the_first_standbys_are_listed_with_a_count_of_one() {
        let now = Instant::now();
        let mut quorum = Quorum::default();
        let a = sender(A, "streaming", Some(MB), "async");
        let b = sender(B, "streaming", Some(MB), "async");
        let decision = quorum.decide(&members(), &seen(MB, &[a, b]), BOUNDS, now);
        assert_eq!(
            decision.synchronous_standby_names,
            format!("ANY 1 (\"{A}\", \"{B}\")")
        );
        let decision = quorum.decide(&members(), &seen(MB, &[]), BOUNDS, now);
        assert_eq!(decision.synchronous_standby_names, "");
        assert!(decision.counted.is_empty());
    }

    #[test]
    fn the_most_advanced_walsender_of_a_name_speaks_for_it() {
        let now = Instant::now();
        let mut quorum = Quorum::default();
        let a = sender(A, "streaming", Some(10 * MB), "quorum");
        // A dead connection not yet timed out, and the reconnected standby.
        let old = sender(B, "streaming", Some(MB), "quorum");
        let new = sender(B, "streaming", Some(10 * MB), "quorum");
        let decision = quorum.decide(
            &members(),
            &seen(10 * MB, &[a.clone(), old.clone(), new.clone()]),
            BOUNDS,
            now,
        );
        assert_eq!(decision.counted, [A, B]);
        let decision = quorum.decide(&members(), &seen(10 * MB, &[a, new, old]), BOUNDS, now);
        assert_eq!(decision.counted, [A, B]);
    }

    #[test]
    fn quorum_size_follows_the_bounds_and_goes_below_the_minimum_only_when_preferred() {
        // (healthy, min, max, q preferred, q required)
        let cases = [
            (4, 2, 3, 3, 3),
            (3, 2, 3, 3, 3),
            (2, 2, 3, 2, 2),
            (1, 2, 3, 1, 2),
            (0, 2, 3, 0, 2),
            (2, 0, 0, 0, 0),
            (2, 1, 2, 2, 2),
            (1, 1, 2, 1, 1),
            (0, 1, 2, 0, 1),
            (0, 1, 1, 0, 1),
            (2, 0, 1, 1, 1),
            // A minimum of 0 lets even `required` go asynchronous.
            (0, 0, 1, 0, 0),
            // A max below min is read as min.
            (3, 2, 1, 2, 2),
            (1, 2, 1, 1, 2),
            (3, -1, -1, 0, 0),
        ];
        for (healthy, min, max, preferred, required) in cases {
            for (durability, expected) in [
                (DataDurability::Preferred, preferred),
                (DataDurability::Required, required),
            ] {
                assert_eq!(
                    quorum_size(healthy, bounds(min, max, durability)),
                    expected,
                    "healthy {healthy} min {min} max {max} {durability:?}"
                );
            }
        }
    }

    #[test]
    fn required_durability_lists_absent_members_rather_than_go_below_the_minimum() {
        let now = Instant::now();
        let preferred = DataDurability::Preferred;
        let required = DataDurability::Required;
        let streaming = |name| sender(name, "streaming", Some(100 * MB), "quorum");
        let catching_up = sender(B, "catchup", Some(MB), "async");
        // (durability, min, max, what the primary sees, the setting)
        let cases: Vec<(DataDurability, i32, i32, Vec<WalSender>, String)> = vec![
            // Enough standbys: both modes agree.
            (
                required,
                1,
                1,
                vec![streaming(A), streaming(B)],
                any(1, &[A, B]),
            ),
            (required, 1, 1, vec![streaming(A)], any(1, &[A])),
            (required, 1, 2, vec![streaming(A)], any(1, &[A])),
            // Fewer than the minimum: `preferred` lowers q, `required` waits for anyone.
            (preferred, 1, 1, vec![], String::new()),
            (required, 1, 1, vec![], any(1, &[A, B])),
            (preferred, 1, 1, vec![catching_up.clone()], String::new()),
            (required, 1, 1, vec![catching_up], any(1, &[A, B])),
            (preferred, 2, 2, vec![streaming(A)], any(1, &[A])),
            (required, 2, 2, vec![streaming(A)], any(2, &[A, B])),
            (required, 2, 2, vec![], any(2, &[A, B])),
            // No minimum: nothing to hold.
            (required, 0, 1, vec![], String::new()),
        ];
        for (durability, min, max, senders, expected) in cases {
            let mut quorum = Quorum::default();
            let decision = quorum.decide(
                &members(),
                &seen(100 * MB, &senders),
                bounds(min, max, durability),
                now,
            );
            assert_eq!(
                decision.synchronous_standby_names, expected,
                "{durability:?} min {min} max {max} {senders:?}"
            );
        }
    }

    #[test]
    fn required_durability_keeps_waiting_when_the_only_standby_dies_and_comes_back() {
        let now = Instant::now();
        let only: BTreeSet<String> = [A.to_string()].into();
        let strict = bounds(1, 1, DataDurability::Required);
        let mut quorum = Quorum::default();
        let a = sender(A, "streaming", Some(MB), "quorum");
        let decision = quorum.decide(&only, &seen(MB, std::slice::from_ref(&a)), strict, now);
        assert_eq!(decision.synchronous_standby_names, any(1, &[A]));
        // Gone: still listed, so commits wait for it; it no longer counts.
        let decision = quorum.decide(&only, &seen(2 * MB, &[]), strict, now);
        assert_eq!(decision.synchronous_standby_names, any(1, &[A]));
        assert!(decision.counted.is_empty());
        // Back and caught up: counted again, the same setting.
        let decision = quorum.decide(&only, &seen(2 * MB, &[a]), strict, now);
        assert_eq!(decision.synchronous_standby_names, any(1, &[A]));
        assert_eq!(decision.counted, [A]);
    }

    #[test]
    fn required_durability_holds_its_minimum_through_the_two_step_raise() {
        let now = Instant::now();
        let a = sender(A, "streaming", Some(MB), "quorum");
        // B caught up but its walsender has not read a list naming it yet.
        let b = sender(B, "streaming", Some(MB), "async");
        for (durability, expected) in [
            (DataDurability::Preferred, any(1, &[A, B])),
            (DataDurability::Required, any(2, &[A, B])),
        ] {
            let mut quorum = Quorum::default();
            let decision = quorum.decide(
                &members(),
                &seen(MB, &[a.clone(), b.clone()]),
                bounds(2, 2, durability),
                now,
            );
            assert_eq!(
                decision.synchronous_standby_names, expected,
                "{durability:?}"
            );
        }
    }

    #[test]
    fn standby_names_are_quoted_sorted_and_empty_for_asynchronous() {
        let names = [B.to_string(), A.to_string(), "we\"ird".to_string()];
        assert_eq!(
            standby_names(2, &names),
            format!("ANY 2 (\"{A}\", \"{B}\", \"we\"\"ird\")")
        );
        assert_eq!(standby_names(0, &names), "");
        assert_eq!(standby_names(1, &[]), "");
    }

    #[test]
    fn a_nudge_is_written_only_for_waiting_commits_shortly_after_a_change() {
        // (waiting commits, since the change, nudge)
        let cases = [
            (0, Duration::ZERO, false),
            (1, Duration::ZERO, true),
            (3, NUDGE_WINDOW - Duration::from_millis(1), true),
            (3, NUDGE_WINDOW, false),
            (0, Duration::from_secs(60), false),
        ];
        for (waiting, since, expected) in cases {
            assert_eq!(
                Quorum::nudge(waiting, since),
                expected,
                "{waiting} {since:?}"
            );
        }
    }
}
