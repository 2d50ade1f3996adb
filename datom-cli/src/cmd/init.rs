//! `datom init [--cluster NAME]`: create the datom tree, or say it already exists.

use std::process::ExitCode;

use datom_common::flags::ZkArgs;
use datom_common::init::{InitOutcome, init_tree};

/// Flags of `datom init`.
#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// Cluster name (letters, digits, '-', '_'; at most 63 bytes).
    #[arg(long, default_value = "datom")]
    pub cluster: String,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `datom init`.
pub async fn run(zk: &ZkArgs, args: InitArgs) -> anyhow::Result<ExitCode> {
    // Validate before touching the network: bad input changes nothing.
    datom_common::names::validate(datom_common::names::NameKind::Cluster, &args.cluster)?;
    let coord = zk.connect().await?;
    let outcome = init_tree(&coord, &args.cluster).await;
    coord.close().await;
    let (created, record) = match outcome? {
        InitOutcome::Created(r) => (true, r),
        InitOutcome::AlreadyInitialized(r) => (false, r),
    };
    if args.json {
        let v = serde_json::json!({ "created": created, "cluster": record });
        println!("{v}");
    } else if created {
        println!("initialized datom cluster {:?} at {}", record.name, zk.zk);
    } else {
        println!(
            "already initialized: cluster {:?}, created {} — nothing changed",
            record.name,
            record.created_at.to_rfc3339()
        );
    }
    Ok(ExitCode::SUCCESS)
}
