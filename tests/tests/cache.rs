//! Connection cache (issue 5): peers found through real ZooKeeper, dialed over real TCP, kept
//! current through moves, deaths, session expiry, ZooKeeper restarts and ensemble chaos; and
//! `datom watch`, run as the real binary.
//!
//! Node agents are stood in for by in-process tarpc `NodeAgent` servers that register their
//! `live` ephemeral through their own `Coord`, each on its own tokio runtime so that a "crash"
//! (dropping the runtime) closes its sockets without a goodbye, like SIGKILL.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use datom_common::cache::{CacheError, ConnectionCache, Peer, PeerEvent, PeerFilter, Registry, Unavailable};
use datom_common::coord::watch::WatchEvent;
use datom_common::coord::{EphemeralHandle, Mode};
use datom_common::records::{HardwareReport, LiveRecord, NodeRecord};
use datom_common::rpc::{
    AddNodeRequest, AgentHealth, AgentInfo, ConfigError, ConfigService, NodeAgent, NodeAgentClient, ctx,
};
use datom_common::{Coord, paths};
use datom_tests::{coord, fresh_zk, harness, test_config, wait_for};
use tarpc::context::Context;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

// ---------------------------------------------------------------------------------------------
// Stand-ins for peers

/// A `NodeAgent` that says which address served the call.
#[derive(Clone)]
struct StubNodeAgent {
    node: String,
    address: String,
}

impl NodeAgent for StubNodeAgent {
    async fn diagnose(
        self,
        _: tarpc::context::Context,
        service: String,
    ) -> Result<datom_common::rpc::DiagnoseReport, String> {
        Err(format!("stub agent does not supervise {service}"))
    }

    async fn health(self, _: Context) -> AgentHealth {
        AgentHealth { node: self.node, session: "connected".into(), uptime_s: 0 }
    }
    async fn info(self, _: Context) -> AgentInfo {
        let hardware = HardwareReport {
            machine_id: "stub".into(),
            hostname: "stub".into(),
            os: "stub".into(),
            kernel: "stub".into(),
            cpu_model: "stub".into(),
            arch: "stub".into(),
            cpus: 1,
            memory_bytes: 0,
            disks: vec![],
            nics: vec![],
        };
        AgentInfo {
            node: NodeRecord {
                schema: 1,
                name: self.node,
                machine_id: "stub".into(),
                hardware,
                services: vec![],
                registered_at: chrono::Utc::now(),
                registered_by: "test".into(),
                unschedulable: false,
            },
            address: self.address,
            pid: std::process::id(),
            version: "test".into(),
            args: BTreeMap::new(),
        }
    }
    async fn properties(self, _: Context) -> BTreeMap<String, serde_json::Value> {
        BTreeMap::from([("served_by".to_string(), serde_json::Value::String(self.address))])
    }
}

/// A `ConfigService` that knows no nodes.
#[derive(Clone)]
struct StubConfigService;

impl ConfigService for StubConfigService {
    async fn place_service(
        self,
        _: tarpc::context::Context,
        _s: String,
        _: Option<String>,
    ) -> Result<datom_common::records::TransitionRecord, ConfigError> {
        Err(ConfigError::NotActive { active: None })
    }
    async fn move_service(
        self,
        _: tarpc::context::Context,
        _s: String,
        _t: String,
        _: Option<String>,
    ) -> Result<datom_common::records::TransitionRecord, ConfigError> {
        Err(ConfigError::NotActive { active: None })
    }
    async fn drain_node(
        self,
        _: tarpc::context::Context,
        _n: String,
        _: Option<String>,
    ) -> Result<datom_common::records::TransitionRecord, ConfigError> {
        Err(ConfigError::NotActive { active: None })
    }
    async fn undrain_node(
        self,
        _: tarpc::context::Context,
        _n: String,
        _: Option<String>,
    ) -> Result<datom_common::records::NodeRecord, ConfigError> {
        Err(ConfigError::NotActive { active: None })
    }
    async fn add_node(self, _: Context, _: AddNodeRequest, _: Option<String>) -> Result<NodeRecord, ConfigError> {
        Err(ConfigError::InvalidArgument("stub".into()))
    }
    async fn get_node(self, _: Context, name: String) -> Result<NodeRecord, ConfigError> {
        Err(ConfigError::NoSuchNode(name))
    }
    async fn list_nodes(self, _: Context) -> Result<Vec<NodeRecord>, ConfigError> {
        Ok(vec![])
    }
    async fn remove_node(self, _: Context, name: String, _: Option<String>) -> Result<(), ConfigError> {
        Err(ConfigError::NoSuchNode(name))
    }
    async fn set_node_services(
        self,
        _: Context,
        name: String,
        _: Vec<String>,
        _: Option<String>,
    ) -> Result<NodeRecord, ConfigError> {
        Err(ConfigError::NoSuchNode(name))
    }
}

