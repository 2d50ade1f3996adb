//! The volume server (seed 003, "Volume server"): hosts replicas of replicated key/value volumes
//! through a `VolumeReplicaMgr`; each `VolumeReplica` is a member of the volume's
//! primary-backup group. Writes are journaled first (fsync'd, group commit), acknowledged once
//! a quorum of replicas has journaled them, then applied to the db, which records the last
//! journal entry it applied. Reads go to the leader.
//!
//! How replicas get started: for now one `datom-volume-server` process per replica, each with
//! its own `--data-dir`, `--member` name and ports, all naming the volume with `--volume`;
//! `datom volume create NAME --replicas N` writes the volume's record first.

pub mod client;
pub mod db;
pub mod failpoint;
pub mod mgr;
pub mod replica;
pub mod rpc;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use datom_common::CoordConfig;
use datom_common::cache::{CacheConfig, ConnectionCache};
use datom_common::names::{NameKind, validate};
use datom_pb::{PeerRouter, Timings};

use crate::failpoint::Failpoint;
use crate::mgr::{OpenVolume, VolumeReplicaMgr, VolumeServer};
use crate::rpc::VolumeApi;

/// Everything the server needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// ZooKeeper.
    pub zk: CoordConfig,
    /// This server's member name in every volume group (stable across restarts).
    pub member: String,
    /// Where journals and dbs live (one subdirectory per volume).
    pub data_dir: PathBuf,
    /// Client API address.
    pub listen: String,
    /// Replication address (default: the client API's host, any port).
    pub peer_listen: Option<String>,
    /// Volumes to host.
    pub volumes: Vec<String>,
    /// Failpoint, for tests.
    pub failpoint: Option<Failpoint>,
    /// Protocol timeouts.
    pub timings: Timings,
    /// How often dbs are checkpointed.
    pub checkpoint_interval: Duration,
    /// How long a write may wait for its acknowledgement.
    pub write_timeout: Duration,
    /// Cluster token check for writes and for replication connections (from `--auth-file`);
    /// `None` on an open cluster. Replication dials present the token it accepts.
    pub token: Option<datom_common::auth::TokenVerifier>,
}

/// Runs the server until `shutdown` resolves, then leaves the groups gracefully.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    validate(NameKind::Node, &config.member).map_err(|e| anyhow::anyhow!("--member: {e}"))?;
    if config.volumes.is_empty() {
        anyhow::bail!("no volume to host: name at least one with --volume NAME");
    }
    for v in &config.volumes {
        validate(NameKind::Volume, v).map_err(|e| anyhow::anyhow!("--volume: {e}"))?;
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create the data directory {}", config.data_dir.display()))?;
    let coord = datom_common::Coord::connect(config.zk.clone()).await?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", config.listen))?;
    let listen = listener.local_addr()?.to_string();
    let peer_bind = match &config.peer_listen {
        Some(a) => a.clone(),
        None => format!("{}:0", listener.local_addr()?.ip()),
    };
    let peer_listener = tokio::net::TcpListener::bind(&peer_bind)
        .await
        .with_context(|| format!("cannot listen on {peer_bind} (--peer-listen)"))?;
    let peer = peer_listener.local_addr()?.to_string();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    // Replication connections are authenticated by a handshake with the cluster token: this
    // process presents it when it dials its peers, and its listener checks it (both `None` on
    // an open cluster).
    datom_pb::set_cluster_token(config.token.as_ref().map(|v| v.token())).map_err(|e| anyhow::anyhow!(e))?;
    let router = PeerRouter::new();
    tokio::spawn(router.clone().serve_with(peer_listener, config.token.clone(), stopped()));
    // One connection cache for the whole process: every volume group's replication clients
    // come from it (a connection per member and group), found through the members'
    // registrations.
    let cache = ConnectionCache::start_with(
        coord.clone(),
        CacheConfig { dial_timeout: config.timings.dial_timeout, ..CacheConfig::default() },
    );
    let mgr = Arc::new(VolumeReplicaMgr::new());
    for v in &config.volumes {
        let open = OpenVolume {
            coord: &coord,
            member: &config.member,
            dir: config.data_dir.join(v),
            peer_address: &peer,
            client_address: &listen,
            timings: config.timings.clone(),
            router: &router,
            cache: &cache,
            failpoint: config.failpoint.clone(),
            checkpoint_interval: config.checkpoint_interval,
        };
        mgr.open(v, open).await.with_context(|| format!("cannot start the replica of volume {v:?}"))?;
    }
    let mut server = VolumeServer::new(mgr.clone(), config.write_timeout, config.write_timeout);
    server.token = config.token.clone();
    let api = tokio::spawn({
        let stopped = stopped();
        async move { datom_pb::serve_tcp_nodelay!(listener, server.serve(), stopped) }
    });
    tracing::info!(member = config.member, listen, peer, volumes = ?config.volumes, "volume server ready");
    println!(
        "{}",
        serde_json::json!({ "ready": true, "member": config.member, "listen": listen, "peer": peer, "volumes": config.volumes })
    );
    shutdown.await;
    tracing::info!("stopping: leaving the volume groups");
    mgr.stop_all().await;
    stop_tx.send_replace(true);
    let _ = api.await;
    cache.close();
    coord.close().await;
    Ok(())
}
