//! `VolumeReplicaMgr`: the collection of `VolumeReplica`s this server hosts (seed 003), and the
//! client API that routes each request to its volume.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use datom_common::Coord;
use datom_common::cache::ConnectionCache;
use datom_pb::driver::{GroupMember, MemberConfig, Timings};
use datom_pb::types::MemberStateRecord;
use datom_pb::{CachePeerClients, Core, PbError, PeerRouter};
use tokio::sync::watch;

use crate::db::{Op, VolumeDb};
use crate::failpoint::Failpoint;
use crate::replica::VolumeReplica;
use crate::rpc::{ReplicaInfo, VolumeApi, VolumeError, WriteAck, validate};

/// One hosted volume.
pub struct Hosted {
    /// The replica (and its db).
    pub replica: Arc<VolumeReplica>,
    /// Its replication core.
    pub core: Arc<Core<VolumeReplica>>,
    status: watch::Receiver<MemberStateRecord>,
    member: tokio::sync::Mutex<Option<GroupMember<VolumeReplica>>>,
    checkpointer: tokio::task::JoinHandle<()>,
}

/// The volumes this server hosts.
#[derive(Default)]
pub struct VolumeReplicaMgr {
    replicas: RwLock<BTreeMap<String, Arc<Hosted>>>,
}

/// How a volume replica is opened.
pub struct OpenVolume<'a> {
    /// Coordination client.
    pub coord: &'a Coord,
    /// Member name of this server.
    pub member: &'a str,
    /// Directory of this volume's journal, term and db.
    pub dir: std::path::PathBuf,
    /// Replication address others dial.
    pub peer_address: &'a str,
    /// Client API address.
    pub client_address: &'a str,
    /// Timeouts.
    pub timings: Timings,
    /// Replication RPC router.
    pub router: &'a PeerRouter,
    /// The process's connection cache, shared by every hosted volume: the replica's clients
    /// for the other members of its group come from it.
    pub cache: &'a ConnectionCache,
    /// Failpoint, for tests.
    pub failpoint: Option<Failpoint>,
    /// How often the db is checkpointed.
    pub checkpoint_interval: Duration,
}

impl VolumeReplicaMgr {
    /// An empty manager.
    pub fn new() -> Self {
        VolumeReplicaMgr::default()
    }

    /// Bootup of one replica (seed 003): load the db, then start the PBMember bootup sequence.
    pub async fn open(&self, volume: &str, o: OpenVolume<'_>) -> Result<(), PbError> {
        std::fs::create_dir_all(&o.dir).map_err(|e| PbError::Io(format!("create {}: {e}", o.dir.display())))?;
        let db = Arc::new(VolumeDb::load(volume, &o.dir.join("db.json")).map_err(|e| PbError::Io(e.to_string()))?);
        tracing::info!(volume, applied = %db.applied(), "loaded the db");
        let replica = Arc::new(VolumeReplica::new(volume, db.clone(), o.failpoint));
        let clients = Arc::new(CachePeerClients::new(o.cache.clone(), volume, o.timings.dial_timeout));
        let cfg = MemberConfig {
            group: volume.to_string(),
            me: o.member.to_string(),
            address: o.peer_address.to_string(),
            client_address: Some(o.client_address.to_string()),
            dir: o.dir.clone(),
            timings: o.timings,
        };
        let member = GroupMember::start(o.coord.clone(), cfg, replica.clone(), clients, o.router).await?;
        let core = member.core().clone();
        let status = member.status();
        let interval = o.checkpoint_interval;
        let checkpointer = tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let db = db.clone();
                match tokio::task::spawn_blocking(move || db.checkpoint()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "db checkpoint failed; the journal still holds everything")
                    }
                    Err(_) => return,
                }
            }
        });
        let hosted =
            Arc::new(Hosted { replica, core, status, member: tokio::sync::Mutex::new(Some(member)), checkpointer });
        self.replicas.write().unwrap().insert(volume.to_string(), hosted);
        Ok(())
    }

    /// A hosted volume.
    pub fn get(&self, volume: &str) -> Result<Arc<Hosted>, VolumeError> {
        self.replicas.read().unwrap().get(volume).cloned().ok_or_else(|| VolumeError::NoSuchVolume(volume.to_string()))
    }

    /// Names of the hosted volumes.
    pub fn volumes(&self) -> Vec<String> {
        self.replicas.read().unwrap().keys().cloned().collect()
    }

    /// Graceful stop of every replica: leave the groups (so the others elect at once), then
    /// write a final db checkpoint.
    pub async fn stop_all(&self) {
        let all: Vec<Arc<Hosted>> = self.replicas.read().unwrap().values().cloned().collect();
        for h in all {
            if let Some(m) = h.member.lock().await.take() {
                m.stop().await;
            }
            h.checkpointer.abort();
            let db = h.replica.db().clone();
            let _ = tokio::task::spawn_blocking(move || db.checkpoint()).await;
        }
    }
}

