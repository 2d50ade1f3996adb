//! The connection cache: every peer a datom process talks to (node agents, the active config
//! service, service instances, group members), found through ZooKeeper, connected once, and
//! kept current as peers come, move and go (seed 003, "Connection cache").
//!
//! # Design
//!
//! Built like kube-rs's watcher → reflector store. One [`ConnectionCache`] per process, cheap
//! to clone; it owns:
//!
//! - **The registry** (a reflector): a map [`Peer`] → [`PeerInfo`] kept equal to the
//!   registration znodes in ZooKeeper by a background task holding **one** persistent recursive
//!   watch on `/datom`, filtered to the four registration paths
//!   (`/datom/nodes/<n>/live`, `/datom/configservice/instance`,
//!   `/datom/services/<s>/instances/<n>`, `/datom/groups/<g>/members/<m>`; see
//!   [`crate::paths::parse_registry_path`]). Watch events carry no data, so each changed znode
//!   is read once (events queued together are folded into one batch of concurrent reads).
//!   Whenever the watch stream reports that events may have been missed — its first
//!   registration, a reconnect, a new session after expiry — the task re-lists the whole
//!   registry and replaces the map, emitting the difference as events. A failed read also
//!   falls back to a re-list. So the registry converges to ZooKeeper's contents after any
//!   fault, and no update is lost.
//! - **Connections**: at most one per (peer, client type). Each runs on its own task (the
//!   seed's "each connection runs in its own event base"), which dials, drives the tarpc
//!   connection, and redials with exponential backoff when it breaks, for as long as the peer
//!   stays registered at that address.
//! - **Subscriptions**: a broadcast of [`PeerEvent`]s (Up, Changed, Down), filtered per
//!   subscriber by [`PeerFilter`] (seed 000: a node follows its groups' members; seed 001: an
//!   application is told of cluster transitions).
//!
//! # Guarantees
//!
//! - [`ConnectionCache::get_connection`] resolves at once on a hit. On a miss it takes the
//!   address from the registry, or — if the registry does not have the peer yet — reads the
//!   registration znode from ZooKeeper ("first look in cache followed by zk"), dials, and
//!   caches the connection. Concurrent callers for the same peer share one dial.
//! - It never hangs: it ends in a client, or in [`CacheError::PeerUnavailable`] with the
//!   reason, within the dial timeout (plus one ZooKeeper read on a registry miss).
//! - A registry change is applied, and stale connections are evicted, atomically with respect
//!   to `get_connection`: once the cache has seen a peer move, the next call dials the new
//!   address; once it has seen a peer go, the next call fails with `PeerUnavailable`.
//! - An evicted connection is cut off at once: calls in flight and later calls on clients
//!   handed out earlier fail fast (`RpcError::Shutdown`) instead of waiting for a deadline.
//! - A connection that broke, or whose dial failed, is redialed in the background with
//!   backoff; meanwhile callers fail fast with the last error (like gRPC's transient failure),
//!   so a peer that is registered but unreachable costs callers no waiting.
//! - A peer that re-registers at the same address from a new session (it restarted, e.g. on a
//!   fixed port) is redialed at once instead of after the backoff its broken connection built up.
//! - A peer whose process dies drops out when its session expires and its ephemeral goes:
//!   callers get `PeerUnavailable` within the peer's session timeout (sooner, with the dial
//!   error, once the broken connection has been noticed).
//! - Subscribers first get an Up for every matching peer already registered, then every change
//!   in order. A subscriber that falls behind the broadcast buffer is caught up with the
//!   difference between what it was told and the registry, so its view always converges.
//! - Events describe states, not writes: the cache reads a znode after its event arrives, so
//!   writes in quick succession may fold into one event (a create and a set as one Up, a
//!   delete and a re-create as one Changed with a new `session`). Applying every event in order
//!   to an empty map always yields the registry.
//!
//! # Usage
//!
//! ```no_run
//! # async fn example(coord: datom_common::Coord) -> Result<(), Box<dyn std::error::Error>> {
//! use datom_common::cache::{ConnectionCache, Peer, PeerFilter};
//! use datom_common::rpc::{NodeAgentClient, ctx};
//!
//! let cache = ConnectionCache::start(coord);
//! let agent: NodeAgentClient = cache.get_connection(&Peer::node("n1")).await?;
//! let health = agent.health(ctx(std::time::Duration::from_secs(2))).await?;
//! let mut events = cache.subscribe(PeerFilter::Group { group: "vol1".into() });
//! while let Some(ev) = events.next().await {
//!     println!("{ev:?}");
//! }
//! # let _ = health; Ok(()) }
//! ```
//!
//! Client types are chosen by the caller: `get_connection::<C>` works for any `C` that
//! implements [`Dial`] — [`crate::rpc::NodeAgentClient`], [`crate::rpc::ConfigServiceClient`],
//! or any tarpc client via [`impl_dial!`](crate::impl_dial). One peer can have connections of
//! several client types; each is its own entry.

