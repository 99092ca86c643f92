//! The choice rule over every cluster of 2 to 5 instances whose primary is lost: every
//! `ANY q (S)` the primary may have reported, every set of answering standbys, and
//! every ordering of their positions (three levels each, with ties), checked against
//! the model of what a synchronous quorum acknowledges rather than against the rule.

use std::cmp::Reverse;

use super::tests::{instance, lost_primary, now, pod, standby};
use super::*;

/// WAL positions a standby may hold; the primary's last report is beyond all.
const LEVELS: [u64; 3] = [100, 200, 300];

/// One cluster: for each standby (pod 1, 2, …) whether it is in S, whether it answers,
/// and its position.
struct Case {
    quorum: usize,
    standbys: Vec<(bool, bool, u64)>,
}

impl Case {
    fn cluster(&self) -> Cluster {
        let standbys = self
            .standbys
            .iter()
            .enumerate()
            .map(|(index, &(in_set, answers, lsn))| {
                instance(index + 1, in_set, answers.then(|| standby(lsn)))
            })
            .collect();
        lost_primary(self.quorum, standbys)
    }

    /// Model: a commit is acknowledged once `q` members of S flushed it, so the
    /// furthest acknowledged position is the q-th highest position in S, counting
    /// silent members at `silent` (unknown to the decision: anything is possible).
    fn furthest_acknowledged(&self, silent: Option<u64>) -> u64 {
        let mut positions: Vec<u64> = self
            .standbys
            .iter()
            .filter(|(in_set, ..)| *in_set)
            .map(|&(_, answers, lsn)| if answers { lsn } else { silent.unwrap_or(lsn) })
            .collect();
        positions.sort_unstable_by(|a, b| b.cmp(a));
        positions[self.quorum - 1]
    }

    fn synchronous(&self) -> bool {
        self.quorum > 0 && self.standbys.iter().any(|(in_set, ..)| *in_set)
    }

    /// The answering standbys a promotion may choose from, with their ordinals.
    fn eligible(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        let synchronous = self.synchronous();
        self.standbys
            .iter()
            .enumerate()
            .filter(move |(_, (in_set, answers, _))| *answers && (*in_set || !synchronous))
            .map(|(index, &(.., lsn))| (index + 1, lsn))
    }
}

/// Every case of `standbys` standbys.
fn cases(standbys: usize) -> Vec<Case> {
    let mut all = Vec::new();
    let positions = LEVELS.len().pow(u32::try_from(standbys).unwrap_or(0));
    for quorum in 0..=standbys {
        for in_set in 0..1u32 << standbys {
            for answering in 0..1u32 << standbys {
                for mut level in 0..positions {
                    let standbys = (0..standbys)
                        .map(|bit| {
                            let lsn = LEVELS[level % LEVELS.len()];
                            level /= LEVELS.len();
                            (in_set >> bit & 1 == 1, answering >> bit & 1 == 1, lsn)
                        })
                        .collect();
                    all.push(Case { quorum, standbys });
                }
            }
        }
    }
    all
}

#[test]
fn every_promotion_holds_every_acknowledged_commit_and_it_blocks_only_when_none_could() {
    let (mut checked, mut promotions, mut blocks) = (0, 0, 0);
    for replicas in 2..=5 {
        for case in cases(replicas - 1) {
            checked += 1;
            let members = case.standbys.iter().filter(|(in_set, ..)| *in_set).count();
            let decision = decide(&case.cluster(), now());
            // Most advanced eligible standby, lowest ordinal on a tie.
            let best = case
                .eligible()
                .max_by_key(|&(ordinal, lsn)| (lsn, Reverse(ordinal)));
            let context = format!(
                "{} ANY {} {:?}: {decision:?}",
                replicas, case.quorum, case.standbys
            );
            match decision {
                FailoverDecision::Promote(promotion) => {
                    promotions += 1;
                    let (ordinal, lsn) = best.unwrap_or_else(|| panic!("{context}"));
                    assert_eq!(
                        (promotion.pod.as_str(), promotion.lsn),
                        (pod(ordinal).as_str(), lsn),
                        "{context}"
                    );
                    if case.synchronous() {
                        assert!(case.quorum <= members, "{context}");
                        assert!(lsn >= case.furthest_acknowledged(None), "{context}");
                        assert_eq!(promotion.lost_wal_bytes, None, "{context}");
                    } else {
                        assert_eq!(promotion.lost_wal_bytes, Some(1000 - lsn), "{context}");
                    }
                }
                FailoverDecision::Blocked(reason) => {
                    blocks += 1;
                    if !case.synchronous() {
                        assert!(best.is_none(), "{context}");
                        assert_eq!(reason, Blocked::NoStandby, "{context}");
                    } else if case.quorum > members {
                        // A list PostgreSQL can never satisfy; the quorum keeper never
                        // writes one.
                        assert!(
                            matches!(reason, Blocked::QuorumBeyondSet { .. }),
                            "{context}"
                        );
                    } else {
                        // The silent members of S may hold more than anyone answering:
                        // then no answering standby holds every acknowledged commit.
                        let beyond = LEVELS[LEVELS.len() - 1] + 1;
                        let acknowledged = case.furthest_acknowledged(Some(beyond));
                        assert!(
                            case.standbys
                                .iter()
                                .all(|&(_, answers, lsn)| !answers || lsn < acknowledged),
                            "{context}"
                        );
                    }
                }
                other => panic!("{context}: {other:?}"),
            }
        }
    }
    // 2 × 2 × 2 × 3 + 3 × 4 × 4 × 9 + 4 × 8 × 8 × 27 + 5 × 16 × 16 × 81
    assert_eq!(checked, 111_048);
    eprintln!("{checked} clusters: {promotions} promotions, {blocks} blocked");
}
