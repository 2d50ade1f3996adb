//! The event manager (seed 002): one process per datom node (router), `datom-ha run --node N`.
//! It mirrors the redundancy database from ZooKeeper (a [`TreeCache`] over
//! `/datom/redundancy`, re-read in full on start and after every session loss: no state lives
//! only on local disk), acts on the redundancy nodes whose `node` is N, and
//!
//! - handles event requests queued by `datom node_event` (claimed with a version check);
//! - watches the peers' presence (`/datom/nodes/<peer>/live`) and raises `peerFail` itself when
//!   one vanishes, and raises `revert` for its primary-mode nodes when N's own presence comes
//!   back ([`decide::on_presence`]);
//! - for each event decides with [`decide::plan`], takes the route table's ZooKeeper lock, runs
//!   the event handler process with a timeout, checks the lock is still held after the write,
//!   and records the result in the redundancy node (`last_event`).
//!
//! Events of one redundancy node are handled in order by its own worker task; different nodes
//! proceed in parallel, serialised per route table by the lock.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use datom_common::coord::watch::{NodeEventKind, TreeCache, TreeEvent, WatchEvent};
use datom_common::coord::{Coord, CoordConfig, CoordError, decode, encode};
use datom_common::names::{self, NameKind};
use datom_common::paths;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::control::{HaControl, HaStatus};
use crate::decide::{self, Event, Plan, Watched};
use crate::handler::{self, HandlerJob};
use crate::lock::{TableLock, ensure_container};
use crate::record::{
    EventRequest, EventSource, HaServerRecord, LastEvent, LockRecord, Outcome, RedundancyNode, RequestState,
    ResultKind, SCHEMA, hostname,
};

/// Done event requests kept per redundancy node; older ones are pruned.
const KEEP_DONE_REQUESTS: usize = 10;

/// How to run an event manager.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// ZooKeeper.
    pub zk: CoordConfig,
    /// The datom node (router) this manager acts for.
    pub node: String,
    /// Control RPC listen address (loopback).
    pub listen: String,
    /// The binary to run as the event handler (`<exe> handle-event`).
    pub handler_exe: PathBuf,
}

#[derive(Default)]
struct StatusInner {
    synced: bool,
    owned: Vec<u16>,
    presence: BTreeMap<String, Option<bool>>,
    events_handled: u64,
}

struct Ctx {
    coord: Coord,
    node: String,
    exe: PathBuf,
    cache: TreeCache,
    cancel: CancellationToken,
    started_at: DateTime<Utc>,
    status: Mutex<StatusInner>,
}

impl Ctx {
    fn claim_id(&self) -> String {
        format!("{}:{}", self.node, std::process::id())
    }
}

enum Job {
    Auto(Event),
    Request(String),
}

struct Worker {
    tx: mpsc::Sender<Job>,
    handle: tokio::task::JoinHandle<()>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Default)]
struct State {
    owned: BTreeMap<u16, RedundancyNode>,
    workers: HashMap<u16, Worker>,
    presence: HashMap<String, bool>,
    watchers: HashMap<String, AbortOnDrop>,
    dispatched: HashSet<String>,
    /// Unreadable records already warned about, by path and version.
    unreadable: HashSet<(String, i32)>,
}

fn watched(rec: &RedundancyNode) -> Watched {
    Watched {
        index: rec.index,
        mode: rec.mode,
        peer: rec.peer.clone(),
        auto_peer_fail: rec.auto_peer_fail,
        auto_revert: rec.auto_revert,
    }
}

impl State {
    fn enqueue(&mut self, index: u16, job: Job) {
        let Some(w) = self.workers.get(&index) else { return };
        if let Job::Auto(ev) = &job {
            tracing::info!(index, event = ev.as_str(), "raising event automatically");
        }
        if let Err(e) = w.tx.try_send(job) {
            tracing::warn!(index, "event queue full; dropping an event");
            if let mpsc::error::TrySendError::Full(Job::Request(p)) = e {
                self.dispatched.remove(&p);
            }
        }
    }
}

/// Runs the event manager for `config.node` until `shutdown` resolves or `ha_api -c stop`
/// arrives. Refuses to start when another manager for the node is registered.
pub async fn run(config: ManagerConfig, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
    names::validate(NameKind::Node, &config.node)?;
    let coord = Coord::connect(config.zk.clone()).await?;
    let res = run_with(coord.clone(), config, shutdown).await;
    coord.close().await;
    res
}

