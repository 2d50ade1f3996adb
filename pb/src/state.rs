//! `PBMember`: the group coordination state machine of seed 003, as a pure transition function
//! `(state, event) → (state, actions)`. No I/O: the driver (`crate::driver`) feeds it events
//! from ZooKeeper, RPCs, timers and the replication core, and carries out the actions.
//!
//! Lifecycle of a group: {1: no leader} → {2: wait for quorum} → {3: elect leader} →
//! {4: leader in charge}. A member that sees no leader becomes elector (EC_ACQUIRE_LOCK),
//! takes the group coordination lock, advances the term with a version-checked write and sets
//! the status to electing (EC_WAITING_FOR_QUORUM), waits for a quorum of members, asks each for
//! its journal position — the "election message for a new term", which fences older terms —
//! and chooses the most complete journal (EC_ELECTION_IN_PROGRESS). It then either leads itself
//! or records the winner, goes to FOLLOWER_WAIT_TO_JOIN_GROUP and sends "become leader". The
//! leader takes the lock and is in charge: LEADER_WAITING_FOR_QUORUM until a quorum has synced
//! into its term, then LEADER_FUNCTIONAL. If the chosen leader does not appear in time, a member
//! becomes elector again, with a new term. A functional leader that is stopped gracefully hands
//! off instead: it acts as the elector of the next term and chooses a follower whose journal
//! matches its own ([`Action::HandOff`]), so the group skips the election round.

use std::collections::{BTreeMap, BTreeSet};

use crate::types::{EntryId, MemberId, MemberState, Role, TermRecord, TermStatus};

/// What the member knows of the group from ZooKeeper.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupView {
    /// Registered (live) members admitted to the group.
    pub members: BTreeSet<MemberId>,
    /// The term record and its znode version, if it exists.
    pub term: Option<(TermRecord, i32)>,
}

/// State of the coordination lock as the machine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockState {
    /// Not held, not asked for.
    Idle,
    /// Queued for it.
    Requested,
    /// Held.
    Held,
}

/// Which condition a term record write requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TermPrecondition {
    /// The znode must have this version (`None`: must not exist yet).
    Version(Option<i32>),
    /// The current record must say `Elected` for `term` with this member as leader.
    ElectedFor {
        /// The term.
        term: u64,
    },
}

/// Timers the machine asks for; each fires as [`Event::Timer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    /// The leader elected for `term` has this long to take charge.
    LeaderAppear {
        /// The term.
        term: u64,
    },
    /// Retry the election for `term` (not enough members answered).
    ElectionRetry {
        /// The term.
        term: u64,
    },
    /// Give up on unanswered election messages for `term`.
    PrepareTimeout {
        /// The term.
        term: u64,
    },
}

/// Why an election message got no usable answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrepareFailure {
    /// The member has promised a higher term.
    HigherTerm(u64),
    /// The member did not answer.
    Unreachable,
}

