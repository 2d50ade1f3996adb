//! "Get a client for member X": the small interface the protocol needs from a connection cache
//! ([`PeerClients`]), and its implementation over the process's shared connection cache
//! ([`CachePeerClients`], with [`PbPeerClient`] dialed by the cache through pb's nodelay
//! transport).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use datom_common::cache::{CacheError, ConnectionCache, Dial, Dialed, Peer, PeerFilter};
use futures::future::BoxFuture;
use tokio::sync::watch;

use crate::rpc::PbPeerClient;
use crate::types::MemberId;

/// Requests one replication connection may have in flight. Replication pipelines many appends
/// (and every member's election and group-info messages) over one connection per peer, so
/// tarpc's default of 1,000 is far too low under load.
pub const MAX_IN_FLIGHT_REQUESTS: usize = 100_000;

/// Hands out connected replication clients by member name.
pub trait PeerClients: Send + Sync + 'static {
    /// Records (or forgets, with `None`) a member's registered address.
    fn set_address(&self, member: &str, address: Option<String>);
    /// A connected client for `member`, dialing if needed.
    fn client(&self, member: &str) -> BoxFuture<'static, Result<PbPeerClient, String>>;
    /// Drops a cached connection that failed, so the next call redials.
    fn invalidate(&self, member: &str);
}

/// The cluster token this process presents when it dials replication peers; unset or `None`
/// on an open cluster.
///
/// Process-wide on purpose: the connection cache creates connections by client type through
/// the stateless [`Dial::dial`], so the dialer cannot be handed the token per call, and a
/// process belongs to one cluster (its one `--auth-file`), so one token serves every group it
/// hosts. The volume server sets it once at startup, before it starts any group.
static CLUSTER_TOKEN: OnceLock<Option<String>> = OnceLock::new();

/// Sets the cluster token replication dials present ([`CLUSTER_TOKEN`]): call once, before the
/// first group starts. Setting the same value again is fine; another value is an error (one
/// process, one cluster).
pub fn set_cluster_token(token: Option<String>) -> Result<(), String> {
    let current = CLUSTER_TOKEN.get_or_init(|| token.clone());
    if *current == token {
        Ok(())
    } else {
        Err("this process already dials replication peers with another cluster token (one process serves one \
             cluster: one --auth-file)"
            .into())
    }
}

/// The token replication dials present.
fn cluster_token() -> Option<&'static str> {
    CLUSTER_TOKEN.get().and_then(|t| t.as_deref())
}

/// The connection cache dials members with pb's own transport: Nagle off (see [`crate::net`]),
/// the connection handshake with the process's cluster token ([`set_cluster_token`]), and
/// [`MAX_IN_FLIGHT_REQUESTS`]. Like `datom_common::impl_dial!`, it hands the connection's
/// driver to the cache, which runs it on the connection's task (so it sees the connection
/// break, and cuts it off when the member goes away or moves). A refused handshake is a dial
/// error with the member's reason (the cache reports `PeerUnavailable` with it), logged here
/// once per attempt.
impl Dial for PbPeerClient {
    async fn dial(addr: String, timeout: Duration) -> std::io::Result<Dialed<Self>> {
        let transport = match crate::net::dial_peer(&addr, timeout, cluster_token()).await {
            Ok(t) => t,
            Err(e) => {
                if e.kind() == std::io::ErrorKind::PermissionDenied {
                    tracing::warn!(address = addr, error = %e, "a replication peer refused the connection");
                }
                return Err(e);
            }
        };
        let mut config = tarpc::client::Config::default();
        config.max_in_flight_requests = MAX_IN_FLIGHT_REQUESTS;
        let new = PbPeerClient::new(config, transport);
        let dispatch = new.dispatch;
        Ok(Dialed { client: new.client, dispatch: Box::pin(async move { dispatch.await.map_err(|e| e.to_string()) }) })
    }
}

/// [`PeerClients`] for one group over the process's shared [`ConnectionCache`]: member `m` is
/// the cache's peer `Peer::group_member(group, m)`, found at its registration
/// `/datom/groups/<group>/members/<m>` (a `MemberRecord`, whose `address` the cache dials).
/// Every group a process hosts gets its own `CachePeerClients` over the same cache.
///
/// # The driver's view and the cache's registry
///
/// The driver learns of members from its own watch on the group, the cache from its watch on
/// the whole registry: two views of the same znodes, on the same ZooKeeper session, each
/// updated by its own read after the notification. They can disagree for a moment, and
/// [`PeerClients::client`] is called right after the driver's view changed:
///
/// - *The cache does not have the member yet*: nothing to do here. `get_connection` then reads
///   the registration from ZooKeeper itself; that read is ordered after the notification the
///   driver saw (same session), so it finds the registration, or a newer state.
/// - *The cache has the member at another address than the driver saw* (the member restarted
///   on a new port and one of the two views has not caught up): dialing the cache's address
///   could reach a stale process, or fail. So `client` waits for the two views to agree,
///   woken by the cache's events for the group and by the driver's `set_address` (whichever
///   view is behind catches up), bounded by the dial timeout; then it asks the cache anyway.
///   This never dials around the cache, so every replication connection is a cache entry
///   and is evicted when the member moves or goes.
#[derive(Clone)]
pub struct CachePeerClients {
    inner: Arc<Inner>,
}

