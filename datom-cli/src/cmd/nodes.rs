//! `datom nodes`: every registered node, live or dead, with its address and a CPU and memory
//! summary. Reads the znodes directly; no config service needed.

use std::process::ExitCode;

use datom_common::flags::ZkArgs;
use datom_common::records::{LiveRecord, NodeRecord};
use datom_common::{Coord, paths};
use serde::Serialize;

/// Flags of `datom nodes`.
#[derive(clap::Args, Debug)]
pub struct NodesArgs {
    /// Print one JSON array.
    #[arg(long)]
    pub json: bool,
}

/// One row of `datom nodes`.
#[derive(Debug, Serialize)]
pub struct NodeRow {
    /// Node name.
    pub name: String,
    /// Whether the agent's live ephemeral exists.
    pub live: bool,
    /// The agent's address, when live.
    pub address: Option<String>,
    /// Logical CPUs.
    pub cpus: u32,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Machine id.
    pub machine_id: String,
    /// Services the node should run.
    pub services: Vec<String>,
    /// Drained.
    pub unschedulable: bool,
}

/// Reads every node and its liveness.
pub async fn rows(coord: &Coord) -> anyhow::Result<Vec<NodeRow>> {
    let mut out = Vec::new();
    for name in coord.children(paths::NODES).await? {
        let Some(rec) = coord.get::<NodeRecord>(&paths::node(&name)).await? else { continue };
        let live = coord.get::<LiveRecord>(&paths::node_live(&name)).await.ok().flatten();
        out.push(NodeRow {
            name: rec.value.name,
            live: live.is_some(),
            address: live.map(|l| l.value.address),
            cpus: rec.value.hardware.cpus,
            memory_bytes: rec.value.hardware.memory_bytes,
            machine_id: rec.value.machine_id,
            services: rec.value.services,
            unschedulable: rec.value.unschedulable,
        });
    }
    Ok(out)
}

/// Runs `datom nodes`.
pub async fn run(zk: &ZkArgs, args: NodesArgs) -> anyhow::Result<ExitCode> {
    let coord = zk.connect().await?;
    let res = rows(&coord).await;
    coord.close().await;
    let rows = res?;
    if args.json {
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("no nodes registered (add one with `datom addnode`)");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<20} {:<5} {:<22} {:>4} {:>9}  SERVICES", "NODE", "STATE", "ADDRESS", "CPUS", "MEMORY");
    for r in rows {
        println!(
            "{:<20} {:<5} {:<22} {:>4} {:>7.1}Gi  {}",
            r.name,
            if r.live { "live" } else { "dead" },
            r.address.as_deref().unwrap_or("-"),
            r.cpus,
            r.memory_bytes as f64 / (1u64 << 30) as f64,
            r.services.join(",")
        );
    }
    Ok(ExitCode::SUCCESS)
}
