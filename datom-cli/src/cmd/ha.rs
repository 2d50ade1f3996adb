//! HA routing commands under the seed's names (seed 002): `create_node`, `set_params`,
//! `clear_params`, `delete_node`, `node_event` and `ha_api`. The logic lives in
//! `datom_ha_routing`; this module parses flags and prints results.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use datom_common::flags::ZkArgs;
use datom_ha_routing::control::{self, StartOptions, StartOutcome, StopOutcome};
use datom_ha_routing::params::{ClearFlags, DRIVERS_HELP, NodeParams, parse_index};
use datom_ha_routing::record::{LastEvent, RedundancyNode, ResultKind};
use datom_ha_routing::{HaError, db};
use serde_json::Value;

/// Flags of `datom create_node`.
#[derive(clap::Args, Debug)]
#[command(after_help = DRIVERS_HELP)]
pub struct CreateNodeArgs {
    /// Redundancy node index, 1..1023.
    #[arg(short = 'i', long, value_name = "N", value_parser = parse_index)]
    pub index: u16,
    /// The node's parameters.
    #[command(flatten)]
    pub params: NodeParams,
    /// Print the record as one line of JSON.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `datom set_params`.
#[derive(clap::Args, Debug)]
#[command(after_help = DRIVERS_HELP)]
pub struct SetParamsArgs {
    /// Redundancy node index, 1..1023 (the node must exist).
    #[arg(short = 'i', long, value_name = "N", value_parser = parse_index)]
    pub index: u16,
    /// The parameters to change; those not given keep their values.
    #[command(flatten)]
    pub params: NodeParams,
    /// Print the resulting record as one line of JSON.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `datom clear_params`.
#[derive(clap::Args, Debug)]
#[command(after_help = DRIVERS_HELP)]
pub struct ClearParamsArgs {
    /// Redundancy node index, 1..1023 (the node must exist).
    #[arg(short = 'i', long, value_name = "N", value_parser = parse_index)]
    pub index: u16,
    /// The parameters to remove.
    #[command(flatten)]
    pub which: ClearFlags,
    /// Print the resulting record as one line of JSON.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `datom delete_node`.
#[derive(clap::Args, Debug)]
#[command(after_help = DRIVERS_HELP)]
pub struct DeleteNodeArgs {
    /// Redundancy node index, 1..1023. Deleting an absent node is not an error.
    #[arg(short = 'i', long, value_name = "N", value_parser = parse_index)]
    pub index: u16,
}

/// The seed's event types.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventArg {
    /// A failure of the peer router has been detected: take the route if it is not ours.
    #[value(name = "peerFail")]
    PeerFail,
    /// This router recovered and wants the route back (primary-mode nodes only).
    #[value(name = "revert")]
    Revert,
    /// Read the route and write it back unchanged (diagnostic).
    #[value(name = "verify")]
    Verify,
}

impl EventArg {
    fn name(self) -> &'static str {
        match self {
            EventArg::PeerFail => "peerFail",
            EventArg::Revert => "revert",
            EventArg::Verify => "verify",
        }
    }
}

/// Flags of `datom node_event`.
#[derive(clap::Args, Debug)]
#[command(after_help = DRIVERS_HELP)]
pub struct NodeEventArgs {
    /// Redundancy node index, 1..1023 (the node must exist).
    #[arg(short = 'i', long, value_name = "N", value_parser = parse_index)]
    pub index: u16,
    /// Event type: peerFail, revert or verify.
    #[arg(short = 'e', long, value_enum)]
    pub event: EventArg,
    /// How long to wait for the result, in ms [default: twice the node's handler timeout + 5000].
    #[arg(long, value_name = "MS")]
    pub wait: Option<u64>,
    /// Print the result as one line of JSON.
    #[arg(long)]
    pub json: bool,
}

/// `ha_api` commands.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaCommand {
    /// Start the node's event manager (datom-ha) detached, and wait until it answers.
    Start,
    /// Stop it: in-flight events finish, its registration and locks go at once.
    Stop,
    /// Ask it how it is; non-zero exit if it does not answer.
    Ping,
}