mod conn;
mod dial;
mod peer;
mod registry;
mod stats;

use std::any::TypeId;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::task::AbortHandle;

pub use dial::{Dial, Dialed, Dispatch};
pub use peer::{BadRecord, Peer, PeerEvent, PeerFilter, PeerInfo, Registry, apply, registry_from_tree, replace};
pub use stats::CacheStats;

use crate::coord::Coord;
use crate::coord::watch::NodeData;
use crate::rpc::{ConfigServiceClient, NodeAgentClient};
use conn::{ConnState, Entry, Slot};
use stats::Counters;

/// Tuning of a [`ConnectionCache`].
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Bound on one dial (TCP connect).
    pub dial_timeout: Duration,
    /// First redial delay after a failed dial.
    pub min_backoff: Duration,
    /// Largest redial delay.
    pub max_backoff: Duration,
    /// Events buffered per subscriber before it is caught up by a diff instead.
    pub event_buffer: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            dial_timeout: Duration::from_secs(2),
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            event_buffer: 4096,
        }
    }
}

/// Why a peer cannot be reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    /// No registration znode.
    #[error("it is not registered ({path} does not exist); check that it is running")]
    NotRegistered {
        /// The registration znode.
        path: String,
    },
    /// The registration is not usable.
    #[error("{0}")]
    BadRecord(#[from] BadRecord),
    /// The registry could not be read.
    #[error("cannot look it up in ZooKeeper: {0}")]
    RegistryUnreachable(String),
    /// The dial was refused or failed.
    #[error("cannot connect to {address}: {error}")]
    DialFailed {
        /// Address dialed.
        address: String,
        /// What failed.
        error: String,
    },
    /// The dial did not finish in time.
    #[error("no connection to {address} within {timeout_ms} ms")]
    DialTimeout {
        /// Address dialed.
        address: String,
        /// The dial timeout.
        timeout_ms: u128,
    },
    /// The connection broke; a redial is pending.
    #[error("the connection to {address} broke ({error}); redialing")]
    Broken {
        /// Address.
        address: String,
        /// Why it broke.
        error: String,
    },
    /// The peer deregistered while the call waited.
    #[error("it went away (its registration was removed)")]
    Gone,
    /// The peer re-registered at the same address from a new session (it restarted) while its
    /// connection waited to redial; retry to dial the new process at once.
    #[error("it restarted (re-registered at {address}); retry")]
    Restarted {
        /// Address.
        address: String,
    },
    /// The peer re-registered elsewhere while the call waited; retry to reach the new address.
    #[error("it moved from {from} to {to}; retry")]
    Moved {
        /// Old address.
        from: String,
        /// New address.
        to: String,
    },
    /// The cache shut down.
    #[error("the connection cache was closed")]
    CacheClosed,
}

/// Errors of [`ConnectionCache::get_connection`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    /// The peer cannot be reached now; `reason` says why.
    #[error("{peer} is unavailable: {reason}")]
    PeerUnavailable {
        /// The peer asked for.
        peer: Peer,
        /// Why.
        reason: Unavailable,
    },
    /// The cache was closed.
    #[error("the connection cache is closed")]
    Closed,
}

