//! `datom up`: a local cluster in one command. Starts a managed ZooKeeper from the installed
//! jars (data under the state dir), runs init, prints the tree, and on Ctrl-C stops it cleanly.
//!
//! A second `datom up` against the same state dir finds the first one's `up.json`, says it is
//! running, and shows the tree instead of starting anything.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use datom_common::flags::ZkArgs;
use datom_common::init::{InitOutcome, init_tree};
use datom_common::{Coord, CoordConfig};
use datom_zk_harness::{ServerOptions, ZkServer};
use serde::{Deserialize, Serialize};

/// Flags of `datom up`.
#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// Where the local cluster keeps its state (ZooKeeper data, logs, node roots).
    #[arg(long, env = "DATOM_STATE_DIR", default_value = ".datom")]
    pub state_dir: PathBuf,
    /// Client port of the managed ZooKeeper (datom's default --zk points at 2181).
    #[arg(long, default_value_t = 2181)]
    pub zk_port: u16,
    /// Cluster name passed to init.
    #[arg(long, default_value = "local")]
    pub cluster: String,
}

/// Written to `<state-dir>/up.json` while `datom up` runs.
#[derive(Debug, Serialize, Deserialize)]
struct UpRecord {
    pid: u32,
    zk: String,
    started_at: chrono::DateTime<chrono::Utc>,
}

fn pid_alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

/// Runs `datom up`.
pub async fn run(_zk: &ZkArgs, args: UpArgs) -> anyhow::Result<ExitCode> {
    datom_common::names::validate(datom_common::names::NameKind::Cluster, &args.cluster)?;
    std::fs::create_dir_all(&args.state_dir).map_err(|e| {
        anyhow::anyhow!("cannot create state dir {}: {e}; choose another with --state-dir", args.state_dir.display())
    })?;
    let state_dir = args.state_dir.canonicalize()?;
    let marker = state_dir.join("up.json");
    if let Ok(text) = std::fs::read_to_string(&marker)
        && let Ok(rec) = serde_json::from_str::<UpRecord>(&text)
        && pid_alive(rec.pid)
    {
        println!(
            "datom up is already running (pid {}, ZooKeeper at {}, state in {}); current tree:",
            rec.pid,
            rec.zk,
            state_dir.display()
        );
        show_tree(&rec.zk).await?;
        return Ok(ExitCode::SUCCESS);
    }
    if std::net::TcpListener::bind(("127.0.0.1", args.zk_port)).is_err() {
        anyhow::bail!(
            "port {} is already in use on 127.0.0.1; stop whatever listens there or pick another with --zk-port",
            args.zk_port
        );
    }

    eprintln!(
        "starting ZooKeeper on 127.0.0.1:{} (data in {}) ...",
        args.zk_port,
        state_dir.join("zookeeper").display()
    );
    let opts = ServerOptions {
        tick_ms: 500,
        data_dir: Some(state_dir.join("zookeeper")),
        client_port: Some(args.zk_port),
        force_sync: true,
        heap_mb: 256,
    };
    let mut server = tokio::task::spawn_blocking(move || ZkServer::start(opts)).await??;
    let zk = server.connect_string();
    let rec = UpRecord { pid: std::process::id(), zk: zk.clone(), started_at: chrono::Utc::now() };
    datom_common::fsutil::write_atomic(&marker, &serde_json::to_vec_pretty(&rec)?)?;

    let result = async {
        let coord = Coord::connect(CoordConfig::new(zk.clone())).await?;
        match init_tree(&coord, &args.cluster).await? {
            InitOutcome::Created(r) => println!("initialized cluster {:?}", r.name),
            InitOutcome::AlreadyInitialized(r) => println!("cluster {:?} already initialized; reusing it", r.name),
        }
        coord.close().await;
        show_tree(&zk).await?;
        println!();
        println!("datom is up: ZooKeeper at {zk}. In another terminal: datom --zk {zk} tree");
        println!("Press Ctrl-C to stop.");
        anyhow::Ok(())
    }
    .await;
    if result.is_ok() {
        wait_for_shutdown().await;
        eprintln!("stopping ...");
    }
    tokio::task::spawn_blocking(move || server.stop()).await?;
    let _ = std::fs::remove_file(&marker);
    result?;
    eprintln!("stopped; state kept in {}", state_dir.display());
    Ok(ExitCode::SUCCESS)
}

async fn show_tree(zk: &str) -> anyhow::Result<()> {
    let coord = Coord::connect(CoordConfig::new(zk.to_string()).with_connect_timeout(Duration::from_secs(3))).await?;
    let nodes = coord.list_tree(datom_common::paths::ROOT).await;
    coord.close().await;
    crate::cmd::inspect::print_tree(datom_common::paths::ROOT, &nodes?);
    Ok(())
}

/// Waits for Ctrl-C (SIGINT) or SIGTERM.
pub async fn wait_for_shutdown() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
