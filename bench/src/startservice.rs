//! Scenario `startservice`: from `startservice` returning (desired state written) to the
//! instance znode saying IN_SERVICE, through a real node agent (in-process, its own session)
//! supervising a trivial process. The process's own spawn time is measured separately and
//! subtracted; raw ZooKeeper write and watch latencies come from the same run.

use std::time::{Duration, Instant};

use chrono::Utc;
use datom_common::records::{InstanceRecord, NodeRecord, SCHEMA, ServiceState};
use datom_common::spec::ServiceSpec;
use datom_common::{Coord, CoordConfig, paths, services};

use crate::stats::percentile_ms;

/// Flags of `startservice`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where to run: `--zk ADDR` or `--local`.
    #[command(flatten)]
    pub target: crate::target::Target,
    /// Start/stop cycles.
    #[arg(long, default_value_t = 100)]
    pub trials: usize,
}

async fn wait_state(coord: &Coord, path: &str, want: Option<ServiceState>) -> anyhow::Result<()> {
    let mut rx = coord.watch_data(path).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let cur = rx.borrow_and_update().clone();
        let state = cur.and_then(|(d, _)| serde_json::from_slice::<InstanceRecord>(&d).ok()).map(|i| i.state);
        if state == want {
            return Ok(());
        }
        if tokio::time::timeout_at(deadline, rx.changed()).await.is_err() {
            anyhow::bail!("{path} did not reach {want:?} within 30 s (is at {state:?})");
        }
    }
}

/// Runs the scenario in a fresh chroot.
pub async fn run(args: Args) -> anyhow::Result<serde_json::Value> {
    let (addr, _server) = crate::target::resolve(&args.target.zk, args.target.local, 2000).await?;
    let zk = datom_zk_harness::unique_chroot(&addr, "datom-bench-startservice").await;
    let coord = Coord::connect(CoordConfig::new(zk.clone())).await?;
    datom_common::init::init_tree(&coord, "bench").await?;
    let hardware = datom_common::hardware::discover(Some("bench-machine".into())).map_err(anyhow::Error::msg)?;
    let node = NodeRecord {
        schema: SCHEMA,
        name: "bench".into(),
        machine_id: "bench-machine".into(),
        hardware,
        services: vec![],
        registered_at: Utc::now(),
        registered_by: "bench".into(),
        unschedulable: false,
    };
    coord.create(&paths::node("bench"), &node, datom_common::coord::Mode::Persistent).await?;
    let root = tempfile::tempdir()?;
    datom_common::fsutil::write_atomic(&root.path().join("node.json"), &serde_json::to_vec(&node)?)?;
    let config = datom_node_agent::Config {
        coord: CoordConfig::new(zk.clone()),
        root: root.path().to_path_buf(),
        port: 0,
        nic_if: "lo".into(),
        domain_name: "local".into(),
        service_name: "node-agent".into(),
        stop_services_on_exit: true,
        http: None,
        fence_fraction: 0.5,
        report_load: true,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(datom_node_agent::run(config, async move {
        let _ = stop_rx.await;
    }));
    while coord.exists(&paths::node_live("bench")).await?.is_none() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let spec = ServiceSpec::from_toml(
        "name = \"trivial\"\ntype = \"process\"\ncommand = \"sleep\"\nargs = [\"3600\"]\nstop_timeout_ms = 1000\n",
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    services::apply(&coord, &spec).await?;
    let inst = paths::service_instance("trivial", "bench");

    let mut lat = Vec::with_capacity(args.trials);
    for _ in 0..args.trials {
        services::start(&coord, "trivial", "bench", "bench").await?;
        let t = Instant::now();
        wait_state(&coord, &inst, Some(ServiceState::InService)).await?;
        lat.push(t.elapsed());
        services::stop(&coord, "trivial", "bench", false, "bench").await?;
        wait_state(&coord, &inst, None).await?;
    }
    // The service's own start: spawning the same trivial process.
    let mut spawn = Vec::with_capacity(args.trials);
    for _ in 0..args.trials {
        let t = Instant::now();
        let mut c = tokio::process::Command::new("sleep").arg("3600").spawn()?;
        spawn.push(t.elapsed());
        c.kill().await?;
    }
    let _ = stop_tx.send(());
    let _ = agent.await;
    coord.delete_recursive(paths::ROOT).await?;
    coord.close().await;

    let raw_args = crate::zkraw::Args {
        target: crate::target::Target { zk: None, local: false },
        sequential: 300,
        pipelined: 2000,
        concurrency: 32,
        watches: 300,
    };
    let raw = crate::zkraw::measure(&addr, &raw_args).await?;
    let p50 = percentile_ms(&mut lat, 50.0);
    let p99 = percentile_ms(&mut lat, 99.0);
    let spawn_p50 = percentile_ms(&mut spawn, 50.0);
    let p50_excl = ((p50 - spawn_p50) * 1000.0).round() / 1000.0;
    let goal = 3.0 * raw.create_p50_ms + 10.0;
    Ok(serde_json::json!({
        "scenario": "startservice",
        "trials": args.trials,
        "p50_ms": p50,
        "p99_ms": p99,
        "spawn_p50_ms": spawn_p50,
        "p50_excluding_spawn_ms": p50_excl,
        "raw_write_p50_ms": raw.create_p50_ms,
        "raw_write_p99_ms": raw.create_p99_ms,
        "raw_watch_p50_ms": raw.watch_p50_ms,
        "raw_watch_p99_ms": raw.watch_p99_ms,
        "goal_p50_ms": (goal * 1000.0).round() / 1000.0,
        "goal_met": p50_excl <= goal,
    }))
}