/// Registry plus connections, under one lock so a registry change and the eviction it causes
/// are atomic with respect to `get_connection` and `subscribe`.
struct State {
    registry: Registry,
    conns: HashMap<Peer, HashMap<TypeId, Entry>>,
    events: Option<broadcast::Sender<PeerEvent>>,
}

/// Shared by the cache's handles and tasks.
pub(crate) struct Inner {
    coord: Coord,
    config: CacheConfig,
    state: Mutex<State>,
    counters: Counters,
    resyncs: watch::Sender<u64>,
    watch_task: Mutex<Option<AbortHandle>>,
    closed: AtomicBool,
    /// Registry listings started so far (see [`conn::Entry::read_through`]).
    listings: AtomicU64,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies reads of changed registrations.
    fn apply_changes(&self, changes: Vec<(Peer, Option<PeerInfo>)>) {
        let mut st = self.lock();
        let mut events = Vec::new();
        for (peer, info) in changes {
            events.extend(apply(&mut st.registry, &peer, info));
        }
        self.publish(&mut st, events);
    }

    /// Replaces the registry with a full listing.
    /// Starts a registry listing: returns its number, for [`Inner::apply_full`].
    fn listing_started(&self) -> u64 {
        self.listings.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Replaces the registry with listing number `listing`.
    fn apply_full(&self, fresh: Registry, listing: u64) {
        let mut st = self.lock();
        let events = replace(&mut st.registry, fresh);
        self.publish(&mut st, events);
        // Connections made from a ZooKeeper read-through for peers the listing does not have:
        // the peer went away — unless the read was sent after the listing, which may then
        // predate the registration (its watch event is still on the way).
        let orphans: Vec<Peer> = st.conns.keys().filter(|p| !st.registry.contains_key(*p)).cloned().collect();
        for p in orphans {
            let Some(entries) = st.conns.get_mut(&p) else { continue };
            entries.retain(|_, e| {
                let newer = e.read_through.is_some_and(|started| started >= listing);
                if !newer {
                    tracing::debug!(peer = %p, address = e.slot.address(), "evicting connection: not registered");
                    e.close(Unavailable::Gone);
                }
                newer
            });
            if entries.is_empty() {
                st.conns.remove(&p);
            }
        }
        drop(st);
        Counters::inc(&self.counters.resyncs);
        crate::metrics::global().cache.resyncs.inc();
        self.resyncs.send_modify(|n| *n += 1);
    }

    /// Evicts connections the events made stale, then broadcasts the events (still under the
    /// lock, so a subscriber's snapshot and its stream never overlap or leave a gap).
    fn publish(&self, st: &mut State, events: Vec<PeerEvent>) {
        for ev in &events {
            if ev.is_restart() {
                self.drop_failed(st, ev.peer());
            }
            self.evict(st, ev.peer());
        }
        for ev in events {
            Counters::inc(&self.counters.events);
            if let Some(tx) = &st.events {
                let _ = tx.send(ev);
            }
        }
    }

    /// Drops `peer`'s connections that no longer match its registration.
    fn evict(&self, st: &mut State, peer: &Peer) {
        let current = st.registry.get(peer).map(|i| i.address.clone());
        let Some(entries) = st.conns.get_mut(peer) else { return };
        entries.retain(|_, e| {
            let addr = e.slot.address();
            match &current {
                Some(a) if a == addr => true,
                other => {
                    let why = match other {
                        Some(to) => Unavailable::Moved { from: addr.to_string(), to: to.clone() },
                        None => Unavailable::Gone,
                    };
                    tracing::debug!(%peer, address = addr, reason = %why, "evicting connection");
                    e.close(why);
                    Counters::inc(&self.counters.evictions);
                    crate::metrics::global().cache.evictions.inc();
                    false
                }
            }
        });
        if entries.is_empty() {
            st.conns.remove(peer);
        }
    }

    /// `peer` restarted at the same address: drops its connections that are waiting out a redial
    /// backoff (the old process is gone; the backoff may have grown to `max_backoff`), so the
    /// next call dials the new process at once. Connected and dialing entries stay.
    fn drop_failed(&self, st: &mut State, peer: &Peer) {
        let Some(entries) = st.conns.get_mut(peer) else { return };
        entries.retain(|_, e| {
            if !e.slot.is_failed() {
                return true;
            }
            let address = e.slot.address().to_string();
            tracing::debug!(%peer, address, "the peer restarted; redialing at once");
            e.close(Unavailable::Restarted { address });
            Counters::inc(&self.counters.evictions);
            crate::metrics::global().cache.evictions.inc();
            false
        });
        if entries.is_empty() {
            st.conns.remove(peer);
        }
    }

    /// Asked by a connection's task after a failure: keep redialing? If the peer is no longer
    /// registered at this address, the entry is removed and the task should end.
    fn still_wanted<C: Dial>(&self, slot: &Arc<Slot<C>>) -> bool {
        let mut st = self.lock();
        let ours = st.conns.get(&slot.peer).and_then(|m| m.get(&TypeId::of::<C>())).is_some_and(|e| e.holds(slot));
        if !ours {
            return false;
        }
        if st.registry.get(&slot.peer).is_some_and(|i| i.address == slot.address) {
            return true;
        }
        // Registered elsewhere, or not at all (e.g. a read-through connection the registry
        // never confirmed): give the entry up.
        self.evict(&mut st, &slot.peer.clone());
        false
    }

    fn shutdown(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Some(t) = self.watch_task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
        }
        let mut st = self.lock();
        st.events = None;
        for (_, entries) in st.conns.drain() {
            for (_, e) in entries {
                e.close(Unavailable::CacheClosed);
            }
        }
    }
}

