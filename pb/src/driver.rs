//! Runs a [`PBMember`] against ZooKeeper: enrols and registers the member, mirrors the group's
//! znodes into [`GroupView`]s, implements the coordination lock with ephemeral sequential
//! contenders, writes the term record with version checks, sends the election messages,
//! arms timers, feeds the session state in, and publishes the member's state and lag.
//!
//! All I/O for the state machine lives here; the decisions stay in [`crate::state`].

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use datom_common::coord::watch::{NodeData, TreeCache};
use datom_common::coord::{self, CoordError, EphemeralHandle, Mode, SessionState};
use datom_common::{Coord, paths};
use tokio::sync::{mpsc, watch};

use crate::clients::PeerClients;
use crate::core::{Core, CoreConfig, Replica};
use crate::rpc::{BecomeLeaderRequest, PbError, PeerEndpoint, PeerRouter, PrepareRequest, PrepareResponse};
use crate::state::{Action, Event, GroupView, PBMember, PrepareFailure, TermPrecondition, Timer};
use crate::types::{
    GroupRecord, MemberId, MemberRecord, MemberState, MemberStateRecord, TermRecord, TermStatus, Transition, quorum,
};

/// Timeouts and intervals of the protocol.
#[derive(Debug, Clone)]
pub struct Timings {
    /// How long an elected leader has to take charge before a new election.
    pub leader_appear: Duration,
    /// How long the elector waits for answers to its election message.
    pub prepare_timeout: Duration,
    /// Pause before the elector asks again when too few answered.
    pub election_retry: Duration,
    /// Leader → follower heartbeat.
    pub heartbeat: Duration,
    /// A follower silent for this long is not functional.
    pub peer_timeout: Duration,
    /// Group info interval for members that are not functional.
    pub group_info_interval: Duration,
    /// Bound on dialing a member.
    pub dial_timeout: Duration,
    /// Entries per append at most.
    pub max_batch: usize,
    /// How often lag and positions are republished when they change.
    pub publish_interval: Duration,
    /// On a graceful stop, how long the leader waits for a follower to catch up before it
    /// leaves without handing off (the others then elect after its lock is released).
    pub hand_off_wait: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            leader_appear: Duration::from_secs(3),
            prepare_timeout: Duration::from_millis(1000),
            election_retry: Duration::from_millis(200),
            heartbeat: Duration::from_millis(50),
            peer_timeout: Duration::from_millis(750),
            group_info_interval: Duration::from_millis(200),
            dial_timeout: Duration::from_millis(1000),
            max_batch: 2048,
            publish_interval: Duration::from_millis(500),
            hand_off_wait: Duration::from_millis(500),
        }
    }
}

/// How one member of one group runs.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    /// Group name (a valid datom name).
    pub group: String,
    /// This member's name (a valid datom name, stable across restarts).
    pub me: MemberId,
    /// Replication RPC address other members dial.
    pub address: String,
    /// The service's client address, published with the registration.
    pub client_address: Option<String>,
    /// Directory holding the journal and the promised term.
    pub dir: PathBuf,
    /// Timeouts.
    pub timings: Timings,
}

