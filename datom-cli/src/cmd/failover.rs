//! Placement and failover commands: `datom move`, `datom node drain|undrain`, `datom events`,
//! and `startservice` without `--node` — all asking the transition master (the active config
//! service), which decides with the cluster's placement strategy and records a transition.

use std::process::ExitCode;
use std::time::Duration;

use datom_common::flags::ZkArgs;
use datom_common::records::TransitionRecord;
use datom_common::rpc::{ConfigError, ConfigServiceClient, ctx, dial_config_service};
use datom_common::{Coord, paths};

/// Flags of `datom move`.
#[derive(clap::Args, Debug)]
pub struct MoveArgs {
    /// Service to move.
    pub service: String,
    /// Node to move it to.
    #[arg(long)]
    pub to: String,
    /// Print the transition as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `datom node ...`.
#[derive(clap::Subcommand, Debug)]
pub enum NodeCmd {
    /// Mark a node unschedulable and move everything off it.
    Drain {
        /// The node.
        node: String,
        /// Print the transition as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make a drained node schedulable again.
    Undrain {
        /// The node.
        node: String,
    },
}

/// Flags of `datom events`.
#[derive(clap::Args, Debug)]
pub struct EventsArgs {
    /// How many of the latest transitions to show.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Print JSON, one transition per line.
    #[arg(long)]
    pub json: bool,
}

/// Dials the active config service (following one NotActive redirect is done by callers).
async fn master(coord: &Coord) -> anyhow::Result<ConfigServiceClient> {
    let addr = crate::cmd::addnode::active_config_service(coord).await?;
    dial_config_service(&addr, Duration::from_secs(3))
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the active config service at {addr}: {e}"))
}

/// Calls the active config service with the cluster token (derived from `--auth-file`).
async fn call<T, F, Fut>(zk: &ZkArgs, f: F) -> anyhow::Result<T>
where
    F: Fn(ConfigServiceClient, Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<Result<T, ConfigError>, tarpc::client::RpcError>>,
{
    let token = crate::cmd::addnode::cluster_token(zk, None)?;
    let coord = zk.connect().await?;
    let mut last = None;
    for _ in 0..3 {
        let client = match master(&coord).await {
            Ok(c) => c,
            Err(e) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
        };
        match f(client, token.clone()).await {
            Ok(Ok(v)) => {
                coord.close().await;
                return Ok(v);
            }
            Ok(Err(e @ ConfigError::NotActive { .. })) => {
                last = Some(e.into());
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Ok(Err(e)) => {
                coord.close().await;
                return Err(e.into());
            }
            Err(e) => last = Some(anyhow::anyhow!("the config service did not answer: {e}")),
        }
    }
    coord.close().await;
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no active config service")))
}

/// Prints a transition for people.
pub fn print_transition(t: &TransitionRecord) {
    println!("transition {:?} by {}", t.trigger, t.master);
    for d in &t.decisions {
        println!(
            "  {} {} → {} ({})",
            d.services.join(", "),
            d.from.as_deref().map(|f| format!("from {f}")).unwrap_or_else(|| "start".into()),
            d.to,
            d.reason
        );
    }
    for u in &t.unplaced {
        println!("  NOT PLACED {}: {}", u.services.join(", "), u.reason);
    }
}

/// `startservice SVC` without `--node`.
pub async fn place(zk: &ZkArgs, service: &str) -> anyhow::Result<TransitionRecord> {
    call(zk, |c, t| {
        let s = service.to_string();
        async move { c.place_service(ctx(Duration::from_secs(30)), s, t).await }
    })
    .await
}

/// Runs `datom move`.
pub async fn move_service(zk: &ZkArgs, args: MoveArgs) -> anyhow::Result<ExitCode> {
    let t = call(zk, |c, t| {
        let (s, to) = (args.service.clone(), args.to.clone());
        async move { c.move_service(ctx(Duration::from_secs(30)), s, to, t).await }
    })
    .await?;
    if args.json {
        println!("{}", serde_json::to_string(&t)?);
    } else {
        print_transition(&t);
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `datom node ...`.
pub async fn node(zk: &ZkArgs, cmd: NodeCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        NodeCmd::Drain { node, json } => {
            let t = call(zk, |c, t| {
                let n = node.clone();
                async move { c.drain_node(ctx(Duration::from_secs(30)), n, t).await }
            })
            .await?;
            if json {
                println!("{}", serde_json::to_string(&t)?);
            } else {
                print_transition(&t);
            }
            Ok(if t.unplaced.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(2) })
        }
        NodeCmd::Undrain { node } => {
            call(zk, |c, t| {
                let n = node.clone();
                async move { c.undrain_node(ctx(Duration::from_secs(30)), n, t).await }
            })
            .await?;
            println!("node {node:?} is schedulable again");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs `datom events`.
pub async fn events(zk: &ZkArgs, args: EventsArgs) -> anyhow::Result<ExitCode> {
    let coord = zk.connect().await?;
    let res = async {
        let mut names = match coord.children(paths::EVENTS).await {
            Ok(n) => n,
            Err(datom_common::CoordError::NoNode { .. }) => vec![],
            Err(e) => return Err(anyhow::Error::from(e)),
        };
        names.sort();
        let skip = names.len().saturating_sub(args.limit);
        let mut out = Vec::new();
        for n in names.into_iter().skip(skip) {
            if let Some(v) = coord.get::<TransitionRecord>(&paths::join(paths::EVENTS, &n)).await? {
                out.push(v.value);
            }
        }
        Ok(out)
    }
    .await;
    coord.close().await;
    let list = res?;
    if list.is_empty() && !args.json {
        println!("no transitions recorded");
    }
    for t in list {
        if args.json {
            println!("{}", serde_json::to_string(&t)?);
        } else {
            print!("{} ", t.at.to_rfc3339());
            print_transition(&t);
        }
    }
    Ok(ExitCode::SUCCESS)
}
