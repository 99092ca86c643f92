use std::time::{Duration, SystemTime};

use super::*;
use crate::api::DataDurability;
use crate::instance::quorum::Bounds;

/// The clock of every decision here.
pub(super) fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

pub(super) fn pod(ordinal: usize) -> String {
    format!("postgres-x-{ordinal}")
}

/// A standby streaming from pod 0 that holds WAL up to `lsn`.
pub(super) fn standby(lsn: u64) -> Report {
    Report {
        role: Role::Standby,
        running: true,
        timeline: 1,
        received_lsn: Some(lsn),
        // Replay trails what was received.
        replayed_lsn: Some(lsn / 2),
        streaming_from: Some(pod(0)),
    }
}

fn primary() -> Report {
    Report {
        role: Role::Primary,
        streaming_from: None,
        ..standby(1000)
    }
}

pub(super) fn instance(ordinal: usize, in_sync_set: bool, report: Option<Report>) -> Instance {
    Instance {
        pod: pod(ordinal),
        in_sync_set,
        report,
    }
}

/// Pod 0, the current primary, silent for long past every grace, and the standbys
/// given; `preferred` durability with no minimum, so the report alone decides.
pub(super) fn lost_primary(sync_quorum: usize, standbys: Vec<Instance>) -> Cluster {
    let mut instances = vec![instance(0, false, None)];
    instances.extend(standbys);
    Cluster {
        instances,
        bounds: Bounds {
            min: 0,
            max: 0,
            durability: DataDurability::Preferred,
        },
        sync_quorum,
        primary_lsn: Some(1000),
        current_primary: Some(pod(0)),
        target_primary: Some(pod(0)),
        unhealthy_since: Some(now() - Duration::from_secs(60)),
    }
}

fn promoted(decision: &FailoverDecision) -> Option<&str> {
    match decision {
        FailoverDecision::Promote(promotion) => Some(&promotion.pod),
        _ => None,
    }
}

/// Under `ANY 1` of pods 1 and 2, pod 1 at 900 and pod 2 reporting `second`: the pod
/// promoted.
fn chosen_beside_one_at_900(second: Report) -> Option<String> {
    let cluster = lost_primary(
        1,
        vec![
            instance(1, true, Some(standby(900))),
            instance(2, true, Some(second)),
        ],
    );
    promoted(&decide(&cluster, now())).map(str::to_string)
}

#[test]
fn a_healthy_primary_is_never_replaced_however_far_behind_it_looks() {
    let mut cluster = lost_primary(0, vec![instance(1, false, Some(standby(5000)))]);
    cluster.instances[0].report = Some(Report {
        received_lsn: Some(10),
        ..primary()
    });
    assert_eq!(decide(&cluster, now()), FailoverDecision::Nothing);
}

#[test]
fn a_cluster_without_a_primary_yet_is_not_failed_over() {
    let mut cluster = lost_primary(0, vec![instance(1, false, Some(standby(900)))]);
    cluster.current_primary = None;
    cluster.target_primary = None;
    assert_eq!(decide(&cluster, now()), FailoverDecision::Nothing);
}

#[test]
fn a_silent_primary_gets_the_short_grace_and_a_restarting_one_the_longer() {
    let down = Report {
        running: false,
        ..primary()
    };
    let demoted = Report {
        role: Role::Standby,
        ..primary()
    };
    let second = Duration::from_secs(1);
    // (what the primary answers, unhealthy for, the deadline when still waiting)
    let cases = [
        (None, None, Some(UNREACHABLE_GRACE)),
        (None, Some(Duration::ZERO), Some(UNREACHABLE_GRACE)),
        (
            None,
            Some(UNREACHABLE_GRACE - second / 10),
            Some(UNREACHABLE_GRACE),
        ),
        (None, Some(UNREACHABLE_GRACE), None),
        (Some(down.clone()), None, Some(RESTART_GRACE)),
        (
            Some(down.clone()),
            Some(RESTART_GRACE - second),
            Some(RESTART_GRACE),
        ),
        (Some(down), Some(RESTART_GRACE), None),
        (Some(demoted.clone()), Some(second), Some(RESTART_GRACE)),
        (Some(demoted), Some(RESTART_GRACE + second), None),
    ];
    for (answer, elapsed, deadline) in cases {
        let mut cluster = lost_primary(1, vec![instance(1, true, Some(standby(900)))]);
        cluster.instances[0].report = answer.clone();
        cluster.unhealthy_since = elapsed.map(|elapsed| now() - elapsed);
        let since = now() - elapsed.unwrap_or_default();
        let expected = match deadline {
            Some(grace) => FailoverDecision::Wait {
                unhealthy_since: since,
                until: since + grace,
            },
            None => FailoverDecision::Promote(Promotion {
                pod: pod(1),
                lsn: 900,
                primary_lsn: Some(1000),
                lost_wal_bytes: None,
            }),
        };
        assert_eq!(decide(&cluster, now()), expected, "{answer:?} {elapsed:?}");
    }
}