/// The tarpc server of [`VolumeApi`].
#[derive(Clone)]
pub struct VolumeServer {
    /// Checks the cluster token of writes; `None` on an open cluster.
    pub token: Option<datom_common::auth::TokenVerifier>,
    mgr: Arc<VolumeReplicaMgr>,
    write_timeout: Duration,
    read_timeout: Duration,
}

impl VolumeServer {
    /// A server over `mgr`.
    pub fn new(mgr: Arc<VolumeReplicaMgr>, write_timeout: Duration, read_timeout: Duration) -> Self {
        VolumeServer { mgr, write_timeout, read_timeout, token: None }
    }

    /// Refuses a write without the right cluster token (secure clusters only), before anything
    /// is journaled.
    fn authorize(&self, token: &Option<String>) -> Result<(), VolumeError> {
        match &self.token {
            None => Ok(()),
            Some(v) => v.verify(token.as_deref()).map_err(VolumeError::PermissionDenied),
        }
    }

    async fn write(&self, volume: &str, op: Op) -> Result<WriteAck, VolumeError> {
        let h = self.mgr.get(volume)?;
        let data = serde_json::to_string(&op).expect("ops serialise");
        let rx = h.core.submit(data)?;
        match tokio::time::timeout(self.write_timeout, rx).await {
            Ok(Ok(Ok(entry))) => Ok(WriteAck { entry }),
            Ok(Ok(Err(e))) => Err(e.into()),
            Ok(Err(_)) => Err(PbError::SteppedDown { term: h.core.promised() }.into()),
            Err(_) => Err(VolumeError::Timeout(self.write_timeout.as_millis() as u64)),
        }
    }
}

impl VolumeApi for VolumeServer {
    async fn put(
        self,
        _: tarpc::context::Context,
        volume: String,
        key: String,
        value: String,
        token: Option<String>,
    ) -> Result<WriteAck, VolumeError> {
        self.authorize(&token)?;
        validate(&key, Some(&value))?;
        self.write(&volume, Op::Put { key, value }).await
    }

    async fn delete(
        self,
        _: tarpc::context::Context,
        volume: String,
        key: String,
        token: Option<String>,
    ) -> Result<WriteAck, VolumeError> {
        self.authorize(&token)?;
        validate(&key, None)?;
        self.write(&volume, Op::Delete { key }).await
    }

    async fn get(self, _: tarpc::context::Context, volume: String, key: String) -> Result<Option<String>, VolumeError> {
        validate(&key, None)?;
        let h = self.mgr.get(&volume)?;
        h.core.read_barrier(self.read_timeout).await?;
        Ok(h.replica.db().get(&key))
    }

    async fn inspect(self, _: tarpc::context::Context, volume: String) -> Result<ReplicaInfo, VolumeError> {
        let h = self.mgr.get(&volume)?;
        let st = h.core.status();
        let state = h.status.borrow().state;
        Ok(ReplicaInfo {
            volume,
            member: h.core.config().me.clone(),
            state,
            term: st.promised,
            last: st.last,
            commit: st.commit,
            db: h.replica.db().digest(),
        })
    }
}
