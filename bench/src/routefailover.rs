//! Scenario `route-failover` (issue 9): time from SIGKILL of the primary router's presence to
//! the route pointing at the secondary, with the `file` driver, next to the raw ZooKeeper figure
//! measured in the same run: time for a watcher to see the ephemeral of a SIGKILLed plain
//! ZooKeeper client vanish, with the same session timeout.
//!
//! Per trial: start the primary's presence (`datom-ha stand-in-agent`, a process with its own
//! session — node agents do not exist yet), wait until the primary's event manager has reverted
//! the route to itself and the secondary's manager sees the primary present, SIGKILL the
//! presence, then poll the route file (every 2 ms) until it names the secondary. The raw trial
//! runs a plain client process (`datom-bench hold-ephemeral`), SIGKILLs it and waits for the
//! watch event.
//!
//! Set `DATOM_BENCH_KEEP=1` to keep the temporary directory with the managers' logs.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use datom_common::Coord;
use datom_common::coord::CoordConfig;
use datom_ha_routing::control;
use datom_ha_routing::driver::file::FileDriver;
use datom_ha_routing::params::NodeParams;
use datom_ha_routing::record::{DriverKind, RouterMode};
use serde::Serialize;
use zookeeper_client as zk;

use crate::stats::percentile_ms;

/// Flags of `route-failover`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where to run: `--zk ADDR` or `--local`.
    #[command(flatten)]
    pub target: crate::target::Target,
    /// tickTime of the --local server, ms (sessions are clamped to 2..20 ticks).
    #[arg(long, default_value_t = 200)]
    pub tick_ms: u32,
    /// Failovers to measure (and as many raw ephemeral kills).
    #[arg(long, default_value_t = 20)]
    pub trials: usize,
    /// Requested session timeout of the killed processes, ms.
    #[arg(long, default_value_t = 2000)]
    pub session_timeout: u64,
}

/// Flags of the hidden `hold-ephemeral` helper.
#[derive(clap::Args, Debug)]
pub struct HoldArgs {
    /// ZooKeeper connect string.
    #[arg(long)]
    pub zk: String,
    /// Ephemeral to create.
    #[arg(long)]
    pub path: String,
    /// Requested session timeout, ms.
    #[arg(long)]
    pub session_timeout: u64,
}

/// Figures of `route-failover`.
#[derive(Debug, Serialize)]
pub struct Figures {
    /// SIGKILL of the primary's presence → route file names the secondary, p50 (ms).
    pub p50_ms: f64,
    /// Same, p99 (ms).
    pub p99_ms: f64,
    /// Same, worst (ms).
    pub max_ms: f64,
    /// Negotiated session timeout of the killed presence process (ms).
    pub session_timeout_ms: u64,
    /// SIGKILL of a plain client → watcher sees its ephemeral deleted, p50 (ms).
    pub raw_ephemeral_kill_p50_ms: f64,
    /// Same, p99 (ms).
    pub raw_ephemeral_kill_p99_ms: f64,
    /// Negotiated session timeout of the raw client (ms).
    pub raw_session_timeout_ms: u64,
    /// p99 − raw p99: what datom adds on top of ZooKeeper's own detection (ms).
    pub overhead_p99_ms: f64,
    /// The goal: p99 ≤ raw p99 + 1000 ms.
    pub goal_met: bool,
    /// Trials run.
    pub trials: usize,
    /// Route-table driver.
    pub driver: &'static str,
}

/// A child process SIGKILLed on drop.
pub(crate) struct Proc(pub(crate) Child);
impl Proc {
    pub(crate) fn sigkill(&mut self) {
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.0.id() as i32), nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}
impl Drop for Proc {
    fn drop(&mut self) {
        self.sigkill();
    }
}

/// Spawns `cmd` with stdout piped and returns it with the first stdout line, parsed as JSON.
pub(crate) fn spawn_ready(mut cmd: Command) -> anyhow::Result<(Proc, serde_json::Value)> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().context("spawn helper")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    let p = Proc(child);
    let v: serde_json::Value =
        serde_json::from_str(&line).with_context(|| format!("helper did not report ready: {line:?}"))?;
    Ok((p, v))
}