#[test]
fn a_recorded_target_is_finished_as_recorded_and_never_chosen_again() {
    let mut cluster = lost_primary(
        1,
        vec![
            instance(1, true, Some(standby(900))),
            instance(2, true, Some(standby(800))),
        ],
    );
    // A controller chose pod 1 and stopped before it promoted: the next one (or the
    // same after a restart) keeps pod 1, even once pod 2 looks further ahead.
    cluster.target_primary = Some(pod(1));
    cluster.instances[2].report = Some(standby(950));
    let waiting = FailoverDecision::Continue {
        target: pod(1),
        promoted: false,
    };
    for _ in 0..3 {
        assert_eq!(decide(&cluster, now()), waiting);
    }
    // Nor does the old primary coming back undo it: it has to follow pod 1.
    cluster.instances[0].report = Some(primary());
    assert_eq!(decide(&cluster, now()), waiting);
    // Pod 1 runs as the primary: the caller records it as current.
    cluster.instances[1].report = Some(Report {
        received_lsn: Some(960),
        ..primary()
    });
    assert_eq!(
        decide(&cluster, now()),
        FailoverDecision::Continue {
            target: pod(1),
            promoted: true,
        }
    );
    // Recorded as current: nothing left to do.
    cluster.current_primary = Some(pod(1));
    assert_eq!(decide(&cluster, now()), FailoverDecision::Nothing);
}

#[test]
fn a_lagging_standby_is_not_chosen_over_an_up_to_date_one() {
    // (q, in the synchronous set, the chosen one); pod 1 lags, pod 2 is up to date.
    let cases = [
        (1, [true, true], 2),
        (0, [false, false], 2),
        (0, [true, false], 2),
    ];
    for (quorum, in_set, expected) in cases {
        let cluster = lost_primary(
            quorum,
            vec![
                instance(1, in_set[0], Some(standby(400))),
                instance(2, in_set[1], Some(standby(990))),
            ],
        );
        let decision = decide(&cluster, now());
        assert_eq!(
            promoted(&decision),
            Some(pod(expected).as_str()),
            "q {quorum} {in_set:?}"
        );
    }
}

#[test]
fn equally_advanced_standbys_go_to_the_lowest_ordinal() {
    let standbys = |order: [usize; 3]| {
        order
            .into_iter()
            .map(|ordinal| instance(ordinal, true, Some(standby(900))))
            .collect()
    };
    for order in [[2, 9, 10], [10, 9, 2], [9, 10, 2]] {
        let decision = decide(&lost_primary(1, standbys(order)), now());
        assert_eq!(promoted(&decision), Some(pod(2).as_str()), "{order:?}");
    }
    // By number, not by name: 9 before 10.
    let decision = decide(&lost_primary(1, standbys([10, 9, 10])), now());
    assert_eq!(promoted(&decision), Some(pod(9).as_str()));
}

#[test]
fn the_blocked_reason_says_which_synchronous_standbys_are_missing() {
    let members = |answering: [bool; 3]| {
        (1..=3)
            .zip(answering)
            .map(|(ordinal, answers)| instance(ordinal, true, answers.then(|| standby(900))))
            .collect()
    };
    let cases = [
        (
            2,
            [true, false, false],
            "2 of the 3 synchronous standbys must answer to be sure the promoted one holds every acknowledged commit; only postgres-x-1 answers",
        ),
        (
            1,
            [false, true, true],
            "3 of the 3 synchronous standbys must answer to be sure the promoted one holds every acknowledged commit; only postgres-x-2 and postgres-x-3 answer",
        ),
        (
            3,
            [false, false, false],
            "1 of the 3 synchronous standbys must answer to be sure the promoted one holds every acknowledged commit; none answers",
        ),
    ];
    for (quorum, answering, message) in cases {
        match decide(&lost_primary(quorum, members(answering)), now()) {
            FailoverDecision::Blocked(reason) => assert_eq!(reason.to_string(), message),
            other => panic!("q {quorum} {answering:?}: {other:?}"),
        }
    }
}

