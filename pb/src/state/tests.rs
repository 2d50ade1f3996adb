//! Tests of the pure state machine: the seed's scenarios one by one, every state × every event
//! kind against the invariants, and random event sequences (property tests).

use std::collections::BTreeSet;

use chrono::Utc;
use proptest::prelude::*;

use super::*;

fn rec(term: u64, status: TermStatus, elector: &str, leader: Option<&str>) -> TermRecord {
    TermRecord {
        schema: 1,
        term,
        status,
        elector: Some(elector.to_string()),
        leader: leader.map(str::to_string),
        updated_at: Utc::now(),
    }
}

fn view(members: &[&str], term: Option<(TermRecord, i32)>) -> Event {
    Event::View(GroupView { members: members.iter().map(|m| m.to_string()).collect(), term })
}

fn written(record: TermRecord, version: i32) -> Event {
    Event::TermWritten { ok: true, record, version: Some(version), current: None }
}

fn reply(term: u64, from: &str, t: u64, i: u64) -> Event {
    Event::PrepareReply { term, from: from.into(), result: Ok(EntryId::new(t, i)) }
}

fn has(acts: &[Action], pred: impl Fn(&Action) -> bool) -> bool {
    acts.iter().any(pred)
}

/// Member `a` of {a, b, c} elects itself and leads term 1, functional.
fn leader_a() -> PBMember {
    let mut m = PBMember::new("a", 2, 0);
    m.handle(view(&["a", "b", "c"], None));
    m.handle(Event::LockAcquired);
    m.handle(written(rec(1, TermStatus::Electing, "a", None), 0));
    m.handle(reply(1, "a", 0, 0));
    m.handle(reply(1, "b", 0, 0));
    m.handle(written(rec(1, TermStatus::Leading, "a", Some("a")), 1));
    m.handle(Event::QuorumChanged { term: 1, functional: 2 });
    assert_eq!(m.state(), MemberState::LeaderFunctional);
    m
}

#[test]
fn lifecycle_no_leader_wait_for_quorum_elect_lead() {
    let mut m = PBMember::new("a", 2, 0);
    assert_eq!(m.state(), MemberState::FollowerWaitToJoinGroup);

    // {1: no leader}: become elector, queue for the lock.
    let acts = m.handle(view(&["a"], None));
    assert_eq!(m.state(), MemberState::EcAcquireLock);
    assert_eq!(acts, vec![Action::AcquireLock]);

    // Lock held: advance the term with a version-checked write, status electing.
    let acts = m.handle(Event::LockAcquired);
    assert_eq!(
        acts,
        vec![Action::WriteTerm {
            precondition: TermPrecondition::Version(None),
            term: 1,
            status: TermStatus::Electing,
            leader: None
        }]
    );

    // {2: wait for quorum}: alone, quorum 2.
    let acts = m.handle(written(rec(1, TermStatus::Electing, "a", None), 0));
    assert_eq!(m.state(), MemberState::EcWaitingForQuorum);
    assert!(acts.is_empty(), "{acts:?}");
    assert_eq!(m.term(), 1);

    // {3: elect leader}: b registers; the election message goes to both.
    let acts = m.handle(view(&["a", "b"], Some((rec(1, TermStatus::Electing, "a", None), 0))));
    assert_eq!(m.state(), MemberState::EcElectionInProgress);
    assert!(has(&acts, |a| matches!(a, Action::SendPrepare { term: 1, to } if to.len() == 2)), "{acts:?}");

    m.handle(reply(1, "a", 0, 0));
    assert_eq!(m.state(), MemberState::EcElectionInProgress, "one answer is not a quorum");
    let acts = m.handle(reply(1, "b", 0, 0));
    assert_eq!(
        acts,
        vec![Action::WriteTerm {
            precondition: TermPrecondition::Version(Some(0)),
            term: 1,
            status: TermStatus::Leading,
            leader: Some("a".into())
        }],
        "a tie goes to the elector, which leads without a hand-over"
    );

    // {4: leader in charge}.
    let acts = m.handle(written(rec(1, TermStatus::Leading, "a", Some("a")), 1));
    assert_eq!(m.state(), MemberState::LeaderWaitingForQuorum);
    assert_eq!(acts, vec![Action::StartLeading { term: 1 }, Action::OnBecomeLeader { term: 1 }]);
    assert!(!m.acking());
    let acts = m.handle(Event::QuorumChanged { term: 1, functional: 2 });
    assert_eq!(m.state(), MemberState::LeaderFunctional);
    assert_eq!(acts, vec![Action::SetAcking(true)]);
}