/// Flags of `datom ha_api`.
#[derive(clap::Args, Debug)]
#[command(after_help = DRIVERS_HELP)]
pub struct HaApiArgs {
    /// Command to send to the server: start, stop or ping.
    #[arg(short = 'c', long, value_enum)]
    pub command: HaCommand,
    /// The datom node (router) whose event manager to control.
    #[arg(long, env = "DATOM_NODE", value_name = "NODE")]
    pub node: String,
    /// start: file the event manager logs to (appended) [default: $TMPDIR/datom-ha-NODE.log].
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// start: the control service's listen address.
    #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
    pub listen: String,
    /// start/stop: how long to wait for the event manager, in ms.
    #[arg(long, default_value_t = 15_000, value_name = "MS")]
    pub wait: u64,
    /// Print the result as one line of JSON.
    #[arg(long)]
    pub json: bool,
}

fn summary(r: &RedundancyNode) -> String {
    format!(
        "route {} in table {} via {} ({} on node {}, peer {}, driver {})",
        r.route,
        r.route_table,
        r.next_hop,
        r.mode.as_str(),
        r.node,
        r.peer,
        r.driver.as_str()
    )
}

/// The parameter fields that differ between two records, as `field: old → new`.
fn changes(before: &RedundancyNode, after: &RedundancyNode) -> Vec<String> {
    let a = serde_json::to_value(before).expect("records serialise");
    let b = serde_json::to_value(after).expect("records serialise");
    let (Value::Object(a), Value::Object(b)) = (a, b) else { return Vec::new() };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| !matches!(k.as_str(), "updated_at" | "last_event"))
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            let show = |v: Option<&Value>| v.map(|v| v.to_string()).unwrap_or_else(|| "(unset)".into());
            format!("{k}: {} → {}", show(a.get(k)), show(b.get(k)))
        })
        .collect()
}

async fn with_coord<T, F, Fut>(zk: &ZkArgs, f: F) -> anyhow::Result<T>
where
    F: FnOnce(datom_common::Coord) -> Fut,
    Fut: std::future::Future<Output = Result<T, HaError>>,
{
    let coord = zk.connect().await?;
    let res = f(coord.clone()).await;
    coord.close().await;
    Ok(res?)
}

