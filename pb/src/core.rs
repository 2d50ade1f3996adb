//! The replication core of one member: its journal, its promised term, and — as leader — the
//! replication of the journal to the other members, the commit point and the acknowledgements;
//! as follower, the handling of the leader's messages. It also applies committed entries to the
//! service's db, in order, exactly once.
//!
//! Safety rests on four rules (argued in `docs/primary-backup.md`):
//! 1. a member promises a term durably before answering its election message, and from then on
//!    refuses messages of older terms (terms are fencing tokens);
//! 2. a write is acknowledged only once a quorum has journaled it (fsync'd), and the commit
//!    point only advances over entries of the leader's own term;
//! 3. a leader whose ZooKeeper session is not connected acknowledges nothing;
//! 4. the election chooses the most complete journal by (term, index) among a quorum.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datom_common::coord::{SessionState, SessionStatus};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::clients::PeerClients;
use crate::journal::Journal;
use crate::log::{AppendCheck, check_append, choose_successor, next_after_mismatch, quorum_commit};
use crate::rpc::{
    AppendRequest, AppendResponse, BecomeLeaderRequest, GroupInfo, GroupInfoResponse, PbError, PeerEndpoint,
    PrepareRequest, PrepareResponse,
};
use crate::state::Event;
use crate::types::{Entry, EntryId, MemberId, MemberState, quorum};

/// What a replicated service provides: its db's position and how to apply committed entries,
/// plus the seed's hooks.
pub trait Replica: Send + Sync + 'static {
    /// The last journal entry the db has applied (recorded with the db itself).
    fn applied(&self) -> EntryId;
    /// Applies committed entries, in order; each entry is applied exactly once.
    fn apply(&self, entries: &[Entry]) -> Result<(), String>;
    /// The seed's `onBecomeLeader()`.
    fn on_become_leader(&self, _term: u64) {}
    /// The seed's `onBecomeFollower()`.
    fn on_become_follower(&self, _term: u64, _leader: Option<&str>) {}
}

/// Tunables of the core.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Group name.
    pub group: String,
    /// This member.
    pub me: MemberId,
    /// Group size.
    pub replicas: usize,
    /// Leader → follower heartbeat interval.
    pub heartbeat: Duration,
    /// A follower that does not answer within this is not functional.
    pub peer_timeout: Duration,
    /// Interval of group info messages to members that are not functional.
    pub group_info_interval: Duration,
    /// Entries per append at most.
    pub max_batch: usize,
}

#[derive(Serialize, Deserialize)]
struct TermFile {
    schema: u32,
    promised: u64,
}

struct Waiter {
    term: u64,
    tx: oneshot::Sender<Result<EntryId, PbError>>,
}

#[derive(Debug, Clone)]
struct Progress {
    next: u64,
    matched: u64,
    functional: bool,
    acked_seq: u64,
}

struct Leading {
    term: u64,
    noop: u64,
    progress: BTreeMap<MemberId, Progress>,
    seq: u64,
    stop: watch::Sender<bool>,
    functional_reported: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Following {
    term: u64,
    leader: MemberId,
    leader_last: u64,
}

struct Inner {
    promised: u64,
    leading: Option<Leading>,
    following: Option<Following>,
    commit: u64,
    acking: bool,
    waiters: BTreeMap<u64, Waiter>,
    peers: BTreeMap<MemberId, String>,
    state: MemberState,
    /// A graceful hand-off is under way: the leader acknowledges nothing more.
    stepping_down: bool,
}

/// A snapshot of the core for status records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreStatus {
    /// Promised term.
    pub promised: u64,
    /// Last journal entry.
    pub last: EntryId,
    /// Commit point.
    pub commit: u64,
    /// Applied to the db.
    pub applied: u64,
    /// Entries behind the leader.
    pub lag: u64,
    /// Acknowledging writes (leader).
    pub acking: bool,
    /// Functional members (leader's view, itself included); 0 when not leading.
    pub functional: usize,
}

/// What [`Core::open`] found when it reconciled the journal with the db.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconciled {
    /// The db is at the journal's end, or both are empty.
    InSync,
    /// The db was behind: entries `from..=to` are replayed from the journal now (known
    /// committed); later ones wait for the leader's commit point.
    Replay {
        /// First replayed.
        from: u64,
        /// Last replayed now.
        to: u64,
        /// Journal entries beyond `to`, pending the leader's word.
        pending: u64,
    },
    /// The db has applied entries the journal no longer holds (its tail was lost): they come
    /// back from the leader and are not applied twice.
    JournalBehind {
        /// Db position.
        applied: EntryId,
        /// Journal end.
        journal: EntryId,
    },
    /// The journal disagreed with the db at the db's position: the journal was rolled back to
    /// before it (the db holds only committed entries, so it wins).
    RolledBack {
        /// First journal index removed.
        from: u64,
    },
}

