//! The coordination client: one supervised ZooKeeper session per process, typed JSON records,
//! registered ephemerals and watch streams that survive reconnects and session expiry.
//!
//! zookeeper-client recovers nothing after a session expires, so [`Coord`] does: a supervisor
//! task watches the session state, and on expiry opens a new session and re-creates every
//! ephemeral registered through [`Coord::register_ephemeral`]. Watch streams
//! ([`Coord::watch`], [`watch::TreeCache`]) re-register themselves on the new session and tell
//! their consumer to re-list, because persistent watches can miss events across a reconnect.
//!
//! Every request is wrapped in a timeout ([`CoordConfig::op_timeout`]): the client has none of
//! its own and a suspended connection would otherwise hang the caller.

pub mod lock;
pub mod watch;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch as tokio_watch;
use zookeeper_client as zk;

pub use crate::error::{CoordError, CoordResult};

/// Largest record datom writes; ZooKeeper's default `jute.maxbuffer` is 1 MiB including
/// request overhead, so stay well under it.
pub const MAX_RECORD_BYTES: usize = 1000 * 1024;

/// How to reach ZooKeeper and how long to wait for it.
#[derive(Debug, Clone)]
pub struct CoordConfig {
    /// Connect string: `host:port[,host:port...][/chroot]`.
    pub connect: String,
    /// Requested session timeout; the server clamps it to 2..20 × tickTime.
    pub session_timeout: Duration,
    /// Bound on establishing the first session.
    pub connect_timeout: Duration,
    /// Bound on each request.
    pub op_timeout: Duration,
    /// Authentication to add to every session (`scheme`, `credentials`).
    pub auth: Vec<(String, Vec<u8>)>,
    /// ACL applied to every znode datom creates. Empty means open (`world:anyone` all).
    pub acl: Vec<zk::Acl>,
}

impl CoordConfig {
    /// A config with datom's defaults for `connect`.
    pub fn new(connect: impl Into<String>) -> Self {
        CoordConfig {
            connect: connect.into(),
            session_timeout: Duration::from_secs(6),
            connect_timeout: Duration::from_secs(5),
            op_timeout: Duration::from_secs(5),
            auth: Vec::new(),
            acl: Vec::new(),
        }
    }

    /// Sets the requested session timeout.
    pub fn with_session_timeout(mut self, t: Duration) -> Self {
        self.session_timeout = t;
        self
    }

    /// Sets the connect timeout.
    pub fn with_connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Authenticates every session as `auth`'s identity and gives every znode datom creates
    /// `auth`'s ACL (all rights for the identity, read for anyone).
    pub fn with_credentials(mut self, auth: &crate::auth::AuthFile) -> Self {
        self.auth = vec![auth.zk_auth()];
        self.acl = auth.acl();
        self
    }
}

/// Where the session stands, as seen by datom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Connected; requests flow.
    Connected,
    /// The connection is lost but the session may still be alive on the server. Holders of
    /// locks or leadership must stop acting until it is Connected again.
    Suspended,
    /// The session expired; a new one is being opened. Ephemerals are gone until re-created.
    Expired,
    /// [`Coord::close`] was called.
    Closed,
}

/// A watchable snapshot of the session: its state plus counters that let watchers notice that
/// something happened even when the state is back where it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SessionStatus {
    /// Current state.
    pub state: SessionState,
    /// Incremented each time a new session is opened (0 for the first one).
    pub epoch: u64,
    /// Incremented on every (re)connection, including reconnects within one session.
    pub connects: u64,
    /// ZooKeeper's session id, in hex.
    pub session_id: i64,
    /// The negotiated session timeout.
    pub negotiated_timeout: Duration,
}

/// Create mode for [`Coord::create`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A persistent znode.
    Persistent,
    /// A persistent sequential znode.
    PersistentSequential,
    /// Deleted when the session ends.
    Ephemeral,
    /// Ephemeral and sequential.
    EphemeralSequential,
}

impl Mode {
    fn zk(self) -> zk::CreateMode {
        match self {
            Mode::Persistent => zk::CreateMode::Persistent,
            Mode::PersistentSequential => zk::CreateMode::PersistentSequential,
            Mode::Ephemeral => zk::CreateMode::Ephemeral,
            Mode::EphemeralSequential => zk::CreateMode::EphemeralSequential,
        }
    }
}