/// Serves a stub node agent on a fresh loopback port (on the current runtime); returns its
/// address and a sender that stops accepting.
async fn serve_node_agent(node: &str) -> (String, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = StubNodeAgent { node: node.to_string(), address: address.clone() };
    tokio::spawn(async move {
        datom_common::serve_tcp!(listener, server.serve(), async {
            let _ = stopped.await;
        });
    });
    (address, stop)
}

async fn serve_config_service() -> (String, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        datom_common::serve_tcp!(listener, StubConfigService.serve(), async {
            let _ = stopped.await;
        });
    });
    (address, stop)
}

fn live_record(node: &str, address: &str) -> Vec<u8> {
    let rec = LiveRecord {
        schema: 1,
        node: node.into(),
        address: address.into(),
        http: None,
        pid: std::process::id(),
        version: "test".into(),
        started_at: chrono::Utc::now(),
        load: None,
    };
    datom_common::coord::encode("live", &rec).unwrap()
}

/// A stand-in node agent: a tarpc `NodeAgent` server plus its `live` ephemeral, registered
/// through its own `Coord`, all on a private runtime.
struct StubAgent {
    node: String,
    address: String,
    coord: Coord,
    live: Option<EphemeralHandle>,
    _servers: Vec<oneshot::Sender<()>>,
    rt: Option<tokio::runtime::Runtime>,
}

impl StubAgent {
    async fn start(zk: &str, node: &str) -> StubAgent {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let (zk2, node2) = (zk.to_string(), node.to_string());
        let (coord, address, live, stop) = rt
            .spawn(async move {
                let coord = coord(&zk2).await;
                coord.ensure_path(&paths::node(&node2)).await.unwrap();
                let (address, stop) = serve_node_agent(&node2).await;
                let live = coord
                    .register_ephemeral(
                        &paths::node_live(&node2),
                        live_record(&node2, &address),
                        Duration::from_secs(10),
                    )
                    .await
                    .unwrap();
                (coord, address, live, stop)
            })
            .await
            .unwrap();
        StubAgent { node: node.into(), address, coord, live: Some(live), _servers: vec![stop], rt: Some(rt) }
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("running")
    }

    /// Serves on a new port (the old server keeps serving) and re-registers there.
    async fn move_to_new_port(&mut self) -> String {
        let node = self.node.clone();
        let live = self.live.take().unwrap();
        let (address, stop, live) = self
            .rt()
            .spawn(async move {
                let (address, stop) = serve_node_agent(&node).await;
                live.set_data(live_record(&node, &address)).await.unwrap();
                (address, stop, live)
            })
            .await
            .unwrap();
        self.live = Some(live);
        self._servers.push(stop);
        self.address = address.clone();
        address
    }

    /// Deregisters (the ephemeral goes at once) and stops.
    async fn stop(mut self) {
        let live = self.live.take().unwrap();
        let coord = self.coord.clone();
        self.rt()
            .spawn(async move {
                live.remove().await.unwrap();
                coord.close().await;
            })
            .await
            .unwrap();
    }

    /// Like SIGKILL: every socket closes with no goodbye; ZooKeeper keeps the session (and the
    /// ephemeral) until the session timeout.
    fn kill(mut self) {
        self.rt.take().unwrap().shutdown_background();
    }
}

impl Drop for StubAgent {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

async fn start_cache(zk: &str) -> ConnectionCache {
    let cache = ConnectionCache::start(coord(zk).await);
    tokio::time::timeout(Duration::from_secs(10), cache.wait_synced()).await.expect("the cache lists the registry");
    cache
}

async fn served_by(c: &NodeAgentClient) -> String {
    let props = c.properties(ctx(Duration::from_secs(5))).await.expect("call the stub agent");
    props["served_by"].as_str().unwrap().to_string()
}

/// The registry as ZooKeeper holds it, read independently of the cache.
async fn truth(c: &Coord) -> Option<Registry> {
    c.list_tree(paths::ROOT).await.ok().map(|t| datom_common::cache::registry_from_tree(&t))
}

async fn next_event(events: &mut datom_common::cache::PeerStream) -> PeerEvent {
    tokio::time::timeout(Duration::from_secs(10), events.next()).await.expect("an event within 10 s").expect("open")
}

fn unavailable_reason(r: Result<NodeAgentClient, CacheError>) -> Unavailable {
    match r {
        Err(CacheError::PeerUnavailable { reason, .. }) => reason,
        Err(e) => panic!("expected PeerUnavailable, got {e}"),
        Ok(_) => panic!("expected PeerUnavailable, got a client"),
    }
}

fn record(address: &str) -> Vec<u8> {
    serde_json::to_vec_pretty(&serde_json::json!({ "schema": 1, "address": address, "state": "IN_SERVICE" })).unwrap()
}

/// A small deterministic PRNG (xorshift64*), seeded and printed so a failure can be replayed.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn c01_hits_are_cached_and_a_peer_that_moves_is_reached_at_its_new_address() {
    let zk = fresh_zk("cache-move").await;
    let mut agent = StubAgent::start(&zk, "n1").await;
    let cache = start_cache(&zk).await;
    let peer = Peer::node("n1");

