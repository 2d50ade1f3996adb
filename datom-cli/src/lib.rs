//! The `datom` command line: flag definitions and dispatch to one module per command.

pub mod cmd;
pub mod output;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use datom_common::flags::ZkArgs;

/// datom: a cluster control plane coordinated by ZooKeeper.
#[derive(Parser, Debug)]
#[command(name = "datom", version, about, propagate_version = true)]
pub struct Cli {
    /// How to reach ZooKeeper.
    #[command(flatten)]
    pub zk: ZkArgs,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// datom's commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create the datom tree in ZooKeeper (idempotent).
    Init(cmd::init::InitArgs),
    /// Print the record stored at a znode.
    Get(cmd::inspect::GetArgs),
    /// Print a subtree of znodes with their records.
    Tree(cmd::inspect::TreeArgs),
    /// Run a local cluster: a managed ZooKeeper, init, and the tree; Ctrl-C stops it.
    Up(cmd::up::UpArgs),
    /// Replicated key/value volumes: create, put, get, delete, status.
    Volume(cmd::volume::VolumeArgs),
}

/// Runs the command and maps failure to a non-zero exit with the error on stderr.
pub fn main(cli: Cli) -> ExitCode {
    datom_common::flags::init_logging(datom_common::flags::LogFormat::Text, "warn");
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            Command::Init(args) => cmd::init::run(&cli.zk, args).await,
            Command::Get(args) => cmd::inspect::get(&cli.zk, args).await,
            Command::Tree(args) => cmd::inspect::tree(&cli.zk, args).await,
            Command::Up(args) => cmd::up::run(&cli.zk, args).await,
            Command::Volume(args) => cmd::volume::run(&cli.zk, args).await,
        }
    });
    // Do not wait for lingering background tasks (watch streams) at exit.
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