/// Inputs to the machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The ZooKeeper view (members, term record) changed.
    View(GroupView),
    /// The coordination lock is ours.
    LockAcquired,
    /// Result of a [`Action::WriteTerm`]: `version` is the new version on success; `current`
    /// is the record as re-read on failure.
    TermWritten {
        /// Whether the write happened.
        ok: bool,
        /// The record written.
        record: TermRecord,
        /// New znode version on success.
        version: Option<i32>,
        /// The current record on failure.
        current: Option<(TermRecord, i32)>,
    },
    /// A member's answer to our election message for `term`: its last journal entry.
    PrepareReply {
        /// The election's term.
        term: u64,
        /// Who answered.
        from: MemberId,
        /// Its last journal entry, or why there is none.
        result: Result<EntryId, PrepareFailure>,
    },
    /// We promised `term` to another member's election (our core fenced older terms).
    ElectionMessage {
        /// The new term.
        term: u64,
    },
    /// Some reply showed a higher term than ours.
    HigherTerm {
        /// That term.
        term: u64,
    },
    /// The elector (or the leader handing off) asks us to lead `term`.
    BecomeLeader {
        /// The term.
        term: u64,
        /// Version of the term record that says `elected us` for `term`, when the sender knows
        /// it: taking charge then needs no re-read of the record.
        version: Option<i32>,
        /// Who elected us (the elector, or the leader handing off).
        elector: MemberId,
    },
    /// The leader of `term` broadcast group info to us.
    GroupInfo {
        /// The leader's term.
        term: u64,
        /// The leader.
        leader: MemberId,
    },
    /// Our journal has caught up with the leader of `term`.
    Synced {
        /// The term.
        term: u64,
    },
    /// Our journal diverged from the leader of `term` and must be repaired.
    SyncLost {
        /// The term.
        term: u64,
    },
    /// As leader of `term`: members (including us) synced into the term and responsive.
    QuorumChanged {
        /// The term.
        term: u64,
        /// How many.
        functional: usize,
    },
    /// The ZooKeeper connection is lost; the session may still be alive.
    SessionSuspended,
    /// Connected again; `new_session` when the old session expired in between.
    SessionConnected {
        /// A new session (lock and contender nodes are gone).
        new_session: bool,
    },
    /// The session expired: the lock is gone.
    SessionExpired,
    /// A timer fired.
    Timer(Timer),
    /// Graceful stop.
    Stop,
}

/// Outputs of the machine, carried out by the driver in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Queue for the coordination lock (no-op if already queued).
    AcquireLock,
    /// Leave the lock queue or release the lock.
    ReleaseLock,
    /// Write the term record if `precondition` holds; answer with [`Event::TermWritten`].
    WriteTerm {
        /// The condition.
        precondition: TermPrecondition,
        /// Term to write.
        term: u64,
        /// Status to write.
        status: TermStatus,
        /// Leader to write.
        leader: Option<MemberId>,
    },
    /// Send the election message for `term` to `to` (including ourselves).
    SendPrepare {
        /// The term.
        term: u64,
        /// Recipients.
        to: Vec<MemberId>,
    },
    /// Ask `to` to lead `term`.
    SendBecomeLeader {
        /// The term.
        term: u64,
        /// The winner.
        to: MemberId,
        /// Version of the `elected` term record we wrote.
        version: Option<i32>,
    },
    /// Queue for the coordination lock and, in the same multi-op, write `leading` for `term`
    /// with us as leader if the record's version is `version` (our `elected` record). Answers
    /// with [`Event::TermWritten`], then [`Event::LockAcquired`] once our contender is the
    /// lowest: one ZooKeeper write where queueing and then writing take two.
    ClaimLeadership {
        /// The term.
        term: u64,
        /// Version of the `elected us` record.
        version: i32,
        /// Who elected us, kept in the record.
        elector: MemberId,
    },
    /// Graceful stop of a functional leader: hand leadership to a follower whose journal
    /// matches ours (Raft's leadership transfer). The driver stops acknowledging, waits for such
    /// a follower, writes `elected <it>` for `term` (precondition `version`) and releases the
    /// lock in one multi-op, then sends it "become leader". Best effort: when it cannot, the
    /// lock release that follows lets the others elect as usual.
    HandOff {
        /// The successor's term (ours + 1).
        term: u64,
        /// Version of our `leading` term record.
        version: i32,
    },
    /// Start leading `term`: append the no-op, replicate, broadcast group info.
    StartLeading {
        /// The term.
        term: u64,
    },
    /// Stop leading `term`: fail pending writes, stop replicating.
    StopLeading {
        /// The term.
        term: u64,
    },
    /// Whether the leader may acknowledge writes.
    SetAcking(bool),
    /// Service hook `onBecomeLeader()`.
    OnBecomeLeader {
        /// The term.
        term: u64,
    },
    /// Service hook `onBecomeFollower()`.
    OnBecomeFollower {
        /// The term.
        term: u64,
        /// The leader, when known.
        leader: Option<MemberId>,
    },
    /// Arm a timer.
    StartTimer(Timer),
}