/// A record read together with the znode version it had.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    /// The decoded record.
    pub value: T,
    /// The znode's data version, for compare-and-set.
    pub version: i32,
    /// Session id owning the znode if it is ephemeral, else 0.
    pub ephemeral_owner: i64,
}

/// One operation of a multi-op transaction ([`Coord::multi`]).
#[derive(Debug, Clone)]
pub enum Op {
    /// Create `path` with `data`.
    Create {
        /// Path.
        path: String,
        /// Raw data (use [`encode`] for records).
        data: Vec<u8>,
        /// Mode.
        mode: Mode,
    },
    /// Set `path` to `data` if its version is `version` (any version when `None`).
    Set {
        /// Path.
        path: String,
        /// Raw data.
        data: Vec<u8>,
        /// Expected version.
        version: Option<i32>,
    },
    /// Delete `path` if its version is `version`.
    Delete {
        /// Path.
        path: String,
        /// Expected version.
        version: Option<i32>,
    },
    /// Fail the transaction unless `path` has `version`.
    Check {
        /// Path.
        path: String,
        /// Expected version.
        version: i32,
    },
}

impl Op {
    fn path(&self) -> &str {
        match self {
            Op::Create { path, .. } | Op::Set { path, .. } | Op::Delete { path, .. } | Op::Check { path, .. } => path,
        }
    }
    fn version(&self) -> Option<i32> {
        match self {
            Op::Create { .. } => None,
            Op::Set { version, .. } | Op::Delete { version, .. } => *version,
            Op::Check { version, .. } => Some(*version),
        }
    }
}

/// Encodes a record as pretty JSON (operators read it with zkCli), enforcing the size limit.
pub fn encode<T: Serialize>(path: &str, value: &T) -> CoordResult<Vec<u8>> {
    let data = serde_json::to_vec_pretty(value).expect("records always serialise");
    if data.len() > MAX_RECORD_BYTES {
        return Err(CoordError::TooLarge { path: path.to_string(), size: data.len(), limit: MAX_RECORD_BYTES });
    }
    Ok(data)
}

/// Refuses raw data over [`MAX_RECORD_BYTES`] before it is sent.
fn check_size(path: &str, data: &[u8]) -> CoordResult<()> {
    if data.len() > MAX_RECORD_BYTES {
        return Err(CoordError::TooLarge { path: path.to_string(), size: data.len(), limit: MAX_RECORD_BYTES });
    }
    Ok(())
}

/// Decodes a record read from `path`.
pub fn decode<T: DeserializeOwned>(path: &str, data: &[u8]) -> CoordResult<T> {
    serde_json::from_slice(data).map_err(|source| CoordError::Decode {
        path: path.to_string(),
        what: std::any::type_name::<T>().rsplit("::").next().unwrap_or("record"),
        source,
    })
}

struct Registered {
    data: Vec<u8>,
}

struct Shared {
    config: CoordConfig,
    client: tokio_watch::Sender<Option<zk::Client>>,
    status: tokio_watch::Sender<SessionStatus>,
    ephemerals: Mutex<HashMap<String, Registered>>,
    closed: tokio_util_cancel::Token,
}

/// Minimal cancellation token so `common` does not need tokio-util.
mod tokio_util_cancel {
    use tokio::sync::watch;
    #[derive(Clone)]
    pub struct Token(watch::Sender<bool>);
    impl Token {
        pub fn new() -> Self {
            Token(watch::channel(false).0)
        }
        pub fn cancel(&self) {
            self.0.send_replace(true);
        }
        pub fn is_cancelled(&self) -> bool {
            *self.0.borrow()
        }
        pub async fn cancelled(&self) {
            let mut rx = self.0.subscribe();
            let _ = rx.wait_for(|c| *c).await;
        }
    }
}

/// The process's coordination client. Cheap to clone; all clones share one supervised session.
#[derive(Clone)]
pub struct Coord {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Coord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coord").field("connect", &self.shared.config.connect).finish()
    }
}