#[test]
fn the_elector_hands_over_to_the_most_complete_journal() {
    let mut m = PBMember::new("a", 2, 3);
    m.handle(view(&["a", "b", "c"], Some((rec(3, TermStatus::Leading, "x", Some("x")), 7))));
    assert_eq!(m.state(), MemberState::EcAcquireLock, "the recorded leader x is not registered");
    let acts = m.handle(Event::LockAcquired);
    assert!(has(&acts, |a| matches!(
        a,
        Action::WriteTerm { term: 4, precondition: TermPrecondition::Version(Some(7)), .. }
    )));
    m.handle(written(rec(4, TermStatus::Electing, "a", None), 8));
    m.handle(reply(4, "a", 3, 10));
    let acts = m.handle(reply(4, "b", 3, 12));
    assert!(has(
        &acts,
        |a| matches!(a, Action::WriteTerm { status: TermStatus::Elected, leader: Some(l), .. } if l == "b")
    ));
    let acts = m.handle(written(rec(4, TermStatus::Elected, "a", Some("b")), 9));
    assert_eq!(m.state(), MemberState::FollowerWaitToJoinGroup);
    assert_eq!(
        acts,
        vec![
            Action::ReleaseLock,
            Action::SendBecomeLeader { term: 4, to: "b".into(), version: Some(9) },
            Action::StartTimer(Timer::LeaderAppear { term: 4 })
        ]
    );
    assert_eq!(m.lock(), LockState::Idle);
}

#[test]
fn become_leader_takes_the_lock_then_confirms_the_term() {
    let mut b = PBMember::new("b", 2, 3);
    b.handle(view(&["a", "b"], Some((rec(4, TermStatus::Electing, "a", None), 8))));
    assert_eq!(b.state(), MemberState::FollowerWaitToJoinGroup, "a live elector is electing");
    b.handle(Event::ElectionMessage { term: 4 });
    assert_eq!(b.term(), 4);
    let acts = b.handle(Event::BecomeLeader { term: 4, version: None, elector: "a".into() });
    assert_eq!(b.state(), MemberState::LeaderWaitingForQuorum);
    assert_eq!(acts, vec![Action::AcquireLock]);
    let acts = b.handle(Event::LockAcquired);
    assert_eq!(
        acts,
        vec![Action::WriteTerm {
            precondition: TermPrecondition::ElectedFor { term: 4 },
            term: 4,
            status: TermStatus::Leading,
            leader: Some("b".into())
        }]
    );
    let acts = b.handle(written(rec(4, TermStatus::Leading, "a", Some("b")), 10));
    assert!(has(&acts, |a| *a == Action::StartLeading { term: 4 }));
    // A stale request to lead an older term is ignored.
    let mut c = PBMember::new("c", 2, 5);
    assert!(c.handle(Event::BecomeLeader { term: 4, version: None, elector: "a".into() }).is_empty());
    assert_eq!(c.state(), MemberState::FollowerWaitToJoinGroup);
}