/// A pending term record write and what it is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PendingWrite {
    Electing { term: u64 },
    Elected { term: u64 },
    Leading { term: u64 },
}

/// An election in progress.
#[derive(Debug, Clone, PartialEq)]
struct Election {
    term: u64,
    /// Version of our electing record, for the next write.
    version: i32,
    asked: BTreeSet<MemberId>,
    replies: BTreeMap<MemberId, EntryId>,
    failed: BTreeSet<MemberId>,
}

/// What the view says about leadership.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Leadership {
    /// Nobody leads or elects: become elector.
    None,
    /// A live elector is electing.
    Electing,
    /// A leader was chosen and has not taken charge yet.
    Pending { term: u64 },
    /// A live leader is in charge.
    Alive { term: u64 },
}

/// The member's coordination state: the seed's `PBMember`.
#[derive(Debug, Clone, PartialEq)]
pub struct PBMember {
    me: MemberId,
    quorum: usize,
    state: MemberState,
    term: u64,
    leader: Option<MemberId>,
    view: GroupView,
    lock: LockState,
    pending: Option<PendingWrite>,
    election: Option<Election>,
    appear_armed: Option<u64>,
    appear_expired: Option<u64>,
    leading_started: bool,
    /// Our `leading` record is written (by a claim) and we wait for the lock to start.
    claimed: bool,
    functional: usize,
    connected: bool,
    acking: bool,
    stopped: bool,
}

impl PBMember {
    /// A member that has just booted: FOLLOWER_WAIT_TO_JOIN_GROUP, knowing `term` (its durable
    /// promise). `quorum` is a majority of the group's replicas.
    pub fn new(me: impl Into<MemberId>, quorum: usize, term: u64) -> Self {
        PBMember {
            me: me.into(),
            quorum: quorum.max(1),
            state: MemberState::FollowerWaitToJoinGroup,
            term,
            leader: None,
            view: GroupView::default(),
            lock: LockState::Idle,
            pending: None,
            election: None,
            appear_armed: None,
            appear_expired: None,
            leading_started: false,
            claimed: false,
            functional: 0,
            connected: true,
            acking: false,
            stopped: false,
        }
    }

    /// Current state.
    pub fn state(&self) -> MemberState {
        self.state
    }

    /// Current role.
    pub fn role(&self) -> Role {
        self.state.role()
    }

    /// The highest term known.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// The leader followed (or ourselves).
    pub fn leader(&self) -> Option<&MemberId> {
        self.leader.as_ref()
    }

    /// The lock as the machine sees it.
    pub fn lock(&self) -> LockState {
        self.lock
    }

    /// Whether the leader acknowledges writes.
    pub fn acking(&self) -> bool {
        self.acking
    }

    /// Whether [`Event::Stop`] was handled (the machine ignores everything after it).
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// This member's name.
    pub fn me(&self) -> &MemberId {
        &self.me
    }

    /// The ZooKeeper view last seen.
    pub fn view(&self) -> &GroupView {
        &self.view
    }

    /// Pure step: consumes the state and returns the next one with the actions to carry out.
    pub fn step(mut self, event: Event) -> (PBMember, Vec<Action>) {
        let actions = self.handle(event);
        (self, actions)
    }

