//! `datom-volume-server`: flags, logging and signals; the server itself is the library's `run`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use datom_common::flags::{LogArgs, ZkArgs};
use datom_pb::Timings;
use datom_volume_server::failpoint::Failpoint;

/// Hosts replicas of replicated key/value volumes (primary-backup over ZooKeeper).
#[derive(Parser, Debug)]
#[command(name = "datom-volume-server", version, about)]
struct Cli {
    #[command(flatten)]
    zk: ZkArgs,
    #[command(flatten)]
    log: LogArgs,
    /// This server's member name in the volume groups; keep it stable across restarts.
    #[arg(long, env = "DATOM_MEMBER")]
    member: String,
    /// Directory for journals and dbs (one subdirectory per volume).
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Client API address.
    #[arg(long, default_value = "127.0.0.1:7600", value_name = "HOST:PORT")]
    listen: String,
    /// Replication address (default: the --listen host, any free port).
    #[arg(long, value_name = "HOST:PORT")]
    peer_listen: Option<String>,
    /// A volume to host (repeat for several). Create it first with `datom volume create`.
    #[arg(long = "volume", value_name = "NAME", required = true)]
    volumes: Vec<String>,
    /// Test failpoint NAME[:N], e.g. crash-before-apply.
    #[arg(long, env = "DATOM_FAILPOINT")]
    failpoint: Option<Failpoint>,
    /// How long an elected leader has to take charge, in ms.
    #[arg(long, default_value_t = 3000, value_name = "MS")]
    leader_appear_ms: u64,
    /// A replica silent for this long is not functional, in ms.
    #[arg(long, default_value_t = 750, value_name = "MS")]
    peer_timeout_ms: u64,
    /// Leader heartbeat interval, in ms.
    #[arg(long, default_value_t = 50, value_name = "MS")]
    heartbeat_ms: u64,
    /// Db checkpoint interval, in ms. A checkpoint is a full snapshot; between checkpoints the
    /// journal alone holds the newer entries, replayed on restart.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    checkpoint_ms: u64,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    cli.log.init("info,tarpc=error");
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let timings = Timings {
        leader_appear: Duration::from_millis(cli.leader_appear_ms),
        peer_timeout: Duration::from_millis(cli.peer_timeout_ms),
        heartbeat: Duration::from_millis(cli.heartbeat_ms),
        ..Timings::default()
    };
    let token = match cli.zk.auth() {
        Ok(a) => a.map(|a| datom_common::auth::TokenVerifier::new(&a)),
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let zk = match cli.zk.config() {
        Ok(z) => z,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let config = datom_volume_server::Config {
        zk,
        member: cli.member,
        data_dir: cli.data_dir,
        listen: cli.listen,
        peer_listen: cli.peer_listen,
        volumes: cli.volumes,
        failpoint: cli.failpoint,
        timings,
        checkpoint_interval: Duration::from_millis(cli.checkpoint_ms.max(10)),
        write_timeout: Duration::from_secs(5),
        token,
    };
    let res = rt.block_on(datom_volume_server::run(config, datom_common::flags::shutdown_signal()));
    rt.shutdown_timeout(Duration::from_millis(200));
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