/// A running group member: the core plus the driver task.
pub struct GroupMember<S: Replica> {
    core: Arc<Core<S>>,
    status: watch::Receiver<MemberStateRecord>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl<S: Replica> GroupMember<S> {
    /// Joins the group: checks and enrols in the group record, opens the core (journal, term,
    /// reconciliation with the db), routes the group's RPCs to it, registers the member and
    /// starts the state machine.
    pub async fn start(
        coord: Coord,
        cfg: MemberConfig,
        service: Arc<S>,
        clients: Arc<dyn PeerClients>,
        router: &PeerRouter,
    ) -> Result<GroupMember<S>, PbError> {
        let czk = |e: CoordError| PbError::Coordination(e.to_string());
        let group_path = paths::group(&cfg.group);
        let record = enrol(&coord, &group_path, &cfg.group, &cfg.me).await?;
        let replicas = record.replicas as usize;
        for p in [paths::group_members(&cfg.group), paths::group_lock(&cfg.group), paths::group_states(&cfg.group)] {
            coord.ensure_path(&p).await.map_err(czk)?;
        }
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let core_cfg = CoreConfig {
            group: cfg.group.clone(),
            me: cfg.me.clone(),
            replicas,
            heartbeat: cfg.timings.heartbeat,
            peer_timeout: cfg.timings.peer_timeout,
            group_info_interval: cfg.timings.group_info_interval,
            max_batch: cfg.timings.max_batch,
        };
        let core = Core::open(core_cfg, &cfg.dir, service, clients, ev_tx.clone(), coord.watch_status()).await?;
        router.insert(&cfg.group, core.clone());
        let wait = coord.negotiated_timeout() * 2 + Duration::from_secs(1);
        let member = MemberRecord {
            schema: 1,
            member: cfg.me.clone(),
            address: cfg.address.clone(),
            client_address: cfg.client_address.clone(),
            pid: std::process::id(),
            started_at: Utc::now(),
        };
        let member_path = paths::group_member(&cfg.group, &cfg.me);
        let data = coord::encode(&member_path, &member).map_err(czk)?;
        let member_handle = coord.register_ephemeral(&member_path, data, wait).await.map_err(czk)?;
        let machine = PBMember::new(cfg.me.clone(), quorum(replicas), core.promised());
        let initial = state_record(&machine, &core, &VecDeque::new());
        let state_path = paths::group_state(&cfg.group, &cfg.me);
        let data = coord::encode(&state_path, &initial).map_err(czk)?;
        let state_handle = coord.register_ephemeral(&state_path, data, wait).await.map_err(czk)?;
        let (status_tx, status_rx) = watch::channel(initial);
        tokio::spawn(publish(state_handle, status_rx.clone()));
        let cache = coord.tree_cache(&group_path);
        tokio::time::timeout(coord.config().op_timeout * 2, cache.wait_synced())
            .await
            .map_err(|_| PbError::Coordination(format!("could not list {group_path} in time")))?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let driver = Driver {
            coord: coord.clone(),
            cfg,
            core: core.clone(),
            machine,
            cache,
            ev_tx,
            lock_gen: Arc::new(AtomicU64::new(0)),
            lock_node: Arc::new(std::sync::Mutex::new(None)),
            status_tx,
            transitions: VecDeque::new(),
            view_key: None,
            addresses: BTreeMap::new(),
            member_handle: Some(member_handle),
            router: router.clone(),
        };
        let task = tokio::spawn(driver.run(ev_rx, stop_rx));
        Ok(GroupMember { core, status: status_rx, stop: Some(stop_tx), task: Some(task) })
    }

    /// The replication core (submit writes, read barriers, status).
    pub fn core(&self) -> &Arc<Core<S>> {
        &self.core
    }

    /// The member's published state, as it changes.
    pub fn status(&self) -> watch::Receiver<MemberStateRecord> {
        self.status.clone()
    }

    /// Graceful stop: stops leading, releases the lock and removes the registrations, so the
    /// others elect at once instead of waiting for the session to expire.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

async fn enrol(coord: &Coord, path: &str, group: &str, me: &MemberId) -> Result<GroupRecord, PbError> {
    loop {
        let Some(v) = coord.get::<GroupRecord>(path).await.map_err(|e| PbError::Coordination(e.to_string()))? else {
            return Err(PbError::NoGroup(group.to_string()));
        };
        if v.value.enrolled.contains(me) {
            return Ok(v.value);
        }
        if v.value.enrolled.len() >= v.value.replicas as usize {
            return Err(PbError::GroupFull {
                group: group.to_string(),
                replicas: v.value.replicas as usize,
                enrolled: v.value.enrolled.join(", "),
            });
        }
        let mut rec = v.value.clone();
        rec.enrolled.push(me.clone());
        match coord.set(path, &rec, Some(v.version)).await {
            Ok(_) => {
                tracing::info!(group, member = me, "enrolled in the group");
                return Ok(rec);
            }
            Err(CoordError::Conflict { .. }) => continue,
            Err(e) => return Err(PbError::Coordination(e.to_string())),
        }
    }
}

/// How long a passing state (an election or take-over step) waits for the next one before it
/// is published on its own. Elections and hand-offs pass through several within milliseconds;
/// writing each would queue ZooKeeper writes on the session just when the take-over's own
/// writes need it. The transitions list in the record still shows every step.
const PASSING_STATE_SETTLE: Duration = Duration::from_millis(20);

async fn publish(handle: EphemeralHandle, mut rx: watch::Receiver<MemberStateRecord>) {
    use crate::types::MemberState::*;
    loop {
        if rx.changed().await.is_err() {
            let _ = handle.remove().await;
            return;
        }
        let mut rec = rx.borrow_and_update().clone();
        if matches!(rec.state, EcAcquireLock | EcWaitingForQuorum | EcElectionInProgress | LeaderWaitingForQuorum)
            && let Ok(Ok(())) = tokio::time::timeout(PASSING_STATE_SETTLE, rx.changed()).await
        {
            rec = rx.borrow_and_update().clone();
        }
        let Ok(data) = coord::encode(handle.path(), &rec) else { continue };
        tracing::debug!(state = %rec.state, "publishing the member state");
        if let Err(e) = handle.set_data(data).await {
            tracing::debug!(error = %e, "publishing the member state failed; the next change retries");
        }
    }
}

fn state_record<S: Replica>(m: &PBMember, core: &Core<S>, transitions: &VecDeque<Transition>) -> MemberStateRecord {
    let st = core.status();
    MemberStateRecord {
        schema: 1,
        member: m.me().clone(),
        state: m.state(),
        role: m.role(),
        term: m.term().max(st.promised),
        leader: m.leader().cloned(),
        last: st.last,
        commit: st.commit,
        applied: st.applied,
        lag: if m.role() == crate::types::Role::Leader { 0 } else { st.lag },
        acking: st.acking,
        transitions: transitions.iter().cloned().collect(),
        updated_at: Utc::now(),
    }
}

struct Driver<S: Replica> {
    coord: Coord,
    cfg: MemberConfig,
    core: Arc<Core<S>>,
    machine: PBMember,
    cache: TreeCache,
    ev_tx: mpsc::UnboundedSender<Event>,
    lock_gen: Arc<AtomicU64>,
    lock_node: Arc<std::sync::Mutex<Option<String>>>,
    status_tx: watch::Sender<MemberStateRecord>,
    transitions: VecDeque<Transition>,
    view_key: Option<(Vec<MemberId>, Option<i32>)>,
    addresses: BTreeMap<MemberId, String>,
    member_handle: Option<EphemeralHandle>,
    router: PeerRouter,
}

/// Reads the group's view (admitted live members, term record) from the cached subtree.
fn view_from(snapshot: &BTreeMap<String, NodeData>, group: &str) -> (GroupView, BTreeMap<MemberId, MemberRecord>) {
    let enrolled: Vec<MemberId> = snapshot
        .get(&paths::group(group))
        .and_then(|n| serde_json::from_slice::<GroupRecord>(&n.data).ok())
        .map(|g| g.enrolled)
        .unwrap_or_default();
    let prefix = format!("{}/", paths::group_members(group));
    let mut records = BTreeMap::new();
    for (p, n) in snapshot.range(prefix.clone()..) {
        let Some(name) = p.strip_prefix(&prefix) else { break };
        if name.contains('/') || !enrolled.iter().any(|e| e == name) {
            continue;
        }
        if let Ok(r) = serde_json::from_slice::<MemberRecord>(&n.data) {
            records.insert(name.to_string(), r);
        }
    }
    let term = snapshot
        .get(&paths::group_term(group))
        .and_then(|n| serde_json::from_slice::<TermRecord>(&n.data).ok().map(|r| (r, n.version)));
    (GroupView { members: records.keys().cloned().collect(), term }, records)
}

impl<S: Replica> Driver<S> {
    async fn run(mut self, mut events: mpsc::UnboundedReceiver<Event>, mut stop: tokio::sync::oneshot::Receiver<()>) {
        let mut tree = self.cache.subscribe();
        let mut session = self.coord.watch_status();
        let mut last_session = *session.borrow_and_update();
        let (lock_tx, mut lock_rx) = mpsc::unbounded_channel::<u64>();
        let mut publish_tick = tokio::time::interval(self.cfg.timings.publish_interval);
        publish_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.refresh_view(&lock_tx);
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => break,
                ev = events.recv() => match ev {
                    Some(ev) => self.dispatch(ev, &lock_tx),
                    None => break,
                },
                generation = lock_rx.recv() => {
                    if generation == Some(self.lock_gen.load(Ordering::SeqCst)) {
                        self.dispatch(Event::LockAcquired, &lock_tx);
                    }
                }
                r = session.changed() => {
                    if r.is_err() { break; }
                    let now = *session.borrow_and_update();
                    let ev = match now.state {
                        SessionState::Suspended => Some(Event::SessionSuspended),
                        SessionState::Expired => Some(Event::SessionExpired),
                        SessionState::Connected if now.epoch != last_session.epoch => {
                            Some(Event::SessionConnected { new_session: true })
                        }
                        SessionState::Connected if last_session.state != SessionState::Connected => {
                            Some(Event::SessionConnected { new_session: false })
                        }
                        SessionState::Closed => break,
                        _ => None,
                    };
                    last_session = now;
                    if let Some(ev) = ev {
                        self.dispatch(ev, &lock_tx);
                    }
                }
                r = tree.recv() => {
                    if let Err(tokio::sync::broadcast::error::RecvError::Closed) = r { break; }
                    self.refresh_view(&lock_tx);
                }
                _ = publish_tick.tick() => self.publish_if_changed(),
            }
        }
        // Graceful stop: a functional leader first hands off to a caught-up follower; then stop
        // leading, and free the lock before the registration goes, so the members that react to
        // the registration's deletion find the lock free.
        let acts = self.machine.handle(Event::Stop);
        for a in acts {
            match a {
                Action::ReleaseLock => continue,
                Action::HandOff { term, version } => self.hand_off(term, version).await,
                a => self.execute(a, &lock_tx),
            }
        }
        self.lock_gen.fetch_add(1, Ordering::SeqCst);
        let node = self.lock_node.lock().unwrap().take();
        if let Some(node) = node {
            let _ = self.coord.delete_if_exists(&node).await;
        }
        if let Some(h) = self.member_handle.take() {
            let _ = h.remove().await;
        }
        self.router.remove(&self.cfg.group);
        tracing::info!(group = self.cfg.group, member = self.cfg.me, "left the group");
    }