    /// Applies `event` in place and returns the actions to carry out, in order.
    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        let mut acts = Vec::new();
        if self.stopped {
            return acts;
        }
        match event {
            Event::View(view) => self.on_view(view, &mut acts),
            Event::LockAcquired => self.on_lock_acquired(&mut acts),
            Event::TermWritten { ok, record, version, current } => {
                self.on_term_written(ok, record, version, current, &mut acts)
            }
            Event::PrepareReply { term, from, result } => self.on_prepare_reply(term, from, result, &mut acts),
            Event::ElectionMessage { term } | Event::HigherTerm { term } => self.on_higher_term(term, &mut acts),
            Event::BecomeLeader { term, version, elector } => self.on_become_leader(term, version, elector, &mut acts),
            Event::GroupInfo { term, leader } => self.on_group_info(term, leader, &mut acts),
            Event::Synced { term } => {
                if self.state == MemberState::FollowerSyncing && term == self.term {
                    self.state = MemberState::FollowerFunctional;
                    acts.push(Action::OnBecomeFollower { term, leader: self.leader.clone() });
                }
            }
            Event::SyncLost { term } => {
                if self.state == MemberState::FollowerFunctional && term == self.term {
                    self.state = MemberState::FollowerSyncing;
                }
            }
            Event::QuorumChanged { term, functional } => {
                if self.role() == Role::Leader && term == self.term && self.leading_started {
                    self.functional = functional;
                    self.leader_quorum_check(&mut acts);
                }
            }
            Event::SessionSuspended => {
                self.connected = false;
                self.update_acking(&mut acts);
            }
            Event::SessionConnected { new_session } => {
                if new_session {
                    self.on_session_lost(&mut acts);
                }
                self.connected = true;
                if new_session && self.state == MemberState::EcAcquireLock {
                    self.lock = LockState::Requested;
                    acts.push(Action::AcquireLock);
                }
                self.update_acking(&mut acts);
            }
            Event::SessionExpired => {
                self.connected = false;
                self.on_session_lost(&mut acts);
            }
            Event::Timer(t) => self.on_timer(t, &mut acts),
            Event::Stop => {
                if let Some(version) = self.hand_off_version() {
                    acts.push(Action::HandOff { term: self.term + 1, version });
                }
                if self.role() == Role::Leader {
                    self.stop_leading(&mut acts);
                }
                if self.lock != LockState::Idle {
                    self.lock = LockState::Idle;
                    acts.push(Action::ReleaseLock);
                }
                self.stopped = true;
            }
        }
        acts
    }

    /// A graceful stop hands leadership off when we are a functional leader holding the lock
    /// and know the version of our own `leading` record.
    fn hand_off_version(&self) -> Option<i32> {
        if self.state != MemberState::LeaderFunctional || self.lock != LockState::Held || !self.leading_started {
            return None;
        }
        match &self.view.term {
            Some((rec, v))
                if rec.term == self.term
                    && rec.status == TermStatus::Leading
                    && rec.leader.as_ref() == Some(&self.me) =>
            {
                Some(*v)
            }
            _ => None,
        }
    }

    fn leadership(&self) -> Leadership {
        let Some((rec, _)) = &self.view.term else { return Leadership::None };
        let alive = |m: &Option<MemberId>| m.as_ref().is_some_and(|m| self.view.members.contains(m));
        let mine = |m: &Option<MemberId>| m.as_ref() == Some(&self.me);
        match rec.status {
            TermStatus::Leading => {
                // A record naming us while we do not lead is left over from a previous life.
                if alive(&rec.leader) && !(mine(&rec.leader) && self.role() != Role::Leader) {
                    Leadership::Alive { term: rec.term }
                } else {
                    Leadership::None
                }
            }
            TermStatus::Elected => {
                if alive(&rec.leader) && self.appear_expired != Some(rec.term) {
                    Leadership::Pending { term: rec.term }
                } else {
                    Leadership::None
                }
            }
            TermStatus::Electing => {
                if alive(&rec.elector) && !(mine(&rec.elector) && self.role() != Role::Elector) {
                    Leadership::Electing
                } else {
                    Leadership::None
                }
            }
        }
    }

    fn set_follower(&mut self, state: MemberState, acts: &mut Vec<Action>) {
        debug_assert_eq!(state.role(), Role::Follower);
        if self.lock != LockState::Idle {
            self.lock = LockState::Idle;
            acts.push(Action::ReleaseLock);
        }
        self.election = None;
        self.pending = None;
        self.claimed = false;
        self.state = state;
        if state == MemberState::FollowerWaitToJoinGroup {
            self.leader = None;
        }
    }

    fn become_elector(&mut self, acts: &mut Vec<Action>) {
        self.state = MemberState::EcAcquireLock;
        self.leader = None;
        self.election = None;
        self.pending = None;
        if self.lock == LockState::Idle {
            self.lock = LockState::Requested;
            acts.push(Action::AcquireLock);
        } else if self.lock == LockState::Held {
            self.start_election(acts);
        }
    }

    /// Follower states: decide from the view whether to wait, or to become elector.
    fn follower_check(&mut self, acts: &mut Vec<Action>) {
        match self.leadership() {
            Leadership::None => self.become_elector(acts),
            Leadership::Electing => {}
            Leadership::Pending { term } => {
                if self.appear_armed != Some(term) {
                    self.appear_armed = Some(term);
                    acts.push(Action::StartTimer(Timer::LeaderAppear { term }));
                }
            }
            Leadership::Alive { term } => {
                // ZooKeeper shows a newer term than the one we follow: wait for its leader.
                if term > self.term && self.state != MemberState::FollowerWaitToJoinGroup {
                    self.set_follower(MemberState::FollowerWaitToJoinGroup, acts);
                }
            }
        }
    }

    fn on_view(&mut self, view: GroupView, acts: &mut Vec<Action>) {
        // Versions of one znode only grow (and the term record is never deleted): never go
        // back to an older record.
        let newer = match (&self.view.term, &view.term) {
            (Some((_, old)), Some((_, new))) => new >= old,
            (Some(_), None) => false,
            (None, _) => true,
        };
        self.view.members = view.members;
        if newer {
            self.view.term = view.term;
        }
        match self.state {
            MemberState::FollowerWaitToJoinGroup | MemberState::FollowerSyncing | MemberState::FollowerFunctional => {
                self.follower_check(acts)
            }
            MemberState::EcAcquireLock => {
                if self.pending.is_some() {
                    return;
                }
                match self.leadership() {
                    Leadership::Alive { .. } | Leadership::Pending { .. } => {
                        self.set_follower(MemberState::FollowerWaitToJoinGroup, acts);
                        self.follower_check(acts);
                    }
                    _ if self.lock == LockState::Held => self.start_election(acts),
                    _ => {}
                }
            }
            MemberState::EcWaitingForQuorum => self.quorum_check(acts),
            MemberState::EcElectionInProgress => {
                // Members that left will not answer.
                if let Some(e) = &mut self.election {
                    let gone: Vec<MemberId> = e
                        .asked
                        .iter()
                        .filter(|m| !self.view.members.contains(*m) && !e.replies.contains_key(*m) && **m != self.me)
                        .cloned()
                        .collect();
                    e.failed.extend(gone);
                }
                self.election_progress(acts);
            }
            MemberState::LeaderWaitingForQuorum | MemberState::LeaderFunctional => {
                if let Some((rec, _)) = &self.view.term
                    && rec.term > self.term
                {
                    let t = rec.term;
                    self.on_higher_term(t, acts);
                }
            }
        }
    }

    /// Holding the lock as elector: advance the term and set the status to electing.
    fn start_election(&mut self, acts: &mut Vec<Action>) {
        if self.pending.is_some() {
            return;
        }
        let (record_term, version) = match &self.view.term {
            Some((rec, v)) => (rec.term, Some(*v)),
            None => (0, None),
        };
        let term = record_term.max(self.term) + 1;
        self.pending = Some(PendingWrite::Electing { term });
        acts.push(Action::WriteTerm {
            precondition: TermPrecondition::Version(version),
            term,
            status: TermStatus::Electing,
            leader: None,
        });
    }

    fn on_lock_acquired(&mut self, acts: &mut Vec<Action>) {
        match (self.state, self.lock) {
            (MemberState::EcAcquireLock, LockState::Requested) => {
                self.lock = LockState::Held;
                match self.leadership() {
                    Leadership::Alive { .. } | Leadership::Pending { .. } => {
                        self.set_follower(MemberState::FollowerWaitToJoinGroup, acts);
                        self.follower_check(acts);
                    }
                    // Holding the lock means any recorded elector has given up.
                    Leadership::None | Leadership::Electing => self.start_election(acts),
                }
            }
            (MemberState::LeaderWaitingForQuorum, LockState::Requested) if !self.leading_started => {
                self.lock = LockState::Held;
                if self.claimed {
                    // The claim wrote `leading` already.
                    self.claimed = false;
                    self.start_leading(acts);
                    return;
                }
                if self.pending.is_some() {
                    // The claim's write is still being answered.
                    return;
                }
                self.pending = Some(PendingWrite::Leading { term: self.term });
                acts.push(Action::WriteTerm {
                    precondition: TermPrecondition::ElectedFor { term: self.term },
                    term: self.term,
                    status: TermStatus::Leading,
                    leader: Some(self.me.clone()),
                });
            }
            (_, LockState::Requested) => {
                // Stale: we no longer want it.
                self.lock = LockState::Idle;
                acts.push(Action::ReleaseLock);
            }
            _ => {}
        }
    }

    fn on_term_written(
        &mut self,
        ok: bool,
        record: TermRecord,
        version: Option<i32>,
        current: Option<(TermRecord, i32)>,
        acts: &mut Vec<Action>,
    ) {
        let Some(pending) = self.pending.take() else { return };
        if ok {
            if let Some(v) = version {
                self.view.term = Some((record.clone(), v));
            }
        } else if let Some(cur) = current
            && self.view.term.as_ref().is_none_or(|(_, v)| cur.1 >= *v)
        {
            self.view.term = Some(cur);
        }
        match pending {
            PendingWrite::Electing { term } => {
                if self.state != MemberState::EcAcquireLock || self.lock != LockState::Held {
                    return;
                }
                if ok {
                    self.term = self.term.max(term);
                    self.state = MemberState::EcWaitingForQuorum;
                    self.election = Some(Election {
                        term,
                        version: version.unwrap_or(0),
                        asked: BTreeSet::new(),
                        replies: BTreeMap::new(),
                        failed: BTreeSet::new(),
                    });
                    self.quorum_check(acts);
                } else {
                    // Someone changed the record: look again with the lock still held.
                    match self.leadership() {
                        Leadership::Alive { .. } | Leadership::Pending { .. } => {
                            self.set_follower(MemberState::FollowerWaitToJoinGroup, acts);
                            self.follower_check(acts);
                        }
                        _ => self.start_election(acts),
                    }
                }
            }
            PendingWrite::Elected { term } => {
                if self.state != MemberState::EcElectionInProgress
                    || self.election.as_ref().map(|e| e.term) != Some(term)
                {
                    return;
                }
                let winner = record.leader.clone();
                self.set_follower(MemberState::FollowerWaitToJoinGroup, acts);
                if ok {
                    if let Some(w) = winner {
                        acts.push(Action::SendBecomeLeader { term, to: w, version });
                    }
                    self.appear_armed = Some(term);
                    acts.push(Action::StartTimer(Timer::LeaderAppear { term }));
                } else {
                    self.follower_check(acts);
                }
            }
            PendingWrite::Leading { term } => {
                if self.role() == Role::Leader && self.term == term && !self.leading_started {
                    if ok && self.lock != LockState::Held {
                        // A claim: lead once the lock is ours.
                        self.claimed = true;
                    } else if ok {
                        self.start_leading(acts);
                    } else {
                        self.set_follower(MemberState::FollowerWaitToJoinGroup, acts);
                        acts.push(Action::OnBecomeFollower { term: self.term, leader: None });
                        self.follower_check(acts);
                    }
                } else if self.state == MemberState::EcElectionInProgress
                    && self.election.as_ref().map(|e| e.term) == Some(term)
                {
                    // The elector chose itself.
                    if ok {
                        self.election = None;
                        self.state = MemberState::LeaderWaitingForQuorum;
                        self.leader = Some(self.me.clone());
                        self.start_leading(acts);
                    } else {
                        self.set_follower(MemberState::FollowerWaitToJoinGroup, acts);
                        self.follower_check(acts);
                    }
                }
            }
        }
    }

    fn start_leading(&mut self, acts: &mut Vec<Action>) {
        self.leading_started = true;
        self.claimed = false;
        self.functional = 0;
        self.state = MemberState::LeaderWaitingForQuorum;
        self.leader = Some(self.me.clone());
        self.appear_armed = None;
        acts.push(Action::StartLeading { term: self.term });
        acts.push(Action::OnBecomeLeader { term: self.term });
    }

    fn stop_leading(&mut self, acts: &mut Vec<Action>) {
        if self.leading_started {
            acts.push(Action::StopLeading { term: self.term });
        }
        self.leading_started = false;
        self.functional = 0;
        if self.acking {
            self.acking = false;
            acts.push(Action::SetAcking(false));
        }
    }

    fn quorum_check(&mut self, acts: &mut Vec<Action>) {
        if self.state != MemberState::EcWaitingForQuorum {
            return;
        }
        let mut members = self.view.members.clone();
        members.insert(self.me.clone());
        if members.len() < self.quorum {
            return;
        }
        let Some(e) = &mut self.election else { return };
        e.asked = members.clone();
        e.replies.clear();
        e.failed.clear();
        let term = e.term;
        self.state = MemberState::EcElectionInProgress;
        acts.push(Action::SendPrepare { term, to: members.into_iter().collect() });
        acts.push(Action::StartTimer(Timer::PrepareTimeout { term }));
    }

    fn on_prepare_reply(
        &mut self,
        term: u64,
        from: MemberId,
        result: Result<EntryId, PrepareFailure>,
        acts: &mut Vec<Action>,
    ) {
        if self.state != MemberState::EcElectionInProgress || self.pending.is_some() {
            return;
        }
        let Some(e) = &mut self.election else { return };
        if e.term != term || !e.asked.contains(&from) {
            return;
        }
        match result {
            Ok(last) => {
                e.failed.remove(&from);
                e.replies.insert(from, last);
            }
            Err(PrepareFailure::HigherTerm(t)) if t > term => {
                self.on_higher_term(t, acts);
                return;
            }
            Err(_) => {
                e.failed.insert(from);
            }
        }
        self.election_progress(acts);
    }

    /// Choose once a quorum answered; go back to waiting if a quorum can no longer answer.
    fn election_progress(&mut self, acts: &mut Vec<Action>) {
        if self.pending.is_some() {
            return;
        }
        let Some(e) = &self.election else { return };
        if e.replies.len() >= self.quorum {
            let winner = crate::log::choose_leader(&e.replies, &self.me).expect("a quorum answered");
            let (term, version) = (e.term, e.version);
            if winner == self.me {
                self.pending = Some(PendingWrite::Leading { term });
                acts.push(Action::WriteTerm {
                    precondition: TermPrecondition::Version(Some(version)),
                    term,
                    status: TermStatus::Leading,
                    leader: Some(winner),
                });
            } else {
                self.pending = Some(PendingWrite::Elected { term });
                acts.push(Action::WriteTerm {
                    precondition: TermPrecondition::Version(Some(version)),
                    term,
                    status: TermStatus::Elected,
                    leader: Some(winner),
                });
            }
            return;
        }
        let outstanding = e.asked.len() - e.replies.len() - e.failed.len();
        if e.replies.len() + outstanding < self.quorum {
            let term = e.term;
            self.state = MemberState::EcWaitingForQuorum;
            acts.push(Action::StartTimer(Timer::ElectionRetry { term }));
        }
    }

    fn on_higher_term(&mut self, term: u64, acts: &mut Vec<Action>) {
        if term <= self.term {
            return;
        }
        let was_leader = self.role() == Role::Leader;
        if was_leader {
            self.stop_leading(acts);
        }
        self.term = term;
        self.set_follower(MemberState::FollowerWaitToJoinGroup, acts);
        if was_leader {
            acts.push(Action::OnBecomeFollower { term, leader: None });
        }
        // No follower_check here: an election for `term` is running; its elector is alive.
    }

    fn on_become_leader(&mut self, term: u64, version: Option<i32>, elector: MemberId, acts: &mut Vec<Action>) {
        if self.role() != Role::Follower || term < self.term {
            return;
        }
        self.term = term;
        self.state = MemberState::LeaderWaitingForQuorum;
        self.leader = Some(self.me.clone());
        self.leading_started = false;
        self.functional = 0;
        self.appear_armed = None;
        self.election = None;
        self.claimed = false;
        self.lock = LockState::Requested;
        match version {
            Some(version) => {
                self.pending = Some(PendingWrite::Leading { term });
                acts.push(Action::ClaimLeadership { term, version, elector });
            }
            None => {
                self.pending = None;
                acts.push(Action::AcquireLock);
            }
        }
    }

    fn on_group_info(&mut self, term: u64, leader: MemberId, acts: &mut Vec<Action>) {
        if term < self.term || leader == self.me {
            return;
        }
        if term > self.term {
            self.on_higher_term(term, acts);
        }
        match self.state {
            MemberState::FollowerWaitToJoinGroup | MemberState::EcAcquireLock => {
                self.set_follower(MemberState::FollowerSyncing, acts);
                self.leader = Some(leader);
                self.appear_armed = None;
            }
            MemberState::FollowerSyncing | MemberState::FollowerFunctional => {
                self.leader = Some(leader);
            }
            // An elector or leader of this same term cannot hear from another leader of it.
            _ => {}
        }
    }

    fn leader_quorum_check(&mut self, acts: &mut Vec<Action>) {
        let next = if self.functional >= self.quorum {
            MemberState::LeaderFunctional
        } else {
            MemberState::LeaderWaitingForQuorum
        };
        self.state = next;
        self.update_acking(acts);
    }

    fn update_acking(&mut self, acts: &mut Vec<Action>) {
        let acking = self.state == MemberState::LeaderFunctional && self.connected && self.leading_started;
        if acking != self.acking {
            self.acking = acking;
            acts.push(Action::SetAcking(acking));
        }
    }

    fn on_session_lost(&mut self, acts: &mut Vec<Action>) {
        // The lock (and any queue position) went with the session.
        let had_lock = self.lock;
        match self.role() {
            Role::Leader => {
                self.stop_leading(acts);
                self.claimed = false;
                self.lock = LockState::Idle;
                self.state = MemberState::FollowerWaitToJoinGroup;
                self.leader = None;
                self.pending = None;
                acts.push(Action::OnBecomeFollower { term: self.term, leader: None });
                acts.push(Action::ReleaseLock);
            }
            Role::Elector if self.state != MemberState::EcAcquireLock || had_lock == LockState::Held => {
                self.lock = LockState::Idle;
                self.state = MemberState::FollowerWaitToJoinGroup;
                self.election = None;
                self.pending = None;
                acts.push(Action::ReleaseLock);
            }
            Role::Elector => {
                // Still queued in spirit: re-queue once connected.
                self.pending = None;
            }
            Role::Follower => {}
        }
        self.update_acking(acts);
    }

    fn on_timer(&mut self, t: Timer, acts: &mut Vec<Action>) {
        match t {
            Timer::LeaderAppear { term } => {
                if self.appear_armed == Some(term) {
                    self.appear_armed = None;
                }
                let still_pending =
                    matches!(&self.view.term, Some((rec, _)) if rec.term == term && rec.status == TermStatus::Elected);
                if still_pending && self.role() == Role::Follower {
                    self.appear_expired = Some(term);
                    self.follower_check(acts);
                }
            }
            Timer::ElectionRetry { term } => {
                if self.state == MemberState::EcWaitingForQuorum && self.election.as_ref().map(|e| e.term) == Some(term)
                {
                    self.quorum_check(acts);
                }
            }
            Timer::PrepareTimeout { term } => {
                if self.state == MemberState::EcElectionInProgress
                    && self.pending.is_none()
                    && self.election.as_ref().map(|e| e.term) == Some(term)
                {
                    if let Some(e) = &mut self.election {
                        let unanswered: Vec<MemberId> =
                            e.asked.iter().filter(|m| !e.replies.contains_key(*m)).cloned().collect();
                        e.failed.extend(unanswered);
                    }
                    self.election_progress(acts);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