/// Stops the cache's tasks when the last [`ConnectionCache`] handle is dropped.
struct Guard(Arc<Inner>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

/// The process's connection cache. Cheap to clone; all clones share one registry, one watch
/// and one set of connections. See the [module docs](self).
#[derive(Clone)]
pub struct ConnectionCache {
    inner: Arc<Inner>,
    _guard: Arc<Guard>,
}

impl std::fmt::Debug for ConnectionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionCache").field("stats", &self.stats()).finish()
    }
}

/// What `get_connection` found under the lock.
enum Found<C> {
    Hit(C),
    Wait(Arc<Slot<C>>, bool),
    NotRegistered,
}

impl ConnectionCache {
    /// Starts a cache with default tuning on `coord` (must be called inside a tokio runtime).
    pub fn start(coord: Coord) -> ConnectionCache {
        Self::start_with(coord, CacheConfig::default())
    }

    /// Starts a cache with `config`.
    pub fn start_with(coord: Coord, config: CacheConfig) -> ConnectionCache {
        let (events, _) = broadcast::channel(config.event_buffer.max(16));
        let inner = Arc::new(Inner {
            coord,
            config,
            state: Mutex::new(State { registry: Registry::new(), conns: HashMap::new(), events: Some(events) }),
            counters: Counters::default(),
            resyncs: watch::channel(0).0,
            watch_task: Mutex::new(None),
            closed: AtomicBool::new(false),
            listings: AtomicU64::new(0),
        });
        let task = tokio::spawn(registry::run(inner.clone()));
        *inner.watch_task.lock().unwrap() = Some(task.abort_handle());
        ConnectionCache { _guard: Arc::new(Guard(inner.clone())), inner }
    }

    /// The coordination client the cache follows.
    pub fn coord(&self) -> &Coord {
        &self.inner.coord
    }

