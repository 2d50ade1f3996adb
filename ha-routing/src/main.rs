//! `datom-ha`: the HA routing event manager (`run`), and the event handler it spawns
//! (`handle-event`). Operators start it with `datom ha_api -c start --node NODE`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use datom_common::flags::{LogArgs, ZkArgs};

/// HA routing event manager (seed 002). Normally started by `datom ha_api -c start --node NODE`.
#[derive(Parser, Debug)]
#[command(name = "datom-ha", version, about)]
struct Cli {
    #[command(flatten)]
    zk: ZkArgs,
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the event manager for one datom node until SIGTERM/SIGINT or `ha_api -c stop`.
    Run {
        /// The datom node (router) to act for.
        #[arg(long, env = "DATOM_NODE")]
        node: String,
        /// Control service address (loopback).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
    /// The event handler: reads a job (JSON) on stdin, prints the outcome (JSON). Run by the
    /// event manager, not by hand.
    #[command(hide = true)]
    HandleEvent,
    /// Tests and benchmarks: hold a node agent's presence (/datom/nodes/NODE/live) until killed.
    #[command(hide = true)]
    StandInAgent {
        /// The datom node whose presence to hold.
        #[arg(long)]
        node: String,
    },
}

async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::HandleEvent = cli.command {
        // Synchronous and runtime-free: it starts fast and dies with its process group.
        return datom_ha_routing::handler::main_handle_event();
    }
    cli.log.init("info");
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let res = rt.block_on(async {
        match cli.command {
            Cmd::Run { node, listen } => {
                let exe = std::env::current_exe()?;
                let config = datom_ha_routing::ManagerConfig { zk: cli.zk.config()?, node, listen, handler_exe: exe };
                datom_ha_routing::run(config, terminated()).await
            }
            Cmd::StandInAgent { node } => {
                let coord = cli.zk.connect().await?;
                let r = datom_ha_routing::standin::run(&coord, &node, terminated()).await;
                coord.close().await;
                r
            }
            Cmd::HandleEvent => unreachable!("handled above"),
        }
    });
    rt.shutdown_timeout(std::time::Duration::from_millis(200));
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