#[test]
fn a_leader_that_does_not_appear_is_replaced_with_a_new_term() {
    let mut c = PBMember::new("c", 2, 4);
    let elected = (rec(4, TermStatus::Elected, "a", Some("b")), 9);
    let acts = c.handle(view(&["a", "b", "c"], Some(elected.clone())));
    assert_eq!(acts, vec![Action::StartTimer(Timer::LeaderAppear { term: 4 })]);
    assert_eq!(c.state(), MemberState::FollowerWaitToJoinGroup);
    let acts = c.handle(Event::Timer(Timer::LeaderAppear { term: 4 }));
    assert_eq!(c.state(), MemberState::EcAcquireLock);
    assert_eq!(acts, vec![Action::AcquireLock]);
    let acts = c.handle(Event::LockAcquired);
    assert!(has(&acts, |a| matches!(a, Action::WriteTerm { term: 5, status: TermStatus::Electing, .. })), "{acts:?}");
    // A timer for a term that has moved on does nothing.
    let mut d = PBMember::new("d", 2, 4);
    d.handle(view(&["a", "b", "d"], Some(elected)));
    d.handle(view(&["a", "b", "d"], Some((rec(4, TermStatus::Leading, "a", Some("b")), 10))));
    assert!(d.handle(Event::Timer(Timer::LeaderAppear { term: 4 })).is_empty());
    assert_eq!(d.state(), MemberState::FollowerWaitToJoinGroup);
}

#[test]
fn follower_joins_syncs_and_goes_back_to_wait_on_a_new_term() {
    let mut f = PBMember::new("b", 2, 1);
    f.handle(view(&["a", "b"], Some((rec(1, TermStatus::Leading, "a", Some("a")), 1))));
    assert_eq!(f.state(), MemberState::FollowerWaitToJoinGroup);
    f.handle(Event::GroupInfo { term: 1, leader: "a".into() });
    assert_eq!(f.state(), MemberState::FollowerSyncing);
    let acts = f.handle(Event::Synced { term: 1 });
    assert_eq!(f.state(), MemberState::FollowerFunctional);
    assert_eq!(acts, vec![Action::OnBecomeFollower { term: 1, leader: Some("a".into()) }]);
    // The seed: FOLLOWER_FUNCTIONAL + election message for a new term → WAIT_TO_JOIN.
    f.handle(Event::ElectionMessage { term: 2 });
    assert_eq!(f.state(), MemberState::FollowerWaitToJoinGroup);
    assert_eq!(f.term(), 2);
    assert_eq!(f.leader(), None);
    // Old-term group info is ignored.
    f.handle(Event::GroupInfo { term: 1, leader: "a".into() });
    assert_eq!(f.state(), MemberState::FollowerWaitToJoinGroup);
}

#[test]
fn a_queued_elector_withdraws_when_a_leader_appears() {
    let mut m = PBMember::new("c", 2, 1);
    m.handle(view(&["a", "c"], None));
    assert_eq!(m.state(), MemberState::EcAcquireLock);
    let acts = m.handle(Event::GroupInfo { term: 1, leader: "a".into() });
    assert_eq!(acts, vec![Action::ReleaseLock]);
    assert_eq!(m.state(), MemberState::FollowerSyncing);
    // And if it got the lock while a leader is alive, it releases it without an election.
    let mut n = PBMember::new("c", 2, 1);
    n.handle(view(&["c"], None));
    n.handle(view(&["a", "c"], Some((rec(1, TermStatus::Electing, "a", None), 0))));
    assert_eq!(n.state(), MemberState::EcAcquireLock, "still queued behind a live elector");
    n.handle(view(&["a", "c"], Some((rec(1, TermStatus::Leading, "a", Some("a")), 1))));
    assert_eq!(n.state(), MemberState::FollowerWaitToJoinGroup);
    assert_eq!(n.lock(), LockState::Idle);
}

#[test]
fn leader_moves_between_waiting_for_quorum_and_functional() {
    let mut m = leader_a();
    let acts = m.handle(Event::QuorumChanged { term: 1, functional: 1 });
    assert_eq!(m.state(), MemberState::LeaderWaitingForQuorum);
    assert_eq!(acts, vec![Action::SetAcking(false)]);
    let acts = m.handle(Event::QuorumChanged { term: 1, functional: 3 });
    assert_eq!(m.state(), MemberState::LeaderFunctional);
    assert_eq!(acts, vec![Action::SetAcking(true)]);
    // Counts for another term are ignored.
    assert!(m.handle(Event::QuorumChanged { term: 7, functional: 0 }).is_empty());
}

