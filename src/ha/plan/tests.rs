use super::*;

fn member(cluster_ordinal: i32) -> Member {
    Member {
        pod: format!("pg-{cluster_ordinal}"),
        ordinal: cluster_ordinal,
        present: true,
        updated: true,
        on_cordoned_node: false,
        healthy: true,
        in_sync_set: false,
    }
}

fn cluster(count: i32, primary: i32) -> Input {
    Input {
        replicas: count,
        live_replicas: Some(count),
        current_primary: Some(format!("pg-{primary}")),
        target_primary: Some(format!("pg-{primary}")),
        members: (0..count).map(member).collect(),
        template_applied: true,
    }
}

fn outdated(mut input: Input) -> Input {
    for m in &mut input.members {
        m.updated = false;
    }
    input
}

/// Carries a step out as the world would: a restarted pod comes back on the new
/// template and streams; a switchover moves the primary.
fn carry_out(input: &mut Input, step: &Step) {
    match step {
        Step::Restart(pod) => {
            let m = input.members.iter_mut().find(|m| &m.pod == pod).unwrap();
            m.updated = true;
        }
        Step::Switchover { to, .. } => {
            input.current_primary = Some(to.clone());
            input.target_primary = Some(to.clone());
        }
        Step::Settled | Step::Wait(_) => {}
    }
}

#[test]
fn a_settled_cluster_needs_no_attention_and_asks_nothing() {
    let input = cluster(3, 0);
    assert!(!needs_attention(&input));
    // Even with nobody reported healthy: the instances are not asked.
    let mut unknown = input.clone();
    for m in &mut unknown.members {
        m.healthy = false;
    }
    let plan = plan(&unknown);
    assert_eq!(plan.step, Step::Settled);
    assert_eq!(plan.replicas, 3);
    assert_eq!(plan.updated, vec!["pg-0", "pg-1", "pg-2"]);
}

#[test]
fn a_new_template_rolls_replica_replica_switchover_former_primary() {
    let mut input = outdated(cluster(3, 1));
    input.members[0].in_sync_set = true;
    let mut steps = Vec::new();
    for _ in 0..10 {
        let step = plan(&input).step;
        if step == Step::Settled {
            break;
        }
        carry_out(&mut input, &step);
        steps.push(step);
    }
    assert_eq!(
        steps,
        vec![
            // The asynchronous standby first, then the synchronous one.
            Step::Restart("pg-2".into()),
            Step::Restart("pg-0".into()),
            Step::Switchover {
                to: "pg-0".into(),
                because: Because::RollingUpdate
            },
            Step::Restart("pg-1".into()),
        ]
    );
    assert_eq!(input.current_primary.as_deref(), Some("pg-0"));
}

#[test]
fn a_restarted_standby_that_does_not_stream_yet_holds_the_next_restart() {
    let mut input = outdated(cluster(3, 0));
    input.members[2].updated = true;
    input.members[2].healthy = false;
    assert_eq!(
        plan(&input).step,
        Step::Wait(Waiting::NotStreaming("pg-2".into()))
    );
    input.members[2].present = false;
    assert_eq!(
        plan(&input).step,
        Step::Wait(Waiting::Missing("pg-2".into()))
    );
}

#[test]
fn nothing_is_restarted_before_the_statefulset_takes_the_template() {
    let mut input = outdated(cluster(3, 0));
    input.template_applied = false;
    assert_eq!(plan(&input).step, Step::Wait(Waiting::TemplateNotApplied));
    // A cordoned primary still moves.
    input.members[0].on_cordoned_node = true;
    assert!(matches!(plan(&input).step, Step::Switchover { .. }));
}

#[test]
fn a_single_instance_is_restarted_in_place() {
    let input = outdated(cluster(1, 0));
    assert_eq!(plan(&input).step, Step::Restart("pg-0".into()));
}

#[test]
fn nothing_moves_during_a_failover_or_without_a_primary() {
    let mut input = outdated(cluster(3, 0));
    input.target_primary = Some("pg-1".into());
    assert_eq!(
        plan(&input).step,
        Step::Wait(Waiting::Transition {
            current: "pg-0".into(),
            target: "pg-1".into()
        })
    );
    input.current_primary = None;
    assert_eq!(plan(&input).step, Step::Wait(Waiting::NoPrimary));
}

