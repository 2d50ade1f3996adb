//! Watch streams that survive reconnects and session expiry.
//!
//! ZooKeeper can drop events while a connection is being re-established (ZOOKEEPER-4698), and
//! a new session starts with no watches at all. So each stream here re-registers itself on the
//! new session and then emits [`WatchEvent::Resync`]: the consumer re-lists. [`TreeCache`] does
//! that re-listing for you and keeps a snapshot of a whole subtree equal to ZooKeeper's.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt as _};
use tokio::sync::{mpsc, watch as tokio_watch};
use zookeeper_client as zk;

use super::{Coord, CoordError, CoordResult, SessionState};

/// What happened to a watched znode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeEventKind {
    /// The znode was created.
    Created,
    /// The znode was deleted.
    Deleted,
    /// The znode's data changed.
    DataChanged,
    /// The znode's children changed (non-recursive persistent watches only).
    ChildrenChanged,
}

/// An event from [`Coord::watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A znode event.
    Node {
        /// What happened.
        kind: NodeEventKind,
        /// The znode's path.
        path: String,
    },
    /// The watch was (re-)registered after connecting, reconnecting or opening a new session:
    /// events may have been missed, so re-list. Always the first event of a stream.
    Resync,
}

/// A stream of [`WatchEvent`]s. Dropping it stops the watch task.
pub struct WatchStream {
    rx: mpsc::Receiver<WatchEvent>,
}

impl WatchStream {
    /// The next event, or `None` once the client is closed.
    pub async fn next(&mut self) -> Option<WatchEvent> {
        self.rx.recv().await
    }
}

impl Coord {
    /// A persistent watch on `path` (recursive: the whole subtree). Survives reconnects and
    /// session expiry; emits [`WatchEvent::Resync`] whenever the consumer must re-list.
    pub fn watch(&self, path: &str, recursive: bool) -> WatchStream {
        let (tx, rx) = mpsc::channel(1024);
        let coord = self.clone();
        let path = path.to_string();
        tokio::spawn(async move { coord.run_persistent_watch(path, recursive, tx).await });
        WatchStream { rx }
    }