async fn run_with(
    coord: Coord,
    config: ManagerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    if coord.exists(paths::REDUNDANCY).await?.is_none() {
        return Err(crate::error::HaError::NotInitialized.into());
    }
    for p in [paths::HA, paths::HA_SERVERS] {
        ensure_container(&coord, p).await?;
    }
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {} for the control service", config.listen))?;
    let address = listener.local_addr()?.to_string();
    let started_at = Utc::now();
    let me = HaServerRecord {
        schema: SCHEMA,
        node: config.node.clone(),
        address: address.clone(),
        pid: std::process::id(),
        host: hostname(),
        version: datom_common::records::datom_version(),
        started_at,
    };
    let server_path = paths::ha_server(&config.node);
    let wait = coord.negotiated_timeout() + Duration::from_secs(1);
    let registration = match coord.register_ephemeral(&server_path, encode(&server_path, &me)?, wait).await {
        Ok(h) => h,
        Err(CoordError::NodeExists { .. }) => {
            let other = crate::db::server_record(&coord, &config.node).await.ok().flatten();
            let who = other
                .map(|o| format!("pid {} on host {}, control address {}", o.pid, o.host, o.address))
                .unwrap_or_else(|| "unknown".into());
            anyhow::bail!(
                "an HA event manager for node {:?} is already running ({who}); stop it first with \
                 `datom ha_api -c stop --node {}`",
                config.node,
                config.node
            );
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!(node = config.node, address, "HA event manager started");

    let cancel = CancellationToken::new();
    let cache = coord.tree_cache(paths::REDUNDANCY);
    let mut cache_rx = cache.subscribe();
    let ctx = Arc::new(Ctx {
        coord: coord.clone(),
        node: config.node.clone(),
        exe: config.handler_exe.clone(),
        cache: cache.clone(),
        cancel: cancel.clone(),
        started_at,
        status: Mutex::new(StatusInner::default()),
    });

    let server = ControlServer { ctx: ctx.clone() };
    let rpc_cancel = cancel.clone();
    let rpc = tokio::spawn(async move {
        datom_common::serve_tcp!(listener, server.serve(), rpc_cancel.cancelled());
    });

    let (ptx, mut prx) = mpsc::unbounded_channel::<(String, bool)>();
    let mut st = State::default();
    let mut synced = cache.syncs() > 0;
    if synced {
        rescan(&ctx, &mut st, &ptx);
    }
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = cancel.cancelled() => break,
            r = cache_rx.recv() => {
                let mut saw_sync = matches!(r, Ok(TreeEvent::Synced) | Err(broadcast::error::RecvError::Lagged(_)));
                loop {
                    match cache_rx.try_recv() {
                        Ok(TreeEvent::Synced) | Err(broadcast::error::TryRecvError::Lagged(_)) => saw_sync = true,
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                synced |= saw_sync || cache.syncs() > 0;
                if synced {
                    rescan(&ctx, &mut st, &ptx);
                }
            }
            Some((name, now)) = prx.recv() => {
                if !st.watchers.contains_key(&name) {
                    continue;
                }
                let before = st.presence.insert(name.clone(), now);
                tracing::info!(node = name, present = now, "presence changed");
                // Publish first: workers re-check presence from the status when a job runs.
                publish_status(&ctx, &st, synced);
                let nodes: Vec<Watched> = st.owned.values().map(watched).collect();
                for (index, ev) in decide::on_presence(&ctx.node, &nodes, &name, before, now) {
                    st.enqueue(index, Job::Auto(ev));
                }
            }
        }
    }

    // Graceful stop: take no new work, let in-flight events finish (bounded), then close the
    // session so the registration and any lock go at once.
    tracing::info!(node = config.node, "HA event manager stopping");
    cancel.cancel();
    let bound = st.owned.values().map(|r| Duration::from_millis(r.timeout_ms * 2)).max().unwrap_or_default()
        + Duration::from_secs(2);
    let handles: Vec<_> = st.workers.drain().map(|(_, w)| w.handle).collect();
    st.watchers.clear();
    if tokio::time::timeout(bound.min(Duration::from_secs(60)), futures::future::join_all(handles)).await.is_err() {
        tracing::warn!("in-flight events did not finish in time; abandoning them");
    }
    let _ = registration.remove().await;
    rpc.abort();
    Ok(())
}

fn publish_status(ctx: &Ctx, st: &State, synced: bool) {
    let mut s = ctx.status.lock().unwrap();
    s.synced = synced;
    s.owned = st.owned.keys().copied().collect();
    s.presence = st.watchers.keys().map(|n| (n.clone(), st.presence.get(n).copied())).collect();
}

/// Re-derives everything from the cache snapshot: owned nodes, workers, presence watchers, and
/// event requests to dispatch.
fn rescan(ctx: &Arc<Ctx>, st: &mut State, ptx: &mpsc::UnboundedSender<(String, bool)>) {
    let snap = ctx.cache.snapshot();
    let mut nodes: BTreeMap<u16, RedundancyNode> = BTreeMap::new();
    let mut requests: BTreeMap<u16, Vec<(String, EventRequest)>> = BTreeMap::new();
    for (path, nd) in &snap {
        let Some(rest) = path.strip_prefix(paths::REDUNDANCY).and_then(|r| r.strip_prefix('/')) else { continue };
        let mut parts = rest.split('/');
        let Some(index) = parts.next().and_then(|s| s.parse::<u16>().ok()) else { continue };
        match (parts.next(), parts.next()) {
            (None, _) => match decode::<RedundancyNode>(path, &nd.data) {
                Ok(r) if r.node == ctx.node => {
                    nodes.insert(index, r);
                }
                Ok(_) => {}
                Err(e) => {
                    if st.unreadable.insert((path.clone(), nd.version)) {
                        tracing::warn!(error = %e, "skipping an unreadable redundancy node");
                    }
                }
            },
            (Some(child), None) if child.starts_with(paths::REDUNDANCY_EVENT_PREFIX) => {
                if let Ok(req) = decode::<EventRequest>(path, &nd.data) {
                    requests.entry(index).or_default().push((path.clone(), req));
                }
            }
            _ => {}
        }
    }

    let gone: Vec<u16> = st.owned.keys().filter(|i| !nodes.contains_key(i)).copied().collect();
    for i in gone {
        st.owned.remove(&i);
        st.workers.remove(&i);
        tracing::info!(index = i, "no longer acting on redundancy node");
    }
    let mut fresh = Vec::new();
    for (i, rec) in nodes {
        let is_new = st.owned.get(&i).is_none_or(|prev| prev.peer != rec.peer);
        if let std::collections::hash_map::Entry::Vacant(e) = st.workers.entry(i) {
            e.insert(spawn_worker(ctx.clone(), i));
            tracing::info!(index = i, route = rec.route, table = rec.route_table, "acting on redundancy node");
        }
        if is_new {
            fresh.push(watched(&rec));
        }
        st.owned.insert(i, rec);
    }
    for w in fresh {
        if let Some(ev) = decide::on_new_node(&w, st.presence.get(&w.peer).copied()) {
            st.enqueue(w.index, Job::Auto(ev));
        }
    }

    let mut needed: HashSet<String> = st.owned.values().map(|r| r.peer.clone()).collect();
    needed.insert(ctx.node.clone());
    st.watchers.retain(|n, _| needed.contains(n));
    st.presence.retain(|n, _| needed.contains(n));
    for n in needed {
        if !st.watchers.contains_key(&n) {
            st.watchers.insert(n.clone(), AbortOnDrop(spawn_presence(ctx.coord.clone(), n, ptx.clone())));
        }
    }

    st.dispatched.retain(|p| snap.contains_key(p));
    let mine = ctx.claim_id();
    for (i, mut reqs) in requests {
        if !st.owned.contains_key(&i) {
            continue;
        }
        reqs.sort_by(|a, b| a.0.cmp(&b.0));
        for (p, r) in reqs {
            let takeable = match r.state {
                RequestState::Pending => true,
                // Claimed by an earlier run of this manager that died mid-event: redo it
                // (every event is idempotent).
                RequestState::Running => r.claimed_by.as_deref() != Some(mine.as_str()),
                RequestState::Done => false,
            };
            if takeable && st.dispatched.insert(p.clone()) {
                st.enqueue(i, Job::Request(p));
            }
        }
    }
    publish_status(ctx, st, true);
}

/// Follows the presence of datom node `name` (its live ephemeral), sending each change.
fn spawn_presence(
    coord: Coord,
    name: String,
    tx: mpsc::UnboundedSender<(String, bool)>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let path = paths::node_live(&name);
        let mut stream = coord.watch(&path, false);
        let mut last: Option<bool> = None;
        while let Some(ev) = stream.next().await {
            let now = match ev {
                WatchEvent::Node { kind: NodeEventKind::Deleted, .. } => false,
                WatchEvent::Node { kind: NodeEventKind::Created | NodeEventKind::DataChanged, .. } => true,
                WatchEvent::Node { kind: NodeEventKind::ChildrenChanged, .. } => continue,
                WatchEvent::Resync => loop {
                    match coord.exists(&path).await {
                        Ok(s) => break s.is_some(),
                        Err(CoordError::Closed) => return,
                        Err(e) => {
                            tracing::debug!(path, error = %e, "presence check failed; retrying");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                },
            };
            if last != Some(now) {
                last = Some(now);
                if tx.send((name.clone(), now)).is_err() {
                    return;
                }
            }
        }
    })
}

fn spawn_worker(ctx: Arc<Ctx>, index: u16) -> Worker {
    let (tx, mut rx) = mpsc::channel::<Job>(256);
    let handle = tokio::spawn(async move {
        while let Some(job) = rx.recv().await {
            if ctx.cancel.is_cancelled() {
                return;
            }
            handle_job(&ctx, index, job).await;
        }
    });
    Worker { tx, handle }
}

/// Claims a queued request with a version-checked write; `None` if someone else has it or it
/// is gone.
async fn claim(ctx: &Ctx, path: &str) -> Option<(EventRequest, i32)> {
    let v = ctx.coord.get::<EventRequest>(path).await.ok()??;
    let mine = ctx.claim_id();
    let takeable = match v.value.state {
        RequestState::Pending => true,
        RequestState::Running => v.value.claimed_by.as_deref() != Some(mine.as_str()),
        RequestState::Done => false,
    };
    if !takeable {
        return None;
    }
    let mut r = v.value;
    r.state = RequestState::Running;
    r.claimed_by = Some(mine);
    let version = ctx.coord.set(path, &r, Some(v.version)).await.ok()?;
    Some((r, version))
}

async fn handle_job(ctx: &Ctx, index: u16, job: Job) {
    let start = Instant::now();
    let (event, source, claimed) = match job {
        Job::Auto(ev) => (ev, EventSource::Auto, None),
        Job::Request(path) => match claim(ctx, &path).await {
            Some((req, version)) => (Event::parse(&req.event), EventSource::Cli, Some((path, version, req))),
            None => return,
        },
    };
    let outcome = match ctx.coord.get::<RedundancyNode>(&paths::redundancy(index)).await {
        Ok(Some(v)) if v.value.node == ctx.node => process(ctx, &v.value, &event, source).await,
        Ok(_) => Outcome::failed("the redundancy node was deleted or given to another node before the event ran"),
        Err(e) => Outcome::failed(format!("cannot read the redundancy node: {e}")),
    };
    let last = LastEvent::new(event.as_str(), source, outcome, start.elapsed().as_millis() as u64, &ctx.node);
    tracing::info!(
        index,
        event = last.event,
        source = ?last.source,
        result = last.result.as_str(),
        ms = last.duration_ms,
        detail = last.detail,
        "event handled"
    );
    record_last_event(ctx, index, &last).await;
    if let Some((path, version, mut req)) = claimed {
        req.state = RequestState::Done;
        req.outcome = Some(last);
        if let Err(e) = ctx.coord.set(&path, &req, Some(version)).await {
            tracing::debug!(path, error = %e, "cannot mark the request done (withdrawn or deleted)");
        }
        prune_requests(ctx, index).await;
    }
    ctx.status.lock().unwrap().events_handled += 1;
}

/// Decides and, when the plan says so, reads/writes the route under the route table's lock.
async fn process(ctx: &Ctx, rec: &RedundancyNode, event: &Event, source: EventSource) -> Outcome {
    // Records are validated by the commands that write them; one edited by hand is refused here.
    if let Err(e) = crate::params::validate_record(rec, "set_params") {
        return Outcome::failed(format!("the redundancy node is not valid, so nothing was done: {e}"));
    }
    let plan = decide::plan(event, rec.mode);
    if let Plan::Nothing { reason } = &plan {
        return Outcome::skipped(reason.clone());
    }
    let timeout = Duration::from_millis(rec.timeout_ms);
    let lock_record = LockRecord {
        schema: SCHEMA,
        route_table: rec.route_table.clone(),
        node: ctx.node.clone(),
        index: rec.index,
        event: event.as_str().to_string(),
        pid: std::process::id(),
    };
    let lock = match TableLock::acquire(&ctx.coord, &lock_record, timeout).await {
        Ok(l) => l,
        Err(e) => return Outcome::failed(e),
    };
    // An automatic event may have waited behind others (or for the lock) while presence
    // changed back; re-check it now that this router holds the table.
    if source == EventSource::Auto {
        let (peer, own) = {
            let s = ctx.status.lock().unwrap();
            (s.presence.get(&rec.peer).copied().flatten(), s.presence.get(&ctx.node).copied().flatten())
        };
        if let Err(reason) = decide::auto_still_applies(event, &rec.peer, peer, own) {
            lock.release().await;
            return Outcome::skipped(reason);
        }
    }
    let job = HandlerJob {
        index: rec.index,
        node: ctx.node.clone(),
        event: event.as_str().to_string(),
        plan,
        driver: rec.driver,
        params: rec.params.clone(),
        route_table: rec.route_table.clone(),
        route: rec.route.clone(),
        next_hop: rec.next_hop.clone(),
    };
    let mut outcome = handler::run_handler(&ctx.exe, &job, timeout).await;
    let wrote = matches!(outcome.result, ResultKind::Updated | ResultKind::Rewritten);
    if wrote && !lock.still_held().await {
        outcome.result = ResultKind::Failed;
        outcome.detail = format!(
            "{}; but the route table lock was lost during the write (ZooKeeper session expired), so the peer may \
             have written too — send verify to check",
            outcome.detail
        );
    }
    lock.release().await;
    outcome
}

async fn record_last_event(ctx: &Ctx, index: u16, last: &LastEvent) {
    let path = paths::redundancy(index);
    for attempt in 0..20 {
        let cur = match ctx.coord.get::<RedundancyNode>(&path).await {
            Ok(Some(v)) => v,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(path, error = %e, attempt, "cannot read to record the result; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if cur.value.node != ctx.node {
            return;
        }
        let mut rec = cur.value;
        rec.last_event = Some(last.clone());
        match ctx.coord.set(&path, &rec, Some(cur.version)).await {
            Ok(_) | Err(CoordError::NoNode { .. }) => return,
            Err(CoordError::Conflict { .. }) => continue,
            Err(e) => {
                tracing::debug!(path, error = %e, attempt, "cannot record the result; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    tracing::warn!(path, "gave up recording the last event");
}

/// Deletes done requests of `index` beyond the newest [`KEEP_DONE_REQUESTS`] (`node_event`
/// deletes its own; these are ones whose requester went away).
async fn prune_requests(ctx: &Ctx, index: u16) {
    let prefix = format!("{}/{}", paths::redundancy(index), paths::REDUNDANCY_EVENT_PREFIX);
    let snap = ctx.cache.snapshot();
    let mut done: Vec<&String> = snap
        .range(prefix.clone()..)
        .take_while(|(p, _)| p.starts_with(&prefix))
        .filter(|(p, n)| decode::<EventRequest>(p, &n.data).is_ok_and(|r| r.state == RequestState::Done))
        .map(|(p, _)| p)
        .collect();
    done.sort();
    if done.len() > KEEP_DONE_REQUESTS {
        for p in &done[..done.len() - KEEP_DONE_REQUESTS] {
            let _ = ctx.coord.delete_if_exists(p).await;
        }
    }
}

#[derive(Clone)]
struct ControlServer {
    ctx: Arc<Ctx>,
}

impl HaControl for ControlServer {
    async fn ping(self, _: tarpc::context::Context) -> HaStatus {
        let s = self.ctx.status.lock().unwrap();
        let session = self.ctx.coord.status();
        HaStatus {
            node: self.ctx.node.clone(),
            pid: std::process::id(),
            version: datom_common::records::datom_version(),
            started_at: self.ctx.started_at,
            session: session.state,
            session_timeout_ms: session.negotiated_timeout.as_millis() as u64,
            synced: s.synced,
            owned: s.owned.clone(),
            presence: s.presence.clone(),
            events_handled: s.events_handled,
        }
    }

    async fn stop(self, _: tarpc::context::Context) {
        tracing::info!("stop requested through ha_api");
        self.ctx.cancel.cancel();
    }
}
