//! Service commands: `datom service apply|list|show|delete|mark-oos`, `datom startservice`,
//! `stopservice`, `restartservice` (seed 003's CLI) and `datom diagnose` (seed 001's manual
//! diagnostics). They write specs and desired states to ZooKeeper; node agents act on them.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use datom_common::flags::ZkArgs;
use datom_common::records::{LiveRecord, Operation};
use datom_common::rpc::{ctx, dial_node_agent};
use datom_common::services::{self, Applied};
use datom_common::spec::{DependencyGraph, ServiceSpec};
use datom_common::{Coord, paths};

/// `datom service ...`.
#[derive(clap::Subcommand, Debug)]
pub enum ServiceCmd {
    /// Validate a TOML spec and store it at /datom/services/<name>.
    Apply {
        /// The spec file.
        file: std::path::PathBuf,
    },
    /// List services.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a spec, its dependson and dependents lists, and its instances.
    Show {
        /// Service name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a spec (refused while it is started somewhere or others depend on it).
    Delete {
        /// Service name.
        name: String,
    },
    /// Seed 001's mark_oos: mark a failed service out of service without acting on it.
    MarkOos {
        /// Service name.
        name: String,
        /// The node.
        #[arg(long)]
        node: String,
    },
}

/// Flags of `startservice` / `restartservice`.
#[derive(clap::Args, Debug)]
pub struct StartArgs {
    /// Service name.
    pub service: String,
    /// Node to run it on (default: the first node of the spec's placement.nodes).
    #[arg(long)]
    pub node: Option<String>,
}

/// Flags of `stopservice`.
#[derive(clap::Args, Debug)]
pub struct StopArgs {
    /// Service name.
    pub service: String,
    /// Node to stop it on (default: every node it is started on).
    #[arg(long)]
    pub node: Option<String>,
    /// Seed 001's force_oos: kill at once instead of a graceful stop.
    #[arg(long)]
    pub force: bool,
}

/// Flags of `diagnose`.
#[derive(clap::Args, Debug)]
pub struct DiagnoseArgs {
    /// Service name.
    pub service: String,
    /// Node (default: every node with an instance).
    #[arg(long)]
    pub node: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

async fn with_coord<T>(zk: &ZkArgs, f: impl AsyncFnOnce(&Coord) -> anyhow::Result<T>) -> anyhow::Result<T> {
    let coord = zk.connect().await?;
    let r = f(&coord).await;
    coord.close().await;
    r
}

/// Runs `datom service ...`.
pub async fn service(zk: &ZkArgs, cmd: ServiceCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ServiceCmd::Apply { file } => {
            // Bound the size before reading: an oversized file is refused without loading it.
            let len =
                std::fs::metadata(&file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?.len();
            if len > datom_common::spec::MAX_SPEC_BYTES as u64 {
                bail!(
                    "{}: the spec is {len} bytes; the limit is {} bytes. Nothing was written",
                    file.display(),
                    datom_common::spec::MAX_SPEC_BYTES
                );
            }
            let src =
                std::fs::read_to_string(&file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            let spec = ServiceSpec::from_toml(&src).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            let applied = with_coord(zk, async |c| Ok(services::apply(c, &spec).await?)).await?;
            let what = match applied {
                Applied::Created => "created",
                Applied::Updated => "updated",
                Applied::Unchanged => "unchanged",
            };
            println!("service {:?} {what}", spec.name);
        }
        ServiceCmd::List { json } => {
            let specs = with_coord(zk, async |c| Ok(services::load_specs(c).await?)).await?;
            if json {
                println!("{}", serde_json::to_string(&specs.values().collect::<Vec<_>>())?);
            } else if specs.is_empty() {
                println!("no services (apply one with `datom service apply FILE`)");
            } else {
                println!("{:<20} {:<24} {:<12} DEPENDS ON", "SERVICE", "TYPE", "GROUP");
                for s in specs.values() {
                    println!(
                        "{:<20} {:<24} {:<12} {}",
                        s.name,
                        s.kind.to_string(),
                        s.group.as_deref().unwrap_or("-"),
                        s.depends_on.join(",")
                    );
                }
            }
        }
        ServiceCmd::Show { name, json } => {
            let (spec, specs, instances) = with_coord(zk, async |c| {
                let spec = services::load_spec(c, &name).await?;
                let specs = services::load_specs(c).await?;
                let instances = services::instances(c, &name).await?;
                Ok((spec, specs, instances))
            })
            .await?;
            let g = DependencyGraph::new(specs.values());
            let dependson = g.depends_on(&name);
            let dependents = g.dependents(&name);
            if json {
                let v = serde_json::json!({
                    "spec": spec, "dependson": dependson, "dependents": dependents, "instances": instances,
                });
                println!("{v}");
            } else {
                println!("{}", serde_json::to_string_pretty(&spec)?);
                println!("dependson:  {}", if dependson.is_empty() { "-".into() } else { dependson.join(", ") });
                println!("dependents: {}", if dependents.is_empty() { "-".into() } else { dependents.join(", ") });
                if instances.is_empty() {
                    println!("instances:  none");
                }
                for (node, i) in instances {
                    println!(
                        "instance on {node}: {:?} pid {} since {} restarts {}{}",
                        i.state,
                        i.pid,
                        i.since.to_rfc3339(),
                        i.restarts,
                        i.last_error.map(|e| format!(" ({e})")).unwrap_or_default()
                    );
                }
            }
        }
        ServiceCmd::Delete { name } => {
            with_coord(zk, async |c| Ok(services::delete(c, &name).await?)).await?;
            println!("service {name:?} deleted");
        }
        ServiceCmd::MarkOos { name, node } => {
            with_coord(zk, async |c| {
                services::load_spec(c, &name).await?;
                services::require_node(c, &node).await?;
                Ok(services::write_desired(
                    c,
                    &node,
                    std::slice::from_ref(&name),
                    Operation::MarkOos,
                    false,
                    "operator",
                )
                .await?)
            })
            .await?;
            println!("{name:?} on {node:?} marked out of service");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `datom startservice`: on `--node`, or where the transition master places it.
pub async fn startservice(zk: &ZkArgs, args: StartArgs) -> anyhow::Result<ExitCode> {
    if args.node.is_none() {
        datom_common::names::validate(datom_common::names::NameKind::Service, &args.service)?;
        let t = crate::cmd::failover::place(zk, &args.service).await?;
        if t.decisions.is_empty() {
            println!("{} already runs on as many nodes as it has replicas", args.service);
        }
        for d in &t.decisions {
            println!("starting {} on {} (in order: {}; {})", args.service, d.to, d.services.join(", "), d.reason);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (node, order) = with_coord(zk, async |c| {
        let node = args.node.clone().expect("checked above");
        let order = services::start(c, &args.service, &node, "operator").await?;
        Ok((node, order))
    })
    .await?;
    println!("starting {} on {node} (in order: {})", args.service, order.join(", "));
    Ok(ExitCode::SUCCESS)
}

/// Runs `datom stopservice`.
pub async fn stopservice(zk: &ZkArgs, args: StopArgs) -> anyhow::Result<ExitCode> {
    let done = with_coord(zk, async |c| {
        let nodes = match &args.node {
            Some(n) => vec![n.clone()],
            None => services::nodes_running(c, &args.service).await?,
        };
        if nodes.is_empty() {
            services::load_spec(c, &args.service).await?;
            bail!("{:?} is not started on any node", args.service);
        }
        let mut done = Vec::new();
        for n in nodes {
            let order = services::stop(c, &args.service, &n, args.force, "operator").await?;
            done.push((n, order));
        }
        Ok(done)
    })
    .await?;
    for (node, order) in done {
        println!("stopping {} on {node} (in order: {})", args.service, order.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `datom restartservice`.
pub async fn restartservice(zk: &ZkArgs, args: StartArgs) -> anyhow::Result<ExitCode> {
    let node = with_coord(zk, async |c| {
        let node = match &args.node {
            Some(n) => n.clone(),
            None => match services::nodes_running(c, &args.service).await?.first() {
                Some(n) => n.clone(),
                None => bail!("{:?} is not started on any node", args.service),
            },
        };
        services::restart(c, &args.service, &node).await?;
        Ok(node)
    })
    .await?;
    println!("restarting {} on {node}", args.service);
    Ok(ExitCode::SUCCESS)
}

/// Runs `datom diagnose`: asks each agent to run the check now.
pub async fn diagnose(zk: &ZkArgs, args: DiagnoseArgs) -> anyhow::Result<ExitCode> {
    let targets = with_coord(zk, async |c| {
        services::load_spec(c, &args.service).await?;
        let nodes = match &args.node {
            Some(n) => vec![n.clone()],
            None => services::instances(c, &args.service).await?.into_keys().collect(),
        };
        if nodes.is_empty() {
            bail!("{:?} has no instance to diagnose; give --node", args.service);
        }
        let mut out = Vec::new();
        for n in nodes {
            let live = c.get::<LiveRecord>(&paths::node_live(&n)).await?;
            let Some(live) = live else { bail!("node {n:?} has no live agent to run the check") };
            out.push((n, live.value.address));
        }
        Ok(out)
    })
    .await?;
    let mut all_ok = true;
    for (node, addr) in targets {
        let client = dial_node_agent(&addr, Duration::from_secs(3))
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the agent of {node} at {addr}: {e}"))?;
        let report = client
            .diagnose(ctx(Duration::from_secs(60)), args.service.clone())
            .await
            .map_err(|e| anyhow::anyhow!("agent of {node} did not answer: {e}"))?
            .map_err(|e| anyhow::anyhow!("{node}: {e}"))?;
        all_ok &= report.healthy;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!(
                "{} on {}: {} — {} ({}; state {:?}; {} ms)",
                report.service,
                report.node,
                if report.healthy { "HEALTHY" } else { "FAILING" },
                report.check,
                report.detail,
                report.state,
                report.took_ms
            );
        }
    }
    Ok(if all_ok { ExitCode::SUCCESS } else { ExitCode::from(2) })
}
