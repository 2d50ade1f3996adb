//! Primary-backup replication over the process's shared connection cache (issues 8 and 5):
//! volume servers built in-process the way `datom-volume-server` builds itself (one
//! `ConnectionCache` per server, shared by the two volume groups it hosts, via
//! `VolumeReplicaMgr` / `OpenVolume`), each on its own runtime and ZooKeeper session so it can
//! be killed like a process, against real ZooKeeper. In-process because the cache's counters
//! are what shows where the replication connections come from.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use datom_common::cache::{CacheConfig, CacheStats, ConnectionCache, Peer};
use datom_common::coord::Mode;
use datom_common::{Coord, paths};
use datom_pb::driver::Timings;
use datom_pb::rpc::{PbPeerClient, PrepareRequest};
use datom_pb::types::{GroupRecord, MemberRecord, MemberState, MemberStateRecord, TermRecord, TermStatus};
use datom_pb::{CachePeerClients, CoreStatus, PbError, PeerClients, PeerRouter};
use datom_tests::{coord, fresh_zk, wait_for};
use datom_volume_server::db::Op;
use datom_volume_server::mgr::{OpenVolume, VolumeReplicaMgr};

const LONG: Duration = Duration::from_secs(60);
const VOLUMES: [&str; 2] = ["vol-a", "vol-b"];