    async fn run_persistent_watch(self, path: String, recursive: bool, tx: mpsc::Sender<WatchEvent>) {
        let mode = if recursive { zk::AddWatchMode::PersistentRecursive } else { zk::AddWatchMode::Persistent };
        let mut status = self.watch_status();
        let mut backoff = Duration::from_millis(20);
        // The watcher of the previous registration in this session, kept until its replacement
        // is registered (dropping the last watcher of a path removes the watch on the server).
        let mut previous: Option<zk::PersistentWatcher> = None;
        loop {
            if tx.is_closed() || self.shared.closed.is_cancelled() {
                return;
            }
            let client = match self.client().await {
                Ok(c) => c,
                Err(CoordError::Closed) => return,
                Err(_) => continue,
            };
            let epoch = client.session_id();
            let registered = tokio::time::timeout(self.shared.config.op_timeout, client.watch(&path, mode)).await;
            let mut watcher = match registered {
                Ok(Ok(w)) => w,
                other => {
                    tracing::debug!(path, ?other, "registering persistent watch failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = tx.closed() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            backoff = Duration::from_millis(20);
            drop(previous.take());
            drop(client);
            if tx.send(WatchEvent::Resync).await.is_err() {
                return;
            }
            // Consume events until the connection is re-established or the session ends.
            let reconnected = loop {
                tokio::select! {
                    ev = watcher.changed() => {
                        let kind = match ev.event_type {
                            zk::EventType::Session => match ev.session_state {
                                zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => break true,
                                zk::SessionState::Disconnected => continue,
                                // Terminal: calling changed() again would panic.
                                _ => break false,
                            },
                            zk::EventType::NodeCreated => NodeEventKind::Created,
                            zk::EventType::NodeDeleted => NodeEventKind::Deleted,
                            zk::EventType::NodeDataChanged => NodeEventKind::DataChanged,
                            zk::EventType::NodeChildrenChanged => NodeEventKind::ChildrenChanged,
                        };
                        if tx.send(WatchEvent::Node { kind, path: ev.path }).await.is_err() { return; }
                    }
                    _ = tx.closed() => return,
                    _ = self.shared.closed.cancelled() => return,
                }
            };
            if reconnected {
                // zookeeper-client 0.11.2 does not restore persistent watches when it reconnects
                // within a session (its SetWatches resend leaves them out), so the server no
                // longer has this watch: add it again, then ask the consumer to re-list.
                previous = Some(watcher);
                continue;
            }
            drop(watcher);
            // Wait for the supervisor to open the next session.
            let _ = status
                .wait_for(|s| {
                    s.state == SessionState::Closed || (s.state == SessionState::Connected && s.session_id != epoch.0)
                })
                .await;
        }
    }

    /// A stream of the data at `path` (or `None` while it does not exist): returns once the
    /// current value has been read, then updates after every change, reconnect or new session.
    pub async fn watch_data(&self, path: &str) -> tokio_watch::Receiver<Option<(Vec<u8>, i32)>> {
        let (tx, rx) = tokio_watch::channel(None);
        let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
        let coord = self.clone();
        let path = path.to_string();
        tokio::spawn(async move {
            let mut first = Some(first_tx);
            let mut events = coord.watch(&path, false);
            while let Some(ev) = events.next().await {
                match ev {
                    WatchEvent::Node { kind: NodeEventKind::ChildrenChanged, .. } => continue,
                    WatchEvent::Node { .. } | WatchEvent::Resync => {}
                }
                let value = match coord.get_raw(&path).await {
                    Ok(v) => v.map(|(d, s)| (d, s.version)),
                    Err(e) => {
                        tracing::debug!(path, error = %e, "watch_data read failed");
                        continue;
                    }
                };
                tx.send_if_modified(|cur| {
                    if *cur != value {
                        *cur = value;
                        true
                    } else {
                        false
                    }
                });
                if let Some(f) = first.take() {
                    let _ = f.send(());
                }
                if tx.is_closed() {
                    return;
                }
            }
        });
        let _ = first_rx.await;
        rx
    }

    /// Reads every znode under `root` (inclusive) with data and version.
    pub async fn list_tree(&self, root: &str) -> CoordResult<BTreeMap<String, NodeData>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![root.to_string()];
        while let Some(path) = stack.pop() {
            let client = self.client().await?;
            let t = self.shared.config.op_timeout;
            let res = tokio::time::timeout(t, async {
                let (data, stat) = client.get_data(&path).await?;
                let children = client.list_children(&path).await?;
                Ok::<_, zk::Error>((data, stat, children))
            })
            .await;
            match res {
                Ok(Ok((data, stat, children))) => {
                    for c in children {
                        stack.push(crate::paths::join(&path, &c));
                    }
                    out.insert(path, NodeData { data, version: stat.version, ephemeral_owner: stat.ephemeral_owner });
                }
                Ok(Err(zk::Error::NoNode)) => continue,
                Ok(Err(e)) => return Err(CoordError::from_zk("list", &path, e, None)),
                Err(_) => return Err(CoordError::Timeout { op: "list", path, timeout: t }),
            }
        }
        Ok(out)
    }

    /// Starts a [`TreeCache`] over `root`.
    pub fn tree_cache(&self, root: &str) -> TreeCache {
        TreeCache::start(self.clone(), root)
    }
}

/// Data and version of one znode, as held by [`TreeCache`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeData {
    /// Raw data.
    pub data: Vec<u8>,
    /// Data version.
    pub version: i32,
    /// Owning session for ephemerals, else 0.
    pub ephemeral_owner: i64,
}

/// Reads of changed znodes a [`TreeCache`] keeps in flight at most.
const MAX_PIPELINED_READS: usize = 64;

/// The outcome of reading one changed znode (`Ok(None)`: it is gone).
struct NodeRead {
    path: String,
    result: CoordResult<Option<(Vec<u8>, zk::Stat)>>,
}

/// Applies one read to the snapshot and announces the change, if any.
fn apply_read(
    snap: &RwLock<BTreeMap<String, NodeData>>,
    ev: &tokio::sync::broadcast::Sender<TreeEvent>,
    read: NodeRead,
) {
    let NodeRead { path, result } = read;
    let changes = match result {
        Ok(Some((data, stat))) => {
            let node = NodeData { data, version: stat.version, ephemeral_owner: stat.ephemeral_owner };
            let mut cur = snap.write().unwrap();
            if cur.get(&path) == Some(&node) {
                Vec::new()
            } else {
                cur.insert(path.clone(), node.clone());
                vec![TreeEvent::Upsert { path, node }]
            }
        }
        Ok(None) => remove_subtree(snap, &path),
        Err(e) => {
            // The next Resync repairs whatever this read missed.
            tracing::debug!(path, error = %e, "tree cache read failed");
            Vec::new()
        }
    };
    for c in changes {
        let _ = ev.send(c);
    }
}

/// Re-lists the subtree until it succeeds and replaces the snapshot with it, announcing the
/// differences. `false` when the client is closed.
async fn resync(
    coord: &Coord,
    root: &str,
    snap: &RwLock<BTreeMap<String, NodeData>>,
    ev: &tokio::sync::broadcast::Sender<TreeEvent>,
) -> bool {
    let fresh = loop {
        match coord.list_tree(root).await {
            Ok(t) => break t,
            Err(CoordError::Closed) => return false,
            Err(e) => {
                tracing::debug!(root, error = %e, "tree re-list failed; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let mut changes = Vec::new();
    {
        let mut cur = snap.write().unwrap();
        for (p, n) in &fresh {
            if cur.get(p) != Some(n) {
                changes.push(TreeEvent::Upsert { path: p.clone(), node: n.clone() });
            }
        }
        for p in cur.keys() {
            if !fresh.contains_key(p) {
                changes.push(TreeEvent::Removed { path: p.clone() });
            }
        }
        *cur = fresh;
    }
    for c in changes {
        let _ = ev.send(c);
    }
    true
}

/// A change to a [`TreeCache`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeEvent {
    /// A znode appeared or its data changed.
    Upsert {
        /// Path.
        path: String,
        /// New data.
        node: NodeData,
    },
    /// A znode went away.
    Removed {
        /// Path.
        path: String,
    },
    /// The cache finished a full re-list and equals ZooKeeper as of now.
    Synced,
}

/// A local mirror of a subtree, kept equal to ZooKeeper by a persistent recursive watch plus a
/// full re-list after every reconnect or session expiry (kube-rs's watcher → reflector store).
#[derive(Clone)]
pub struct TreeCache {
    snapshot: Arc<RwLock<BTreeMap<String, NodeData>>>,
    events: tokio::sync::broadcast::Sender<TreeEvent>,
    synced: tokio_watch::Receiver<u64>,
    _task: Arc<TaskGuard>,
}

struct TaskGuard(tokio::task::AbortHandle);
impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl TreeCache {
    fn start(coord: Coord, root: &str) -> TreeCache {
        let snapshot: Arc<RwLock<BTreeMap<String, NodeData>>> = Arc::new(RwLock::new(BTreeMap::new()));
        let (events, _) = tokio::sync::broadcast::channel(4096);
        let (synced_tx, synced) = tokio_watch::channel(0u64);
        let root = root.to_string();
        let snap = snapshot.clone();
        let ev = events.clone();
        let task = tokio::spawn(async move {
            let mut stream = coord.watch(&root, true);
            let mut syncs = 0u64;
            // Reads of changed znodes are pipelined (one session answers them in order, so a
            // burst of changes costs about one round trip, not one each) and applied in event
            // order. A re-list first applies every read still in flight: a read issued before
            // it would otherwise overwrite newer data from it.
            let mut reads: FuturesOrdered<BoxFuture<'static, NodeRead>> = FuturesOrdered::new();
            loop {
                tokio::select! {
                    biased;
                    Some(read) = reads.next(), if !reads.is_empty() => apply_read(&snap, &ev, read),
                    event = stream.next(), if reads.len() < MAX_PIPELINED_READS => match event {
                        None => break,
                        Some(WatchEvent::Resync) => {
                            while let Some(read) = reads.next().await {
                                apply_read(&snap, &ev, read);
                            }
                            if !resync(&coord, &root, &snap, &ev).await {
                                return;
                            }
                            syncs += 1;
                            let _ = ev.send(TreeEvent::Synced);
                            synced_tx.send_replace(syncs);
                        }
                        Some(WatchEvent::Node { kind: NodeEventKind::Deleted, path }) => {
                            reads.push_back(Box::pin(std::future::ready(NodeRead { path, result: Ok(None) })));
                        }
                        Some(WatchEvent::Node { path, .. }) => {
                            let coord = coord.clone();
                            reads.push_back(Box::pin(async move {
                                let result = coord.get_raw(&path).await;
                                NodeRead { path, result }
                            }));
                        }
                    },
                }
            }
        });
        TreeCache { snapshot, events, synced, _task: Arc::new(TaskGuard(task.abort_handle())) }
    }

    /// A copy of the current contents.
    pub fn snapshot(&self) -> BTreeMap<String, NodeData> {
        self.snapshot.read().unwrap().clone()
    }

    /// The data at `path`, if cached.
    pub fn get(&self, path: &str) -> Option<NodeData> {
        self.snapshot.read().unwrap().get(path).cloned()
    }

    /// Subscribes to changes from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<TreeEvent> {
        self.events.subscribe()
    }

    /// Number of completed full re-lists.
    pub fn syncs(&self) -> u64 {
        *self.synced.borrow()
    }

    /// Waits until the first full listing has completed.
    pub async fn wait_synced(&self) {
        let mut rx = self.synced.clone();
        let _ = rx.wait_for(|n| *n > 0).await;
    }
}

fn remove_subtree(snap: &RwLock<BTreeMap<String, NodeData>>, path: &str) -> Vec<TreeEvent> {
    let mut cur = snap.write().unwrap();
    let prefix = format!("{path}/");
    let gone: Vec<String> = cur.keys().filter(|k| *k == path || k.starts_with(&prefix)).cloned().collect();
    gone.into_iter()
        .map(|p| {
            cur.remove(&p);
            TreeEvent::Removed { path: p }
        })
        .collect()
}
