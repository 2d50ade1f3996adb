//! `datom volume create|put|get|delete|status`: replicated key/value volumes (seed 003's volume
//! server). `create` writes the volume's group record; the replicas are
//! `datom-volume-server --volume NAME` processes; the other commands find the leader through
//! ZooKeeper and talk to it.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use clap::Subcommand;
use datom_common::coord::{CoordError, Mode};
use datom_common::flags::ZkArgs;
use datom_common::names::{NameKind, validate};
use datom_common::paths;
use datom_pb::types::{GroupRecord, TermStatus};
use datom_volume_server::client::{VolumeClient, VolumeStatus};

/// Flags of `datom volume`.
#[derive(clap::Args, Debug)]
pub struct VolumeArgs {
    /// How long put/get/delete keep retrying while a leader is being elected, in ms.
    #[arg(long, default_value_t = 10_000, value_name = "MS", global = true)]
    pub timeout: u64,
    /// The volume command.
    #[command(subcommand)]
    pub cmd: VolumeCmd,
}

/// `datom volume` subcommands.
#[derive(Subcommand, Debug)]
pub enum VolumeCmd {
    /// Create a volume: its group record with the replica count. Then start one
    /// `datom-volume-server --volume NAME` per replica.
    Create {
        /// Volume name.
        name: String,
        /// Number of replicas; writes need a majority of them.
        #[arg(long, default_value_t = 3)]
        replicas: u32,
    },
    /// Set KEY to VALUE (acknowledged once a quorum of replicas journaled it).
    Put {
        /// Volume name.
        name: String,
        /// Key.
        key: String,
        /// Value.
        value: String,
    },
    /// Print the value of KEY (read from the leader).
    Get {
        /// Volume name.
        name: String,
        /// Key.
        key: String,
    },
    /// Remove KEY.
    Delete {
        /// Volume name.
        name: String,
        /// Key.
        key: String,
    },
    /// Term, leader, and each member's state and lag.
    Status {
        /// Volume name.
        name: String,
        /// One line of JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs `datom volume`.
pub async fn run(zk: &ZkArgs, args: VolumeArgs) -> anyhow::Result<ExitCode> {
    let name = match &args.cmd {
        VolumeCmd::Create { name, .. }
        | VolumeCmd::Put { name, .. }
        | VolumeCmd::Get { name, .. }
        | VolumeCmd::Delete { name, .. }
        | VolumeCmd::Status { name, .. } => name.clone(),
    };
    validate(NameKind::Volume, &name).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let VolumeCmd::Create { replicas, .. } = &args.cmd
        && (*replicas == 0 || *replicas > 9)
    {
        anyhow::bail!("--replicas must be between 1 and 9 (odd numbers tolerate the most failures), not {replicas}");
    }
    // Writes present the cluster token (derived from --auth-file) on a secure cluster.
    let token = crate::cmd::addnode::cluster_token(zk, None)?;
    let coord = zk.connect().await?;
    let res = run_with(&coord, &name, args, token).await;
    coord.close().await;
    res
}

async fn run_with(
    coord: &datom_common::Coord,
    name: &str,
    args: VolumeArgs,
    token: Option<String>,
) -> anyhow::Result<ExitCode> {
    let mut client = VolumeClient::new(coord.clone(), name);
    client.token = token;
    client.retry_for = Duration::from_millis(args.timeout);
    match args.cmd {
        VolumeCmd::Create { replicas, .. } => create(coord, name, replicas).await,
        VolumeCmd::Put { key, value, .. } => {
            let ack = client.put(&key, &value).await?;
            println!("ok (entry {})", ack.entry);
            Ok(ExitCode::SUCCESS)
        }
        VolumeCmd::Get { key, .. } => match client.get(&key).await? {
            Some(v) => {
                println!("{v}");
                Ok(ExitCode::SUCCESS)
            }
            None => {
                eprintln!("error: key {key:?} is not in volume {name:?}");
                Ok(ExitCode::from(1))
            }
        },
        VolumeCmd::Delete { key, .. } => {
            let ack = client.delete(&key).await?;
            println!("ok (entry {})", ack.entry);
            Ok(ExitCode::SUCCESS)
        }
        VolumeCmd::Status { json, .. } => {
            let st = client.status().await?;
            if json {
                println!("{}", serde_json::to_string(&st).expect("serialises"));
            } else {
                print_status(&st);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn create(coord: &datom_common::Coord, name: &str, replicas: u32) -> anyhow::Result<ExitCode> {
    if coord.exists(paths::GROUPS).await?.is_none() {
        anyhow::bail!("{} does not exist: run `datom init` first", paths::GROUPS);
    }
    let path = paths::group(name);
    let record =
        GroupRecord { schema: 1, kind: "volume".into(), replicas, enrolled: Vec::new(), created_at: Utc::now() };
    match coord.create(&path, &record, Mode::Persistent).await {
        Ok(_) => {
            println!(
                "created volume {name:?} with {replicas} replicas; start one datom-volume-server --volume {name} per replica"
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(CoordError::NodeExists { .. }) => {
            let cur = coord
                .get::<GroupRecord>(&path)
                .await
                .with_context(|| format!("{path} exists but is not a group record"))?
                .map(|v| v.value);
            match cur {
                Some(g) if g.kind == "volume" && g.replicas == replicas => {
                    println!("volume {name:?} already exists with {replicas} replicas");
                    Ok(ExitCode::SUCCESS)
                }
                Some(g) => anyhow::bail!(
                    "group {name:?} already exists as a {} group with {} replicas; nothing was changed (pick another name)",
                    g.kind,
                    g.replicas
                ),
                None => anyhow::bail!("{path} vanished while creating it; retry"),
            }
        }
        Err(e) => Err(e.into()),
    }
}

fn print_status(st: &VolumeStatus) {
    let term = match &st.term {
        Some(t) => {
            let status = match t.status {
                TermStatus::Electing => "electing",
                TermStatus::Elected => "elected",
                TermStatus::Leading => "leading",
            };
            format!("term {} ({status}), leader {}", t.term, t.leader.as_deref().unwrap_or("-"))
        }
        None => "no election yet".into(),
    };
    println!("volume {}: {} replicas, quorum {}, {term}", st.volume, st.replicas, st.quorum);
    println!(
        "{:<16} {:<28} {:>5} {:>12} {:>8} {:>8} {:>6}  ACKING",
        "MEMBER", "STATE", "TERM", "LAST", "COMMIT", "APPLIED", "LAG"
    );
    for m in &st.members {
        match (&m.state, m.registered) {
            (Some(s), true) => println!(
                "{:<16} {:<28} {:>5} {:>12} {:>8} {:>8} {:>6}  {}",
                m.member,
                s.state.name(),
                s.term,
                s.last.to_string(),
                s.commit,
                s.applied,
                s.lag,
                if s.role == datom_pb::Role::Leader { if s.acking { "yes" } else { "no" } } else { "-" }
            ),
            _ => println!("{:<16} {:<28}", m.member, "(not running)"),
        }
    }
}