    /// A connected client of type `C` for `peer`: at once on a hit; otherwise after looking
    /// the peer up (registry, then ZooKeeper) and dialing it, sharing the dial with concurrent
    /// callers. Fails with [`CacheError::PeerUnavailable`], never hangs.
    pub async fn get_connection<C: Dial>(&self, peer: &Peer) -> Result<C, CacheError> {
        let found = self.find::<C>(peer, None)?;
        let found = match found {
            Found::NotRegistered => {
                // The registry may lag a registration that just happened: ask ZooKeeper.
                let listings = self.inner.listings.load(Ordering::SeqCst);
                let path = peer.path();
                let read = self.inner.coord.get_raw(&path).await;
                let info = match read {
                    Ok(Some((data, stat))) => {
                        let node = NodeData { data, version: stat.version, ephemeral_owner: stat.ephemeral_owner };
                        PeerInfo::decode(&path, &node).map_err(Unavailable::from)
                    }
                    Ok(None) => Err(Unavailable::NotRegistered { path }),
                    Err(e) => Err(Unavailable::RegistryUnreachable(e.to_string())),
                };
                match info {
                    Ok(info) => self.find::<C>(peer, Some((info.address, listings)))?,
                    Err(reason) => return Err(self.unavailable(peer, reason)),
                }
            }
            f => f,
        };
        let (slot, created) = match found {
            Found::Hit(c) => return Ok(c),
            Found::Wait(slot, created) => (slot, created),
            Found::NotRegistered => unreachable!("find with an address never says NotRegistered"),
        };
        let mut rx = slot.state.subscribe();
        if !created && matches!(*rx.borrow(), ConnState::Dialing) {
            Counters::inc(&self.inner.counters.coalesced);
        }
        let bound = self.inner.config.dial_timeout + Duration::from_millis(500);
        let res = tokio::time::timeout(bound, rx.wait_for(|s| !matches!(s, ConnState::Dialing))).await;
        let reason = match res {
            Ok(Ok(state)) => match &*state {
                ConnState::Ready(c) => return Ok(c.clone()),
                ConnState::Failed(why) | ConnState::Closed(why) => why.clone(),
                ConnState::Dialing => unreachable!("waited for not Dialing"),
            },
            Ok(Err(_)) => Unavailable::CacheClosed,
            Err(_) => Unavailable::DialTimeout {
                address: slot.address.clone(),
                timeout_ms: self.inner.config.dial_timeout.as_millis(),
            },
        };
        Err(self.unavailable(peer, reason))
    }

    fn unavailable(&self, peer: &Peer, reason: Unavailable) -> CacheError {
        Counters::inc(&self.inner.counters.unavailable);
        CacheError::PeerUnavailable { peer: peer.clone(), reason }
    }

    /// Looks up (or creates, starting its dial) the entry for `peer` and `C`. `address` is a
    /// ZooKeeper read-through result, used when the registry does not have the peer.
    fn find<C: Dial>(&self, peer: &Peer, read_through: Option<(String, u64)>) -> Result<Found<C>, CacheError> {
        let inner = &self.inner;
        let mut st = inner.lock();
        if inner.closed.load(Ordering::SeqCst) {
            return Err(CacheError::Closed);
        }
        let ty = TypeId::of::<C>();
        if let Some(e) = st.conns.get(peer).and_then(|m| m.get(&ty)) {
            let slot: Arc<Slot<C>> = e.any.clone().downcast().expect("entries are keyed by type");
            if let ConnState::Ready(c) = &*slot.state.borrow() {
                Counters::inc(&inner.counters.hits);
                crate::metrics::global().cache.hits.inc();
                return Ok(Found::Hit(c.clone()));
            }
            return Ok(Found::Wait(slot, false));
        }
        let (address, read_through) = match (st.registry.get(peer), read_through) {
            (Some(i), _) => (i.address.clone(), None),
            (None, Some((address, listings))) => (address, Some(listings)),
            (None, None) => return Ok(Found::NotRegistered),
        };
        Counters::inc(&inner.counters.misses);
        crate::metrics::global().cache.misses.inc();
        let slot = Arc::new(Slot { peer: peer.clone(), address, state: watch::channel(ConnState::<C>::Dialing).0 });
        let task = tokio::spawn(conn::run(inner.clone(), slot.clone()));
        let entry = Entry { slot: slot.clone(), any: slot.clone(), task: task.abort_handle(), read_through };
        st.conns.entry(peer.clone()).or_default().insert(ty, entry);
        Ok(Found::Wait(slot, true))
    }

    /// [`Self::get_connection`] for the node agent on `node`.
    pub async fn node_agent(&self, node: &str) -> Result<NodeAgentClient, CacheError> {
        self.get_connection(&Peer::node(node)).await
    }

    /// [`Self::get_connection`] for the active config service.
    pub async fn config_service(&self) -> Result<ConfigServiceClient, CacheError> {
        self.get_connection(&Peer::ConfigService).await
    }