    let first: NodeAgentClient = cache.get_connection(&peer).await.unwrap();
    assert_eq!(served_by(&first).await, agent.address);
    let again = cache.node_agent("n1").await.unwrap();
    assert_eq!(served_by(&again).await, agent.address);
    let s = cache.stats();
    assert_eq!((s.misses, s.hits, s.dials, s.peers, s.connections), (1, 1, 1, 1, 1), "{s:?}");

    // Re-register at a new port; the old server keeps serving, so only the cache can make the
    // next call land on the new one.
    let old = agent.address.clone();
    let new = agent.move_to_new_port().await;
    assert_ne!(old, new);
    wait_for("the cache to see the new address", Duration::from_secs(10), || async {
        cache.peer(&peer).filter(|i| i.address == new).map(|_| ())
    })
    .await;
    let moved = cache.node_agent("n1").await.unwrap();
    assert_eq!(served_by(&moved).await, new, "the next call reaches the new address");

    // The connection handed out before the move was cut off: it fails at once, not at its
    // 10 s deadline.
    let t = Instant::now();
    let res = first.properties(ctx(Duration::from_secs(10))).await;
    assert!(res.is_err(), "the evicted connection still answered: {res:?}");
    assert!(t.elapsed() < Duration::from_secs(2), "the evicted connection hung for {:?}", t.elapsed());
    let s = cache.stats();
    assert_eq!(s.dials, 2, "{s:?}");
    assert!(s.evictions >= 1, "{s:?}");
    cache.close();
    assert_eq!(cache.node_agent("n1").await.unwrap_err(), CacheError::Closed);
}

#[tokio::test]
async fn c02_a_peer_that_goes_is_unavailable_and_one_that_comes_back_is_available_again() {
    let zk = fresh_zk("cache-comeback").await;
    let agent = StubAgent::start(&zk, "n1").await;
    let cache = start_cache(&zk).await;
    let peer = Peer::node("n1");
    let mut events = cache.subscribe(PeerFilter::Node { node: "n1".into() });
    assert!(matches!(next_event(&mut events).await, PeerEvent::Up { ref peer, .. } if *peer == Peer::node("n1")));
    cache.node_agent("n1").await.unwrap();

    // Forced expiry of the agent's session: its ephemeral goes, and its Coord re-creates it in
    // a new session. The cache follows (as Down + Up, or as one Changed if it read only after
    // the re-creation) and ends on the new session.
    let old_session = agent.coord.status().session_id;
    harness::expire_session(&zk, agent.coord.session_info().await.unwrap()).await.unwrap();
    let new_session = wait_for("the agent's new session", Duration::from_secs(10), || async {
        let s = agent.coord.status();
        (s.session_id != old_session && s.epoch >= 1).then_some(s.session_id)
    })
    .await;
    loop {
        match next_event(&mut events).await {
            PeerEvent::Down { .. } => continue,
            PeerEvent::Up { info, .. } | PeerEvent::Changed { info, .. } if info.session == new_session => break,
            PeerEvent::Up { .. } | PeerEvent::Changed { .. } => continue,
        }
    }
    assert_eq!(cache.peer(&peer).unwrap().session, new_session);
    let c = cache.node_agent("n1").await.unwrap();
    assert_eq!(served_by(&c).await, agent.address);

    // Graceful stop: Down at once, then PeerUnavailable naming the missing registration.
    agent.stop().await;
    while !matches!(next_event(&mut events).await, PeerEvent::Down { .. }) {}
    let t = Instant::now();
    let reason = unavailable_reason(cache.node_agent("n1").await);
    assert!(matches!(reason, Unavailable::NotRegistered { ref path } if *path == paths::node_live("n1")), "{reason}");
    assert!(t.elapsed() < Duration::from_secs(2));

    // It comes back (new process, new port): available again.
    let back = StubAgent::start(&zk, "n1").await;
    assert!(matches!(next_event(&mut events).await, PeerEvent::Up { ref info, .. } if info.address == back.address));
    let c = cache.node_agent("n1").await.unwrap();
    assert_eq!(served_by(&c).await, back.address);
    assert!(cache.stats().unavailable >= 1);
}

