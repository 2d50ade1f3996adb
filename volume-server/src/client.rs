//! A client of a volume: finds the leader through ZooKeeper (the term record names it, its
//! member record gives its address), sends requests there, and follows leader changes. Used by
//! `datom volume`, the tests and the benchmarks.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use datom_common::{Coord, paths};
use datom_pb::PbError;
use datom_pb::types::{GroupRecord, MemberRecord, MemberStateRecord, TermRecord, TermStatus, quorum};
use serde::Serialize;

use crate::rpc::{ReplicaInfo, VolumeApiClient, VolumeError, WriteAck};

/// Client-side errors; each says what to do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// No such volume.
    #[error("volume {0:?} does not exist; create it with `datom volume create {0} --replicas 3`")]
    NoVolume(String),
    /// No leader now.
    #[error(
        "volume {volume:?} has no leader right now ({detail}); retry shortly, or check `datom volume status {volume}`"
    )]
    NoLeader {
        /// Volume.
        volume: String,
        /// What the term record says.
        detail: String,
    },
    /// The server did not answer.
    #[error("cannot reach the volume server at {addr}: {reason}")]
    Unreachable {
        /// Address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The server refused.
    #[error("{0}")]
    Volume(VolumeError),
    /// ZooKeeper failed.
    #[error("{0}")]
    Coord(String),
}

impl ClientError {
    /// Whether retrying (against the current leader) may succeed.
    pub fn retriable(&self) -> bool {
        match self {
            ClientError::NoLeader { .. } | ClientError::Unreachable { .. } => true,
            ClientError::Volume(VolumeError::Timeout(_)) => true,
            ClientError::Volume(VolumeError::NoSuchVolume(_)) => true,
            ClientError::Volume(VolumeError::Pb(e)) => matches!(
                e,
                PbError::NotLeader { .. }
                    | PbError::SteppedDown { .. }
                    | PbError::QuorumLost
                    | PbError::Suspended
                    | PbError::Unconfirmed
                    | PbError::UnknownGroup(_)
            ),
            _ => false,
        }
    }
}

/// One member as `datom volume status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    /// Member name.
    pub member: String,
    /// Registered (running) now.
    pub registered: bool,
    /// Client API address, when registered.
    pub address: Option<String>,
    /// Its published state, when registered.
    pub state: Option<MemberStateRecord>,
}

/// A volume's status from ZooKeeper.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeStatus {
    /// Volume.
    pub volume: String,
    /// Replicas.
    pub replicas: u32,
    /// Quorum.
    pub quorum: usize,
    /// Term record.
    pub term: Option<TermRecord>,
    /// Members, enrolled ones first.
    pub members: Vec<MemberStatus>,
}

/// Talks to one volume.
pub struct VolumeClient {
    coord: Coord,
    volume: String,
    conns: Mutex<HashMap<String, VolumeApiClient>>,
    leader: Mutex<Option<String>>,
    /// Per-request deadline.
    pub request_timeout: Duration,
    /// How long put/get/delete keep retrying retriable errors.
    pub retry_for: Duration,
    /// The cluster token presented with writes (secure clusters).
    pub token: Option<String>,
}

impl VolumeClient {
    /// A client of `volume`.
    pub fn new(coord: Coord, volume: &str) -> Self {
        VolumeClient {
            coord,
            volume: volume.to_string(),
            conns: Mutex::new(HashMap::new()),
            leader: Mutex::new(None),
            request_timeout: Duration::from_secs(5),
            retry_for: Duration::from_secs(10),
            token: None,
        }
    }

    fn czk(e: impl std::fmt::Display) -> ClientError {
        ClientError::Coord(e.to_string())
    }

    /// The leader's client address, from the term record and its member record.
    pub async fn leader_address(&self) -> Result<String, ClientError> {
        let term = self.coord.get::<TermRecord>(&paths::group_term(&self.volume)).await.map_err(Self::czk)?;
        let Some(term) = term else {
            if self.coord.exists(&paths::group(&self.volume)).await.map_err(Self::czk)?.is_none() {
                return Err(ClientError::NoVolume(self.volume.clone()));
            }
            return Err(ClientError::NoLeader { volume: self.volume.clone(), detail: "no election yet".into() });
        };
        let t = term.value;
        let leader = match (t.status, &t.leader) {
            (TermStatus::Leading, Some(l)) => l.clone(),
            _ => {
                return Err(ClientError::NoLeader {
                    volume: self.volume.clone(),
                    detail: format!("term {} is {:?}", t.term, t.status).to_lowercase(),
                });
            }
        };
        let member = self
            .coord
            .get::<MemberRecord>(&paths::group_member(&self.volume, &leader))
            .await
            .map_err(Self::czk)?
            .ok_or_else(|| ClientError::NoLeader {
                volume: self.volume.clone(),
                detail: format!("leader {leader} of term {} is not running", t.term),
            })?;
        member.value.client_address.ok_or_else(|| ClientError::NoLeader {
            volume: self.volume.clone(),
            detail: format!("leader {leader} registered no client address"),
        })
    }

    /// A (cached) connection to `addr`.
    pub async fn connect(&self, addr: &str) -> Result<VolumeApiClient, ClientError> {
        if let Some(c) = self.conns.lock().unwrap().get(addr) {
            return Ok(c.clone());
        }
        let t = datom_pb::net::dial_nodelay(addr, self.request_timeout)
            .await
            .map_err(|e| ClientError::Unreachable { addr: addr.to_string(), reason: e.to_string() })?;
        let mut config = tarpc::client::Config::default();
        config.max_in_flight_requests = 100_000;
        let c = VolumeApiClient::new(config, t).spawn();
        self.conns.lock().unwrap().insert(addr.to_string(), c.clone());
        Ok(c)
    }