#[test]
fn a_cordoned_primary_is_switched_to_a_standby_on_another_node() {
    let mut input = cluster(3, 0);
    input.members[0].on_cordoned_node = true;
    input.members[1].on_cordoned_node = true;
    assert_eq!(
        plan(&input).step,
        Step::Switchover {
            to: "pg-2".into(),
            because: Because::NodeCordoned
        }
    );
    input.members[2].healthy = false;
    assert_eq!(
        plan(&input).step,
        Step::Wait(Waiting::NoStandby(Because::NodeCordoned))
    );
}

#[test]
fn a_cordoned_standby_needs_nothing_from_the_operator() {
    let mut input = cluster(3, 0);
    input.members[1].on_cordoned_node = true;
    assert!(!needs_attention(&input));
    assert_eq!(plan(&input).step, Step::Settled);
}

#[test]
fn a_scale_down_that_removes_the_primary_keeps_it_until_it_has_moved() {
    // 5 → 2 with the primary on ordinal 3.
    let mut input = cluster(5, 3);
    input.replicas = 2;
    input.members[1].in_sync_set = true;
    input.members[4].in_sync_set = true;
    let first = plan(&input);
    assert_eq!(first.replicas, 5);
    assert_eq!(
        first.step,
        Step::Switchover {
            to: "pg-1".into(),
            because: Because::ScaleDown
        }
    );
    carry_out(&mut input, &first.step);
    let second = plan(&input);
    assert_eq!(second.replicas, 2);
    assert_eq!(second.step, Step::Settled);
}

#[test]
fn a_scale_down_keeping_the_primary_applies_at_once() {
    let mut input = cluster(5, 0);
    input.replicas = 2;
    let plan = plan(&input);
    assert_eq!(plan.replicas, 2);
    assert_eq!(plan.step, Step::Settled);
    assert_eq!(plan.updated, vec!["pg-0", "pg-1"]);
}

#[test]
fn a_scale_down_to_one_with_the_primary_removed_waits_for_ordinal_zero() {
    let mut input = cluster(2, 1);
    input.replicas = 1;
    input.members[0].healthy = false;
    let plan = plan(&input);
    assert_eq!(plan.replicas, 2);
    assert_eq!(
        plan.step,
        Step::Wait(Waiting::NoStandby(Because::ScaleDown))
    );
}

#[test]
fn removed_ordinals_are_not_restarted_during_a_rollout() {
    let mut input = outdated(cluster(4, 0));
    input.replicas = 2;
    let mut restarted = Vec::new();
    for _ in 0..10 {
        let step = plan(&input).step;
        if step == Step::Settled {
            break;
        }
        carry_out(&mut input, &step);
        restarted.push(step);
    }
    assert!(!restarted.contains(&Step::Restart("pg-2".into())));
    assert!(!restarted.contains(&Step::Restart("pg-3".into())));
}