const TABLE: &str = "rt-bench";
const ROUTE: &str = "10.99.0.0/16";
const HOP1: &str = "10.0.0.1";
const HOP2: &str = "10.0.0.2";

fn route_hop(d: &FileDriver) -> Option<String> {
    d.load().ok()?.tables.get(TABLE)?.get(ROUTE).map(|r| r.next_hop.clone())
}

async fn wait_until(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    while !f().await {
        if start.elapsed() > timeout {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Runs the scenario.
pub async fn run(args: Args) -> anyhow::Result<serde_json::Value> {
    let (addr, _server) = crate::target::resolve(&args.target.zk, args.target.local, args.tick_ms).await?;
    anyhow::ensure!(args.trials > 0, "--trials must be at least 1");
    let conn = datom_zk_harness::unique_chroot(&addr, "datom-bench-route-failover").await;
    let coord = Coord::connect(CoordConfig::new(conn.clone())).await?;
    let res = measure(&args, &conn, &coord).await;
    let _ = coord.delete_recursive(datom_common::paths::ROOT).await;
    coord.close().await;
    // Remove the chroot itself.
    if let (Some(chroot), Ok(c)) = (conn.strip_prefix(&addr), zk::Client::connect(&addr).await) {
        let _ = c.delete(chroot, None).await;
    }
    let figures = res?;
    Ok(serde_json::json!({ "scenario": "route-failover", "zk": addr, "figures": figures }))
}

async fn measure(args: &Args, conn: &str, coord: &Coord) -> anyhow::Result<Figures> {
    datom_common::init::init_tree(coord, "bench").await?;
    let dir = tempfile::tempdir()?;
    let routes = dir.path().join("routes.json");
    for (i, node, peer, mode, hop) in
        [(1, "r1", "r2", RouterMode::Primary, HOP1), (2, "r2", "r1", RouterMode::Secondary, HOP2)]
    {
        let p = NodeParams {
            node: Some(node.into()),
            peer: Some(peer.into()),
            mode: Some(mode),
            next_hop: Some(hop.into()),
            route_table: Some(TABLE.into()),
            route: Some(ROUTE.into()),
            driver: Some(DriverKind::File),
            path: Some(routes.display().to_string()),
            ..Default::default()
        };
        datom_ha_routing::db::create_node(coord, i, &p).await?;
    }
    let exe = control::find_binary()?;
    let session = args.session_timeout.to_string();
    let ha = |sub: &[&str]| {
        let mut c = Command::new(&exe);
        c.args(["--zk", conn, "--session-timeout", &session]).args(sub).env("RUST_LOG", "info").env("NO_COLOR", "1");
        c
    };
    // Both routers present before the managers start, so the start-up is quiet: the primary
    // reverts the route to itself, the secondary sees its peer and does nothing.
    let mut r1 = Some(spawn_ready(ha(&["stand-in-agent", "--node", "r1"]))?);
    let (_r2, _) = spawn_ready(ha(&["stand-in-agent", "--node", "r2"]))?;
    let mut managers = Vec::new();
    for node in ["r1", "r2"] {
        let log = std::fs::File::create(dir.path().join(format!("{node}.log")))?;
        let mut c = ha(&["run", "--node", node]);
        c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        managers.push(Proc(c.spawn().context("start datom-ha run")?));
        wait_until(&format!("{node}'s event manager"), Duration::from_secs(20), async || {
            control::ping(coord, node, Duration::from_secs(1)).await.is_ok()
        })
        .await?;
    }
    let bench = std::env::current_exe()?;
    let driver = FileDriver { path: routes.clone() };
    let mut failover = Vec::new();
    let mut raw = Vec::new();
    let mut session_timeout_ms = 0;
    let mut raw_session_timeout_ms = 0;
    for trial in 0..args.trials {
        // The primary comes up and takes the route; the secondary sees it.
        let (mut r1, ready) = match r1.take() {
            Some(first) => first,
            None => spawn_ready(ha(&["stand-in-agent", "--node", "r1"]))?,
        };
        session_timeout_ms = ready["session_timeout_ms"].as_u64().unwrap_or(0);
        wait_until("the primary to take the route", Duration::from_secs(30), async || {
            route_hop(&driver).as_deref() == Some(HOP1)
        })
        .await?;
        wait_until("the secondary to see the primary", Duration::from_secs(30), async || {
            control::ping(coord, "r2", Duration::from_secs(1))
                .await
                .is_ok_and(|(_, s)| s.presence.get("r1") == Some(&Some(true)))
        })
        .await?;
        r1.sigkill();
        let t = Instant::now();
        let bound = Duration::from_millis(session_timeout_ms * 3) + Duration::from_secs(10);
        while route_hop(&driver).as_deref() != Some(HOP2) {
            anyhow::ensure!(
                t.elapsed() < bound,
                "trial {trial}: the secondary did not take the route within {bound:?}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        failover.push(t.elapsed());

        // Raw ZooKeeper: the same kill, with a plain client and no datom code.
        raw.push(
            raw_kill(&bench, args.session_timeout, conn, trial, Duration::ZERO, &mut raw_session_timeout_ms).await?,
        );
    }
    drop(managers);
    if std::env::var_os("DATOM_BENCH_KEEP").is_some() {
        eprintln!("kept {}", dir.keep().display());
    }
    let mut f = failover.clone();
    let mut r = raw.clone();
    let p99 = percentile_ms(&mut f, 99.0);
    let raw_p99 = percentile_ms(&mut r, 99.0);
    Ok(Figures {
        p50_ms: percentile_ms(&mut f, 50.0),
        p99_ms: p99,
        max_ms: percentile_ms(&mut f, 100.0),
        session_timeout_ms,
        raw_ephemeral_kill_p50_ms: percentile_ms(&mut r, 50.0),
        raw_ephemeral_kill_p99_ms: raw_p99,
        raw_session_timeout_ms,
        overhead_p99_ms: ((p99 - raw_p99) * 1000.0).round() / 1000.0,
        goal_met: p99 <= raw_p99 + 1000.0,
        trials: args.trials,
        driver: "file",
    })
}

/// The physical limit beside a failover figure: a plain client (`datom-bench hold-ephemeral`)
/// holding `/raw-<trial>` is SIGKILLed `delay` after a watcher is set on it; returns the time
/// until the watcher sees the ephemeral deleted, and stores the negotiated session timeout.
pub(crate) async fn raw_kill(
    bench: &Path,
    session: u64,
    conn: &str,
    trial: usize,
    delay: Duration,
    negotiated: &mut u64,
) -> anyhow::Result<Duration> {
    let path = format!("/raw-{trial}");
    let mut c = Command::new(bench);
    c.args(["hold-ephemeral", "--zk", conn, "--path", &path, "--session-timeout", &session.to_string()]);
    let (mut holder, ready) = spawn_ready(c)?;
    *negotiated = ready["session_timeout_ms"].as_u64().unwrap_or(0);
    let watcher_client = zk::Client::connect(conn).await.context("connect the raw watcher")?;
    let (stat, watcher) = watcher_client.check_and_watch_stat(&path).await?;
    anyhow::ensure!(stat.is_some(), "the raw holder's ephemeral {path} is missing");
    tokio::time::sleep(delay).await;
    holder.sigkill();
    let t = Instant::now();
    let ev = tokio::time::timeout(Duration::from_secs(60), watcher.changed()).await.context("raw watch event")?;
    anyhow::ensure!(ev.event_type == zk::EventType::NodeDeleted, "unexpected raw event {ev:?}");
    Ok(t.elapsed())
}

/// The hidden `hold-ephemeral` helper: a plain ZooKeeper client that creates an ephemeral,
/// prints `{"ready":true,"session_timeout_ms":N}` and waits to be killed.
pub async fn hold(args: HoldArgs) -> anyhow::Result<serde_json::Value> {
    let client = zk::Client::connector()
        .with_session_timeout(Duration::from_millis(args.session_timeout))
        .with_fail_eagerly()
        .connect(&args.zk)
        .await?;
    let opts = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
    client.create(&args.path, b"{\"schema\":1}", &opts).await?;
    println!(
        "{}",
        serde_json::json!({ "ready": true, "session_timeout_ms": client.session_timeout().as_millis() as u64 })
    );
    // Held until SIGKILL: that is the measurement.
    std::future::pending().await
}
