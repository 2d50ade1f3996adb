//! Scenario `cache`: the connection cache's hit latency and how fast a re-registration reaches
//! every cache, beside raw ZooKeeper watch latency measured in the same run.
//!
//! `--peers N` node agents register `/datom/nodes/p<i>/live` (all pointing at one in-process
//! tarpc `NodeAgent`), `--caches K` caches (each with its own ZooKeeper session) follow them.
//! - hit: `get_connection` on a warm peer, timed per call;
//! - update: one peer's `live` record gets a new address; timed from the start of the setData
//!   to the moment the last of the K caches has applied it (its subscriber got the Changed);
//! - raw watch: zk-raw's method (setData start → a second client's persistent watch event),
//!   measured in rounds interleaved with the update rounds so both see the same machine load;
//! - raw watch + read: the same, until the watcher has also read the node once. Watch events
//!   carry no data, so this is the floor for any watch-driven cache's update.
//!
//! The full zk-raw figures ([`crate::zkraw::measure`]) of the same run are printed as `zk_raw`.
//!
//! Everything happens under a private chroot that is deleted afterwards.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use datom_common::cache::{ConnectionCache, Peer, PeerEvent, PeerFilter};
use datom_common::coord::Mode;
use datom_common::records::{HardwareReport, LiveRecord, NodeRecord};
use datom_common::rpc::{AgentHealth, AgentInfo, NodeAgent, NodeAgentClient};
use datom_common::{Coord, CoordConfig, paths};
use futures::StreamExt;
use tarpc::context::Context;
use tokio::sync::mpsc;

use crate::stats::percentile_ms;
use zookeeper_client as zk;

async fn raw_connect(connect: &str) -> anyhow::Result<zk::Client> {
    match tokio::time::timeout(Duration::from_secs(5), zk::Client::connector().with_fail_eagerly().connect(connect))
        .await
    {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => anyhow::bail!("cannot connect to ZooKeeper at {connect}: {e}"),
        Err(_) => anyhow::bail!("cannot connect to ZooKeeper at {connect}: timed out after 5 s"),
    }
}

/// Flags of `cache`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where to run: `--zk ADDR` or `--local`.
    #[command(flatten)]
    pub target: crate::target::Target,
    /// Registered peers (node agents).
    #[arg(long, default_value_t = 200)]
    pub peers: usize,
    /// Caches following the registry, each with its own session.
    #[arg(long, default_value_t = 3)]
    pub caches: usize,
    /// Timed re-registrations (and as many interleaved raw watch round trips).
    #[arg(long, default_value_t = 1000)]
    pub updates: usize,
    /// Timed cache hits.
    #[arg(long, default_value_t = 20000)]
    pub hits: usize,
    /// Watch round trips of the zk-raw reference figures (`zk_raw`).
    #[arg(long, default_value_t = 300)]
    pub watches: usize,
}

/// A `NodeAgent` that answers health; the other calls are never made here.
#[derive(Clone)]
struct Stub;

impl NodeAgent for Stub {
    async fn diagnose(
        self,
        _: tarpc::context::Context,
        service: String,
    ) -> Result<datom_common::rpc::DiagnoseReport, String> {
        Err(format!("stub agent does not supervise {service}"))
    }

    async fn health(self, _: Context) -> AgentHealth {
        AgentHealth { node: "bench".into(), session: "connected".into(), uptime_s: 0 }
    }
    async fn info(self, _: Context) -> AgentInfo {
        let hardware = HardwareReport {
            machine_id: String::new(),
            hostname: String::new(),
            os: String::new(),
            kernel: String::new(),
            cpu_model: String::new(),
            arch: String::new(),
            cpus: 0,
            memory_bytes: 0,
            disks: vec![],
            nics: vec![],
        };
        AgentInfo {
            node: NodeRecord {
                schema: 1,
                name: "bench".into(),
                machine_id: String::new(),
                hardware,
                services: vec![],
                registered_at: chrono::Utc::now(),
                registered_by: "bench".into(),
                unschedulable: false,
            },
            address: String::new(),
            pid: std::process::id(),
            version: String::new(),
            args: BTreeMap::new(),
        }
    }
    async fn properties(self, _: Context) -> BTreeMap<String, serde_json::Value> {
        BTreeMap::new()
    }
}

