//! Scenario `zk-raw`: what the ZooKeeper under test can do, with no datom code in the path.
//! Other scenarios call [`measure`] so their figures sit beside these from the same run.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;
use zookeeper_client as zk;

use crate::stats::percentile_ms;

/// Flags of `zk-raw`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where to run: `--zk ADDR` or `--local`.
    #[command(flatten)]
    pub target: crate::target::Target,
    /// Sequential creates for the latency figure.
    #[arg(long, default_value_t = 500)]
    pub sequential: usize,
    /// Operations for each throughput figure.
    #[arg(long, default_value_t = 5000)]
    pub pipelined: usize,
    /// Requests in flight for the throughput figures.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Watch round trips for the watch latency figure.
    #[arg(long, default_value_t = 300)]
    pub watches: usize,
}

/// Figures of `zk-raw`.
#[derive(Debug, Serialize)]
pub struct ZkRaw {
    /// Sequential create latency, p50 (ms).
    pub create_p50_ms: f64,
    /// Sequential create latency, p99 (ms).
    pub create_p99_ms: f64,
    /// Pipelined creates per second.
    pub create_ops_per_s: f64,
    /// Pipelined setData per second.
    pub setdata_ops_per_s: f64,
    /// setData start → other client's watch event, p50 (ms).
    pub watch_p50_ms: f64,
    /// setData start → other client's watch event, p99 (ms).
    pub watch_p99_ms: f64,
    /// Requests in flight used for the throughput figures.
    pub concurrency: usize,
}

/// Runs the scenario.
pub async fn run(args: Args) -> anyhow::Result<serde_json::Value> {
    let (addr, _server) = crate::target::resolve(&args.target.zk, args.target.local, 2000).await?;
    let r = measure(&addr, &args).await?;
    Ok(serde_json::json!({ "scenario": "zk-raw", "zk": addr, "raw": r }))
}

async fn connect(addr: &str) -> anyhow::Result<zk::Client> {
    match tokio::time::timeout(Duration::from_secs(5), zk::Client::connector().with_fail_eagerly().connect(addr)).await
    {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => anyhow::bail!("cannot connect to ZooKeeper at {addr}: {e}"),
        Err(_) => anyhow::bail!("cannot connect to ZooKeeper at {addr}: timed out after 5 s"),
    }
}

/// Measures the raw figures against `addr`, cleaning up after itself.
pub async fn measure(addr: &str, args: &Args) -> anyhow::Result<ZkRaw> {
    let a = connect(addr).await?;
    let b = connect(addr).await?;
    let opts = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    let base = format!("/datom-bench-{}-{}", std::process::id(), Instant::now().elapsed().as_nanos());
    a.create(&base, b"", &opts).await?;

    // Sequential create latency.
    let mut lat = Vec::with_capacity(args.sequential);
    for i in 0..args.sequential {
        let t = Instant::now();
        a.create(&format!("{base}/s{i}"), b"{}", &opts).await?;
        lat.push(t.elapsed());
    }
    let create_p50_ms = percentile_ms(&mut lat, 50.0);
    let create_p99_ms = percentile_ms(&mut lat, 99.0);

    // Pipelined creates.
    let t = Instant::now();
    let results: Vec<_> = futures::stream::iter(0..args.pipelined)
        .map(|i| {
            let a = &a;
            let path = format!("{base}/p{i}");
            let opts = &opts;
            async move { a.create(&path, b"{}", opts).await.map(|_| ()) }
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<_>, _>>()?;
    let create_ops_per_s = args.pipelined as f64 / t.elapsed().as_secs_f64();

    // Pipelined setData on a spread of nodes.
    let t = Instant::now();
    let results: Vec<_> = futures::stream::iter(0..args.pipelined)
        .map(|i| {
            let a = &a;
            let path = format!("{base}/p{}", i % 64);
            async move { a.set_data(&path, b"{\"x\":1}", None).await.map(|_| ()) }
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<_>, _>>()?;
    let setdata_ops_per_s = args.pipelined as f64 / t.elapsed().as_secs_f64();

    // Watch latency: b watches, a writes.
    let target = format!("{base}/w");
    a.create(&target, b"0", &opts).await?;
    let mut watcher = b.watch(&target, zk::AddWatchMode::Persistent).await?;
    let mut lat = Vec::with_capacity(args.watches);
    for i in 0..args.watches {
        let t = Instant::now();
        let (set, ev) = tokio::join!(a.set_data(&target, i.to_string().as_bytes(), None), async {
            loop {
                let e = watcher.changed().await;
                if e.event_type == zk::EventType::NodeDataChanged {
                    return t.elapsed();
                }
            }
        });
        set?;
        lat.push(ev);
    }
    drop(watcher);
    let watch_p50_ms = percentile_ms(&mut lat, 50.0);
    let watch_p99_ms = percentile_ms(&mut lat, 99.0);

    // Clean up.
    for child in a.list_children(&base).await? {
        let _ = a.delete(&format!("{base}/{child}"), None).await;
    }
    let _ = a.delete(&base, None).await;
    Ok(ZkRaw {
        create_p50_ms,
        create_p99_ms,
        create_ops_per_s: create_ops_per_s.round(),
        setdata_ops_per_s: setdata_ops_per_s.round(),
        watch_p50_ms,
        watch_p99_ms,
        concurrency: args.concurrency,
    })
}