#[test]
fn a_suspended_leader_stops_acking_at_once_and_an_expired_one_steps_down() {
    let mut m = leader_a();
    assert_eq!(m.handle(Event::SessionSuspended), vec![Action::SetAcking(false)]);
    assert_eq!(m.state(), MemberState::LeaderFunctional, "still leader while the session may be alive");
    assert!(m.handle(Event::QuorumChanged { term: 1, functional: 3 }).is_empty(), "no acking while suspended");
    assert_eq!(m.handle(Event::SessionConnected { new_session: false }), vec![Action::SetAcking(true)]);
    m.handle(Event::SessionSuspended);
    let acts = m.handle(Event::SessionExpired);
    assert_eq!(m.state(), MemberState::FollowerWaitToJoinGroup);
    assert!(has(&acts, |a| *a == Action::StopLeading { term: 1 }));
    assert!(has(&acts, |a| *a == Action::ReleaseLock));
    assert_eq!(m.lock(), LockState::Idle);
}

#[test]
fn a_leader_steps_down_on_a_higher_term() {
    let mut m = leader_a();
    let acts = m.handle(Event::HigherTerm { term: 2 });
    assert_eq!(m.state(), MemberState::FollowerWaitToJoinGroup);
    assert_eq!(
        acts,
        vec![
            Action::StopLeading { term: 1 },
            Action::SetAcking(false),
            Action::ReleaseLock,
            Action::OnBecomeFollower { term: 2, leader: None }
        ]
    );
    // Also when ZooKeeper shows a newer term.
    let mut m = leader_a();
    m.handle(view(&["a", "b", "c"], Some((rec(2, TermStatus::Electing, "b", None), 5))));
    assert_eq!(m.state(), MemberState::FollowerWaitToJoinGroup);
}

#[test]
fn a_record_left_from_a_previous_life_is_not_a_leader() {
    let mut m = PBMember::new("a", 2, 3);
    m.handle(view(&["a", "b"], Some((rec(3, TermStatus::Leading, "a", Some("a")), 4))));
    assert_eq!(m.state(), MemberState::EcAcquireLock);
    let mut m = PBMember::new("a", 2, 3);
    m.handle(view(&["a", "b"], Some((rec(3, TermStatus::Electing, "a", None), 4))));
    assert_eq!(m.state(), MemberState::EcAcquireLock);
}

#[test]
fn election_failures_retry_and_conflicts_yield() {
    // Too few answers: back to waiting, retry on the timer.
    let mut m = PBMember::new("a", 2, 0);
    m.handle(view(&["a", "b"], None));
    m.handle(Event::LockAcquired);
    m.handle(written(rec(1, TermStatus::Electing, "a", None), 0));
    assert_eq!(m.state(), MemberState::EcElectionInProgress);
    m.handle(reply(1, "a", 0, 0));
    let acts = m.handle(Event::PrepareReply { term: 1, from: "b".into(), result: Err(PrepareFailure::Unreachable) });
    assert_eq!(m.state(), MemberState::EcWaitingForQuorum);
    assert_eq!(acts, vec![Action::StartTimer(Timer::ElectionRetry { term: 1 })]);
    let acts = m.handle(Event::Timer(Timer::ElectionRetry { term: 1 }));
    assert!(has(&acts, |a| matches!(a, Action::SendPrepare { term: 1, .. })));
    // Unanswered messages time out.
    m.handle(reply(1, "a", 0, 0));
    m.handle(Event::Timer(Timer::PrepareTimeout { term: 1 }));
    assert_eq!(m.state(), MemberState::EcWaitingForQuorum);

    // A member that promised a higher term ends our election.
    let mut m = PBMember::new("a", 2, 0);
    m.handle(view(&["a", "b"], None));
    m.handle(Event::LockAcquired);
    m.handle(written(rec(1, TermStatus::Electing, "a", None), 0));
    let acts = m.handle(Event::PrepareReply { term: 1, from: "b".into(), result: Err(PrepareFailure::HigherTerm(5)) });
    assert_eq!(m.state(), MemberState::FollowerWaitToJoinGroup);
    assert_eq!(m.term(), 5);
    assert!(has(&acts, |a| *a == Action::ReleaseLock));

    // Losing the version-checked write to a live leader: yield.
    let mut m = PBMember::new("a", 2, 0);
    m.handle(view(&["a", "b"], None));
    m.handle(Event::LockAcquired);
    let acts = m.handle(Event::TermWritten {
        ok: false,
        record: rec(1, TermStatus::Electing, "a", None),
        version: None,
        current: Some((rec(1, TermStatus::Leading, "b", Some("b")), 3)),
    });
    assert_eq!(m.state(), MemberState::FollowerWaitToJoinGroup);
    assert!(has(&acts, |a| *a == Action::ReleaseLock));
    // Losing it to a stale record: retry with the new version.
    let mut m = PBMember::new("a", 2, 0);
    m.handle(view(&["a", "b"], None));
    m.handle(Event::LockAcquired);
    let acts = m.handle(Event::TermWritten {
        ok: false,
        record: rec(1, TermStatus::Electing, "a", None),
        version: None,
        current: Some((rec(1, TermStatus::Leading, "gone", Some("gone")), 3)),
    });
    assert_eq!(
        acts,
        vec![Action::WriteTerm {
            precondition: TermPrecondition::Version(Some(3)),
            term: 2,
            status: TermStatus::Electing,
            leader: None
        }]
    );
}

