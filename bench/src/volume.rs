//! Scenario `volume`: write throughput and latency of a replicated volume (real
//! `datom-volume-server` processes), optionally SIGKILLing the leader at an interval, with every
//! acknowledged write read back at the end (`lost` must be 0). Beside it, from the same run: a
//! 3-member ZooKeeper ensemble's fsync'd setData throughput at the same client concurrency.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;
use zookeeper_client as zk;

use crate::pbgroup::{Group, zk as resolve_zk};
use crate::stats::percentile_ms;

/// Flags of `volume`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where to run: `--zk ADDR` or `--local`.
    #[command(flatten)]
    pub target: crate::target::Target,
    /// Replicas of the volume.
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    /// Seconds of write load.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// SIGKILL the leader every this many seconds (and restart it once replaced).
    #[arg(long, value_name = "SECONDS")]
    pub kill_leader_every: Option<f64>,
    /// Writes in flight (client concurrency), for the volume and the ZooKeeper reference alike.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    pub value_bytes: usize,
    /// Session timeout of the volume servers, in ms.
    #[arg(long, default_value_t = 1500)]
    pub session_timeout: u64,
    /// Seconds of the ZooKeeper ensemble reference measurement.
    #[arg(long, default_value_t = 5)]
    pub zk_seconds: u64,
}

/// Figures of `volume`.
#[derive(Debug, Serialize)]
pub struct VolumeFigures {
    /// Acknowledged writes per second over the whole run.
    pub ops_per_s: f64,
    /// Write latency p50 (ms), acknowledged writes.
    pub write_p50_ms: f64,
    /// Write latency p99 (ms).
    pub write_p99_ms: f64,
    /// Leader kills.
    pub failovers: usize,
    /// Longest time from a kill to the first acknowledgement of a write sent after it (ms).
    pub failover_max_ms: f64,
    /// Writes acknowledged.
    pub acked: usize,
    /// Acknowledged writes not read back with their value; must be 0.
    pub lost: usize,
    /// Writes that failed (not acknowledged; their outcome unknown to the client).
    pub failed: usize,
    /// A 3-member ensemble's fsync'd setData throughput at the same concurrency, same run.
    pub zk_ensemble_setdata_ops_per_s: f64,
    /// Client concurrency.
    pub concurrency: usize,
    /// Replicas.
    pub replicas: usize,
    /// Goal: ops_per_s ≥ 3 × zk_ensemble_setdata_ops_per_s.
    pub goal_throughput_met: bool,
    /// Goal: write_p99_ms ≤ 5.
    pub goal_p99_met: bool,
}

struct Op {
    start: Instant,
    end: Instant,
    ok: bool,
}