#[test]
fn an_asynchronous_failover_reports_the_wal_the_old_primary_had_beyond_the_new_one() {
    // (the old primary's last position, the best standby's, the bytes lost)
    let cases = [
        (Some(1000), 900, Some(100)),
        (Some(1000), 1000, Some(0)),
        // The report was older than what the standby received since.
        (Some(800), 900, Some(0)),
        (None, 900, None),
    ];
    for (primary_lsn, lsn, lost) in cases {
        let mut cluster = lost_primary(
            0,
            vec![
                instance(1, false, Some(standby(lsn))),
                instance(2, false, Some(standby(lsn - 50))),
            ],
        );
        cluster.primary_lsn = primary_lsn;
        assert_eq!(
            decide(&cluster, now()),
            FailoverDecision::Promote(Promotion {
                pod: pod(1),
                lsn,
                primary_lsn,
                lost_wal_bytes: lost,
            })
        );
    }
}

#[test]
fn a_synchronous_list_without_members_is_asynchronous_as_postgresql_reads_it() {
    let cluster = lost_primary(1, vec![instance(1, false, Some(standby(900)))]);
    let FailoverDecision::Promote(promotion) = decide(&cluster, now()) else {
        panic!("{:?}", decide(&cluster, now()));
    };
    assert_eq!(promotion.lost_wal_bytes, Some(100));
}

#[test]
fn a_standby_without_a_running_server_or_a_position_does_not_answer() {
    let stopped = Report {
        running: false,
        ..standby(990)
    };
    let blank = Report {
        received_lsn: None,
        replayed_lsn: None,
        ..standby(990)
    };
    for silent in [stopped, blank] {
        // ANY 1 of 2: both must answer, so no promotion.
        assert_eq!(chosen_beside_one_at_900(silent.clone()), None, "{silent:?}");
    }
    // Restored from an archive, nothing streamed: the replayed position is on disk.
    let restored = Report {
        received_lsn: None,
        replayed_lsn: Some(950),
        ..standby(0)
    };
    assert_eq!(chosen_beside_one_at_900(restored), Some(pod(2)));
}

#[test]
fn a_standby_already_running_as_primary_blocks_another_promotion() {
    let cluster = lost_primary(
        0,
        vec![
            instance(1, false, Some(standby(900))),
            instance(2, false, Some(primary())),
        ],
    );
    assert_eq!(
        decide(&cluster, now()),
        FailoverDecision::Blocked(Blocked::OtherPrimary { pod: pod(2) })
    );
}

#[test]
fn a_later_timeline_wins_over_a_further_position_on_an_earlier_one() {
    let later = Report {
        timeline: 2,
        ..standby(500)
    };
    assert_eq!(chosen_beside_one_at_900(later), Some(pod(2)));
}

#[test]
fn a_quorum_larger_than_its_set_blocks() {
    let cluster = lost_primary(2, vec![instance(1, true, Some(standby(900)))]);
    assert_eq!(
        decide(&cluster, now()),
        FailoverDecision::Blocked(Blocked::QuorumBeyondSet {
            quorum: 2,
            synchronous: 1
        })
    );
}

#[test]
fn required_durability_holds_a_report_below_its_minimum_to_every_standby() {
    // The primary last reported asynchronous replication, but `required` with a
    // minimum of 1 may have listed both standbys since: both must answer.
    let standbys = |second: Option<Report>| {
        vec![
            instance(1, false, Some(standby(900))),
            instance(2, false, second),
        ]
    };
    let strict = Bounds {
        min: 1,
        max: 1,
        durability: DataDurability::Required,
    };
    let mut cluster = lost_primary(0, standbys(None));
    cluster.bounds = strict;
    assert_eq!(
        decide(&cluster, now()),
        FailoverDecision::Blocked(Blocked::TooFewSynchronousStandbys {
            needed: 2,
            synchronous: 2,
            answering: vec![pod(1)],
        })
    );
    let mut cluster = lost_primary(0, standbys(Some(standby(950))));
    cluster.bounds = strict;
    assert_eq!(
        decide(&cluster, now()),
        FailoverDecision::Promote(Promotion {
            pod: pod(2),
            lsn: 950,
            primary_lsn: Some(1000),
            lost_wal_bytes: None,
        })
    );
}
