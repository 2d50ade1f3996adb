//! Scenario `pb-failover`: time from a leader's SIGKILL (or graceful stop) to a new leader in
//! LEADER_FUNCTIONAL, over real `datom-volume-server` processes; beside it, from the same run,
//! the physical limit: how long a watcher takes to see the ephemeral znode of a SIGKILLed plain
//! ZooKeeper client (same session timeout) vanish.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::pbgroup::{Group, zk as resolve_zk};
use crate::routefailover::raw_kill;
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

/// Runs the scenario.
pub async fn run(args: Args) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(args.trials >= 1, "--trials must be at least 1");
    let zk = resolve_zk(&args.target.zk, args.target.local, "bench-pb-failover").await?;
    let mut group = Group::start(&zk.connect, 3, args.session_timeout).await?;
    let long = Duration::from_secs(60);
    let session_timeout_ms = group.coord.negotiated_timeout().as_millis() as u64;
    let bench = std::env::current_exe()?;
    let mut raw_session_ms = 0;
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
        group.kill(&leader);
        let t = Instant::now();
        group.wait_functional(term, 0, long).await?;
        kill.push(t.elapsed());
        group.restart(&leader)?;
        let raw_trial = raw_kill(&bench, args.session_timeout, &zk.connect, i, phase(i), &mut raw_session_ms);
        raw.push(raw_trial.await?);
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