    fn forget(&self, addr: &str) {
        self.conns.lock().unwrap().remove(addr);
        let mut l = self.leader.lock().unwrap();
        if l.as_deref() == Some(addr) {
            *l = None;
        }
    }

    async fn call<T, F, Fut>(&self, addr: &str, f: F) -> Result<T, ClientError>
    where
        F: FnOnce(VolumeApiClient, tarpc::context::Context) -> Fut,
        Fut: std::future::Future<Output = Result<Result<T, VolumeError>, tarpc::client::RpcError>>,
    {
        let c = self.connect(addr).await?;
        let ctx = datom_common::rpc::ctx(self.request_timeout);
        match tokio::time::timeout(self.request_timeout + Duration::from_millis(200), f(c, ctx)).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => {
                if matches!(e, VolumeError::Pb(PbError::NotLeader { .. })) {
                    self.forget(addr);
                }
                Err(ClientError::Volume(e))
            }
            Ok(Err(e)) => {
                self.forget(addr);
                Err(ClientError::Unreachable { addr: addr.to_string(), reason: e.to_string() })
            }
            Err(_) => {
                self.forget(addr);
                Err(ClientError::Unreachable { addr: addr.to_string(), reason: "timed out".into() })
            }
        }
    }

    /// Runs `op` against the leader, following leader changes and retrying retriable errors
    /// until `retry_for` has passed.
    async fn on_leader<T, F, Fut>(&self, mut op: F) -> Result<T, ClientError>
    where
        F: FnMut(String) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let start = Instant::now();
        let mut backoff = Duration::from_millis(10);
        loop {
            let cached = self.leader.lock().unwrap().clone();
            let res = match cached {
                Some(a) => Ok(a),
                None => self.leader_address().await,
            };
            let res = match res {
                Ok(addr) => {
                    *self.leader.lock().unwrap() = Some(addr.clone());
                    op(addr).await
                }
                Err(e) => Err(e),
            };
            match res {
                Ok(v) => return Ok(v),
                Err(e) if e.retriable() && start.elapsed() < self.retry_for => {
                    *self.leader.lock().unwrap() = None;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sets `key` to `value` on the leader.
    pub async fn put(&self, key: &str, value: &str) -> Result<WriteAck, ClientError> {
        self.on_leader(|addr| async move { self.put_at(&addr, key, value).await }).await
    }

    /// Removes `key` on the leader.
    pub async fn delete(&self, key: &str) -> Result<WriteAck, ClientError> {
        self.on_leader(|addr| async move {
            let (v, k, t) = (self.volume.clone(), key.to_string(), self.token.clone());
            self.call(&addr, |c, ctx| async move { c.delete(ctx, v, k, t).await }).await
        })
        .await
    }

    /// Reads `key` from the leader.
    pub async fn get(&self, key: &str) -> Result<Option<String>, ClientError> {
        self.on_leader(|addr| async move {
            let (v, k) = (self.volume.clone(), key.to_string());
            self.call(&addr, |c, ctx| async move { c.get(ctx, v, k).await }).await
        })
        .await
    }

    /// One put sent to the server at `addr`, whoever leads: no retry, no redirection.
    pub async fn put_at(&self, addr: &str, key: &str, value: &str) -> Result<WriteAck, ClientError> {
        let (v, k, val, t) = (self.volume.clone(), key.to_string(), value.to_string(), self.token.clone());
        self.call(addr, |c, ctx| async move { c.put(ctx, v, k, val, t).await }).await
    }

    /// One replica's state and db fingerprint.
    pub async fn inspect_at(&self, addr: &str) -> Result<ReplicaInfo, ClientError> {
        let v = self.volume.clone();
        self.call(addr, |c, ctx| async move { c.inspect(ctx, v).await }).await
    }

    /// The volume's status: term record, and each member's registration and state.
    pub async fn status(&self) -> Result<VolumeStatus, ClientError> {
        let group = self
            .coord
            .get::<GroupRecord>(&paths::group(&self.volume))
            .await
            .map_err(Self::czk)?
            .ok_or_else(|| ClientError::NoVolume(self.volume.clone()))?
            .value;
        let term = self.coord.get::<TermRecord>(&paths::group_term(&self.volume)).await.map_err(Self::czk)?;
        let mut names = group.enrolled.clone();
        let registered = match self.coord.children(&paths::group_members(&self.volume)).await {
            Ok(c) => c,
            Err(datom_common::CoordError::NoNode { .. }) => Vec::new(),
            Err(e) => return Err(Self::czk(e)),
        };
        for r in &registered {
            if !names.contains(r) {
                names.push(r.clone());
            }
        }
        let mut members = Vec::new();
        for m in names {
            let rec =
                self.coord.get::<MemberRecord>(&paths::group_member(&self.volume, &m)).await.map_err(Self::czk)?;
            let state =
                self.coord.get::<MemberStateRecord>(&paths::group_state(&self.volume, &m)).await.map_err(Self::czk)?;
            members.push(MemberStatus {
                member: m,
                registered: rec.is_some(),
                address: rec.and_then(|r| r.value.client_address),
                state: state.map(|s| s.value),
            });
        }
        Ok(VolumeStatus {
            volume: self.volume.clone(),
            replicas: group.replicas,
            quorum: quorum(group.replicas as usize),
            term: term.map(|t| t.value),
            members,
        })
    }
}