    fn refresh_view(&mut self, lock_tx: &mpsc::UnboundedSender<u64>) {
        let snapshot = self.cache.snapshot();
        let (view, records) = view_from(&snapshot, &self.cfg.group);
        let addresses: BTreeMap<MemberId, String> =
            records.iter().map(|(m, r)| (m.clone(), r.address.clone())).collect();
        if addresses != self.addresses {
            self.addresses = addresses.clone();
            self.core.set_peers(addresses);
        }
        let key = (view.members.iter().cloned().collect::<Vec<_>>(), view.term.as_ref().map(|(_, v)| *v));
        if self.view_key.as_ref() != Some(&key) {
            self.view_key = Some(key);
            self.dispatch(Event::View(view), lock_tx);
        }
    }

    fn dispatch(&mut self, ev: Event, lock_tx: &mpsc::UnboundedSender<u64>) {
        let before = (self.machine.state(), self.machine.term(), self.machine.leader().cloned());
        tracing::debug!(group = self.cfg.group, state = %before.0, event = ?ev, "event");
        let acts = self.machine.handle(ev);
        for a in acts {
            self.execute(a, lock_tx);
        }
        let after = (self.machine.state(), self.machine.term(), self.machine.leader().cloned());
        if after.0 != before.0 {
            tracing::info!(group = self.cfg.group, from = %before.0, to = %after.0, term = after.1, "transition");
            self.transitions.push_back(Transition { from: before.0, to: after.0, term: after.1, at: Utc::now() });
            while self.transitions.len() > 16 {
                self.transitions.pop_front();
            }
        }
        self.core.set_member_state(after.0);
        if after.0 == MemberState::FollowerFunctional && before.0 != MemberState::FollowerFunctional {
            self.warm_connections();
        }
        if after != before {
            self.status_tx.send_replace(state_record(&self.machine, &self.core, &self.transitions));
        }
    }