#[tokio::test]
async fn c03_a_peer_whose_process_dies_is_unavailable_within_its_session_timeout_never_a_hang() {
    let zk = fresh_zk("cache-death").await;
    let agent = StubAgent::start(&zk, "n1").await;
    let session_timeout = agent.coord.negotiated_timeout();
    let cache = start_cache(&zk).await;
    let peer = Peer::node("n1");
    let before = cache.node_agent("n1").await.unwrap();
    assert_eq!(served_by(&before).await, agent.address);

    let t0 = Instant::now();
    agent.kill();

    // Until the session expires the peer is still registered: calls fail fast with the dial
    // error once the broken connection is noticed, and none hangs.
    let fast = wait_for("get_connection to fail fast", session_timeout + Duration::from_secs(5), || async {
        let r = tokio::time::timeout(Duration::from_secs(4), cache.node_agent("n1")).await.expect("never a hang");
        r.err()
    })
    .await;
    assert!(matches!(fast, CacheError::PeerUnavailable { .. }), "{fast}");
    let call = tokio::time::timeout(Duration::from_secs(3), before.health(ctx(Duration::from_secs(30))))
        .await
        .expect("a call on a dead peer's connection fails fast");
    assert!(call.is_err());

    // When the session expires the registration goes: evicted, PeerUnavailable(NotRegistered).
    wait_for("the dead peer to leave the registry", session_timeout * 2 + Duration::from_secs(5), || async {
        cache.peer(&peer).is_none().then_some(())
    })
    .await;
    let gone_after = t0.elapsed();
    assert!(
        gone_after < session_timeout + Duration::from_secs(3),
        "the peer dropped out {gone_after:?} after its death; session timeout {session_timeout:?}"
    );
    let reason = unavailable_reason(cache.node_agent("n1").await);
    assert!(matches!(reason, Unavailable::NotRegistered { .. }), "{reason}");
    let s = cache.stats();
    assert_eq!(s.connections, 0, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c04_a_hundred_concurrent_calls_for_a_cold_peer_make_one_dial() {
    let zk = fresh_zk("cache-flight").await;
    let agent = StubAgent::start(&zk, "n1").await;
    let other = StubAgent::start(&zk, "n2").await;

    // Cold in the registry too: the cache has just started, so callers may look the peer up
    // in ZooKeeper themselves.
    let cache = ConnectionCache::start(coord(&zk).await);
    let run = |cache: ConnectionCache, node: &'static str| async move {
        let barrier = Arc::new(tokio::sync::Barrier::new(100));
        let calls: Vec<_> = (0..100)
            .map(|_| {
                let (cache, barrier) = (cache.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    cache.node_agent(node).await
                })
            })
            .collect();
        let mut clients = Vec::new();
        for c in calls {
            clients.push(c.await.unwrap().expect("every caller gets a connection"));
        }
        clients
    };
    let clients = run(cache.clone(), "n1").await;
    assert_eq!(served_by(&clients[0]).await, agent.address);
    assert_eq!(served_by(&clients[99]).await, agent.address);
    let s = cache.stats();
    assert_eq!(s.dials, 1, "{s:?}");
    assert_eq!(s.misses, 1, "{s:?}");
    assert_eq!(s.hits + s.coalesced, 99, "{s:?}");

    // Same with the registry warm.
    cache.wait_synced().await;
    let clients = run(cache.clone(), "n2").await;
    assert_eq!(served_by(&clients[5]).await, other.address);
    let s = cache.stats();
    assert_eq!(s.dials, 2, "{s:?}");
    assert_eq!(s.misses, 2, "{s:?}");
}

