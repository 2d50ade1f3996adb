//! `datom get PATH` and `datom tree [PATH]`: the operator's first window into the znodes.

use std::process::ExitCode;

use datom_common::flags::ZkArgs;
use datom_common::paths;
use serde_json::{Map, Value, json};

use crate::output::{data_to_value, print_json};

/// Flags of `datom get`.
#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// Absolute znode path, e.g. /datom or /datom/nodes/n1.
    pub path: String,
    /// Print one compact JSON object with the record and its version.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `datom tree`.
#[derive(clap::Args, Debug)]
pub struct TreeArgs {
    /// Root of the subtree to print.
    #[arg(default_value = paths::ROOT)]
    pub path: String,
    /// Print one compact JSON object mapping each path to its record.
    #[arg(long)]
    pub json: bool,
}

/// Runs `datom get`.
pub async fn get(zk: &ZkArgs, args: GetArgs) -> anyhow::Result<ExitCode> {
    paths::validate_path(&args.path).map_err(anyhow::Error::msg)?;
    let coord = zk.connect().await?;
    let res = coord.get_raw(&args.path).await;
    coord.close().await;
    let Some((data, stat)) = res? else {
        anyhow::bail!("{} does not exist (list what does with `datom tree`)", args.path);
    };
    let value = data_to_value(&data);
    if args.json {
        print_json(
            &json!({ "path": args.path, "version": stat.version, "ephemeral": stat.ephemeral_owner != 0, "data": value }),
            true,
        );
    } else {
        print_json(&value, false);
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `datom tree`.
pub async fn tree(zk: &ZkArgs, args: TreeArgs) -> anyhow::Result<ExitCode> {
    paths::validate_path(&args.path).map_err(anyhow::Error::msg)?;
    let coord = zk.connect().await?;
    let res = coord.list_tree(&args.path).await;
    coord.close().await;
    let nodes = res?;
    if nodes.is_empty() {
        anyhow::bail!("{} does not exist (run `datom init` to create the datom tree)", args.path);
    }
    if args.json {
        let map: Map<String, Value> = nodes.iter().map(|(p, n)| (p.clone(), data_to_value(&n.data))).collect();
        print_json(&Value::Object(map), true);
        return Ok(ExitCode::SUCCESS);
    }
    print_tree(&args.path, &nodes);
    Ok(ExitCode::SUCCESS)
}

/// Prints the subtree as an indented outline with each record's pretty JSON beneath it.
pub fn print_tree(root: &str, nodes: &std::collections::BTreeMap<String, datom_common::coord::watch::NodeData>) {
    let base_depth = if root == "/" { 0 } else { root.matches('/').count() };
    for (path, node) in nodes {
        let depth = if path == "/" { 0 } else { path.matches('/').count() } - base_depth;
        let indent = "  ".repeat(depth);
        let name = if path == root { path.as_str() } else { paths::basename(path) };
        let eph = if node.ephemeral_owner != 0 { " (ephemeral)" } else { "" };
        println!("{indent}{name}{eph}");
        let v = data_to_value(&node.data);
        let empty = matches!(&v, Value::Null) || matches!(&v, Value::Object(m) if m.is_empty());
        if !empty {
            let text = serde_json::to_string_pretty(&v).expect("values serialise");
            for line in text.lines() {
                println!("{indent}  │ {line}");
            }
        }
    }
}