    fn publish_if_changed(&mut self) {
        let rec = state_record(&self.machine, &self.core, &self.transitions);
        let cur = self.status_tx.borrow().clone();
        let same = rec.last == cur.last
            && rec.commit == cur.commit
            && rec.applied == cur.applied
            && rec.lag == cur.lag
            && rec.acking == cur.acking
            && rec.term == cur.term;
        if !same {
            self.status_tx.send_replace(rec);
        }
    }

    fn send_later(&self, ev: Event, after: Duration) {
        let tx = self.ev_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = tx.send(ev);
        });
    }

    fn execute(&mut self, action: Action, lock_tx: &mpsc::UnboundedSender<u64>) {
        tracing::debug!(group = self.cfg.group, ?action, "action");
        match action {
            Action::AcquireLock => self.acquire_lock(lock_tx, None),
            Action::ClaimLeadership { term, version, elector } => {
                let record = TermRecord {
                    schema: 1,
                    term,
                    status: TermStatus::Leading,
                    elector: Some(elector),
                    leader: Some(self.cfg.me.clone()),
                    updated_at: Utc::now(),
                };
                self.acquire_lock(lock_tx, Some((record, version)))
            }
            Action::ReleaseLock => self.release_lock(),
            Action::WriteTerm { precondition, term, status, leader } => {
                let coord = self.coord.clone();
                let tx = self.ev_tx.clone();
                let group = self.cfg.group.clone();
                let me = self.cfg.me.clone();
                tokio::spawn(async move {
                    let (ev, transient) = write_term(&coord, &group, &me, precondition, term, status, leader).await;
                    if transient {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    let _ = tx.send(ev);
                });
            }
            Action::SendPrepare { term, to } => {
                for m in to {
                    let tx = self.ev_tx.clone();
                    let core = self.core.clone();
                    let req = PrepareRequest { group: self.cfg.group.clone(), term, elector: self.cfg.me.clone() };
                    let me = self.cfg.me.clone();
                    let clients = self.core_clients();
                    let timeout = self.cfg.timings.prepare_timeout;
                    tokio::spawn(async move {
                        let res = if m == me {
                            PeerEndpoint::prepare(&*core, req).await.map_err(|e| e.to_string())
                        } else {
                            match clients.client(&m).await {
                                Err(e) => Err(e),
                                Ok(c) => {
                                    match tokio::time::timeout(timeout, c.prepare(datom_common::rpc::ctx(timeout), req))
                                        .await
                                    {
                                        Ok(Ok(r)) => r.map_err(|e| e.to_string()),
                                        Ok(Err(e)) => {
                                            clients.invalidate(&m);
                                            Err(e.to_string())
                                        }
                                        Err(_) => Err("timed out".into()),
                                    }
                                }
                            }
                        };
                        let result = match res {
                            Ok(PrepareResponse::Promised { last }) => Ok(last),
                            Ok(PrepareResponse::Rejected { term }) => Err(PrepareFailure::HigherTerm(term)),
                            Err(e) => {
                                tracing::info!(member = m, error = e, "no answer to the election message");
                                Err(PrepareFailure::Unreachable)
                            }
                        };
                        let _ = tx.send(Event::PrepareReply { term, from: m, result });
                    });
                }
            }
            Action::SendBecomeLeader { term, to, version } => {
                tracing::info!(group = self.cfg.group, term, leader = to, "elected; asking the winner to lead");
                tokio::spawn(self.send_become_leader(term, to, version));
            }
            Action::HandOff { .. } => {
                tracing::warn!(group = self.cfg.group, "a hand-off is only carried out on a graceful stop");
            }
            Action::StartLeading { term } => {
                if let Err(e) = self.core.start_leading(term) {
                    // Only possible when a newer election has reached us meanwhile: step down.
                    tracing::warn!(group = self.cfg.group, error = %e, "cannot start leading");
                    let promised = self.core.promised();
                    if promised > term {
                        let _ = self.ev_tx.send(Event::HigherTerm { term: promised });
                    }
                }
            }
            Action::StopLeading { term } => self.core.stop_leading(term),
            Action::SetAcking(a) => self.core.set_acking(a),
            Action::OnBecomeLeader { term } => self.core.service().on_become_leader(term),
            Action::OnBecomeFollower { term, leader } => {
                self.core.service().on_become_follower(term, leader.as_deref())
            }
            Action::StartTimer(t) => {
                let after = match t {
                    Timer::LeaderAppear { .. } => self.cfg.timings.leader_appear,
                    Timer::ElectionRetry { .. } => self.cfg.timings.election_retry,
                    Timer::PrepareTimeout { .. } => self.cfg.timings.prepare_timeout,
                };
                self.send_later(Event::Timer(t), after);
            }
        }
    }

    /// "Become leader for `term`" to `to`; it has `leader_appear` to take charge either way.
    fn send_become_leader(&self, term: u64, to: MemberId, version: Option<i32>) -> impl Future<Output = ()> + use<S> {
        let clients = self.core_clients();
        let req = BecomeLeaderRequest { group: self.cfg.group.clone(), term, elector: self.cfg.me.clone(), version };
        let timeout = self.cfg.timings.prepare_timeout;
        async move {
            let r = match clients.client(&to).await {
                Ok(c) => tokio::time::timeout(timeout, c.become_leader(datom_common::rpc::ctx(timeout), req)).await,
                Err(e) => {
                    tracing::warn!(
                        leader = to,
                        error = e,
                        "cannot reach the elected leader; it has a timeout to appear"
                    );
                    return;
                }
            };
            if !matches!(r, Ok(Ok(Ok(true)))) {
                tracing::warn!(leader = to, "the elected leader did not accept; it has a timeout to appear");
            }
        }
    }

    /// Carries out [`Action::HandOff`]: see there. Writes `elected <successor>` for `term` and
    /// deletes our lock contender in one multi-op (so the successor finds the lock free), then
    /// asks the successor to lead, with the record's new version.
    async fn hand_off(&mut self, term: u64, version: i32) {
        let Some(successor) = self.core.hand_off_successor(term - 1, self.cfg.timings.hand_off_wait).await else {
            tracing::info!(group = self.cfg.group, "no follower caught up in time: leaving the election to the others");
            return;
        };
        let Some(lock_node) = self.lock_node.lock().unwrap().clone() else { return };
        let path = paths::group_term(&self.cfg.group);
        let record = TermRecord {
            schema: 1,
            term,
            status: TermStatus::Elected,
            elector: Some(self.cfg.me.clone()),
            leader: Some(successor.clone()),
            updated_at: Utc::now(),
        };
        let Ok(data) = coord::encode(&path, &record) else { return };
        let ops = [
            coord::Op::Set { path, data, version: Some(version) },
            coord::Op::Delete { path: lock_node.clone(), version: None },
        ];
        if let Err(e) = self.coord.multi(&ops).await {
            tracing::info!(group = self.cfg.group, error = %e, "hand-off not recorded: leaving the election to the others");
            return;
        }
        // The lock is released: the stop path must not delete a node that is gone.
        self.lock_gen.fetch_add(1, Ordering::SeqCst);
        self.lock_node.lock().unwrap().take();
        tracing::info!(group = self.cfg.group, term, successor, "handing leadership off");
        let mut events = self.cache.subscribe();
        self.send_become_leader(term, successor.clone(), Some(version + 1)).await;
        // Leave once the successor is in charge (bounded): our departure (registration,
        // state, session) is a burst of ZooKeeper writes and notifications that would otherwise
        // compete with its take-over.
        let path = paths::group_term(&self.cfg.group);
        let in_charge = |cache: &TreeCache| {
            cache.get(&path).and_then(|n| serde_json::from_slice::<TermRecord>(&n.data).ok()).is_some_and(|r| {
                r.term > term
                    || (r.term == term && r.status == TermStatus::Leading && r.leader == Some(successor.clone()))
            })
        };
        let wait = async {
            while !in_charge(&self.cache) {
                if let Err(tokio::sync::broadcast::error::RecvError::Closed) = events.recv().await {
                    return;
                }
            }
        };
        if tokio::time::timeout(self.cfg.timings.hand_off_wait, wait).await.is_err() {
            tracing::info!(group = self.cfg.group, successor, "the successor has not taken charge yet; leaving anyway");
        }
    }

    /// Connects to every other member in the background, so that if this member becomes elector
    /// or leader (a hand-off picks a follower) its first messages do not wait for a dial.
    fn warm_connections(&self) {
        let clients = self.core_clients();
        for m in self.addresses.keys().filter(|m| **m != self.cfg.me) {
            let (clients, m) = (clients.clone(), m.clone());
            tokio::spawn(async move {
                if let Err(e) = clients.client(&m).await {
                    tracing::debug!(member = m, error = e, "could not connect ahead of time");
                }
            });
        }
    }

    fn core_clients(&self) -> Arc<dyn PeerClients> {
        self.core.clients()
    }

    /// Queues for the lock: an ephemeral sequential contender; the lowest holds the lock. With a
    /// claim `(record, version)`, the contender is created in one multi-op with the version-
    /// checked write of `record`, answered with [`Event::TermWritten`] before the lock is.
    fn acquire_lock(&mut self, lock_tx: &mpsc::UnboundedSender<u64>, claim: Option<(TermRecord, i32)>) {
        let generation = self.lock_gen.fetch_add(1, Ordering::SeqCst) + 1;
        let coord = self.coord.clone();
        let dir = paths::group_lock(&self.cfg.group);
        let me = self.cfg.me.clone();
        let node_slot = self.lock_node.clone();
        let gen_now = self.lock_gen.clone();
        let tx = lock_tx.clone();
        let cache = self.cache.clone();
        let term = self.machine.term();
        let ev_tx = self.ev_tx.clone();
        let term_path = paths::group_term(&self.cfg.group);
        // A previous contender of ours (same session) is replaced.
        if let Some(old) = node_slot.lock().unwrap().take() {
            let c = coord.clone();
            tokio::spawn(async move { c.delete_if_exists(&old).await });
        }
        tokio::spawn(async move {
            let mut events = cache.subscribe();
            let data = serde_json::to_vec_pretty(&serde_json::json!({
                "schema": 1, "member": me, "term": term, "at": Utc::now(),
            }))
            .expect("serialises");
            let prefix = format!("{dir}/{me}-");
            // A claim lists the contenders in the same breath: the session's requests are
            // answered in order, so the listing sees the claim's contender without waiting for
            // the round trip (or for writes the process queues meanwhile, like state publishes).
            let mut listed = None;
            let node = if let Some((record, version)) = claim {
                let (claimed, children) = tokio::join!(
                    claim_leadership(&coord, &prefix, &data, &term_path, &record, version),
                    coord.children(&dir)
                );
                listed = children.ok();
                match claimed {
                    Ok(node) => {
                        let _ = ev_tx.send(Event::TermWritten {
                            ok: true,
                            record,
                            version: Some(version + 1),
                            current: None,
                        });
                        node
                    }
                    Err(current) => {
                        let _ = ev_tx.send(Event::TermWritten { ok: false, record, version: None, current });
                        return;
                    }
                }
            } else {
                loop {
                    if gen_now.load(Ordering::SeqCst) != generation {
                        return;
                    }
                    match coord.create_raw(&prefix, &data, Mode::EphemeralSequential).await {
                        Ok(n) => break n,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot queue for the group lock; retrying");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            };
            {
                let mut slot = node_slot.lock().unwrap();
                if gen_now.load(Ordering::SeqCst) != generation {
                    drop(slot);
                    let _ = coord.delete_if_exists(&node).await;
                    return;
                }
                *slot = Some(node.clone());
            }
            let mine = paths::basename(&node).to_string();
            loop {
                if gen_now.load(Ordering::SeqCst) != generation {
                    return;
                }
                let children = match listed.take() {
                    // Sent together with the claim; if it was answered first, list again.
                    Some(c) if c.contains(&mine) => Ok(c),
                    _ => coord.children(&dir).await,
                };
                match children {
                    Ok(children) => {
                        if !children.contains(&mine) {
                            // Our contender vanished (session expired): the machine re-queues.
                            return;
                        }
                        let lowest = children.iter().min_by_key(|c| seq_of(c)).cloned();
                        if lowest.as_deref() == Some(mine.as_str()) {
                            let _ = tx.send(generation);
                            return;
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "listing lock contenders failed"),
                }
                // Re-check when the lock directory changes (or after a while, to be safe).
                let wait = async {
                    loop {
                        match events.recv().await {
                            Ok(datom_common::coord::watch::TreeEvent::Removed { path })
                            | Ok(datom_common::coord::watch::TreeEvent::Upsert { path, .. })
                                if path.starts_with(&dir) =>
                            {
                                return;
                            }
                            Ok(datom_common::coord::watch::TreeEvent::Synced) => return,
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                            Err(_) => return,
                            _ => {}
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_millis(1000), wait).await;
            }
        });
    }

    fn release_lock(&mut self) {
        self.lock_gen.fetch_add(1, Ordering::SeqCst);
        if let Some(node) = self.lock_node.lock().unwrap().take() {
            let coord = self.coord.clone();
            tokio::spawn(async move {
                if let Err(e) = coord.delete_if_exists(&node).await {
                    tracing::warn!(node, error = %e, "releasing the group lock failed (it goes with the session)");
                }
            });
        }
    }
}

/// The multi-op of [`Action::ClaimLeadership`]: our lock contender and the `leading` record,
/// version-checked. Returns the contender's path, or on failure the current record.
async fn claim_leadership(
    coord: &Coord,
    prefix: &str,
    contender: &[u8],
    term_path: &str,
    record: &TermRecord,
    version: i32,
) -> Result<String, Option<(TermRecord, i32)>> {
    let data = coord::encode(term_path, record).map_err(|_| None)?;
    let ops = [
        coord::Op::Create { path: prefix.to_string(), data: contender.to_vec(), mode: Mode::EphemeralSequential },
        coord::Op::Set { path: term_path.to_string(), data, version: Some(version) },
    ];
    match coord.multi_created(&ops).await {
        Ok(created) if !created.is_empty() => {
            tracing::info!(term = record.term, "term record written: leading, queued for the lock");
            Ok(created[0].clone())
        }
        Ok(_) => Err(None),
        Err(e) => {
            tracing::warn!(error = %e, term = record.term, "could not claim leadership");
            Err(current_term(coord, term_path).await)
        }
    }
}

/// The term record as it stands, after a version-checked write lost (`None` if unreadable).
async fn current_term(coord: &Coord, path: &str) -> Option<(TermRecord, i32)> {
    coord.get::<TermRecord>(path).await.ok().flatten().map(|v| (v.value, v.version))
}

fn seq_of(name: &str) -> u64 {
    name.rsplit('-').next().and_then(|s| s.parse().ok()).unwrap_or(u64::MAX)
}

/// Writes the term record under `pre`; returns the event and whether the failure was transient.
async fn write_term(
    coord: &Coord,
    group: &str,
    me: &MemberId,
    pre: TermPrecondition,
    term: u64,
    status: TermStatus,
    leader: Option<MemberId>,
) -> (Event, bool) {
    let path = paths::group_term(group);
    let mut record = TermRecord { schema: 1, term, status, elector: Some(me.clone()), leader, updated_at: Utc::now() };
    let res = match pre {
        TermPrecondition::Version(None) => coord.create(&path, &record, Mode::Persistent).await.map(|_| 0),
        TermPrecondition::Version(Some(v)) => coord.set(&path, &record, Some(v)).await,
        TermPrecondition::ElectedFor { term: t } => match coord.get::<TermRecord>(&path).await {
            Ok(Some(cur))
                if cur.value.term == t
                    && cur.value.status == TermStatus::Elected
                    && cur.value.leader.as_ref() == Some(me) =>
            {
                record.elector = cur.value.elector.clone();
                coord.set(&path, &record, Some(cur.version)).await
            }
            Ok(other) => {
                let cur = other.map(|v| (v.value, v.version));
                return (Event::TermWritten { ok: false, record, version: None, current: cur }, false);
            }
            Err(e) => Err(e),
        },
    };
    match res {
        Ok(version) => {
            tracing::info!(group, term, status = ?status, leader = record.leader, "term record written");
            (Event::TermWritten { ok: true, record, version: Some(version), current: None }, false)
        }
        Err(CoordError::Conflict { .. } | CoordError::NodeExists { .. } | CoordError::NoNode { .. }) => {
            let cur = current_term(coord, &path).await;
            (Event::TermWritten { ok: false, record, version: None, current: cur }, false)
        }
        Err(e) => {
            tracing::warn!(group, error = %e, "writing the term record failed");
            (Event::TermWritten { ok: false, record, version: None, current: None }, true)
        }
    }
}