/// Every member state for clusters of 1–3 pods (present, updated, cordoned, healthy,
/// synchronous), every primary, target, scale and live scale: the invariants hold.
#[test]
fn every_small_cluster_obeys_the_rules() {
    let mut checked = 0u64;
    for count in 1..=3i32 {
        let states = 1u32 << (5 * count);
        for bits in 0..states {
            let members: Vec<Member> = (0..count)
                .map(|i| {
                    let b = bits >> (5 * i);
                    Member {
                        pod: format!("pg-{i}"),
                        ordinal: i,
                        present: b & 1 != 0,
                        updated: b & 2 != 0,
                        on_cordoned_node: b & 4 != 0,
                        healthy: b & 8 != 0,
                        in_sync_set: b & 16 != 0,
                    }
                })
                .collect();
            for primary in 0..count {
                for target in [None, Some(primary), Some((primary + 1) % count)] {
                    for replicas in 1..=count + 1 {
                        for template_applied in [true, false] {
                            let input = Input {
                                replicas,
                                live_replicas: Some(count),
                                current_primary: Some(format!("pg-{primary}")),
                                target_primary: target.map(|t| format!("pg-{t}")),
                                members: members.clone(),
                                template_applied,
                            };
                            check_rules(&input);
                            checked += 1;
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 1_000_000, "{checked}");
}

fn check_rules(input: &Input) {
    let result = plan(input);
    let current = input.current_primary.clone().unwrap();
    let primary = input.members.iter().find(|m| m.pod == current).unwrap();
    let transition = input.target_primary.as_ref().is_some_and(|t| *t != current);
    // The StatefulSet never drops the primary's ordinal, nor goes below the spec.
    assert!(result.replicas >= input.replicas, "{input:?}");
    assert!(result.replicas > primary.ordinal, "{input:?}");
    let kept: Vec<&Member> = input
        .members
        .iter()
        .filter(|m| m.ordinal < result.replicas)
        .collect();
    match &result.step {
        Step::Settled => {
            assert!(!transition || !needs_attention(input), "{input:?}");
            assert!(!primary.on_cordoned_node, "{input:?}");
            assert!(primary.ordinal < input.replicas, "{input:?}");
            assert!(
                kept.iter().all(|m| !m.present || m.updated),
                "settled with an outdated pod: {input:?}"
            );
        }
        Step::Restart(pod) => {
            assert!(!transition && input.template_applied, "{input:?}");
            let m = kept.iter().find(|m| &m.pod == pod).expect("a kept pod");
            assert!(!m.updated, "{input:?}");
            // Never two down at once: everybody else is there and streaming.
            assert!(kept.iter().all(|m| m.present && m.healthy), "{input:?}");
            // Never the primary while another instance could take over.
            if *pod == current {
                assert_eq!(kept.len(), 1, "{input:?}");
            }
            assert!(!primary.on_cordoned_node && primary.ordinal < input.replicas);
        }
        Step::Switchover { to, because } => {
            assert!(!transition, "{input:?}");
            assert_ne!(*to, current);
            let m = input.members.iter().find(|m| &m.pod == to).unwrap();
            assert!(m.present && m.healthy && !m.on_cordoned_node, "{input:?}");
            assert!(m.ordinal < input.replicas, "{input:?}");
            match because {
                Because::RollingUpdate => {
                    assert!(m.updated && !primary.updated, "{input:?}");
                    assert!(input.template_applied, "{input:?}");
                    assert!(kept.iter().all(|m| m.present && m.healthy), "{input:?}");
                }
                Because::NodeCordoned => assert!(primary.on_cordoned_node),
                Because::ScaleDown => assert!(primary.ordinal >= input.replicas),
            }
        }
        Step::Wait(_) => assert!(needs_attention(input), "{input:?}"),
    }
}

#[test]
fn a_primary_restarting_for_settings_hands_over_to_a_restarted_streaming_standby() {
    let report = |pod: &str, value: serde_json::Value| -> InstanceReport {
        let mut base = serde_json::json!({"pod": pod, "running": true, "timeline": 1});
        base.as_object_mut()
            .unwrap()
            .extend(value.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    };
    let primary = |streaming: &[&str], sync: &[&str]| {
        report(
            "pg-0",
            serde_json::json!({"role": "primary", "streamingStandbys": streaming,
                "syncQuorum": 1, "syncStandbys": sync, "restartWanted": true}),
        )
    };
    let standby = |pod: &str, pending: bool| {
        report(
            pod,
            serde_json::json!({"role": "standby", "streamingFrom": "pg-0", "pendingRestart": pending}),
        )
    };
    let (one, two) = (standby("pg-1", false), standby("pg-2", false));
    let both = [&one, &two];
    let target = |p: &InstanceReport, s: &[&InstanceReport]| restart_switchover_target(p, s);
    assert_eq!(
        target(&primary(&["pg-1", "pg-2"], &["pg-2"]), &both).as_deref(),
        Some("pg-2")
    );
    assert_eq!(
        target(&primary(&["pg-2", "pg-1"], &[]), &both).as_deref(),
        Some("pg-1")
    );
    // The synchronous one is not streaming: an asynchronous one that is.
    assert_eq!(
        target(&primary(&["pg-1"], &["pg-2"]), &both).as_deref(),
        Some("pg-1")
    );
    assert_eq!(target(&primary(&[], &["pg-2"]), &both), None);
    // A standby still waiting for its own restart is not handed the primary.
    let waiting = standby("pg-2", true);
    assert_eq!(
        target(&primary(&["pg-1", "pg-2"], &["pg-2"]), &[&one, &waiting]).as_deref(),
        Some("pg-1")
    );
    assert_eq!(
        target(&primary(&["pg-2"], &["pg-2"]), &[&one, &waiting]),
        None
    );
    // Listed by the primary but silent itself.
    assert_eq!(target(&primary(&["pg-1"], &[]), &[&two]), None);
    // A standby that has not taken the new settings yet (it would restart for them as
    // it is handed the primary) is not chosen either.
    let mut behind = standby("pg-2", false);
    behind.config_digest = Some("old".to_string());
    assert_eq!(
        target(&primary(&["pg-1", "pg-2"], &["pg-2"]), &[&one, &behind]).as_deref(),
        Some("pg-1")
    );
    assert_eq!(target(&primary(&["pg-2"], &["pg-2"]), &[&behind]), None);
}
