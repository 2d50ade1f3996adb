//! Scenario `failover`: from an agent's SIGKILL (its node "dies": the agent and its service
//! process are killed) to the failover service IN_SERVICE on another node, with real
//! `datom-config-service` and `datom-node-agent` processes. Beside it, measured in the same run
//! with the same session timeout: how long a watcher takes to see the ephemeral of a SIGKILLed
//! plain ZooKeeper client vanish — the physical limit.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use datom_common::records::{HardwareReport, InstanceRecord, NodeRecord, SCHEMA, ServiceState};
use datom_common::spec::ServiceSpec;
use datom_common::{Coord, CoordConfig, paths, services};

use crate::routefailover::{Proc, raw_kill};
use crate::stats::percentile_ms;

/// Flags of `failover`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where to run: `--zk ADDR` or `--local`.
    #[command(flatten)]
    pub target: crate::target::Target,
    /// Kill/failover trials.
    #[arg(long, default_value_t = 10)]
    pub trials: usize,
    /// Requested session timeout for agents and the raw client, ms.
    #[arg(long, default_value_t = 2000)]
    pub session_timeout: u64,
}

fn spawn(program: &PathBuf, args: &[String]) -> anyhow::Result<Proc> {
    let child =
        Command::new(program).args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    Ok(Proc(child))
}

async fn wait<T>(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        anyhow::ensure!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs the scenario in a fresh chroot.
pub async fn run(args: Args) -> anyhow::Result<serde_json::Value> {
    let (addr, _server) = crate::target::resolve(&args.target.zk, args.target.local, 200).await?;
    let cs_bin = crate::pbgroup::sibling("datom-config-service")?;
    let agent_bin = crate::pbgroup::sibling("datom-node-agent")?;
    let zk = datom_zk_harness::unique_chroot(&addr, "datom-bench-failover").await;
    let coord = Coord::connect(CoordConfig::new(zk.clone())).await?;
    datom_common::init::init_tree(&coord, "bench").await?;
    let session = args.session_timeout.to_string();
    let cs_port = datom_zk_harness::free_port().to_string();
    let _cs = spawn(
        &cs_bin,
        &["--zk", &zk, "--session-timeout", &session, "--listen", &format!("127.0.0.1:{cs_port}")].map(String::from),
    )?;
    wait("an active config service", Duration::from_secs(30), async || {
        coord.exists(paths::CONFIG_SERVICE_INSTANCE).await.ok().flatten()
    })
    .await?;

    let dir = tempfile::tempdir()?;
    let nodes = ["n1", "n2", "n3"];
    let mut agents = std::collections::BTreeMap::new();
    let agent_args = |root: &std::path::Path| -> Vec<String> {
        [
            "--zk",
            &zk,
            "--session-timeout",
            &session,
            "--root",
            root.to_str().unwrap(),
            "--port",
            "0",
            "--report-load",
            "false",
        ]
        .map(String::from)
        .to_vec()
    };
    for n in nodes {
        let root = dir.path().join(n);
        std::fs::create_dir_all(&root)?;
        let hw = HardwareReport {
            machine_id: format!("bench-{n}"),
            hostname: n.into(),
            os: "Debian".into(),
            kernel: "6.1".into(),
            cpu_model: "bench".into(),
            arch: "x86_64".into(),
            cpus: 2,
            memory_bytes: 8 << 30,
            disks: vec![],
            nics: vec![],
        };
        let rec = NodeRecord {
            schema: SCHEMA,
            name: n.into(),
            machine_id: hw.machine_id.clone(),
            hardware: hw,
            services: vec![],
            registered_at: Utc::now(),
            registered_by: "bench".into(),
            unschedulable: false,
        };
        coord.create(&paths::node(n), &rec, datom_common::coord::Mode::Persistent).await?;
        datom_common::fsutil::write_atomic(&root.join("node.json"), &serde_json::to_vec(&rec)?)?;
        agents.insert(n.to_string(), (spawn(&agent_bin, &agent_args(&root))?, root));
    }
    for n in nodes {
        wait("agents live", Duration::from_secs(30), async || coord.exists(&paths::node_live(n)).await.ok().flatten())
            .await?;
    }
    let spec = ServiceSpec::from_toml(
        "name = \"bench-svc\"\ntype = \"process\"\ncommand = \"sleep\"\nargs = [\"86400\"]\nfailover = true\nstop_timeout_ms = 500\n",
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    services::apply(&coord, &spec).await?;
    services::start(&coord, "bench-svc", "n1", "bench").await?;

    let in_service = async |coord: &Coord, node: &str| -> Option<InstanceRecord> {
        let v = coord.get::<InstanceRecord>(&paths::service_instance("bench-svc", node)).await.ok()??;
        (v.value.state == ServiceState::InService).then_some(v.value)
    };
    let mut lat = Vec::new();
    let mut negotiated = 0u64;
    let mut current = "n1".to_string();
    for _ in 0..args.trials {
        let inst =
            wait("instance in service", Duration::from_secs(60), async || in_service(&coord, &current).await).await?;
        // The node dies: agent and service.
        let (mut agent, root) = agents.remove(&current).expect("agent");
        agent.sigkill();
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(inst.pid as i32), nix::sys::signal::Signal::SIGKILL);
        let t = Instant::now();
        let from = current.clone();
        let (node, _) = wait("failover", Duration::from_secs(60), async || {
            for n in nodes.iter().filter(|n| **n != from) {
                if let Some(i) = in_service(&coord, n).await {
                    return Some((n.to_string(), i));
                }
            }
            None
        })
        .await?;
        lat.push(t.elapsed());
        // Bring the dead node back for the next trial.
        agents.insert(from.clone(), (spawn(&agent_bin, &agent_args(&root))?, root));
        wait("agent back", Duration::from_secs(60), async || {
            coord.exists(&paths::node_live(&from)).await.ok().flatten()
        })
        .await?;
        current = node;
    }
    let mut raw = Vec::new();
    let bench = std::env::current_exe()?;
    for i in 0..args.trials {
        raw.push(raw_kill(&bench, args.session_timeout, &zk, i, Duration::ZERO, &mut negotiated).await?);
    }
    for (_, (mut a, _)) in agents {
        a.sigkill();
    }
    let _ = Command::new("pkill").args(["-f", "sleep 86400"]).status();
    let p50 = percentile_ms(&mut lat, 50.0);
    let p99 = percentile_ms(&mut lat, 99.0);
    let raw_p99 = percentile_ms(&mut raw, 99.0);
    Ok(serde_json::json!({
        "scenario": "failover",
        "trials": args.trials,
        "p50_ms": p50,
        "p99_ms": p99,
        "session_timeout_ms": negotiated,
        "raw_ephemeral_kill_p50_ms": percentile_ms(&mut raw, 50.0),
        "raw_ephemeral_kill_p99_ms": raw_p99,
        "goal_p99_ms": raw_p99 + 500.0,
        "goal_met": p99 <= raw_p99 + 500.0,
    }))
}
