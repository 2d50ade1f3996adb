//! Scenario `pb-failover`: time from a leader's SIGKILL (or graceful stop) to a new leader in
//! LEADER_FUNCTIONAL, over real `datom-volume-server` processes; beside it, from the same run,
//! the physical limit: how long a watcher takes to see the ephemeral znode of a SIGKILLed plain
//! ZooKeeper client (same session timeout) vanish.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use zookeeper_client as zk;

use crate::pbgroup::{Group, zk as resolve_zk};
use crate::stats::percentile_ms;

/// Flags of `pb-failover`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where to run: `--zk ADDR` or `--local`.
    #[command(flatten)]
    pub target: crate::target::Target,
    /// Trials of each kind (SIGKILL, graceful, raw ephemeral).
    #[arg(long, default_value_t = 10)]
    pub trials: usize,
    /// Requested session timeout of every ZooKeeper client in the run, in ms.
    #[arg(long, default_value_t = 1500)]
    pub session_timeout: u64,
}

/// Figures of `pb-failover`.
#[derive(Debug, Serialize)]
pub struct Failover {
    /// SIGKILL → new leader functional, p50 (ms).
    pub kill_p50_ms: f64,
    /// SIGKILL → new leader functional, p99 (ms).
    pub kill_p99_ms: f64,
    /// SIGTERM → new leader functional, p50 (ms).
    pub graceful_p50_ms: f64,
    /// SIGTERM → new leader functional, p99 (ms).
    pub graceful_p99_ms: f64,
    /// Negotiated session timeout (ms).
    pub session_timeout_ms: u64,
    /// SIGKILL of a plain client → watcher sees its ephemeral go, p50 (ms).
    pub raw_ephemeral_kill_p50_ms: f64,
    /// Same, p99 (ms): the physical limit for `kill_p99_ms`.
    pub raw_ephemeral_kill_p99_ms: f64,
    /// Trials of each kind.
    pub trials: usize,
    /// Every graceful sample (ms), in order.
    pub graceful_samples_ms: Vec<f64>,
    /// Every SIGKILL sample (ms), in order.
    pub kill_samples_ms: Vec<f64>,
    /// Goal: kill_p99_ms ≤ raw_ephemeral_kill_p99_ms + 100.
    pub goal_kill_met: bool,
    /// Goal: graceful_p99_ms ≤ 25.
    pub goal_graceful_met: bool,
}

/// Flags of the hidden `zk-ephemeral-holder` helper.
#[derive(clap::Args, Debug)]
pub struct HolderArgs {
    /// ZooKeeper connect string.
    #[arg(long)]
    pub zk: String,
    /// Ephemeral znode to create.
    #[arg(long)]
    pub path: String,
    /// Session timeout in ms.
    #[arg(long)]
    pub session_timeout: u64,
}