    /// Events for peers matching `filter`: first an Up for each one registered now, then every
    /// change. The stream ends when the cache is closed.
    pub fn subscribe(&self, filter: PeerFilter) -> PeerStream {
        let st = self.inner.lock();
        let rx = st.events.as_ref().map(|tx| tx.subscribe());
        let now: Registry = st
            .registry
            .iter()
            .filter(|(p, i)| filter.matches_registration(p, i))
            .map(|(p, i)| (p.clone(), i.clone()))
            .collect();
        drop(st);
        let mut view = Registry::new();
        let pending = replace(&mut view, now).into();
        PeerStream { inner: self.inner.clone(), filter, rx, view, pending }
    }

    /// A copy of the registry: every registered peer as the cache sees it now.
    pub fn peers(&self) -> Registry {
        self.inner.lock().registry.clone()
    }

    /// What the cache knows about `peer`.
    pub fn peer(&self, peer: &Peer) -> Option<PeerInfo> {
        self.inner.lock().registry.get(peer).cloned()
    }

    /// The address `peer` is registered at, as the cache sees it now (cheaper than
    /// [`Self::peer`] when only the address matters).
    pub fn address(&self, peer: &Peer) -> Option<String> {
        self.inner.lock().registry.get(peer).map(|i| i.address.clone())
    }

    /// Waits until the registry has been listed at least once.
    pub async fn wait_synced(&self) {
        let mut rx = self.inner.resyncs.subscribe();
        let _ = rx.wait_for(|n| *n > 0).await;
    }

    /// The number of full re-lists so far; watch it to see a resync complete.
    pub fn watch_resyncs(&self) -> watch::Receiver<u64> {
        self.inner.resyncs.subscribe()
    }

    /// The cache's counters.
    pub fn stats(&self) -> CacheStats {
        let st = self.inner.lock();
        let conns = st.conns.values().map(HashMap::len).sum();
        self.inner.counters.snapshot(st.registry.len(), conns)
    }

    /// Stops the watch and closes every connection; later calls fail with
    /// [`CacheError::Closed`] and subscriptions end. Also done when the last handle drops.
    pub fn close(&self) {
        self.inner.shutdown();
    }
}

/// A subscription: [`PeerEvent`]s for the peers a [`PeerFilter`] selects.
pub struct PeerStream {
    inner: Arc<Inner>,
    filter: PeerFilter,
    rx: Option<broadcast::Receiver<PeerEvent>>,
    /// What this subscriber has been told: the registry as it knows it.
    view: Registry,
    /// Events computed but not yet returned (already applied to `view`).
    pending: VecDeque<PeerEvent>,
}

impl PeerStream {
    /// The next event, or `None` once the cache is closed.
    pub async fn next(&mut self) -> Option<PeerEvent> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some(ev);
            }
            let rx = self.rx.as_mut()?;
            match rx.recv().await {
                Ok(ev) => {
                    if self.filter.matches_event(&ev) {
                        apply(&mut self.view, ev.peer(), ev.info().cloned());
                        return Some(ev);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    // Fell behind: resubscribe and send the difference between what this
                    // subscriber was told and the registry now.
                    tracing::debug!(missed, "peer subscriber lagged; catching up from the registry");
                    let st = self.inner.lock();
                    self.rx = st.events.as_ref().map(|tx| tx.subscribe());
                    let now: Registry = st
                        .registry
                        .iter()
                        .filter(|(p, i)| self.filter.matches_registration(p, i))
                        .map(|(p, i)| (p.clone(), i.clone()))
                        .collect();
                    drop(st);
                    self.pending = replace(&mut self.view, now).into();
                }
                Err(broadcast::error::RecvError::Closed) => {
                    self.rx = None;
                }
            }
        }
    }

    /// The peers this subscriber has been told about so far.
    pub fn view(&self) -> &Registry {
        &self.view
    }

    /// As a [`futures::Stream`].
    pub fn into_stream(self) -> impl futures::Stream<Item = PeerEvent> + Send {
        futures::stream::unfold(self, |mut s| async move { s.next().await.map(|ev| (ev, s)) })
    }
}