fn live(node: &str, address: &str) -> anyhow::Result<Vec<u8>> {
    let rec = LiveRecord {
        schema: 1,
        node: node.into(),
        address: address.into(),
        http: None,
        pid: std::process::id(),
        version: datom_common::records::datom_version(),
        started_at: chrono::Utc::now(),
        load: None,
    };
    Ok(datom_common::coord::encode("live", &rec)?)
}

fn config(connect: &str) -> CoordConfig {
    CoordConfig::new(connect).with_session_timeout(Duration::from_secs(10))
}

/// Runs the scenario.
pub async fn run(args: Args) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(args.peers >= 1 && args.caches >= 1, "--peers and --caches must be at least 1");
    anyhow::ensure!(args.updates >= 1 && args.hits >= 1, "--updates and --hits must be at least 1");
    let (addr, _server) = crate::target::resolve(&args.target.zk, args.target.local, 2000).await?;

    // Raw figures first (their own setup warms the server up too).
    let raw_args = crate::zkraw::Args {
        target: crate::target::Target { zk: None, local: false },
        sequential: 50,
        pipelined: 500,
        concurrency: 16,
        watches: args.watches,
    };
    let raw = crate::zkraw::measure(&addr, &raw_args).await?;

    // A private chroot for the registry.
    let admin = Coord::connect(config(&addr)).await?;
    let chroot = format!("/datom-bench-cache-{}", std::process::id());
    admin.ensure_path(&chroot).await?;
    let connect = format!("{addr}{chroot}");
    let result = measure(&connect, &args).await;
    admin.delete_recursive(&chroot).await?;
    admin.close().await;
    let m = result?;

    let goal = m.update_p99_ms <= 2.0 * m.raw_watch_p99_ms;
    Ok(serde_json::json!({
        "scenario": "cache",
        "zk": addr,
        "peers": args.peers,
        "caches": args.caches,
        "updates": args.updates,
        "hits": args.hits,
        "hit_p50_us": m.hit_p50_us,
        "hit_p99_us": m.hit_p99_us,
        "update_p50_ms": m.update_p50_ms,
        "update_p99_ms": m.update_p99_ms,
        "raw_watch_p50_ms": m.raw_watch_p50_ms,
        "raw_watch_p99_ms": m.raw_watch_p99_ms,
        "raw_watch_read_p50_ms": m.raw_watch_read_p50_ms,
        "raw_watch_read_p99_ms": m.raw_watch_read_p99_ms,
        "goal_update_p99_le_2x_raw_watch_p99": goal,
        "cache_stats": m.stats,
        "zk_raw": raw,
    }))
}

struct Measured {
    hit_p50_us: f64,
    hit_p99_us: f64,
    update_p50_ms: f64,
    update_p99_ms: f64,
    raw_watch_p50_ms: f64,
    raw_watch_p99_ms: f64,
    raw_watch_read_p50_ms: f64,
    raw_watch_read_p99_ms: f64,
    stats: datom_common::cache::CacheStats,
}