#[test]
fn a_functional_leader_hands_off_on_a_graceful_stop() {
    let mut a = leader_a();
    let acts = a.handle(Event::Stop);
    assert_eq!(
        acts,
        vec![
            Action::HandOff { term: 2, version: 1 },
            Action::StopLeading { term: 1 },
            Action::SetAcking(false),
            Action::ReleaseLock
        ],
        "hand off first (while still replicating), then stop leading and release the lock"
    );
    // Without a quorum there is nobody to hand off to safely: plain stop.
    let mut w = leader_a();
    w.handle(Event::QuorumChanged { term: 1, functional: 1 });
    assert!(!has(&w.handle(Event::Stop), |a| matches!(a, Action::HandOff { .. })));
}

/// Member `me` of {a, b, c}, FOLLOWER_FUNCTIONAL under leader `a` in term 1.
fn functional_under_a(me: &str) -> PBMember {
    let mut m = PBMember::new(me, 2, 1);
    m.handle(view(&["a", "b", "c"], Some((rec(1, TermStatus::Leading, "a", Some("a")), 1))));
    m.handle(Event::GroupInfo { term: 1, leader: "a".into() });
    m.handle(Event::Synced { term: 1 });
    assert_eq!(m.state(), MemberState::FollowerFunctional);
    m
}

#[test]
fn the_successor_of_a_hand_off_takes_charge_with_one_write() {
    let mut b = functional_under_a("b");
    // a recorded `elected b` for term 2 (version 2) and asks b to lead.
    let acts = b.handle(Event::BecomeLeader { term: 2, version: Some(2), elector: "a".into() });
    assert_eq!(
        acts,
        vec![Action::ClaimLeadership { term: 2, version: 2, elector: "a".into() }],
        "queue for the lock and record `leading` in one write"
    );
    assert_eq!(b.state(), MemberState::LeaderWaitingForQuorum);
    let mut early_lock = b.clone();
    let acts = b.handle(written(rec(2, TermStatus::Leading, "a", Some("b")), 3));
    assert!(acts.is_empty(), "recorded, but the lock is not ours yet: {acts:?}");
    let acts = b.handle(Event::LockAcquired);
    assert_eq!(acts, vec![Action::StartLeading { term: 2 }, Action::OnBecomeLeader { term: 2 }]);
    // The lock may be reported before the write's answer: same outcome.
    assert!(early_lock.handle(Event::LockAcquired).is_empty());
    let acts = early_lock.handle(written(rec(2, TermStatus::Leading, "a", Some("b")), 3));
    assert_eq!(acts, vec![Action::StartLeading { term: 2 }, Action::OnBecomeLeader { term: 2 }]);
    // A claim that lost the race (the record changed) leaves the lock queue again.
    let mut lost = PBMember::new("b", 2, 1);
    lost.handle(Event::BecomeLeader { term: 2, version: Some(2), elector: "a".into() });
    let acts = lost.handle(Event::TermWritten {
        ok: false,
        record: rec(2, TermStatus::Leading, "a", Some("b")),
        version: None,
        current: Some((rec(3, TermStatus::Electing, "c", None), 3)),
    });
    assert!(has(&acts, |a| *a == Action::ReleaseLock), "{acts:?}");
    assert_ne!(lost.role(), Role::Leader, "it does not lead");

    // c, functional under a, waits for b (no election of its own) and then follows it.
    let mut c = functional_under_a("c");
    let acts = c.handle(view(&["b", "c"], Some((rec(2, TermStatus::Elected, "a", Some("b")), 2))));
    assert_eq!(acts, vec![Action::StartTimer(Timer::LeaderAppear { term: 2 })]);
    assert_eq!(c.state(), MemberState::FollowerFunctional);
    c.handle(Event::GroupInfo { term: 2, leader: "b".into() });
    assert_eq!((c.state(), c.term(), c.leader().cloned()), (MemberState::FollowerSyncing, 2, Some("b".into())));
}

