//! Scenario `addnode`: registrations per second and registration latency through a real config
//! service (in-process, its own ZooKeeper session), with raw ZooKeeper create throughput from
//! the same run beside it.

use std::time::{Duration, Instant};

use datom_common::records::HardwareReport;
use datom_common::rpc::{AddNodeRequest, ctx, dial_config_service};
use datom_common::{Coord, CoordConfig, paths};
use futures::StreamExt;

use crate::stats::percentile_ms;

/// Flags of `addnode`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where to run: `--zk ADDR` or `--local`.
    #[command(flatten)]
    pub target: crate::target::Target,
    /// Nodes to register.
    #[arg(long, default_value_t = 1000)]
    pub nodes: usize,
    /// Registrations in flight.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
}

fn hw(i: usize) -> HardwareReport {
    HardwareReport {
        machine_id: format!("bench-machine-{i}"),
        hostname: format!("bench-{i}"),
        os: "Debian GNU/Linux 12".into(),
        kernel: "6.1".into(),
        cpu_model: "bench".into(),
        arch: "x86_64".into(),
        cpus: 8,
        memory_bytes: 32 << 30,
        disks: vec![],
        nics: vec![],
    }
}

/// Runs the scenario in a fresh chroot.
pub async fn run(args: Args) -> anyhow::Result<serde_json::Value> {
    let (addr, _server) = crate::target::resolve(&args.target.zk, args.target.local, 2000).await?;
    let zk = datom_zk_harness::unique_chroot(&addr, "datom-bench-addnode").await;
    let coord = Coord::connect(CoordConfig::new(zk.clone())).await?;
    datom_common::init::init_tree(&coord, "bench").await?;

    let config = datom_config_service::Config {
        coord: CoordConfig::new(zk.clone()),
        listen: "127.0.0.1:0".parse()?,
        advertise: None,
        init: false,
        cluster: "bench".into(),
        id: "cs-bench".into(),
        http: None,
        token: None,
        tls: None,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(datom_config_service::run(config, async move {
        let _ = stop_rx.await;
    }));
    let cs_addr = loop {
        if let Some(v) =
            coord.get::<datom_common::records::ConfigServiceInstance>(paths::CONFIG_SERVICE_INSTANCE).await?
        {
            break v.value.address;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let client = dial_config_service(&cs_addr, Duration::from_secs(5)).await?;

    let t = Instant::now();
    let results: Vec<Result<Duration, String>> = futures::stream::iter(0..args.nodes)
        .map(|i| {
            let client = client.clone();
            async move {
                let req = AddNodeRequest { name: format!("node-{i}"), hardware: hw(i), services: vec![] };
                let t = Instant::now();
                match client.add_node(ctx(Duration::from_secs(30)), req, None).await {
                    Ok(Ok(_)) => Ok(t.elapsed()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    let total = t.elapsed();
    let mut lat = Vec::with_capacity(results.len());
    for r in results {
        lat.push(r.map_err(anyhow::Error::msg)?);
    }
    let registered = coord.children(paths::NODES).await?.len();
    let _ = stop_tx.send(());
    let _ = service.await;
    coord.delete_recursive(paths::ROOT).await?;
    coord.close().await;

    let raw_args = crate::zkraw::Args {
        target: crate::target::Target { zk: None, local: false },
        sequential: 200,
        pipelined: args.nodes.max(1000),
        concurrency: args.concurrency,
        watches: 100,
    };
    let raw = crate::zkraw::measure(&addr, &raw_args).await?;
    Ok(serde_json::json!({
        "scenario": "addnode",
        "nodes": args.nodes,
        "registered": registered,
        "concurrency": args.concurrency,
        "seconds": (total.as_secs_f64() * 1000.0).round() / 1000.0,
        "registrations_per_s": (args.nodes as f64 / total.as_secs_f64()).round(),
        "p50_ms": percentile_ms(&mut lat, 50.0),
        "p99_ms": percentile_ms(&mut lat, 99.0),
        "raw_create_ops_per_s": raw.create_ops_per_s,
        "raw": raw,
    }))
}