async fn measure(connect: &str, args: &Args) -> anyhow::Result<Measured> {
    // One stub agent serves every peer's connections.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let stub = listener.local_addr()?.to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        datom_common::serve_tcp!(listener, Stub.serve(), async {
            let _ = stopped.await;
        });
    });

    // Register the peers.
    let registrar = Coord::connect(config(connect)).await?;
    let names: Vec<String> = (0..args.peers).map(|i| format!("p{i}")).collect();
    let registered: Vec<anyhow::Result<()>> = futures::stream::iter(names.iter())
        .map(|n| {
            let (registrar, stub) = (&registrar, &stub);
            async move {
                registrar.ensure_path(&paths::node(n)).await?;
                registrar.create_raw(&paths::node_live(n), &live(n, stub)?, Mode::Ephemeral).await?;
                Ok(())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    registered.into_iter().collect::<anyhow::Result<Vec<()>>>()?;

    // The caches, each on its own session, and a subscriber per cache reporting Changed events.
    let (tx, mut changed) = mpsc::unbounded_channel::<(usize, Peer, String, Instant)>();
    let mut caches = Vec::new();
    for i in 0..args.caches {
        let cache = ConnectionCache::start(Coord::connect(config(connect)).await?);
        let mut events = cache.subscribe(PeerFilter::All);
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(ev) = events.next().await {
                if let PeerEvent::Changed { peer, info, .. } = ev
                    && tx.send((i, peer, info.address, Instant::now())).is_err()
                {
                    return;
                }
            }
        });
        caches.push(cache);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while !caches.iter().all(|c| c.stats().peers == args.peers as u64) {
        anyhow::ensure!(Instant::now() < deadline, "the caches did not list {} peers within 60 s", args.peers);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Hits: warm every peer's connection, then time calls over all of them.
    let cache = &caches[0];
    for n in &names {
        cache.get_connection::<NodeAgentClient>(&Peer::node(n)).await?;
    }
    let peers: Vec<Peer> = names.iter().map(Peer::node).collect();
    let mut hit = Vec::with_capacity(args.hits);
    for i in 0..args.hits {
        let p = &peers[(i * 7919) % peers.len()];
        let t = Instant::now();
        let c = cache.get_connection::<NodeAgentClient>(p).await?;
        hit.push(t.elapsed());
        drop(c);
    }
    let hit_p50_us = percentile_us(&mut hit, 50.0);
    let hit_p99_us = percentile_us(&mut hit, 99.0);

    // Updates, interleaved with raw watch round trips so both see the same machine load:
    // raw: setData start → a second client's persistent watch event (zk-raw's method);
    // cache: a peer re-registers at a new address → every cache has applied it.
    let writer = raw_connect(connect).await?;
    let watcher_client = raw_connect(connect).await?;
    let target = "/raw-watch";
    writer.create(target, b"0", &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())).await?;
    let mut watcher = watcher_client.watch(target, zk::AddWatchMode::Persistent).await?;
    let warmup = 20.min(args.updates);
    let mut update = Vec::with_capacity(args.updates);
    let mut raw_watch = Vec::with_capacity(args.updates);
    let mut raw_watch_read = Vec::with_capacity(args.updates);
    for round in 0..(warmup + args.updates) {
        let t = Instant::now();
        let (set, (ev, ev_read)) = tokio::join!(writer.set_data(target, round.to_string().as_bytes(), None), async {
            loop {
                if watcher.changed().await.event_type == zk::EventType::NodeDataChanged {
                    let ev = t.elapsed();
                    let read = watcher_client.get_data(target).await.map(|_| t.elapsed());
                    return (ev, read);
                }
            }
        });
        set?;
        let ev_read = ev_read?;

        let name = &names[(round * 31) % names.len()];
        let peer = Peer::node(name);
        let address = format!("127.0.0.1:{}", 10000 + round);
        let data = live(name, &address)?;
        let t0 = Instant::now();
        registrar.set_raw(&paths::node_live(name), &data, None).await?;
        let mut seen = vec![false; args.caches];
        let mut last = t0;
        while seen.iter().any(|s| !s) {
            let got = tokio::time::timeout(Duration::from_secs(10), changed.recv()).await;
            let Ok(Some((i, p, a, at))) = got else {
                anyhow::bail!("a cache did not apply an update within 10 s");
            };
            if p == peer && a == address && !seen[i] {
                seen[i] = true;
                last = last.max(at);
            }
        }
        if round >= warmup {
            raw_watch.push(ev);
            raw_watch_read.push(ev_read);
            update.push(last - t0);
        }
    }
    drop(watcher);
    let raw_watch_p50_ms = percentile_ms(&mut raw_watch, 50.0);
    let raw_watch_p99_ms = percentile_ms(&mut raw_watch, 99.0);
    let raw_watch_read_p50_ms = percentile_ms(&mut raw_watch_read, 50.0);
    let raw_watch_read_p99_ms = percentile_ms(&mut raw_watch_read, 99.0);
    let update_p50_ms = percentile_ms(&mut update, 50.0);
    let update_p99_ms = percentile_ms(&mut update, 99.0);

    let stats = cache.stats();
    for c in &caches {
        c.close();
    }
    registrar.close().await;
    let _ = stop.send(());
    Ok(Measured {
        hit_p50_us,
        hit_p99_us,
        update_p50_ms,
        update_p99_ms,
        raw_watch_p50_ms,
        raw_watch_p99_ms,
        raw_watch_read_p50_ms,
        raw_watch_read_p99_ms,
        stats,
    })
}

/// Nearest-rank percentile in microseconds, to the nanosecond (hits are sub-microsecond).
fn percentile_us(samples: &mut [Duration], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort();
    let rank = ((p / 100.0) * samples.len() as f64).ceil().max(1.0) as usize;
    samples[rank.min(samples.len()) - 1].as_nanos() as f64 / 1000.0
}