#[test]
fn stop_releases_everything_and_then_ignores_events() {
    let mut m = leader_a();
    let acts = m.handle(Event::Stop);
    assert!(has(&acts, |a| *a == Action::StopLeading { term: 1 }));
    assert!(has(&acts, |a| *a == Action::ReleaseLock));
    assert!(m.handle(view(&[], None)).is_empty());
}

// ----- invariants: every state × every event kind, and random sequences -----

/// Scripted paths into each of the eight states.
fn in_each_state() -> Vec<PBMember> {
    let mut out = Vec::new();
    let wait = PBMember::new("a", 2, 1);
    out.push(wait.clone());
    let mut syncing = wait.clone();
    syncing.handle(Event::GroupInfo { term: 1, leader: "b".into() });
    out.push(syncing.clone());
    let mut functional = syncing.clone();
    functional.handle(Event::Synced { term: 1 });
    out.push(functional);
    let mut acquire = PBMember::new("a", 2, 1);
    acquire.handle(view(&["a", "b", "c"], None));
    out.push(acquire.clone());
    let mut waiting = PBMember::new("a", 2, 1);
    waiting.handle(view(&["a"], None));
    waiting.handle(Event::LockAcquired);
    waiting.handle(written(rec(2, TermStatus::Electing, "a", None), 0));
    out.push(waiting);
    let mut electing = acquire.clone();
    electing.handle(Event::LockAcquired);
    electing.handle(written(rec(2, TermStatus::Electing, "a", None), 0));
    out.push(electing);
    let mut lwq = leader_a();
    lwq.handle(Event::QuorumChanged { term: 1, functional: 1 });
    out.push(lwq);
    out.push(leader_a());
    let states: BTreeSet<MemberState> = out.iter().map(|m| m.state()).collect();
    assert_eq!(states.len(), 8, "every state is reached: {states:?}");
    out
}

fn sample_events() -> Vec<Event> {
    let t = |term, status, leader: Option<&str>| Some((rec(term, status, "b", leader), term as i32 * 3));
    vec![
        view(&["a", "b", "c"], None),
        view(&["a"], None),
        view(&["a", "b", "c"], t(1, TermStatus::Leading, Some("b"))),
        view(&["a", "c"], t(1, TermStatus::Leading, Some("b"))),
        view(&["a", "b", "c"], t(2, TermStatus::Elected, Some("c"))),
        view(&["a", "b", "c"], t(3, TermStatus::Electing, None)),
        Event::LockAcquired,
        written(rec(2, TermStatus::Electing, "a", None), 0),
        Event::TermWritten { ok: false, record: rec(2, TermStatus::Electing, "a", None), version: None, current: None },
        reply(2, "b", 1, 4),
        reply(2, "c", 1, 9),
        Event::PrepareReply { term: 2, from: "b".into(), result: Err(PrepareFailure::HigherTerm(9)) },
        Event::ElectionMessage { term: 3 },
        Event::HigherTerm { term: 4 },
        Event::BecomeLeader { term: 2, version: None, elector: "a".into() },
        Event::BecomeLeader { term: 2, version: Some(5), elector: "a".into() },
        Event::GroupInfo { term: 2, leader: "b".into() },
        Event::Synced { term: 1 },
        Event::SyncLost { term: 1 },
        Event::QuorumChanged { term: 1, functional: 1 },
        Event::QuorumChanged { term: 1, functional: 3 },
        Event::SessionSuspended,
        Event::SessionConnected { new_session: false },
        Event::SessionConnected { new_session: true },
        Event::SessionExpired,
        Event::Timer(Timer::LeaderAppear { term: 2 }),
        Event::Timer(Timer::ElectionRetry { term: 2 }),
        Event::Timer(Timer::PrepareTimeout { term: 2 }),
        Event::Stop,
    ]
}