/// Runs `datom create_node`.
pub async fn create_node(zk: &ZkArgs, args: CreateNodeArgs) -> anyhow::Result<ExitCode> {
    // Validate before connecting: bad input changes nothing and needs no ZooKeeper.
    datom_ha_routing::params::build_new(args.index, &args.params, chrono::Utc::now())?;
    let rec = with_coord(zk, |c| async move { db::create_node(&c, args.index, &args.params).await }).await?;
    if args.json {
        println!("{}", serde_json::to_string(&rec)?);
    } else {
        println!("created redundancy node {}: {}", rec.index, summary(&rec));
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `datom set_params`.
pub async fn set_params(zk: &ZkArgs, args: SetParamsArgs) -> anyhow::Result<ExitCode> {
    let (before, after) = with_coord(zk, |c| async move { db::set_params(&c, args.index, &args.params).await }).await?;
    print_change(args.index, &before, &after, args.json)
}

/// Runs `datom clear_params`.
pub async fn clear_params(zk: &ZkArgs, args: ClearParamsArgs) -> anyhow::Result<ExitCode> {
    let which = args.which.params();
    datom_ha_routing::params::check_clearable(&which, None)?;
    let (before, after) = with_coord(zk, |c| async move { db::clear_params(&c, args.index, &which).await }).await?;
    print_change(args.index, &before, &after, args.json)
}

fn print_change(index: u16, before: &RedundancyNode, after: &RedundancyNode, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string(after)?);
        return Ok(ExitCode::SUCCESS);
    }
    let diff = changes(before, after);
    if diff.is_empty() {
        println!("redundancy node {index}: nothing changed");
    } else {
        println!("redundancy node {index} changed:");
        for d in diff {
            println!("  {d}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `datom delete_node`.
pub async fn delete_node(zk: &ZkArgs, args: DeleteNodeArgs) -> anyhow::Result<ExitCode> {
    let existed = with_coord(zk, |c| async move { db::delete_node(&c, args.index).await }).await?;
    if existed {
        println!("deleted redundancy node {}", args.index);
    } else {
        println!("redundancy node {} does not exist; nothing to delete", args.index);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_event(index: u16, e: &LastEvent) {
    println!(
        "{} on redundancy node {index}: {} — {} [{} ms, handled by {}]",
        e.event,
        e.result.as_str(),
        e.detail,
        e.duration_ms,
        e.handled_by
    );
}

/// Runs `datom node_event`: exit 0 unless the event failed.
pub async fn node_event(zk: &ZkArgs, args: NodeEventArgs) -> anyhow::Result<ExitCode> {
    let wait = args.wait.map(Duration::from_millis);
    let event = args.event.name();
    let res = with_coord(zk, |c| async move { db::request_event(&c, args.index, event, wait).await }).await?;
    if args.json {
        println!("{}", serde_json::to_string(&res)?);
    } else {
        print_event(args.index, &res);
    }
    Ok(if res.result == ResultKind::Failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// Runs `datom ha_api`.
pub async fn ha_api(zk: &ZkArgs, args: HaApiArgs) -> anyhow::Result<ExitCode> {
    datom_common::names::validate(datom_common::names::NameKind::Node, &args.node)?;
    let node = args.node.clone();
    let wait = Duration::from_millis(args.wait);
    match args.command {
        HaCommand::Start => {
            let exe = control::find_binary()?;
            let log_file =
                args.log_file.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("datom-ha-{node}.log")));
            let opts = StartOptions {
                exe,
                node: node.clone(),
                args: {
                    let mut a = zk.child_args();
                    a.push(format!("--listen={}", args.listen));
                    a
                },
                log_file: log_file.clone(),
                timeout: wait,
            };
            let out = with_coord(zk, |c| async move { control::start(&c, &opts).await }).await?;
            let (verb, rec) = match &out {
                StartOutcome::Started(r) => ("started", r),
                StartOutcome::AlreadyRunning(r) => ("already running", r),
            };
            if args.json {
                println!("{}", serde_json::json!({ "result": verb, "server": rec, "log_file": log_file }));
            } else {
                println!(
                    "HA event manager for node {node} {verb}: pid {}, control address {}, log {}",
                    rec.pid,
                    rec.address,
                    log_file.display()
                );
            }
        }
        HaCommand::Stop => {
            let out = with_coord(zk, |c| async move { control::stop(&c, &node, wait).await }).await?;
            match (&out, args.json) {
                (StopOutcome::Stopped(r), true) => {
                    println!("{}", serde_json::json!({ "result": "stopped", "server": r }))
                }
                (StopOutcome::NotRunning, true) => println!("{}", serde_json::json!({ "result": "not_running" })),
                (StopOutcome::Stopped(r), false) => println!(
                    "stopped the HA event manager for node {} (pid {}); its registration and locks are gone, the \
                     redundancy nodes stay in ZooKeeper (remove them with delete_node)",
                    args.node, r.pid
                ),
                (StopOutcome::NotRunning, false) => {
                    println!("no HA event manager is running for node {}; nothing to stop", args.node)
                }
            }
        }
        HaCommand::Ping => {
            let (rec, st) =
                with_coord(zk, |c| async move { control::ping(&c, &node, Duration::from_secs(3)).await }).await?;
            if args.json {
                println!("{}", serde_json::json!({ "server": rec, "status": st }));
            } else {
                let presence: Vec<String> = st
                    .presence
                    .iter()
                    .map(|(n, p)| {
                        format!(
                            "{n}={}",
                            match p {
                                Some(true) => "present",
                                Some(false) => "absent",
                                None => "unknown",
                            }
                        )
                    })
                    .collect();
                println!(
                    "HA event manager for node {} is alive: pid {} at {}, session {:?}, redundancy nodes {:?}, \
                     presence [{}], {} events handled",
                    st.node,
                    st.pid,
                    rec.address,
                    st.session,
                    st.owned,
                    presence.join(" "),
                    st.events_handled
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