#[tokio::test]
async fn c05_after_its_own_session_expires_the_cache_resyncs_to_exactly_zookeeper() {
    let zk = fresh_zk("cache-expiry").await;
    let reg = coord(&zk).await;
    for n in ["n1", "n2", "n3"] {
        reg.ensure_path(&paths::node(n)).await.unwrap();
        reg.create_raw(&paths::node_live(n), &record(&format!("127.0.0.1:1{n}")), Mode::Ephemeral).await.unwrap();
    }
    let cc = coord(&zk).await;
    let cache = ConnectionCache::start(cc.clone());
    cache.wait_synced().await;
    assert_eq!(Some(cache.peers()), truth(&reg).await);
    let resyncs = cache.stats().resyncs;

    harness::expire_session(&zk, cc.session_info().await.unwrap()).await.unwrap();
    // Change the registry while the cache's session is being replaced: its watch is gone, so
    // only the re-list can catch these.
    reg.delete(&paths::node_live("n1"), None).await.unwrap();
    reg.set_raw(&paths::node_live("n2"), &record("127.0.0.1:9"), None).await.unwrap();
    reg.ensure_path(&paths::node("n4")).await.unwrap();
    reg.create_raw(&paths::node_live("n4"), &record("127.0.0.1:14"), Mode::Ephemeral).await.unwrap();

    wait_for("a resync that equals ZooKeeper", Duration::from_secs(15), || async {
        (cache.stats().resyncs > resyncs && Some(cache.peers()) == truth(&reg).await).then_some(())
    })
    .await;
    assert!(cc.status().epoch >= 1, "the cache's coordination client opened a new session");
    let peers = cache.peers();
    assert!(!peers.contains_key(&Peer::node("n1")));
    assert_eq!(peers[&Peer::node("n2")].address, "127.0.0.1:9");
    assert!(peers.contains_key(&Peer::node("n4")));

    // And it follows changes on the new session.
    reg.delete(&paths::node_live("n4"), None).await.unwrap();
    wait_for("the cache to follow a change after the resync", Duration::from_secs(10), || async {
        (!cache.peers().contains_key(&Peer::node("n4"))).then_some(())
    })
    .await;
}

