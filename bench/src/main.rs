//! `datom-bench`: measured claims. Each scenario prints one JSON object; raw ZooKeeper figures
//! are measured in the same run so the numbers can be compared.

use clap::{Parser, Subcommand};

mod pbfailover;
mod pbgroup;
mod stats;
mod volume;
mod zkraw;

/// Benchmarks datom against real ZooKeeper.
#[derive(Parser, Debug)]
#[command(name = "datom-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Raw ZooKeeper: create latency, pipelined create/setData throughput, watch latency.
    ZkRaw(zkraw::Args),
    /// Replicated volume: write throughput/latency, leader kills, acknowledged writes read back.
    Volume(volume::Args),
    /// Primary-backup failover time after SIGKILL and graceful stop, beside raw ephemeral expiry.
    PbFailover(pbfailover::Args),
    /// (internal) A plain ZooKeeper client holding an ephemeral znode until killed.
    #[command(hide = true)]
    ZkEphemeralHolder(pbfailover::HolderArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let res = rt.block_on(async {
        match cli.scenario {
            Scenario::ZkRaw(a) => zkraw::run(a).await,
            Scenario::Volume(a) => volume::run(a).await,
            Scenario::PbFailover(a) => pbfailover::run(a).await,
            Scenario::ZkEphemeralHolder(a) => pbfailover::hold(a).await,
        }
    });
    match res {
        Ok(v) => {
            println!("{}", serde_json::to_string_pretty(&v).expect("json"));
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
