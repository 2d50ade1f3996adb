//! `datom-bench`: measured claims. Each scenario prints one JSON object; raw ZooKeeper figures
//! are measured in the same run so the numbers can be compared.

use clap::{Parser, Subcommand};

mod addnode;
mod cache;
mod failover;
mod pbfailover;
mod pbgroup;
mod routefailover;
mod startservice;
mod stats;
mod target;
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
    /// Node registration through the config service: registrations/s and p99 latency.
    Addnode(addnode::Args),
    /// Time from `startservice` returning to the instance IN_SERVICE, through a real agent.
    Startservice(startservice::Args),
    /// Agent SIGKILL → failover service IN_SERVICE on another node, beside raw ephemeral expiry.
    Failover(failover::Args),
    /// Connection cache: hit latency and re-registration → every cache updated, beside raw
    /// ZooKeeper watch latency.
    Cache(cache::Args),
    /// HA routing: SIGKILL of the primary router's presence → route on the secondary (file driver).
    RouteFailover(routefailover::Args),
    /// (internal) A plain ZooKeeper client holding an ephemeral until killed: the raw figure
    /// of the failover scenarios.
    #[command(hide = true)]
    HoldEphemeral(routefailover::HoldArgs),
    /// Replicated volume: write throughput/latency, leader kills, acknowledged writes read back.
    Volume(volume::Args),
    /// Primary-backup failover time after SIGKILL and graceful stop, beside raw ephemeral expiry.
    PbFailover(pbfailover::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        datom_common::flags::init_logging(datom_common::flags::LogFormat::Text, "warn");
    }
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let res = rt.block_on(async {
        match cli.scenario {
            Scenario::ZkRaw(a) => zkraw::run(a).await,
            Scenario::Addnode(a) => addnode::run(a).await,
            Scenario::Startservice(a) => startservice::run(a).await,
            Scenario::Failover(a) => failover::run(a).await,
            Scenario::Cache(a) => cache::run(a).await,
            Scenario::RouteFailover(a) => routefailover::run(a).await,
            Scenario::HoldEphemeral(a) => routefailover::hold(a).await,
            Scenario::Volume(a) => volume::run(a).await,
            Scenario::PbFailover(a) => pbfailover::run(a).await,
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