#[tokio::test]
async fn c06_after_a_zookeeper_restart_the_cache_resyncs_to_exactly_zookeeper() {
    let mut server = tokio::task::spawn_blocking(|| harness::ZkServer::start(harness::ServerOptions::default()))
        .await
        .unwrap()
        .expect("dedicated ZooKeeper");
    let zk = harness::unique_chroot(&server.connect_string(), "cache-restart").await;
    let reg = coord(&zk).await;
    for n in ["n1", "n2"] {
        reg.ensure_path(&paths::node(n)).await.unwrap();
        reg.create_raw(&paths::node_live(n), &record(&format!("127.0.0.1:2{n}")), Mode::Ephemeral).await.unwrap();
    }
    // A peer that will die while ZooKeeper is down: its session ends after the restart.
    let doomed = StubAgent::start(&zk, "n3").await;
    let cache = start_cache(&zk).await;
    wait_for("three peers", Duration::from_secs(10), || async { (cache.peers().len() == 3).then_some(()) }).await;
    let resyncs = cache.stats().resyncs;
    // A bare persistent watch on a session that survives the restart (the cache's own watch
    // is one too): it must still deliver events after the reconnect.
    let mut raw = reg.watch(paths::ROOT, true);
    assert_eq!(raw.next().await, Some(WatchEvent::Resync));

    server.kill();
    doomed.kill();
    let server = tokio::task::spawn_blocking(move || {
        server.restart().expect("restart ZooKeeper");
        server
    })
    .await
    .unwrap();

    wait_for("the cache to resync to ZooKeeper without the dead peer", Duration::from_secs(30), || async {
        let t = truth(&reg).await?;
        (cache.stats().resyncs > resyncs && !t.contains_key(&Peer::node("n3")) && cache.peers() == t).then_some(())
    })
    .await;

    reg.ensure_path(&paths::node("n5")).await.unwrap();
    reg.create_raw(&paths::node_live("n5"), &record("127.0.0.1:25"), Mode::Ephemeral).await.unwrap();
    wait_for("the cache to follow a change after the restart", Duration::from_secs(10), || async {
        let t = truth(&reg).await?;
        (cache.peers() == t && t.contains_key(&Peer::node("n5"))).then_some(())
    })
    .await;
    let n5 = paths::node_live("n5");
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(ev) = raw.next().await {
            if matches!(ev, WatchEvent::Node { ref path, .. } if *path == n5) {
                return;
            }
        }
    })
    .await
    .expect("a persistent watch delivers events after a reconnect within its session");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c07_consistency_random_registry_changes_while_ensemble_members_die_and_return() {
    let mut ens = tokio::task::spawn_blocking(|| harness::ZkEnsemble::start(3, harness::ServerOptions::default()))
        .await
        .unwrap()
        .expect("3-member ensemble");
    let conn = ens.connect_string();
    let cfg = |c: &str| test_config(c).with_session_timeout(Duration::from_millis(4000));
    let admin = Coord::connect(cfg(&conn)).await.unwrap();
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("consistency seed {seed:#x}");

    // The universe of registrations the writers toggle.
    let mut universe = vec![paths::CONFIG_SERVICE_INSTANCE.to_string()];
    admin.ensure_path(paths::CONFIG_SERVICE).await.unwrap();
    for i in 0..8 {
        admin.ensure_path(&paths::node(&format!("n{i}"))).await.unwrap();
        universe.push(paths::node_live(&format!("n{i}")));
    }
    for s in ["web", "db"] {
        admin.ensure_path(&paths::service_instances(s)).await.unwrap();
        for i in 0..4 {
            universe.push(paths::service_instance(s, &format!("n{i}")));
        }
    }
    for g in ["g0", "g1"] {
        admin.ensure_path(&paths::group_members(g)).await.unwrap();
        for i in 0..3 {
            universe.push(paths::group_member(g, &format!("m{i}")));
        }
    }
    // Noise the cache must ignore.
    universe.push(format!("{}/noise", paths::PROPERTIES));

    let mut caches = Vec::new();
    for _ in 0..3 {
        let c = ConnectionCache::start(Coord::connect(cfg(&conn)).await.unwrap());
        caches.push(c);
    }
    let mut writers = Vec::new();
    for _ in 0..3 {
        writers.push(Coord::connect(cfg(&conn)).await.unwrap());
    }

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer_task = {
        let (stop, universe, writers, conn) = (stop.clone(), universe.clone(), writers.clone(), conn.clone());
        let done = done.clone();
        tokio::spawn(async move {
            let mut rng = Rng(seed);
            let mut ops = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let path = &universe[rng.below(universe.len() as u64) as usize];
                let w = &writers[rng.below(writers.len() as u64) as usize];
                let addr = format!("127.0.0.1:{}", 1000 + rng.below(60000));
                let op = rng.below(100);
                let res = match op {
                    0..40 => w.create_raw(path, &record(&addr), Mode::Ephemeral).await.map(|_| ()),
                    40..70 => w.set_raw(path, &record(&addr), None).await.map(|_| ()),
                    70..98 => w.delete(path, None).await,
                    // Now and then a writer's session expires: all its ephemerals go at once.
                    _ => match w.session_info().await {
                        Ok(s) => harness::expire_session(&conn, s).await.map_err(|_| datom_common::CoordError::Closed),
                        Err(e) => Err(e),
                    },
                };
                let _ = res;
                ops += 1;
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            ops
        })
    };

    // Chaos: kill a member, let changes run without it, restart it and wait until it has
    // rejoined; one member down at a time keeps a quorum. The leader goes first, then every
    // member in turn, so every cache loses its server at least once.
    let victims = [None, Some(0), Some(1), Some(2)];
    for victim in victims {
        let (back, victim) = tokio::task::spawn_blocking(move || {
            let victim = victim.or_else(|| ens.leader()).unwrap_or(0);
            ens.member(victim).kill();
            (ens, victim)
        })
        .await
        .unwrap();
        // Let the registry change while the member is down.
        let base = done.load(std::sync::atomic::Ordering::Relaxed);
        wait_for("registry changes while a member is down", Duration::from_secs(30), || async {
            (done.load(std::sync::atomic::Ordering::Relaxed) >= base + 25).then_some(())
        })
        .await;
        ens = tokio::task::spawn_blocking(move || {
            let mut ens = back;
            ens.member(victim).restart().expect("member rejoins");
            ens
        })
        .await
        .unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let ops = writer_task.await.unwrap();
    eprintln!("{ops} random registry operations during {} member kills", victims.len());
    assert!(ops > 50, "too few registry changes to mean anything: {ops}");

    // Every cache converges to exactly what ZooKeeper holds.
    let checker = Coord::connect(cfg(&conn)).await.unwrap();
    wait_for("every cache to equal ZooKeeper", Duration::from_secs(30), || async {
        let t = truth(&checker).await?;
        caches.iter().all(|c| c.peers() == t).then_some(())
    })
    .await;
    let t = truth(&checker).await.unwrap();
    eprintln!("final registry: {} peers; cache stats {:?}", t.len(), caches[0].stats());
    for c in &caches {
        assert!(c.stats().resyncs >= 2, "every cache lost its server and re-listed: {:?}", c.stats());
        assert!(!c.peers().keys().any(|p| p.path().starts_with(paths::PROPERTIES)));
    }
    drop(ens);
}

#[tokio::test]
async fn c08_subscriptions_filter_by_node_service_and_group_and_clients_are_typed() {
    let zk = fresh_zk("cache-subs").await;
    let reg = coord(&zk).await;
    let agent = StubAgent::start(&zk, "n1").await;
    let (cs_addr, _cs_stop) = serve_config_service().await;
    reg.ensure_path(paths::CONFIG_SERVICE).await.unwrap();
    reg.create_raw(paths::CONFIG_SERVICE_INSTANCE, &record(&cs_addr), Mode::Ephemeral).await.unwrap();
    for (s, n) in [("web", "n1"), ("web", "n2"), ("db", "n1")] {
        reg.ensure_path(&paths::service_instances(s)).await.unwrap();
        reg.create_raw(&paths::service_instance(s, n), &record(&agent.address), Mode::Ephemeral).await.unwrap();
    }
    reg.ensure_path(&paths::group_members("g1")).await.unwrap();
    for m in ["m1", "m2"] {
        reg.create_raw(&paths::group_member("g1", m), &record("127.0.0.1:7"), Mode::Ephemeral).await.unwrap();
    }
    let cache = start_cache(&zk).await;
    wait_for("all registrations", Duration::from_secs(10), || async { (cache.peers().len() == 7).then_some(()) }).await;

    let initial = |f: PeerFilter| {
        let mut s = cache.subscribe(f);
        let mut got = BTreeSet::new();
        while let Some(ev) = futures::FutureExt::now_or_never(s.next()).flatten() {
            assert!(matches!(ev, PeerEvent::Up { .. }));
            got.insert(ev.peer().clone());
        }
        (s, got)
    };
    let (_, all) = initial(PeerFilter::All);
    assert_eq!(all.len(), 7);
    let (_, on_n1) = initial(PeerFilter::Node { node: "n1".into() });
    assert_eq!(
        on_n1,
        BTreeSet::from([Peer::node("n1"), Peer::service_instance("web", "n1"), Peer::service_instance("db", "n1")])
    );
    let (mut web, web_peers) = initial(PeerFilter::Service { service: "web".into() });
    assert_eq!(web_peers, BTreeSet::from([Peer::service_instance("web", "n1"), Peer::service_instance("web", "n2")]));
    let (mut group, members) = initial(PeerFilter::Group { group: "g1".into() });
    assert_eq!(members, BTreeSet::from([Peer::group_member("g1", "m1"), Peer::group_member("g1", "m2")]));

    // A change elsewhere does not reach the group subscriber; its next event is its own.
    reg.create_raw(&paths::service_instance("web", "n3"), &record("127.0.0.1:8"), Mode::Ephemeral).await.unwrap();
    reg.delete(&paths::group_member("g1", "m2"), None).await.unwrap();
    assert!(
        matches!(next_event(&mut web).await, PeerEvent::Up { ref peer, .. } if *peer == Peer::service_instance("web", "n3"))
    );
    assert!(
        matches!(next_event(&mut group).await, PeerEvent::Down { ref peer, .. } if *peer == Peer::group_member("g1", "m2"))
    );
    assert_eq!(group.view().len(), 1);

    // One cache, several client types: a node agent client and a config service client.
    let cs = cache.config_service().await.unwrap();
    assert_eq!(cs.list_nodes(ctx(Duration::from_secs(5))).await.unwrap(), Ok(vec![]));
    let web_n1: NodeAgentClient = cache.get_connection(&Peer::service_instance("web", "n1")).await.unwrap();
    assert_eq!(served_by(&web_n1).await, agent.address);

    // An unusable registration is ignored (and counted), and asking for it says why.
    reg.create_raw(&paths::service_instance("web", "n9"), b"{\"schema\":1}", Mode::Ephemeral).await.unwrap();
    wait_for("the bad record to be seen", Duration::from_secs(10), || async {
        (cache.stats().bad_records >= 1).then_some(())
    })
    .await;
    let reason = unavailable_reason(cache.get_connection(&Peer::service_instance("web", "n9")).await);
    assert!(reason.to_string().contains("no string \"address\""), "{reason}");
    assert!(cache.peer(&Peer::service_instance("web", "n9")).is_none());
}

// ---------------------------------------------------------------------------------------------
// `datom watch`, the real binary

/// A running `datom watch`, with its stdout lines arriving on a channel.
struct WatchProc {
    child: Child,
    lines: std_mpsc::Receiver<String>,
}

impl WatchProc {
    fn spawn(zk: &str, args: &[&str]) -> WatchProc {
        let mut child = Command::new(datom_tests::bin("datom"))
            .args(["--zk", zk, "--connect-timeout", "3000", "watch"])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run datom watch");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        WatchProc { child, lines }
    }

    /// The next line within 10 s, parsed as JSON.
    async fn next_json(&self) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.lines.try_recv() {
                Ok(line) => return serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}")),
                Err(std_mpsc::TryRecvError::Empty) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("no line from datom watch within 10 s ({e:?})"),
            }
        }
    }

    /// Sends `sig` and waits (bounded) for a clean exit.
    async fn stop_with(mut self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
        let status = wait_for("datom watch to exit", Duration::from_secs(10), || {
            let st = self.child.try_wait().unwrap();
            async move { st }
        })
        .await;
        assert!(status.success(), "datom watch exited with {status:?} on {sig}");
        // Nothing but whole JSON lines was printed.
        while let Ok(line) = self.lines.try_recv() {
            serde_json::from_str::<serde_json::Value>(&line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"));
        }
    }
}