/// Runs the scenario.
pub async fn run(args: Args) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(args.replicas >= 1, "--replicas must be at least 1");
    anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    let zk = resolve_zk(&args.target.zk, args.target.local, "bench-volume").await?;
    let mut group = Group::start(&zk.connect, args.replicas, args.session_timeout).await?;
    let (mut leader, mut term) = group.wait_functional(0, args.replicas - 1, Duration::from_secs(60)).await?;
    let client = Arc::new({
        let mut c = datom_volume_server::client::VolumeClient::new(group.coord.clone(), &group.volume);
        c.retry_for = Duration::from_secs(60);
        c
    });
    let value = "v".repeat(args.value_bytes);
    // Warm up the connection and the leader's path.
    for i in 0..100 {
        client.put(&format!("warm-{i}"), &value).await?;
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.seconds);
    let mut workers = Vec::new();
    for w in 0..args.concurrency {
        let client = client.clone();
        let value = value.clone();
        workers.push(tokio::spawn(async move {
            let mut ops = Vec::new();
            let mut acked = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let key = format!("k{w}-{i}");
                let v = format!("{i}-{value}");
                let t = Instant::now();
                let ok = client.put(&key, &v).await.is_ok();
                ops.push(Op { start: t, end: Instant::now(), ok });
                if ok {
                    acked.push((key, v));
                }
                i += 1;
            }
            (ops, acked)
        }));
    }
    let mut kills = Vec::new();
    if let Some(every) = args.kill_leader_every {
        let every = Duration::from_secs_f64(every.max(0.5));
        let mut next = start + every;
        while next + Duration::from_millis(500) < deadline {
            tokio::time::sleep_until(next.into()).await;
            let killed_at = Instant::now();
            group.kill(&leader);
            kills.push(killed_at);
            let (l, t) =
                group.wait_functional(term, args.replicas.saturating_sub(1).min(1), Duration::from_secs(60)).await?;
            group.restart(&leader)?;
            leader = l;
            term = t;
            next = (next + every).max(Instant::now() + Duration::from_millis(100));
        }
    }
    let mut ops = Vec::new();
    let mut acked = Vec::new();
    for w in workers {
        let (o, a) = w.await?;
        ops.extend(o);
        acked.extend(a);
    }
    let elapsed = ops.iter().map(|o| o.end).max().unwrap_or(deadline) - start;
    let mut lat: Vec<Duration> = ops.iter().filter(|o| o.ok).map(|o| o.end - o.start).collect();
    let failed = ops.iter().filter(|o| !o.ok).count();
    let failover_max_ms = kills
        .iter()
        .filter_map(|k| ops.iter().filter(|o| o.ok && o.start >= *k).map(|o| o.end).min().map(|e| e - *k))
        .max()
        .map(|d| d.as_secs_f64() * 1e3)
        .unwrap_or(0.0);
    // Everything acknowledged must read back (through whoever leads now).
    if !kills.is_empty() {
        group.wait_functional(0, args.replicas - 1, Duration::from_secs(60)).await?;
    }
    let lost: usize = futures::stream::iter(acked.iter())
        .map(|(k, v)| {
            let client = client.clone();
            async move {
                match client.get(k).await {
                    Ok(Some(got)) if got == *v => 0usize,
                    Ok(_) => 1,
                    Err(e) => {
                        eprintln!("cannot read back {k}: {e}");
                        1
                    }
                }
            }
        })
        .buffer_unordered(args.concurrency)
        .fold(0, |a, b| async move { a + b })
        .await;
    let ops_per_s = (acked.len() as f64 / elapsed.as_secs_f64()).round();
    let write_p50_ms = percentile_ms(&mut lat, 50.0);
    let write_p99_ms = percentile_ms(&mut lat, 99.0);
    drop(group);
    let zk_ops = ensemble_setdata(args.concurrency, Duration::from_secs(args.zk_seconds)).await?;
    let figures = VolumeFigures {
        ops_per_s,
        write_p50_ms,
        write_p99_ms,
        failovers: kills.len(),
        failover_max_ms: (failover_max_ms * 10.0).round() / 10.0,
        acked: acked.len(),
        lost,
        failed,
        zk_ensemble_setdata_ops_per_s: zk_ops.round(),
        concurrency: args.concurrency,
        replicas: args.replicas,
        goal_throughput_met: ops_per_s >= 3.0 * zk_ops,
        goal_p99_met: write_p99_ms <= 5.0,
    };
    Ok(
        serde_json::json!({ "scenario": "volume", "seconds": args.seconds, "value_bytes": args.value_bytes, "figures": figures }),
    )
}

/// setData throughput of a fresh 3-member ensemble (fsync on) with `concurrency` requests in
/// flight from one client, for `dur`.
pub async fn ensemble_setdata(concurrency: usize, dur: Duration) -> anyhow::Result<f64> {
    let opts = datom_zk_harness::ServerOptions { tick_ms: 200, force_sync: true, ..Default::default() };
    let ens = tokio::task::spawn_blocking(move || datom_zk_harness::ZkEnsemble::start(3, opts)).await??;
    let connect = ens.connect_string();
    let client =
        tokio::time::timeout(Duration::from_secs(10), zk::Client::connector().with_fail_eagerly().connect(&connect))
            .await
            .map_err(|_| anyhow::anyhow!("connect to the reference ensemble timed out"))??;
    let create = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    for i in 0..concurrency {
        client.create(&format!("/n{i}"), b"{}", &create).await?;
    }
    let data = vec![b'x'; 100];
    let run = |d: Duration| {
        let client = client.clone();
        let data = data.clone();
        async move {
            let deadline = Instant::now() + d;
            let done: Vec<u64> = futures::future::join_all((0..concurrency).map(|i| {
                let client = client.clone();
                let data = data.clone();
                async move {
                    let path = format!("/n{i}");
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        if client.set_data(&path, &data, None).await.is_ok() {
                            n += 1;
                        }
                    }
                    n
                }
            }))
            .await;
            done.iter().sum::<u64>()
        }
    };
    run(Duration::from_millis(500)).await; // warm up
    let t = Instant::now();
    let n = run(dur).await;
    let rate = n as f64 / t.elapsed().as_secs_f64();
    drop(client);
    drop(ens);
    Ok(rate)
}