/// The invariants every reachable state and every step must keep.
fn check(before: &PBMember, ev: &Event, after: &PBMember, acts: &[Action]) {
    let ctx = || format!("{:?} --{ev:?}--> {:?} {acts:?}", before.state(), after.state());
    assert!(after.term() >= before.term(), "term went down: {}", ctx());
    for a in acts {
        if let Action::HandOff { term, .. } = a {
            assert_eq!(before.state(), MemberState::LeaderFunctional, "only a functional leader hands off: {}", ctx());
            assert_eq!(before.lock(), LockState::Held, "the lock holder hands off: {}", ctx());
            assert_eq!(*term, before.term() + 1, "{}", ctx());
        }
    }
    if after.stopped() {
        return;
    }
    match after.role() {
        Role::Follower => assert_eq!(after.lock(), LockState::Idle, "a follower holds no lock: {}", ctx()),
        Role::Elector => assert_ne!(after.lock(), LockState::Idle, "an elector is queued or holds: {}", ctx()),
        Role::Leader => {
            assert_eq!(after.leader(), Some(after.me()), "a leader leads itself: {}", ctx());
            assert_ne!(after.lock(), LockState::Idle, "a leader holds or awaits the lock: {}", ctx());
        }
    }
    if after.acking() {
        assert_eq!(after.state(), MemberState::LeaderFunctional, "only a functional leader acks: {}", ctx());
    }
    for a in acts {
        match a {
            Action::WriteTerm { term, .. } => {
                assert_eq!(after.lock(), LockState::Held, "term writes need the lock: {}", ctx());
                assert!(*term >= after.term(), "{}", ctx());
            }
            Action::StartLeading { term } => {
                assert_eq!(after.lock(), LockState::Held, "{}", ctx());
                assert_eq!(*term, after.term(), "{}", ctx());
                assert_eq!(after.role(), Role::Leader, "{}", ctx());
            }
            Action::SetAcking(true) => assert!(after.acking(), "{}", ctx()),
            Action::ClaimLeadership { term, .. } => {
                assert_eq!(after.state(), MemberState::LeaderWaitingForQuorum, "{}", ctx());
                assert_eq!(after.lock(), LockState::Requested, "a claim queues for the lock: {}", ctx());
                assert_eq!(*term, after.term(), "{}", ctx());
            }
            Action::SendPrepare { term, .. } => {
                assert_eq!(after.state(), MemberState::EcElectionInProgress, "{}", ctx());
                assert_eq!(*term, after.term(), "{}", ctx());
            }
            _ => {}
        }
    }
}

#[test]
fn every_state_times_every_event_keeps_the_invariants() {
    for m in in_each_state() {
        for ev in sample_events() {
            let before = m.clone();
            let (after, acts) = m.clone().step(ev.clone());
            check(&before, &ev, &after, &acts);
        }
    }
}

fn arb_event() -> impl Strategy<Value = Event> {
    let events = sample_events();
    (0..events.len()).prop_map(move |i| events[i].clone())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn random_event_sequences_keep_the_invariants(start in 0usize..8, evs in prop::collection::vec(arb_event(), 1..40)) {
        let mut m = in_each_state().swap_remove(start);
        for ev in evs {
            let before = m.clone();
            let acts = m.handle(ev.clone());
            check(&before, &ev, &m, &acts);
        }
    }
}