/// The tests here start three servers each; one at a time keeps the 2-core machine usable.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A volume server hosting [`VOLUMES`], on a private runtime (dropping the runtime is a
/// SIGKILL: every socket closes at once, ZooKeeper keeps the session until it expires).
struct Server {
    member: String,
    /// Replication address the members dial.
    peer: String,
    cache: ConnectionCache,
    mgr: Arc<VolumeReplicaMgr>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Server {
    /// Starts the server, its replication listener on `peer_listen`.
    async fn start(zk: &str, member: &str, root: &Path, peer_listen: &str) -> Server {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let (zk, m, dir, listen) = (zk.to_string(), member.to_string(), root.join(member), peer_listen.to_string());
        let (peer, cache, mgr) = rt
            .spawn(async move {
                let coord = coord(&zk).await;
                let timings = Timings::default();
                // As `datom_volume_server::run` does: one cache per process, for every volume.
                let cache = ConnectionCache::start_with(
                    coord.clone(),
                    CacheConfig { dial_timeout: timings.dial_timeout, ..CacheConfig::default() },
                );
                // A fixed port may still be held for a moment by the killed runtime's listener.
                let listener = wait_for(&format!("binding {listen}"), LONG, || async {
                    tokio::net::TcpListener::bind(&listen).await.ok()
                })
                .await;
                let peer = listener.local_addr().unwrap().to_string();
                let router = PeerRouter::new();
                tokio::spawn(router.clone().serve(listener, futures::future::pending()));
                let mgr = Arc::new(VolumeReplicaMgr::new());
                for v in VOLUMES {
                    let open = OpenVolume {
                        coord: &coord,
                        member: &m,
                        dir: dir.join(v),
                        peer_address: &peer,
                        // No client API here: the test writes through the cores directly.
                        client_address: &peer,
                        timings: timings.clone(),
                        router: &router,
                        cache: &cache,
                        failpoint: None,
                        checkpoint_interval: Duration::from_secs(3600),
                    };
                    mgr.open(v, open).await.expect("open the volume replica");
                }
                (peer, cache, mgr)
            })
            .await
            .unwrap();
        Server { member: member.to_string(), peer, cache, mgr, rt: Some(rt) }
    }

    fn kill(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }

    fn core_status(&self, volume: &str) -> CoreStatus {
        self.mgr.get(volume).unwrap().core.status()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Creates the tree and the two volume groups (3 replicas each).
async fn create_volumes(coord: &Coord) {
    datom_common::init::init_tree(coord, "test").await.unwrap();
    for v in VOLUMES {
        let record = GroupRecord {
            schema: 1,
            kind: "volume".into(),
            replicas: 3,
            enrolled: Vec::new(),
            created_at: chrono::Utc::now(),
        };
        coord.create(&paths::group(v), &record, Mode::Persistent).await.unwrap();
    }
}

/// Waits until `volume` has a LEADER_FUNCTIONAL leader in a term above `after` and its two other
/// members are FOLLOWER_FUNCTIONAL in that term; returns (leader, term).
async fn wait_group(coord: &Coord, volume: &str, after: u64) -> (String, u64) {
    wait_for(&format!("{volume} led by a functional leader with two functional followers"), LONG, || async {
        let t = coord.get::<TermRecord>(&paths::group_term(volume)).await.ok().flatten()?.value;
        if t.status != TermStatus::Leading || t.term <= after {
            return None;
        }
        let leader = t.leader.clone()?;
        let mut functional = 0;
        for m in ["m1", "m2", "m3"] {
            let s = coord.get::<MemberStateRecord>(&paths::group_state(volume, m)).await.ok().flatten()?.value;
            let want = if m == leader { MemberState::LeaderFunctional } else { MemberState::FollowerFunctional };
            if s.state == want && s.term == t.term {
                functional += 1;
            }
        }
        (functional == 3).then_some((leader, t.term))
    })
    .await
}

/// Writes `n` keys to `volume` through its leader, one after the other, each acknowledged.
async fn write(leader: &Server, volume: &str, prefix: &str, n: usize) {
    let core = leader.mgr.get(volume).unwrap().core.clone();
    for i in 0..n {
        let op = Op::Put { key: format!("{prefix}-{i}"), value: format!("{i}") };
        let rx = core.submit(serde_json::to_string(&op).unwrap()).expect("the leader takes the write");
        let ack = tokio::time::timeout(LONG, rx).await.expect("acknowledged in time").expect("answered");
        ack.expect("acknowledged");
    }
}

fn server<'a>(servers: &'a [Server], member: &str) -> &'a Server {
    servers.iter().find(|s| s.member == member).expect("member")
}

/// Waits until `cache`'s registry has `member` of `volume` at `address`.
async fn wait_registered(cache: &ConnectionCache, volume: &str, member: &str, address: &str) {
    let peer = Peer::group_member(volume, member);
    wait_for(&format!("the cache to register {peer} at {address}"), LONG, || async {
        (cache.address(&peer).as_deref() == Some(address)).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p01_replication_connections_come_from_the_one_cache_each_server_shares_between_its_groups() {
    let _serial = SERIAL.lock().await;
    let zk = fresh_zk("pb-cache-shared").await;
    let coord = coord(&zk).await;
    create_volumes(&coord).await;
    let root = tempfile::tempdir().unwrap();
    let mut servers = Vec::new();
    for m in ["m1", "m2", "m3"] {
        servers.push(Server::start(&zk, m, root.path(), "127.0.0.1:0").await);
    }
    let mut leaders = Vec::new();
    for v in VOLUMES {
        leaders.push(wait_group(&coord, v, 0).await.0);
    }

    // Every server's one cache decodes every member registration of both groups (a
    // `MemberRecord` at /datom/groups/<volume>/members/<member>) to that member's replication
    // address.
    for s in &servers {
        for v in VOLUMES {
            for other in &servers {
                wait_registered(&s.cache, v, &other.member, &other.peer).await;
            }
        }
    }

    // Steady replication: every client the leader asks for is a cache hit on a connection it
    // already has; nothing is dialed anew.
    for (v, leader) in VOLUMES.iter().zip(&leaders) {
        let l = server(&servers, leader);
        let before = l.cache.stats();
        write(l, v, "k", 100).await;
        let after = l.cache.stats();
        assert_eq!(after.misses, before.misses, "{v}: no new connection during steady replication: {after:?}");
        assert_eq!(after.dials, before.dials, "{v}: no dial during steady replication: {after:?}");
        assert!(
            after.hits - before.hits >= 100,
            "{v}: each acknowledged write replicated over a cached connection: {before:?} → {after:?}"
        );
    }

    // The leaders hold their followers' connections in their caches: at least two per group
    // led, all in the one cache of the leader's process.
    let led = |m: &str| leaders.iter().filter(|l| l.as_str() == m).count() as u64;
    for s in &servers {
        let st: CacheStats = s.cache.stats();
        assert!(st.connections >= 2 * led(&s.member), "{} leads {} group(s): {st:?}", s.member, led(&s.member));
    }
    // Both groups' followers journaled every write.
    for v in VOLUMES {
        let leader_last = servers.iter().map(|s| s.core_status(v).last).max().unwrap();
        wait_for(&format!("every member of {v} has the leader's journal"), LONG, || async {
            servers.iter().all(|s| s.core_status(v).last == leader_last).then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p02_a_follower_restarted_on_a_new_port_and_then_on_the_same_port_is_redialed_through_the_cache() {
    let _serial = SERIAL.lock().await;
    let zk = fresh_zk("pb-cache-restart").await;
    let coord = coord(&zk).await;
    create_volumes(&coord).await;
    let root = tempfile::tempdir().unwrap();
    let mut servers = Vec::new();
    for m in ["m1", "m2", "m3"] {
        servers.push(Server::start(&zk, m, root.path(), "127.0.0.1:0").await);
    }
    let v = VOLUMES[0];
    let (leader, term) = wait_group(&coord, v, 0).await;
    let follower = servers.iter().find(|s| s.member != leader).unwrap().member.clone();
    write(server(&servers, &leader), v, "a", 20).await;

    // Restart the follower (as after a SIGKILL) on a new replication port: the leader's cache
    // sees the registration go or move, cuts the old connection and dials the new address.
    let before = server(&servers, &leader).cache.stats();
    let idx = servers.iter().position(|s| s.member == follower).unwrap();
    servers[idx].kill();
    write(server(&servers, &leader), v, "b", 20).await;
    servers[idx] = Server::start(&zk, &follower, root.path(), "127.0.0.1:0").await;
    let new_address = servers[idx].peer.clone();
    let (_, term2) = wait_group(&coord, v, term - 1).await;
    assert_eq!(term2, term, "a follower's restart is no election");
    wait_registered(&server(&servers, &leader).cache, v, &follower, &new_address).await;
    write(server(&servers, &leader), v, "c", 20).await;
    let after = server(&servers, &leader).cache.stats();
    assert!(after.evictions > before.evictions, "the connection to the old address was evicted: {after:?}");
    assert!(after.misses > before.misses, "the new address was dialed through the cache: {after:?}");
    let last = server(&servers, &leader).core_status(v).last;
    wait_for("the restarted follower has the leader's journal", LONG, || async {
        (servers[idx].core_status(v).last == last).then_some(())
    })
    .await;

    // Restart it again on the same port: same address, new session. The old registration goes
    // when its session expires (the connection is evicted) and the new one comes back at the
    // same address, which the cache dials afresh; the follower catches up again.
    let port = new_address.clone();
    let before = server(&servers, &leader).cache.stats();
    servers[idx].kill();
    write(server(&servers, &leader), v, "d", 20).await;
    servers[idx] = Server::start(&zk, &follower, root.path(), &port).await;
    assert_eq!(servers[idx].peer, port);
    wait_group(&coord, v, term - 1).await;
    write(server(&servers, &leader), v, "e", 20).await;
    let last = server(&servers, &leader).core_status(v).last;
    wait_for("the follower restarted on the same port has the leader's journal", LONG, || async {
        (servers[idx].core_status(v).last == last).then_some(())
    })
    .await;
    let after = server(&servers, &leader).cache.stats();
    assert!(after.dials > before.dials, "the same address was dialed again through the cache: {after:?}");
}

fn member_record(member: &str, address: &str) -> Vec<u8> {
    let rec = MemberRecord {
        schema: 1,
        member: member.into(),
        address: address.into(),
        client_address: None,
        pid: std::process::id(),
        started_at: chrono::Utc::now(),
    };
    datom_common::coord::encode("member", &rec).unwrap()
}

/// A replication server hosting no group: any message to it is answered `UnknownGroup`, which
/// proves the call reached it.
async fn serve_empty_router() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(PeerRouter::new().serve(listener, futures::future::pending()));
    address
}

async fn reaches(c: &PbPeerClient) -> bool {
    let req = PrepareRequest { group: "g".into(), term: 1, elector: "x".into() };
    matches!(c.prepare(datom_common::rpc::ctx(Duration::from_secs(5)), req).await, Ok(Err(PbError::UnknownGroup(_))))
}

#[tokio::test]
async fn p03_a_client_call_waits_for_the_cache_to_agree_with_the_group_view_on_a_moved_member() {
    let _serial = SERIAL.lock().await;
    let zk = fresh_zk("pb-cache-settle").await;
    let coord = coord(&zk).await;
    coord.ensure_path(&paths::group_members("g")).await.unwrap();
    let cache = ConnectionCache::start(coord.clone());
    let peer = Peer::group_member("g", "m1");
    // m1 registered where nothing listens any more (its old process)...
    let old = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().to_string();
    let reg = coord.register_ephemeral(&paths::group_member("g", "m1"), member_record("m1", &old), LONG).await.unwrap();
    wait_registered(&cache, "g", "m1", &old).await;
    // ...and the group view (the driver's watch) has already seen it at its new address.
    let new = serve_empty_router().await;
    let clients = CachePeerClients::new(cache.clone(), "g", LONG);
    clients.set_address("m1", Some(new.clone()));
    let mut call = clients.client("m1");
    assert!(futures::poll!(&mut call).is_pending(), "the views disagree: the call waits");
    // The cache catches up; the waiting call then connects to the new address, through the cache.
    reg.set_data(member_record("m1", &new)).await.unwrap();
    let c = tokio::time::timeout(LONG, call).await.expect("answered").expect("a client for m1 at its new address");
    assert!(reaches(&c).await, "the client reaches the new process");
    assert_eq!(cache.address(&peer).as_deref(), Some(new.as_str()));

    // When the views never agree (the group view is wrong), a call waits at most the settle
    // bound and then takes the cache's address.
    let short = CachePeerClients::new(cache.clone(), "g", Duration::from_millis(200));
    short.set_address("m1", Some(old.clone()));
    let c = tokio::time::timeout(LONG, short.client("m1")).await.expect("bounded").expect("the cache's client");
    assert!(reaches(&c).await);
    // And a member the cache does not know is an error naming it.
    let err = tokio::time::timeout(LONG, short.client("m9")).await.expect("bounded").expect_err("unregistered");
    assert!(err.contains("\"m9\"") && err.contains("not registered"), "{err}");
}