impl Drop for WatchProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn c09_datom_watch_json_prints_up_and_down_and_exits_cleanly_on_sigterm() {
    let zk = fresh_zk("cache-watch").await;
    let reg = coord(&zk).await;
    reg.ensure_path(&paths::node("n0")).await.unwrap();
    reg.create_raw(&paths::node_live("n0"), &record("127.0.0.1:10"), Mode::Ephemeral).await.unwrap();
    let watch = WatchProc::spawn(&zk, &["--json"]);

    // Peers already registered come first, as Up.
    let ev = watch.next_json().await;
    assert_eq!((ev["event"].as_str(), ev["peer"]["node"].as_str()), (Some("up"), Some("n0")), "{ev}");
    assert!(ev["at"].is_string());

    let agent = StubAgent::start(&zk, "n1").await;
    let ev = watch.next_json().await;
    assert_eq!(ev["event"], "up", "{ev}");
    assert_eq!(ev["peer"], serde_json::json!({ "kind": "node", "node": "n1" }));
    assert_eq!(ev["info"]["address"], agent.address);

    reg.set_raw(&paths::node_live("n0"), &record("127.0.0.1:11"), None).await.unwrap();
    let ev = watch.next_json().await;
    assert_eq!(ev["event"], "changed", "{ev}");
    assert_eq!(
        (ev["info"]["address"].as_str(), ev["previous"]["address"].as_str()),
        (Some("127.0.0.1:11"), Some("127.0.0.1:10"))
    );