/// A plain ZooKeeper client: creates an ephemeral, says `ready`, and waits to be killed.
pub async fn hold(args: HolderArgs) -> anyhow::Result<serde_json::Value> {
    let client = zk::Client::connector()
        .with_session_timeout(Duration::from_millis(args.session_timeout))
        .with_fail_eagerly()
        .connect(&args.zk)
        .await?;
    let mode = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
    client.create(&args.path, b"{}", &mode).await?;
    println!("ready");
    use std::io::Write;
    std::io::stdout().flush()?;
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

async fn raw_trial(
    connect: &str,
    watcher: &zk::Client,
    session_ms: u64,
    i: usize,
    delay: Duration,
) -> anyhow::Result<Duration> {
    let path = format!("/raw-ephemeral-{i}");
    let mut child = Command::new(std::env::current_exe()?)
        .args(["zk-ephemeral-holder", "--zk", connect, "--path", &path, "--session-timeout", &session_ms.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("start the ephemeral holder")?;
    let stdout = child.stdout.take().context("piped")?;
    let line = tokio::task::spawn_blocking(move || {
        let mut l = String::new();
        BufReader::new(stdout).read_line(&mut l).map(|_| l)
    })
    .await??;
    anyhow::ensure!(line.trim() == "ready", "the ephemeral holder failed to start");
    let (_, w) = watcher.check_and_watch_stat(&path).await?;
    tokio::time::sleep(delay).await;
    let t = Instant::now();
    child.kill()?;
    let ev = tokio::time::timeout(Duration::from_secs(30), w.changed()).await.context("ephemeral never vanished")?;
    let took = t.elapsed();
    anyhow::ensure!(ev.event_type == zk::EventType::NodeDeleted, "unexpected event {:?}", ev.event_type);
    let _ = child.wait();
    Ok(took)
}

/// Runs the scenario.
pub async fn run(args: Args) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(args.trials >= 1, "--trials must be at least 1");
    let zk = resolve_zk(&args.target.zk, args.target.local, "bench-pb-failover").await?;
    let mut group = Group::start(&zk.connect, 3, args.session_timeout).await?;
    let long = Duration::from_secs(60);
    let session_timeout_ms = group.coord.negotiated_timeout().as_millis() as u64;
    let watcher = zk::Client::connector().with_fail_eagerly().connect(&zk.connect).await?;
    // ZooKeeper expires a session at its last activity + timeout, rounded up to a tick: where
    // the kill falls relative to the victim's last ping moves the result by up to a tick. So
    // SIGKILL trials and raw trials alternate, and each waits the same spread of delays first
    // (0..timeout/3, the ping interval), giving both the same distribution of phases.
    let phase = |i: usize| Duration::from_millis((i as u64 * 61) % (session_timeout_ms / 3).max(1));
    let mut kill = Vec::new();
    let mut raw = Vec::new();
    for i in 0..args.trials {
        let (leader, term) = group.wait_functional(0, 2, long).await?;
        tokio::time::sleep(phase(i)).await;
        let t = Instant::now();
        group.kill(&leader);
        group.wait_functional(term, 0, long).await?;
        kill.push(t.elapsed());
        group.restart(&leader)?;
        raw.push(raw_trial(&zk.connect, &watcher, args.session_timeout, i, phase(i)).await?);
    }
    let mut graceful = Vec::new();
    for _ in 0..args.trials {
        let (leader, term) = group.wait_functional(0, 2, long).await?;
        let t = Instant::now();
        let at = chrono::Utc::now();
        group.signal_stop(&leader);
        group.wait_functional(term, 0, long).await?;
        graceful.push(t.elapsed());
        if std::env::var_os("DATOM_BENCH_TRACE").is_some() {
            eprintln!("TRACE sigterm {at:?} seen {:?} took {:?}", chrono::Utc::now(), t.elapsed());
        }
        group.restart(&leader)?;
    }
    drop(group);
    let raw_p99 = percentile_ms(&mut raw, 99.0);
    let ms = |v: &[Duration]| v.iter().map(|d| (d.as_secs_f64() * 1e4).round() / 10.0).collect::<Vec<f64>>();
    let (graceful_samples_ms, kill_samples_ms) = (ms(&graceful), ms(&kill));
    let f = Failover {
        kill_p50_ms: percentile_ms(&mut kill, 50.0),
        kill_p99_ms: percentile_ms(&mut kill, 99.0),
        graceful_p50_ms: percentile_ms(&mut graceful, 50.0),
        graceful_p99_ms: percentile_ms(&mut graceful, 99.0),
        session_timeout_ms,
        raw_ephemeral_kill_p50_ms: percentile_ms(&mut raw, 50.0),
        raw_ephemeral_kill_p99_ms: raw_p99,
        trials: args.trials,
        graceful_samples_ms,
        kill_samples_ms,
        goal_kill_met: percentile_ms(&mut kill, 99.0) <= raw_p99 + 100.0,
        goal_graceful_met: percentile_ms(&mut graceful, 99.0) <= 25.0,
    };
    Ok(serde_json::json!({ "scenario": "pb-failover", "figures": f }))
}
