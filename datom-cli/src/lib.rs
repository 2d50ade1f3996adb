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
    /// Add this machine: discover hardware, register with the config service, stamp node.json.
    Addnode(cmd::addnode::AddnodeArgs),
    /// List nodes: live or dead, address, CPU and memory.
    Nodes(cmd::nodes::NodesArgs),
    /// Manage service specs.
    #[command(subcommand)]
    Service(cmd::service::ServiceCmd),
    /// Start a service (and its dependencies) on a node: seed 001's in_service.
    Startservice(cmd::service::StartArgs),
    /// Stop a service (and its dependents): seed 001's oo_service, or force_oos with --force.
    Stopservice(cmd::service::StopArgs),
    /// Restart a service on a node.
    Restartservice(cmd::service::StartArgs),
    /// Run a service's health check now and print the result (exit 2 when failing).
    Diagnose(cmd::service::DiagnoseArgs),
    /// Move a service (and what must move with it) to another node.
    Move(cmd::failover::MoveArgs),
    /// Drain or undrain a node.
    #[command(subcommand)]
    Node(cmd::failover::NodeCmd),
    /// The latest transitions recorded by the transition master.
    Events(cmd::failover::EventsArgs),
    /// Print peer events (up, changed, down) as they happen, until Ctrl-C.
    Watch(cmd::watch::WatchArgs),
    /// HA routing: create redundancy node N (a route a pair of routers fails over).
    #[command(name = "create_node", alias = "create-node")]
    CreateNode(cmd::ha::CreateNodeArgs),
    /// HA routing: change the given parameters of redundancy node N; the others keep their values.
    #[command(name = "set_params", alias = "set-params")]
    SetParams(cmd::ha::SetParamsArgs),
    /// HA routing: remove the given optional parameters of redundancy node N.
    #[command(name = "clear_params", alias = "clear-params")]
    ClearParams(cmd::ha::ClearParamsArgs),
    /// HA routing: delete redundancy node N (no error when it does not exist).
    #[command(name = "delete_node", alias = "delete-node")]
    DeleteNode(cmd::ha::DeleteNodeArgs),
    /// HA routing: tell the event manager that an event occurred on redundancy node N.
    #[command(name = "node_event", alias = "node-event")]
    NodeEvent(cmd::ha::NodeEventArgs),
    /// HA routing: start, stop or ping a node's event manager (datom-ha).
    #[command(name = "ha_api", alias = "ha-api")]
    HaApi(cmd::ha::HaApiArgs),
    /// The cluster at a glance: config service, nodes, services, groups, redundancy, transitions.
    Status(cmd::status::StatusArgs),
    /// Print shell completions.
    Completions(cmd::docs::CompletionsArgs),
    /// Print the man page, or write every man page into a directory.
    Man(cmd::docs::ManArgs),
    /// Replicated key/value volumes: create, put, get, delete, status.
    Volume(cmd::volume::VolumeArgs),
    /// Print (or write with --out) the cluster token derived from --auth-file.
    Token(cmd::init::TokenArgs),
}

/// Runs the command and maps failure to a non-zero exit with the error on stderr.
pub fn main(cli: Cli) -> ExitCode {
    let log_format = match &cli.command {
        Command::Up(args) => args.log.log_format,
        _ => datom_common::flags::LogFormat::Text,
    };
    datom_common::flags::init_logging(log_format, "warn");
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
            Command::Addnode(args) => cmd::addnode::run(&cli.zk, args).await,
            Command::Nodes(args) => cmd::nodes::run(&cli.zk, args).await,
            Command::Service(c) => cmd::service::service(&cli.zk, c).await,
            Command::Startservice(a) => cmd::service::startservice(&cli.zk, a).await,
            Command::Stopservice(a) => cmd::service::stopservice(&cli.zk, a).await,
            Command::Restartservice(a) => cmd::service::restartservice(&cli.zk, a).await,
            Command::Diagnose(a) => cmd::service::diagnose(&cli.zk, a).await,
            Command::Move(a) => cmd::failover::move_service(&cli.zk, a).await,
            Command::Node(c) => cmd::failover::node(&cli.zk, c).await,
            Command::Events(a) => cmd::failover::events(&cli.zk, a).await,
            Command::Watch(args) => cmd::watch::run(&cli.zk, args).await,
            Command::CreateNode(args) => cmd::ha::create_node(&cli.zk, args).await,
            Command::SetParams(args) => cmd::ha::set_params(&cli.zk, args).await,
            Command::ClearParams(args) => cmd::ha::clear_params(&cli.zk, args).await,
            Command::DeleteNode(args) => cmd::ha::delete_node(&cli.zk, args).await,
            Command::NodeEvent(args) => cmd::ha::node_event(&cli.zk, args).await,
            Command::HaApi(args) => cmd::ha::ha_api(&cli.zk, args).await,
            Command::Status(args) => cmd::status::run(&cli.zk, args).await,
            Command::Completions(args) => cmd::docs::completions(args),
            Command::Man(args) => cmd::docs::man(args),
            Command::Volume(args) => cmd::volume::run(&cli.zk, args).await,
            Command::Token(args) => cmd::init::token(&cli.zk, args),
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