/// The replication core; see the module docs.
pub struct Core<S: Replica> {
    cfg: CoreConfig,
    quorum: usize,
    journal: Journal,
    service: Arc<S>,
    clients: Arc<dyn PeerClients>,
    events: mpsc::UnboundedSender<Event>,
    term_file: PathBuf,
    append_lock: tokio::sync::Mutex<()>,
    promise_lock: tokio::sync::Mutex<()>,
    inner: Mutex<Inner>,
    last_tx: watch::Sender<u64>,
    confirm_tx: watch::Sender<u64>,
    progress_tx: watch::Sender<u64>,
    commit_tx: watch::Sender<u64>,
    applied_tx: watch::Sender<u64>,
    session: watch::Receiver<SessionStatus>,
    reconciled: Reconciled,
}

fn io_err(e: impl std::fmt::Display) -> PbError {
    PbError::Io(e.to_string())
}

/// Storage failed under us: the only safe reaction for a replica is to stop (fail-stop).
fn fatal(what: &str, e: impl std::fmt::Display) -> ! {
    tracing::error!(error = %e, "{what}; stopping: a replica must not continue with storage it cannot trust");
    std::process::exit(70)
}

impl<S: Replica> Core<S> {
    /// Opens the member's journal and promised term under `dir`, reconciles the journal with
    /// the service's db, and starts applying committed entries.
    pub async fn open(
        cfg: CoreConfig,
        dir: &Path,
        service: Arc<S>,
        clients: Arc<dyn PeerClients>,
        events: mpsc::UnboundedSender<Event>,
        session: watch::Receiver<SessionStatus>,
    ) -> Result<Arc<Core<S>>, PbError> {
        std::fs::create_dir_all(dir).map_err(|e| PbError::Io(format!("create {}: {e}", dir.display())))?;
        let (journal, report) = Journal::open(&dir.join("journal.log")).map_err(io_err)?;
        if let Some(t) = &report.truncated {
            tracing::warn!(
                group = cfg.group,
                offset = t.offset,
                removed_bytes = t.removed_bytes,
                reason = t.reason,
                "journal tail was torn: truncated to the last good record {}",
                journal.last()
            );
        }
        let term_file = dir.join("term.json");
        let file_term = match std::fs::read(&term_file) {
            Ok(data) => {
                serde_json::from_slice::<TermFile>(&data)
                    .map_err(|e| PbError::Io(format!("{} is corrupt: {e}", term_file.display())))?
                    .promised
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(PbError::Io(format!("read {}: {e}", term_file.display()))),
        };
        let applied = service.applied();
        let mut last = journal.last();
        let mut commit = applied.index;
        let mut reconciled = Reconciled::InSync;
        if applied.index > 0 && applied.index <= last.index && journal.term_at(applied.index) != Some(applied.term) {
            tracing::error!(
                group = cfg.group,
                db = %applied,
                journal_term = journal.term_at(applied.index),
                "the journal disagrees with the db at the db's last applied entry: rolling the journal back to before it"
            );
            journal.truncate_from(applied.index).await.map_err(io_err)?;
            reconciled = Reconciled::RolledBack { from: applied.index };
            last = journal.last();
        }
        if applied.index > last.index {
            tracing::warn!(
                group = cfg.group,
                db = %applied,
                journal = %last,
                "the db has applied entries past the journal's end (the journal lost its tail): they will be \
                 re-fetched from the leader and not applied twice"
            );
            if reconciled == Reconciled::InSync {
                reconciled = Reconciled::JournalBehind { applied, journal: last };
            }
        } else if applied.index < last.index {
            let known = report.commit_hint.min(last.index);
            if known > applied.index {
                commit = known;
                reconciled = Reconciled::Replay { from: applied.index + 1, to: known, pending: last.index - known };
            }
            tracing::warn!(
                group = cfg.group,
                db = %applied,
                journal = %last,
                replay_to = known.max(applied.index),
                "the db is behind the journal (the process stopped between journal write and db apply, or \
                 before the last db checkpoint): replaying the entries known committed now; the rest wait for the \
                 leader's commit point"
            );
        }
        let promised = file_term.max(last.term);
        let core = Arc::new(Core {
            quorum: quorum(cfg.replicas),
            cfg,
            journal,
            service,
            clients,
            events,
            term_file,
            append_lock: tokio::sync::Mutex::new(()),
            promise_lock: tokio::sync::Mutex::new(()),
            inner: Mutex::new(Inner {
                promised,
                leading: None,
                following: None,
                commit,
                acking: false,
                waiters: BTreeMap::new(),
                peers: BTreeMap::new(),
                state: MemberState::FollowerWaitToJoinGroup,
                stepping_down: false,
            }),
            last_tx: watch::channel(last.index).0,
            confirm_tx: watch::channel(0).0,
            progress_tx: watch::channel(0).0,
            commit_tx: watch::channel(commit).0,
            applied_tx: watch::channel(applied.index).0,
            session,
            reconciled,
        });
        tokio::spawn(core.clone().apply_loop());
        Ok(core)
    }

    /// What the startup reconciliation did.
    pub fn reconciled(&self) -> &Reconciled {
        &self.reconciled
    }

    /// The configuration.
    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    /// The promised term.
    pub fn promised(&self) -> u64 {
        self.inner.lock().unwrap().promised
    }

    /// The journal.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The peer client cache.
    pub fn clients(&self) -> Arc<dyn PeerClients> {
        self.clients.clone()
    }

    /// The replicated service.
    pub fn service(&self) -> &Arc<S> {
        &self.service
    }

    /// Told by the driver after every transition.
    pub fn set_member_state(&self, state: MemberState) {
        self.inner.lock().unwrap().state = state;
    }

    /// A status snapshot.
    pub fn status(&self) -> CoreStatus {
        let g = self.inner.lock().unwrap();
        let last = self.journal.last();
        let lag = g.following.as_ref().map(|f| f.leader_last.saturating_sub(last.index)).unwrap_or(0);
        CoreStatus {
            promised: g.promised,
            last,
            commit: g.commit,
            applied: *self.applied_tx.borrow(),
            lag,
            acking: g.acking && g.leading.is_some(),
            functional: g.leading.as_ref().map(|l| self.functional_count(l)).unwrap_or(0),
        }
    }

    /// Waits until the db has applied `index`.
    pub async fn wait_applied(&self, index: u64) {
        let mut rx = self.applied_tx.subscribe();
        let _ = rx.wait_for(|a| *a >= index).await;
    }

    fn session_connected(&self) -> bool {
        self.session.borrow().state == SessionState::Connected
    }

    fn emit(&self, ev: Event) {
        let _ = self.events.send(ev);
    }

    /// Raises the promised term to `term` (no-op if not higher), durably. Fences at once:
    /// from the moment the in-memory value rises, older terms are refused and a leader of an
    /// older term acknowledges nothing.
    async fn promise(&self, term: u64) -> Result<bool, PbError> {
        {
            let mut g = self.inner.lock().unwrap();
            if term <= g.promised {
                return Ok(false);
            }
            g.promised = term;
            if let Some(l) = &g.leading
                && l.term < term
            {
                let err = PbError::SteppedDown { term: l.term };
                fail_all(&mut g.waiters, &err);
                g.acking = false;
            }
        }
        let _serial = self.promise_lock.lock().await;
        let current = self.inner.lock().unwrap().promised;
        let data = serde_json::to_vec_pretty(&TermFile { schema: 1, promised: current }).expect("serialises");
        let path = self.term_file.clone();
        match tokio::task::spawn_blocking(move || datom_common::fsutil::write_atomic(&path, &data)).await {
            Ok(Ok(())) => Ok(true),
            Ok(Err(e)) => fatal("cannot persist the promised term", e),
            Err(e) => fatal("cannot persist the promised term", e),
        }
    }

    /// The registered members other than this one, with their replication addresses.
    pub fn set_peers(self: &Arc<Self>, peers: BTreeMap<MemberId, String>) {
        for (m, a) in &peers {
            self.clients.set_address(m, Some(a.clone()));
        }
        let mut spawn = Vec::new();
        let mut changed = false;
        {
            let mut g = self.inner.lock().unwrap();
            for m in g.peers.keys() {
                if !peers.contains_key(m) {
                    self.clients.set_address(m, None);
                }
            }
            g.peers = peers.into_iter().filter(|(m, _)| *m != self.cfg.me).collect();
            let names: BTreeSet<MemberId> = g.peers.keys().cloned().collect();
            if let Some(l) = &mut g.leading {
                let before = l.progress.len();
                l.progress.retain(|m, _| names.contains(m));
                changed |= before != l.progress.len();
                for m in names {
                    if !l.progress.contains_key(&m) {
                        let next = self.journal.last().index + 1;
                        l.progress.insert(m.clone(), Progress { next, matched: 0, functional: false, acked_seq: 0 });
                        spawn.push((l.term, m, l.stop.subscribe()));
                    }
                }
            }
            if changed {
                self.report_functional(&mut g);
            }
        }
        for (term, m, stop) in spawn {
            tokio::spawn(self.clone().replicate(term, m, stop));
        }
    }

    // ----- leader -----

    /// Starts leading `term` (which this member must have promised): appends the no-op, starts
    /// the journal writer and one replicator per member.
    pub fn start_leading(self: &Arc<Self>, term: u64) -> Result<(), PbError> {
        let mut spawn = Vec::new();
        let stop_rx;
        {
            let mut g = self.inner.lock().unwrap();
            if g.promised != term {
                return Err(PbError::StaleTerm { term, current: g.promised });
            }
            if let Some(l) = g.leading.take() {
                l.stop.send_replace(true);
            }
            let last = self.journal.last();
            let noop = last.index + 1;
            self.journal.push(&[Entry { term, index: noop, data: String::new() }], g.commit).map_err(io_err)?;
            let (stop, rx) = watch::channel(false);
            stop_rx = rx;
            let mut progress = BTreeMap::new();
            for m in g.peers.keys() {
                progress.insert(m.clone(), Progress { next: noop, matched: 0, functional: false, acked_seq: 0 });
                spawn.push((m.clone(), stop.subscribe()));
            }
            g.leading = Some(Leading { term, noop, progress, seq: 0, stop, functional_reported: usize::MAX });
            g.following = None;
            g.acking = false;
            g.stepping_down = false;
            tracing::info!(group = self.cfg.group, term, noop, "leading: appended the term's no-op");
        }
        self.last_tx.send_modify(|v| *v += 1);
        tokio::spawn(self.clone().leader_writer(term, stop_rx));
        for (m, stop) in spawn {
            tokio::spawn(self.clone().replicate(term, m, stop));
        }
        Ok(())
    }

    /// Stops leading `term`: pending writes fail, replication stops.
    pub fn stop_leading(&self, term: u64) {
        let mut g = self.inner.lock().unwrap();
        if g.leading.as_ref().is_some_and(|l| l.term == term) {
            let l = g.leading.take().expect("checked");
            l.stop.send_replace(true);
            fail_all(&mut g.waiters, &PbError::SteppedDown { term });
            g.acking = false;
            tracing::info!(group = self.cfg.group, term, "stopped leading");
        }
    }

    /// Graceful stop of the leader of `term`: acknowledges nothing more (pending writes fail
    /// with "stepped down", their outcome unknown), then waits up to `wait` for a functional
    /// follower whose journal has everything ours has, and names it. Replication keeps running
    /// meanwhile, so in-flight entries reach it. `None` when no follower caught up in time or
    /// we no longer lead `term`.
    pub async fn hand_off_successor(&self, term: u64, wait: Duration) -> Option<MemberId> {
        {
            let mut g = self.inner.lock().unwrap();
            if g.leading.as_ref().is_none_or(|l| l.term != term) {
                return None;
            }
            g.stepping_down = true;
            g.acking = false;
            fail_all(&mut g.waiters, &PbError::SteppedDown { term });
        }
        let mut progress = self.progress_tx.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            {
                let g = self.inner.lock().unwrap();
                let l = g.leading.as_ref().filter(|l| l.term == term && g.promised == term)?;
                if l.progress.is_empty() {
                    return None; // nobody to hand off to (a single replica, or all others gone)
                }
                let last = self.journal.last().index;
                let successor = choose_successor(last, l.progress.iter().map(|(m, p)| (m, p.matched, p.functional)));
                if successor.is_some() {
                    return successor;
                }
            }
            match tokio::time::timeout_at(deadline, progress.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }

    /// Whether the leader acknowledges writes (LEADER_FUNCTIONAL and connected). Turning it
    /// off fails every pending write at once.
    pub fn set_acking(&self, acking: bool) {
        let mut g = self.inner.lock().unwrap();
        g.acking = acking;
        if !acking {
            let err = if self.session_connected() { PbError::QuorumLost } else { PbError::Suspended };
            fail_all(&mut g.waiters, &err);
        }
    }

    fn refusal(&self, g: &Inner) -> PbError {
        match &g.leading {
            None => PbError::NotLeader {
                leader: g.following.as_ref().map(|f| f.leader.clone()),
                term: g.following.as_ref().map(|f| f.term).unwrap_or(g.promised),
            },
            Some(l) if g.promised != l.term || g.stepping_down => PbError::SteppedDown { term: l.term },
            Some(_) if !self.session_connected() => PbError::Suspended,
            Some(l) => PbError::WaitingForQuorum {
                functional: self.functional_count(l),
                quorum: self.quorum,
                replicas: self.cfg.replicas,
            },
        }
    }

    /// Leader: journals `data` and returns a receiver that resolves once a quorum has journaled
    /// it (the acknowledgement) or the write can no longer be acknowledged.
    pub fn submit(&self, data: String) -> Result<oneshot::Receiver<Result<EntryId, PbError>>, PbError> {
        if data.is_empty() {
            return Err(PbError::Invalid("an operation must not be empty".into()));
        }
        let mut g = self.inner.lock().unwrap();
        let term = match &g.leading {
            Some(l) if g.acking && g.promised == l.term && self.session_connected() => l.term,
            _ => return Err(self.refusal(&g)),
        };
        let index = self.journal.last().index + 1;
        self.journal.push(&[Entry { term, index, data }], g.commit).map_err(io_err)?;
        let (tx, rx) = oneshot::channel();
        g.waiters.insert(index, Waiter { term, tx });
        drop(g);
        self.last_tx.send_replace(index);
        Ok(rx)
    }

    /// Leader: confirms with a quorum that it still leads, then waits until the db has applied
    /// everything committed when the read began. After this a read of the db is linearizable.
    pub async fn read_barrier(&self, timeout: Duration) -> Result<(), PbError> {
        let (seq, read_index) = {
            let mut g = self.inner.lock().unwrap();
            let ok = matches!(&g.leading, Some(l) if g.acking && g.promised == l.term) && self.session_connected();
            if !ok {
                return Err(self.refusal(&g));
            }
            let commit = g.commit;
            let l = g.leading.as_mut().expect("checked");
            l.seq += 1;
            (l.seq, commit)
        };
        let mut progress = self.progress_tx.subscribe();
        self.confirm_tx.send_modify(|v| *v += 1);
        let confirmed = async {
            loop {
                {
                    let g = self.inner.lock().unwrap();
                    let Some(l) = &g.leading else { return false };
                    if g.promised != l.term {
                        return false;
                    }
                    let acks = 1 + l.progress.values().filter(|p| p.acked_seq >= seq).count();
                    if acks >= self.quorum {
                        return true;
                    }
                }
                if progress.changed().await.is_err() {
                    return false;
                }
            }
        };
        match tokio::time::timeout(timeout, confirmed).await {
            Ok(true) => {}
            _ => return Err(PbError::Unconfirmed),
        }
        if tokio::time::timeout(timeout, self.wait_applied(read_index)).await.is_err() {
            return Err(PbError::Unconfirmed);
        }
        Ok(())
    }

    fn functional_count(&self, l: &Leading) -> usize {
        let me = usize::from(self.journal.durable().index >= l.noop);
        me + l.progress.values().filter(|p| p.functional).count()
    }

    fn report_functional(&self, g: &mut Inner) {
        let Some(l) = &g.leading else { return };
        let n = self.functional_count(l);
        let term = l.term;
        if g.leading.as_ref().map(|l| l.functional_reported) != Some(n) {
            g.leading.as_mut().expect("checked").functional_reported = n;
            self.emit(Event::QuorumChanged { term, functional: n });
        }
    }

    /// Recomputes the commit point and acknowledges what it covers.
    fn advance_commit(&self, g: &mut Inner) {
        let Some(l) = &g.leading else { return };
        if g.promised != l.term {
            return;
        }
        let mut matches: Vec<u64> = l.progress.values().map(|p| p.matched).collect();
        matches.push(self.journal.durable().index);
        let term = l.term;
        let c = quorum_commit(&matches, self.quorum, g.commit, term, |i| self.journal.term_at(i));
        if c <= g.commit {
            return;
        }
        g.commit = c;
        self.commit_tx.send_replace(c);
        let rest = g.waiters.split_off(&(c + 1));
        let ready = std::mem::replace(&mut g.waiters, rest);
        let ok = g.acking && self.session_connected();
        for (index, w) in ready {
            let res = if !ok {
                Err(if self.session_connected() { PbError::QuorumLost } else { PbError::Suspended })
            } else if w.term == term {
                Ok(EntryId { term, index })
            } else {
                Err(PbError::SteppedDown { term: w.term })
            };
            let _ = w.tx.send(res);
        }
    }

    async fn leader_writer(self: Arc<Self>, term: u64, mut stop: watch::Receiver<bool>) {
        let mut last_rx = self.last_tx.subscribe();
        loop {
            last_rx.borrow_and_update();
            if self.journal.durable().index < self.journal.last().index {
                if let Err(e) = self.journal.flush().await {
                    fatal("journal write failed", e);
                }
                let mut g = self.inner.lock().unwrap();
                if g.leading.as_ref().is_some_and(|l| l.term == term) {
                    self.advance_commit(&mut g);
                    self.report_functional(&mut g);
                }
                continue;
            }
            if *stop.borrow() {
                return;
            }
            tokio::select! {
                _ = last_rx.changed() => {}
                _ = stop.changed() => {}
            }
        }
    }

    fn still_leading(&self, term: u64, peer: &str) -> bool {
        let g = self.inner.lock().unwrap();
        g.leading.as_ref().is_some_and(|l| l.term == term && l.progress.contains_key(peer))
    }

    fn peer_failed(&self, term: u64, peer: &str) {
        let mut g = self.inner.lock().unwrap();
        if let Some(l) = &mut g.leading
            && l.term == term
            && let Some(p) = l.progress.get_mut(peer)
        {
            p.functional = false;
        }
        self.report_functional(&mut g);
    }

    async fn saw_higher_term(&self, term: u64) {
        match self.promise(term).await {
            Ok(true) => self.emit(Event::HigherTerm { term }),
            Ok(false) => {}
            Err(e) => tracing::warn!(group = self.cfg.group, error = %e, "cannot record a higher term"),
        }
    }

    /// Replicates the journal to one member for as long as this member leads `term`.
    async fn replicate(self: Arc<Self>, term: u64, peer: MemberId, mut stop: watch::Receiver<bool>) {
        let mut last_rx = self.last_tx.subscribe();
        let mut confirm_rx = self.confirm_tx.subscribe();
        let mut backoff = Duration::from_millis(20);
        // The first append doubles as group info (it carries the term, the leader and the
        // commit point, and a member that lacks the previous entry answers with its position),
        // which saves a round trip when a leader takes over members that are in step with it,
        // as after a hand-off. Group info proper goes to members that failed or refused.
        let mut joined = true;
        let timeout = self.cfg.peer_timeout;
        let ctx = || datom_common::rpc::ctx(timeout);
        loop {
            if *stop.borrow() || !self.still_leading(term, &peer) {
                return;
            }
            let pause = |d: Duration| {
                let mut stop = stop.clone();
                async move {
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = stop.changed() => {}
                    }
                }
            };
            let client = match self.clients.client(&peer).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(group = self.cfg.group, peer, error = %e, "cannot reach member");
                    self.peer_failed(term, &peer);
                    joined = false;
                    pause(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                    continue;
                }
            };
            if !joined {
                let info = {
                    let g = self.inner.lock().unwrap();
                    let Some(l) = g.leading.as_ref().filter(|l| l.term == term) else { return };
                    let mut functional: Vec<MemberId> =
                        l.progress.iter().filter(|(_, p)| p.functional).map(|(m, _)| m.clone()).collect();
                    functional.push(self.cfg.me.clone());
                    GroupInfo {
                        group: self.cfg.group.clone(),
                        term,
                        leader: self.cfg.me.clone(),
                        leader_last: self.journal.last(),
                        commit: g.commit,
                        functional,
                    }
                };
                match tokio::time::timeout(timeout, client.group_info(ctx(), info)).await {
                    Ok(Ok(Ok(GroupInfoResponse::Joined { last }))) => {
                        let mut g = self.inner.lock().unwrap();
                        if let Some(p) = g.leading.as_mut().and_then(|l| l.progress.get_mut(&peer)) {
                            p.next = p.next.min(last.index + 1).max(1);
                        }
                        joined = true;
                    }
                    Ok(Ok(Ok(GroupInfoResponse::Stale { term: t }))) => {
                        self.saw_higher_term(t).await;
                        return;
                    }
                    Ok(Ok(Err(e))) => {
                        tracing::debug!(group = self.cfg.group, peer, error = %e, "member refused group info");
                        self.peer_failed(term, &peer);
                        pause(self.cfg.group_info_interval).await;
                        continue;
                    }
                    _ => {
                        self.clients.invalidate(&peer);
                        self.peer_failed(term, &peer);
                        pause(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_millis(500));
                        continue;
                    }
                }
            }
            // Build the append: what the member lacks, up to a batch.
            last_rx.borrow_and_update();
            confirm_rx.borrow_and_update();
            let (next, commit, seq) = {
                let g = self.inner.lock().unwrap();
                let Some(l) = g.leading.as_ref().filter(|l| l.term == term) else { return };
                let Some(p) = l.progress.get(&peer) else { return };
                (p.next, g.commit, l.seq)
            };
            let last = self.journal.last();
            let next = next.min(last.index + 1).max(1);
            let prev = EntryId { term: self.journal.term_at(next - 1).unwrap_or(0), index: next - 1 };
            let entries = match self.journal.entries(next, last.index, self.cfg.max_batch) {
                Ok(e) => e,
                Err(e) => fatal("cannot read the journal", e),
            };
            let sent_upto = prev.index + entries.len() as u64;
            let req = AppendRequest {
                group: self.cfg.group.clone(),
                term,
                leader: self.cfg.me.clone(),
                prev,
                entries,
                commit,
                leader_last: last.index,
            };
            match tokio::time::timeout(timeout, client.append(ctx(), req)).await {
                Ok(Ok(Ok(AppendResponse::Ok { matched }))) => {
                    backoff = Duration::from_millis(20);
                    let mut g = self.inner.lock().unwrap();
                    if let Some(l) = g.leading.as_mut().filter(|l| l.term == term) {
                        let noop = l.noop;
                        if let Some(p) = l.progress.get_mut(&peer) {
                            let matched = matched.min(sent_upto);
                            p.matched = p.matched.max(matched);
                            p.next = matched + 1;
                            p.acked_seq = p.acked_seq.max(seq);
                            p.functional = p.matched >= noop;
                        }
                        self.advance_commit(&mut g);
                        self.report_functional(&mut g);
                    }
                    drop(g);
                    self.progress_tx.send_modify(|v| *v += 1);
                }
                Ok(Ok(Ok(AppendResponse::Mismatch { last: flast, conflict }))) => {
                    let next = next_after_mismatch(next, flast, conflict, |t| self.journal.last_index_of_term(t));
                    let mut g = self.inner.lock().unwrap();
                    if let Some(p) = g.leading.as_mut().and_then(|l| l.progress.get_mut(&peer)) {
                        p.next = next;
                        p.functional = false;
                    }
                    self.report_functional(&mut g);
                    continue;
                }
                Ok(Ok(Ok(AppendResponse::Stale { term: t }))) => {
                    self.saw_higher_term(t).await;
                    return;
                }
                Ok(Ok(Err(e))) => {
                    tracing::warn!(group = self.cfg.group, peer, error = %e, "member refused an append");
                    self.peer_failed(term, &peer);
                    joined = false;
                    pause(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                    continue;
                }
                _ => {
                    self.clients.invalidate(&peer);
                    self.peer_failed(term, &peer);
                    joined = false;
                    pause(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                    continue;
                }
            }
            // Anything more to send right away?
            let more = {
                let g = self.inner.lock().unwrap();
                let next = g.leading.as_ref().and_then(|l| l.progress.get(&peer)).map(|p| p.next).unwrap_or(0);
                next <= self.journal.last().index
            };
            if more {
                continue;
            }
            tokio::select! {
                _ = last_rx.changed() => {}
                _ = confirm_rx.changed() => {}
                _ = tokio::time::sleep(self.cfg.heartbeat) => {}
                _ = stop.changed() => {}
            }
        }
    }

    // ----- both roles -----

    async fn apply_loop(self: Arc<Self>) {
        let mut commit_rx = self.commit_tx.subscribe();
        loop {
            let target = *commit_rx.borrow_and_update();
            let mut applied = *self.applied_tx.borrow();
            while applied < target {
                let entries = match self.journal.entries(applied + 1, target, 4096) {
                    Ok(e) => e,
                    Err(e) => fatal("cannot read the journal", e),
                };
                let Some(last) = entries.last().map(|e| e.index) else { break };
                let db = self.service.applied().index;
                let todo: Vec<Entry> = entries.into_iter().filter(|e| e.index > db).collect();
                if !todo.is_empty()
                    && let Err(e) = self.service.apply(&todo)
                {
                    fatal("the db refused a committed entry", e);
                }
                applied = last;
                self.applied_tx.send_replace(applied);
            }
            if commit_rx.changed().await.is_err() {
                return;
            }
        }
    }

    // ----- follower side of the RPC -----

    async fn flush_journal(&self) {
        if let Err(e) = self.journal.flush().await {
            fatal("journal write failed", e);
        }
    }

    /// Records the leader we follow; tells the state machine when that is news.
    fn follow(&self, term: u64, leader: &MemberId, leader_last: u64) {
        let mut g = self.inner.lock().unwrap();
        let changed = g.following.as_ref().is_none_or(|f| f.term != term || &f.leader != leader);
        g.following = Some(Following { term, leader: leader.clone(), leader_last });
        let joined = matches!(g.state, MemberState::FollowerSyncing | MemberState::FollowerFunctional);
        if changed || !joined {
            self.emit(Event::GroupInfo { term, leader: leader.clone() });
        }
    }

    async fn handle_prepare(&self, req: PrepareRequest) -> Result<PrepareResponse, PbError> {
        let _serial = self.append_lock.lock().await;
        let promised = self.promised();
        if req.term < promised {
            return Ok(PrepareResponse::Rejected { term: promised });
        }
        if self.promise(req.term).await? {
            self.inner.lock().unwrap().following = None;
            tracing::info!(group = self.cfg.group, term = req.term, elector = req.elector, "promised a new term");
            self.emit(Event::ElectionMessage { term: req.term });
        }
        // Entries journaled by a leader of an older term must be durable before we report.
        self.flush_journal().await;
        Ok(PrepareResponse::Promised { last: self.journal.durable() })
    }

    async fn handle_group_info(&self, req: GroupInfo) -> Result<GroupInfoResponse, PbError> {
        let _serial = self.append_lock.lock().await;
        let promised = self.promised();
        if req.term < promised {
            return Ok(GroupInfoResponse::Stale { term: promised });
        }
        self.promise(req.term).await?;
        self.flush_journal().await;
        self.follow(req.term, &req.leader, req.leader_last.index);
        Ok(GroupInfoResponse::Joined { last: self.journal.durable() })
    }

    async fn handle_append(&self, req: AppendRequest) -> Result<AppendResponse, PbError> {
        let _serial = self.append_lock.lock().await;
        let promised = self.promised();
        if req.term < promised {
            return Ok(AppendResponse::Stale { term: promised });
        }
        self.promise(req.term).await?;
        self.flush_journal().await;
        self.follow(req.term, &req.leader, req.leader_last);
        let last = self.journal.last();
        let check = check_append(
            req.term,
            last,
            |i| self.journal.term_at(i),
            |t, upto| self.journal.first_index_of_term(t, upto),
            req.term,
            req.prev,
            &req.entries,
        );
        match check {
            AppendCheck::Stale { term } => Ok(AppendResponse::Stale { term }),
            AppendCheck::Mismatch { last, conflict } => {
                let state = self.inner.lock().unwrap().state;
                if state == MemberState::FollowerFunctional {
                    self.emit(Event::SyncLost { term: req.term });
                }
                Ok(AppendResponse::Mismatch { last, conflict })
            }
            AppendCheck::Accept { truncate_from, skip } => {
                if let Some(from) = truncate_from {
                    let commit = self.inner.lock().unwrap().commit;
                    if from <= commit {
                        return Err(PbError::Io(format!(
                            "refusing to roll back entry {from}: it is committed (commit point {commit})"
                        )));
                    }
                    tracing::info!(
                        group = self.cfg.group,
                        from,
                        to = last.index,
                        term = req.term,
                        "rolling back journal entries the leader does not have"
                    );
                    self.journal.truncate_from(from).await.map_err(io_err)?;
                }
                let new = &req.entries[skip..];
                if !new.is_empty()
                    && let Err(e) = self.journal.append(new, req.commit).await
                {
                    fatal("journal write failed", e);
                }
                let matched = req.prev.index + req.entries.len() as u64;
                let state = {
                    let mut g = self.inner.lock().unwrap();
                    let c = req.commit.min(matched);
                    if c > g.commit {
                        g.commit = c;
                        self.commit_tx.send_replace(c);
                    }
                    g.state
                };
                // The machine may not have moved to SYNCING yet when the first append (which
                // doubles as group info) lands; it ignores Synced outside SYNCING, and the
                // GroupInfo emitted by `follow` above is ahead of this in the event queue.
                if state != MemberState::FollowerFunctional && matched >= req.leader_last {
                    self.emit(Event::Synced { term: req.term });
                }
                Ok(AppendResponse::Ok { matched })
            }
        }
    }
}

fn fail_all(waiters: &mut BTreeMap<u64, Waiter>, err: &PbError) {
    for (_, w) in std::mem::take(waiters) {
        let _ = w.tx.send(Err(err.clone()));
    }
}

impl<S: Replica> PeerEndpoint for Core<S> {
    fn prepare(&self, req: PrepareRequest) -> BoxFuture<'_, Result<PrepareResponse, PbError>> {
        Box::pin(self.handle_prepare(req))
    }

    fn become_leader(&self, req: BecomeLeaderRequest) -> BoxFuture<'_, Result<bool, PbError>> {
        Box::pin(async move {
            // Serialised with appends: once promised, no append of an older term gets in.
            let _serial = self.append_lock.lock().await;
            if req.term < self.promised() {
                return Ok(false);
            }
            // The winner of an election promised the term already; a hand-off's successor
            // promises it here, before it leads.
            if self.promise(req.term).await? {
                self.inner.lock().unwrap().following = None;
            }
            self.flush_journal().await;
            tracing::info!(group = self.cfg.group, term = req.term, elector = req.elector, "asked to become leader");
            self.emit(Event::BecomeLeader { term: req.term, version: req.version, elector: req.elector.clone() });
            Ok(true)
        })
    }

    fn group_info(&self, req: GroupInfo) -> BoxFuture<'_, Result<GroupInfoResponse, PbError>> {
        Box::pin(self.handle_group_info(req))
    }

    fn append(&self, req: AppendRequest) -> BoxFuture<'_, Result<AppendResponse, PbError>> {
        Box::pin(self.handle_append(req))
    }
}