struct Inner {
    cache: ConnectionCache,
    group: String,
    settle: Duration,
    /// Members' addresses as the driver's view of the group has them (`set_address`).
    known: Mutex<HashMap<MemberId, String>>,
    /// Bumped whenever `known` changes, to wake callers waiting for the views to agree.
    known_changed: watch::Sender<u64>,
}

impl CachePeerClients {
    /// Clients for the members of `group`, from `cache`. `settle` bounds how long a call waits
    /// for the cache's registry and the driver's view to agree on a member's address (use the
    /// dial timeout).
    pub fn new(cache: ConnectionCache, group: impl Into<String>, settle: Duration) -> Self {
        CachePeerClients {
            inner: Arc::new(Inner {
                cache,
                group: group.into(),
                settle,
                known: Mutex::new(HashMap::new()),
                known_changed: watch::channel(0).0,
            }),
        }
    }

    /// The cache the clients come from.
    pub fn cache(&self) -> &ConnectionCache {
        &self.inner.cache
    }

    /// The group whose members these clients reach.
    pub fn group(&self) -> &str {
        &self.inner.group
    }
}

impl Inner {
    /// Whether the driver and the cache both know `member` but at different addresses.
    fn disagree(&self, peer: &Peer, member: &str) -> bool {
        let expected = self.known.lock().unwrap_or_else(|p| p.into_inner()).get(member).cloned();
        match (expected, self.cache.address(peer)) {
            (Some(e), Some(c)) => e != c,
            _ => false,
        }
    }

    /// Waits (bounded by `settle`) until the two views agree on `member`'s address.
    async fn settle(&self, peer: &Peer, member: &str) {
        // Subscribe before checking, so no change between the check and the wait is missed.
        let mut events = self.cache.subscribe(PeerFilter::Group { group: self.group.clone() });
        let mut known = self.known_changed.subscribe();
        let deadline = tokio::time::Instant::now() + self.settle;
        while self.disagree(peer, member) {
            tokio::select! {
                ev = events.next() => if ev.is_none() { return },
                r = known.changed() => if r.is_err() { return },
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::debug!(
                        group = self.group,
                        member,
                        "the connection cache and the group view still disagree on the member's address; \
                         using the cache's"
                    );
                    return;
                }
            }
        }
    }
}

fn describe(e: CacheError, member: &str, group: &str) -> String {
    match e {
        CacheError::PeerUnavailable { .. } => e.to_string(),
        CacheError::Closed => format!("cannot reach member {member:?} of group {group:?}: {e}"),
    }
}

impl PeerClients for CachePeerClients {
    fn set_address(&self, member: &str, address: Option<String>) {
        let mut known = self.inner.known.lock().unwrap_or_else(|p| p.into_inner());
        let changed = match address {
            Some(a) => known.insert(member.to_string(), a.clone()).as_ref() != Some(&a),
            None => known.remove(member).is_some(),
        };
        drop(known);
        if changed {
            self.inner.known_changed.send_modify(|n| *n += 1);
        }
    }

    fn client(&self, member: &str) -> BoxFuture<'static, Result<PbPeerClient, String>> {
        let inner = self.inner.clone();
        let member = member.to_string();
        Box::pin(async move {
            let peer = Peer::group_member(inner.group.as_str(), member.as_str());
            if inner.disagree(&peer, &member) {
                inner.settle(&peer, &member).await;
            }
            inner.cache.get_connection::<PbPeerClient>(&peer).await.map_err(|e| describe(e, &member, &inner.group))
        })
    }

    /// Nothing to do: the cache notices a broken connection itself (its driver ends) and
    /// redials with backoff, and it cuts off a connection whose member moved or went away the
    /// moment its registry sees it. The protocol calls this after a request timed out, which
    /// says nothing about the connection (a stopped process keeps its socket, and a redial
    /// would reach the same process), and dropping the shared connection would fail every
    /// other request pipelined on it.
    fn invalidate(&self, _member: &str) {}
}