    let address = agent.address.clone();
    agent.stop().await;
    let ev = watch.next_json().await;
    assert_eq!((ev["event"].as_str(), ev["peer"]["node"].as_str()), (Some("down"), Some("n1")), "{ev}");
    assert_eq!(ev["last"]["address"], address);

    watch.stop_with(nix::sys::signal::Signal::SIGTERM).await;
}

#[tokio::test]
async fn c10_datom_watch_filters_exits_on_sigint_and_rejects_bad_names() {
    let zk = fresh_zk("cache-watch-filter").await;
    let reg = coord(&zk).await;
    let watch = WatchProc::spawn(&zk, &["--service", "web", "--json"]);
    // Whether it lists these as already registered or sees them happen, the filter lets only
    // the web instance through.
    reg.ensure_path(&paths::service_instances("web")).await.unwrap();
    reg.ensure_path(&paths::service_instances("db")).await.unwrap();
    reg.ensure_path(&paths::node("n1")).await.unwrap();
    reg.create_raw(&paths::node_live("n1"), &record("127.0.0.1:1"), Mode::Ephemeral).await.unwrap();
    reg.create_raw(&paths::service_instance("db", "n1"), &record("127.0.0.1:2"), Mode::Ephemeral).await.unwrap();
    reg.create_raw(&paths::service_instance("web", "n1"), &record("127.0.0.1:3"), Mode::Ephemeral).await.unwrap();
    let ev = watch.next_json().await;
    assert_eq!(ev["peer"], serde_json::json!({ "kind": "service_instance", "service": "web", "node": "n1" }), "{ev}");
    assert_eq!(ev["info"]["state"], "IN_SERVICE");
    reg.delete(&paths::service_instance("db", "n1"), None).await.unwrap();
    reg.delete(&paths::service_instance("web", "n1"), None).await.unwrap();
    let ev = watch.next_json().await;
    assert_eq!((ev["event"].as_str(), ev["peer"]["service"].as_str()), (Some("down"), Some("web")), "{ev}");
    watch.stop_with(nix::sys::signal::Signal::SIGINT).await;

    // Bad input: a clear error, non-zero exit, at once.
    let out = datom_tests::datom(&zk, &["watch", "--group", "a/b"]);
    assert!(!out.status.success());
    assert!(datom_tests::stderr(&out).contains("must not contain '/'"), "{}", datom_tests::stderr(&out));
    let out = datom_tests::datom(&zk, &["watch", "--group", "g", "--node", "n"]);
    assert!(!out.status.success());
    assert!(datom_tests::stderr(&out).contains("cannot be used with"), "{}", datom_tests::stderr(&out));
}