async fn open_session(config: &CoordConfig, session: Option<zk::SessionInfo>) -> Result<zk::Client, String> {
    let mut connector = zk::Client::connector()
        .with_session_timeout(config.session_timeout)
        .with_connection_timeout(config.connect_timeout);
    if session.is_none() {
        connector = connector.with_fail_eagerly();
    }
    if let Some(s) = session {
        connector = connector.with_session(s);
    }
    for (scheme, cred) in &config.auth {
        connector = connector.with_auth(scheme, cred);
    }
    match tokio::time::timeout(config.connect_timeout, connector.connect(&config.connect)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(zk::Error::NoHosts)) => Err("no server answered (connection refused or unreachable)".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

impl Coord {
    /// Opens the first session, bounded by [`CoordConfig::connect_timeout`], and starts the
    /// session supervisor.
    pub async fn connect(config: CoordConfig) -> CoordResult<Coord> {
        if config.connect.trim().is_empty() {
            return Err(CoordError::Connect {
                addr: config.connect.clone(),
                timeout: config.connect_timeout,
                reason: "the connect string is empty".into(),
            });
        }
        let client = open_session(&config, None).await.map_err(|reason| CoordError::Connect {
            addr: config.connect.clone(),
            timeout: config.connect_timeout,
            reason,
        })?;
        // The chroot must exist, or every request fails with a confusing NoNode.
        let root_check = tokio::time::timeout(config.op_timeout, client.check_stat("/")).await;
        match root_check {
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) | Ok(Err(zk::Error::NoNode)) => {
                return Err(CoordError::Connect {
                    addr: config.connect.clone(),
                    timeout: config.connect_timeout,
                    reason: "the chroot in the connect string does not exist; create it or drop the /suffix".into(),
                });
            }
            Ok(Err(e)) => {
                return Err(CoordError::Connect {
                    addr: config.connect.clone(),
                    timeout: config.connect_timeout,
                    reason: e.to_string(),
                });
            }
            Err(_) => {
                return Err(CoordError::Connect {
                    addr: config.connect.clone(),
                    timeout: config.connect_timeout,
                    reason: "connected, but the first request timed out".into(),
                });
            }
        }
        let status = SessionStatus {
            state: SessionState::Connected,
            epoch: 0,
            connects: 1,
            session_id: client.session_id().0,
            negotiated_timeout: client.session_timeout(),
        };
        let shared = Arc::new(Shared {
            config,
            client: tokio_watch::channel(Some(client.clone())).0,
            status: tokio_watch::channel(status).0,
            ephemerals: Mutex::new(HashMap::new()),
            closed: tokio_util_cancel::Token::new(),
        });
        let coord = Coord { shared };
        tokio::spawn(coord.clone().supervise(client));
        crate::metrics::track_session(coord.watch_status());
        Ok(coord)
    }

    /// The configuration this client was built with.
    pub fn config(&self) -> &CoordConfig {
        &self.shared.config
    }

    /// The current session status.
    pub fn status(&self) -> SessionStatus {
        *self.shared.status.borrow()
    }

    /// A receiver that sees every session status change.
    pub fn watch_status(&self) -> tokio_watch::Receiver<SessionStatus> {
        self.shared.status.subscribe()
    }

    /// The session timeout the server negotiated (the server clamps the requested one).
    pub fn negotiated_timeout(&self) -> Duration {
        self.status().negotiated_timeout
    }

    /// The current session's client, waiting (bounded by the op timeout) while a new session
    /// is being opened.
    pub async fn client(&self) -> CoordResult<zk::Client> {
        let mut rx = self.shared.client.subscribe();
        if let Some(c) = rx.borrow().clone() {
            return Ok(c);
        }
        if self.shared.closed.is_cancelled() {
            return Err(CoordError::Closed);
        }
        let wait = rx.wait_for(|c| c.is_some());
        match tokio::time::timeout(self.shared.config.op_timeout, wait).await {
            Ok(Ok(c)) => Ok(c.clone().expect("waited for Some")),
            Ok(Err(_)) => Err(CoordError::Closed),
            Err(_) => Err(CoordError::Timeout {
                op: "session",
                path: self.shared.config.connect.clone(),
                timeout: self.shared.config.op_timeout,
            }),
        }
    }

    /// Session credentials, for tests that force an expiry by closing a second handle.
    pub async fn session_info(&self) -> CoordResult<zk::SessionInfo> {
        Ok(self.client().await?.session().clone())
    }

    /// Runs `f` against the current client with the per-request timeout.
    async fn call<T, F, Fut>(&self, op: &'static str, path: &str, version: Option<i32>, f: F) -> CoordResult<T>
    where
        F: FnOnce(zk::Client) -> Fut,
        Fut: Future<Output = Result<T, zk::Error>>,
    {
        let client = self.client().await?;
        let started = std::time::Instant::now();
        let result = match tokio::time::timeout(self.shared.config.op_timeout, f(client)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(CoordError::from_zk(op, path, e, version)),
            Err(_) => Err(CoordError::Timeout { op, path: path.to_string(), timeout: self.shared.config.op_timeout }),
        };
        crate::metrics::observe_zk_op(op, started, &result);
        result
    }

    pub(crate) fn acls(&self) -> zk::Acls<'_> {
        if self.shared.config.acl.is_empty() { zk::Acls::anyone_all() } else { zk::Acls::new(&self.shared.config.acl) }
    }

    /// Creates `path` with raw `data`; returns the created path (differs for sequential modes).
    pub async fn create_raw(&self, path: &str, data: &[u8], mode: Mode) -> CoordResult<String> {
        check_size(path, data)?;
        let opts = mode.zk().with_acls(self.acls());
        self.call("create", path, None, |c| async move {
            let (_stat, seq) = c.create(path, data, &opts).await?;
            Ok(match mode {
                Mode::PersistentSequential | Mode::EphemeralSequential => format!("{path}{seq}"),
                _ => path.to_string(),
            })
        })
        .await
    }

    /// Creates `path` holding `value` as JSON; returns the created path.
    pub async fn create<T: Serialize>(&self, path: &str, value: &T, mode: Mode) -> CoordResult<String> {
        let data = encode(path, value)?;
        self.create_raw(path, &data, mode).await
    }

    /// Reads raw data and version; `None` when the znode does not exist.
    pub async fn get_raw(&self, path: &str) -> CoordResult<Option<(Vec<u8>, zk::Stat)>> {
        match self.call("get", path, None, |c| async move { c.get_data(path).await }).await {
            Ok(v) => Ok(Some(v)),
            Err(CoordError::NoNode { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads and decodes a record with its version; `None` when the znode does not exist.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> CoordResult<Option<Versioned<T>>> {
        match self.get_raw(path).await? {
            None => Ok(None),
            Some((data, stat)) => Ok(Some(Versioned {
                value: decode(path, &data)?,
                version: stat.version,
                ephemeral_owner: stat.ephemeral_owner,
            })),
        }
    }

    /// Whether `path` exists.
    pub async fn exists(&self, path: &str) -> CoordResult<Option<zk::Stat>> {
        self.call("exists", path, None, |c| async move { c.check_stat(path).await }).await
    }

    /// Writes `value` only if the znode still has `version`; returns the new version.
    /// A stale version gives [`CoordError::Conflict`] and writes nothing.
    pub async fn set<T: Serialize>(&self, path: &str, value: &T, version: Option<i32>) -> CoordResult<i32> {
        let data = encode(path, value)?;
        self.set_raw(path, &data, version).await
    }

    /// Raw form of [`Coord::set`].
    pub async fn set_raw(&self, path: &str, data: &[u8], version: Option<i32>) -> CoordResult<i32> {
        check_size(path, data)?;
        self.call("set", path, version, |c| async move { c.set_data(path, data, version).await.map(|s| s.version) })
            .await
    }

    /// Read-modify-write with version checks, retried on conflict (up to 16 times).
    /// `f` gets the current value (or `None`) and returns the new one, or `None` to leave it.
    pub async fn update<T, F>(&self, path: &str, mut f: F) -> CoordResult<Option<T>>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(Option<T>) -> Option<T>,
    {
        for _ in 0..16 {
            let current = self.get::<T>(path).await?;
            let (old, version) = match current {
                Some(v) => (Some(v.value), Some(v.version)),
                None => (None, None),
            };
            let Some(new) = f(old) else { return Ok(None) };
            let res = match version {
                Some(v) => self.set(path, &new, Some(v)).await.map(|_| ()),
                None => self.create(path, &new, Mode::Persistent).await.map(|_| ()),
            };
            match res {
                Ok(()) => return Ok(Some(new)),
                Err(CoordError::Conflict { .. } | CoordError::NodeExists { .. } | CoordError::NoNode { .. }) => {
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        Err(CoordError::Conflict { path: path.to_string(), expected: -1 })
    }

    /// Deletes `path` if it has `version` (any version when `None`).
    pub async fn delete(&self, path: &str, version: Option<i32>) -> CoordResult<()> {
        self.call("delete", path, version, |c| async move { c.delete(path, version).await }).await
    }

    /// Deletes `path`, treating a missing znode as success.
    pub async fn delete_if_exists(&self, path: &str) -> CoordResult<()> {
        match self.delete(path, None).await {
            Ok(()) | Err(CoordError::NoNode { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Deletes `path` and everything below it (not atomic; for tests and teardown).
    pub async fn delete_recursive(&self, path: &str) -> CoordResult<()> {
        let children = match self.children(path).await {
            Ok(c) => c,
            Err(CoordError::NoNode { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        for child in children {
            Box::pin(self.delete_recursive(&crate::paths::join(path, &child))).await?;
        }
        self.delete_if_exists(path).await
    }

    /// Creates `path` and any missing ancestors as empty persistent znodes (`mkdir -p`).
    pub async fn ensure_path(&self, path: &str) -> CoordResult<()> {
        crate::paths::validate_path(path).map_err(CoordError::InvalidPath)?;
        if path == "/" {
            return Ok(());
        }
        let opts = zk::CreateMode::Persistent.with_acls(self.acls());
        self.call("mkdir", path, None, |c| async move { c.mkdir(path, &opts).await }).await
    }

    /// The ACL of `path` (to check that a secure tree is locked down).
    pub async fn get_acl(&self, path: &str) -> CoordResult<Vec<zk::Acl>> {
        self.call("get_acl", path, None, |c| async move { c.get_acl(path).await.map(|(acl, _)| acl) }).await
    }

    /// Whether the ACL `acl` lets anyone without credentials change the znode.
    pub fn acl_is_open(acl: &[zk::Acl]) -> bool {
        acl.iter().any(|a| a.scheme() == "world" && a.permission() != zk::Permission::READ)
    }

    /// Lists the children of `path`, sorted.
    pub async fn children(&self, path: &str) -> CoordResult<Vec<String>> {
        let mut v = self.call("children", path, None, |c| async move { c.list_children(path).await }).await?;
        v.sort();
        Ok(v)
    }

    /// Runs `ops` atomically. On failure nothing is applied and the error names the failing op.
    /// Note: ZooKeeper 3.8.0 returns an invalid Stat for a create inside multi, so this returns
    /// nothing about created nodes; re-read them if their version matters.
    pub async fn multi(&self, ops: &[Op]) -> CoordResult<()> {
        self.multi_created(ops).await.map(|_| ())
    }

    /// [`Coord::multi`], returning the paths of the znodes its creates made, in op order (the
    /// names sequential creates chose).
    pub async fn multi_created(&self, ops: &[Op]) -> CoordResult<Vec<String>> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let acls = self.acls();
        let mut writer = client.new_multi_writer();
        for op in ops {
            let res = match op {
                Op::Create { path, data, mode } => {
                    if data.len() > MAX_RECORD_BYTES {
                        return Err(CoordError::TooLarge {
                            path: path.clone(),
                            size: data.len(),
                            limit: MAX_RECORD_BYTES,
                        });
                    }
                    writer.add_create(path, data, &mode.zk().with_acls(acls))
                }
                Op::Set { path, data, version } => {
                    if data.len() > MAX_RECORD_BYTES {
                        return Err(CoordError::TooLarge {
                            path: path.clone(),
                            size: data.len(),
                            limit: MAX_RECORD_BYTES,
                        });
                    }
                    writer.add_set_data(path, data, *version)
                }
                Op::Delete { path, version } => writer.add_delete(path, *version),
                Op::Check { path, version } => writer.add_check_version(path, *version),
            };
            res.map_err(|e| CoordError::from_zk("multi", op.path(), e, op.version()))?;
        }
        let timeout = self.shared.config.op_timeout;
        let started = std::time::Instant::now();
        let result = match tokio::time::timeout(timeout, writer.commit()).await {
            Ok(Ok(results)) => Ok(results
                .into_iter()
                .filter_map(|r| match r {
                    zk::MultiWriteResult::Create { path, .. } => Some(path),
                    _ => None,
                })
                .collect()),
            Ok(Err(zk::MultiWriteError::OperationFailed { index, source })) => {
                let op = &ops[index.min(ops.len() - 1)];
                Err(CoordError::from_zk("multi", op.path(), source, op.version()))
            }
            Ok(Err(zk::MultiWriteError::RequestFailed { source })) => {
                Err(CoordError::from_zk("multi", ops[0].path(), source, None))
            }
            Err(_) => Err(CoordError::Timeout { op: "multi", path: ops[0].path().to_string(), timeout }),
        };
        crate::metrics::observe_zk_op("multi", started, &result);
        result
    }

    /// Registers an ephemeral znode: created now, and re-created by the supervisor after every
    /// session expiry, until the handle is removed. If a znode from another (dying) session is
    /// in the way, this waits for it to go, bounded by `wait` (use the session timeout + margin).
    pub async fn register_ephemeral(&self, path: &str, data: Vec<u8>, wait: Duration) -> CoordResult<EphemeralHandle> {
        if data.len() > MAX_RECORD_BYTES {
            return Err(CoordError::TooLarge { path: path.to_string(), size: data.len(), limit: MAX_RECORD_BYTES });
        }
        self.shared.ephemerals.lock().unwrap().insert(path.to_string(), Registered { data: data.clone() });
        let deadline = tokio::time::Instant::now() + wait;
        match self.create_ephemeral_now(path, &data, deadline).await {
            Ok(()) => Ok(EphemeralHandle { coord: self.clone(), path: path.to_string(), removed: false }),
            Err(e) => {
                self.shared.ephemerals.lock().unwrap().remove(path);
                Err(e)
            }
        }
    }

    /// Creates a registered ephemeral in the current session, waiting out a foreign owner.
    async fn create_ephemeral_now(&self, path: &str, data: &[u8], deadline: tokio::time::Instant) -> CoordResult<()> {
        loop {
            match self.create_raw(path, data, Mode::Ephemeral).await {
                Ok(_) => return Ok(()),
                Err(CoordError::NodeExists { .. }) => {
                    let client = self.client().await?;
                    let my_session = client.session_id().0;
                    match self.call("get", path, None, |c| async move { c.get_and_watch_data(path).await }).await {
                        Ok((_, stat, watcher)) if stat.ephemeral_owner == my_session => {
                            // Ours already (e.g. a retried create); make sure the data is current.
                            drop(watcher);
                            self.set_raw(path, data, None).await?;
                            return Ok(());
                        }
                        Ok((_, stat, watcher)) => {
                            tracing::info!(
                                path,
                                owner = format!("{:#x}", stat.ephemeral_owner),
                                "waiting for another session's ephemeral to go away"
                            );
                            if tokio::time::timeout_at(deadline, watcher.changed()).await.is_err() {
                                return Err(CoordError::NodeExists { path: path.to_string() });
                            }
                        }
                        Err(CoordError::NoNode { .. }) => continue,
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(CoordError::NodeExists { path: path.to_string() });
            }
        }
    }

    /// Closes the session: deletes registered ephemerals at once (so watchers see them go now,
    /// not at session timeout) and stops the supervisor.
    pub async fn close(&self) {
        let paths: Vec<String> = self.shared.ephemerals.lock().unwrap().drain().map(|(p, _)| p).collect();
        for p in paths {
            let _ = self.delete_if_exists(&p).await;
        }
        self.shared.closed.cancel();
        self.shared.client.send_replace(None);
        self.shared.status.send_modify(|s| s.state = SessionState::Closed);
    }

    /// The supervisor: follows the session state, reopens expired sessions, restores
    /// registered ephemerals.
    async fn supervise(self, mut client: zk::Client) {
        loop {
            let mut states = client.state_watcher();
            // The client is used only through the watch channel from here on.
            let expired = loop {
                let st = tokio::select! {
                    s = states.changed() => s,
                    _ = self.shared.closed.cancelled() => return,
                };
                match st {
                    zk::SessionState::Disconnected => {
                        tracing::warn!("ZooKeeper connection lost; session suspended");
                        self.shared.status.send_modify(|s| s.state = SessionState::Suspended);
                    }
                    zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                        tracing::info!("ZooKeeper connection re-established");
                        self.shared.status.send_modify(|s| {
                            s.state = SessionState::Connected;
                            s.connects += 1;
                        });
                    }
                    zk::SessionState::Expired | zk::SessionState::AuthFailed => break true,
                    zk::SessionState::Closed => break false,
                }
            };
            if !expired || self.shared.closed.is_cancelled() {
                return;
            }
            tracing::warn!(
                session = format!("{:#x}", client.session_id().0),
                "ZooKeeper session expired; opening a new one"
            );
            self.shared.client.send_replace(None);
            self.shared.status.send_modify(|s| s.state = SessionState::Expired);
            drop(client);
            let mut backoff = Duration::from_millis(50);
            client = loop {
                if self.shared.closed.is_cancelled() {
                    return;
                }
                match open_session(&self.shared.config, None).await {
                    Ok(c) => break c,
                    Err(reason) => {
                        tracing::warn!(%reason, "cannot open a new ZooKeeper session yet");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = self.shared.closed.cancelled() => return,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            };
            tracing::info!(session = format!("{:#x}", client.session_id().0), "new ZooKeeper session");
            self.shared.client.send_replace(Some(client.clone()));
            self.shared.status.send_modify(|s| {
                s.state = SessionState::Connected;
                s.epoch += 1;
                s.connects += 1;
                s.session_id = client.session_id().0;
                s.negotiated_timeout = client.session_timeout();
            });
            self.restore_ephemerals();
        }
    }

    fn restore_ephemerals(&self) {
        let entries: Vec<(String, Vec<u8>)> =
            self.shared.ephemerals.lock().unwrap().iter().map(|(p, r)| (p.clone(), r.data.clone())).collect();
        for (path, data) in entries {
            let coord = self.clone();
            tokio::spawn(async move {
                let mut backoff = Duration::from_millis(50);
                loop {
                    if !coord.shared.ephemerals.lock().unwrap().contains_key(&path) {
                        return;
                    }
                    let deadline = tokio::time::Instant::now() + coord.negotiated_timeout() * 2;
                    match coord.create_ephemeral_now(&path, &data, deadline).await {
                        Ok(()) => {
                            tracing::info!(path, "re-created ephemeral after session expiry");
                            return;
                        }
                        Err(CoordError::Closed) => return,
                        Err(e) => {
                            tracing::warn!(path, error = %e, "re-creating ephemeral failed; retrying");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(2));
                        }
                    }
                }
            });
        }
    }
}

/// A registered ephemeral znode. Dropping it unregisters it and deletes the znode in the
/// background; call [`EphemeralHandle::remove`] to delete it synchronously.
pub struct EphemeralHandle {
    coord: Coord,
    path: String,
    removed: bool,
}

impl EphemeralHandle {
    /// The znode path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Replaces the data: written now, and used for every later re-creation.
    pub async fn set_data(&self, data: Vec<u8>) -> CoordResult<()> {
        if let Some(r) = self.coord.shared.ephemerals.lock().unwrap().get_mut(&self.path) {
            r.data = data.clone();
        }
        self.coord.set_raw(&self.path, &data, None).await.map(|_| ())
    }

    /// Unregisters and deletes the znode now.
    pub async fn remove(mut self) -> CoordResult<()> {
        self.removed = true;
        self.coord.shared.ephemerals.lock().unwrap().remove(&self.path);
        self.coord.delete_if_exists(&self.path).await
    }
}

impl Drop for EphemeralHandle {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        self.coord.shared.ephemerals.lock().unwrap().remove(&self.path);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let coord = self.coord.clone();
            let path = std::mem::take(&mut self.path);
            handle.spawn(async move {
                let _ = coord.delete_if_exists(&path).await;
            });
        }
    }
}
