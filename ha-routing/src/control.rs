//! Server control (seed 002, `ha_api -c start|stop|ping`): the event manager's small tarpc
//! service on loopback, and the client side that starts the `datom-ha` process detached,
//! pings it and stops it. The service's address is published in the manager's ephemeral
//! `/datom/ha/servers/<node>`, so `ha_api` finds it through ZooKeeper.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use datom_common::coord::{Coord, SessionState};
use datom_common::paths;
use serde::{Deserialize, Serialize};

use crate::db;
use crate::error::{HaError, HaResult};
use crate::record::HaServerRecord;

/// What `ping` reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HaStatus {
    /// The datom node served.
    pub node: String,
    /// Process id.
    pub pid: u32,
    /// datom version.
    pub version: String,
    /// When the process started.
    pub started_at: DateTime<Utc>,
    /// ZooKeeper session state.
    pub session: SessionState,
    /// Negotiated session timeout, ms.
    pub session_timeout_ms: u64,
    /// Whether the redundancy database has been read since start.
    pub synced: bool,
    /// Indices of the redundancy nodes this manager acts on.
    pub owned: Vec<u16>,
    /// Presence of every watched node (this node and its peers): true/false, or null while unknown.
    pub presence: BTreeMap<String, Option<bool>>,
    /// Events handled since start.
    pub events_handled: u64,
}

/// The event manager's control service.
#[tarpc::service]
pub trait HaControl {
    /// Liveness and what the manager knows.
    async fn ping() -> HaStatus;
    /// Graceful stop: in-flight events finish (bounded), the session closes, the ephemeral and
    /// any lock go at once. Replies before stopping.
    async fn stop();
}

/// Dials the control service at `addr`.
pub async fn dial(addr: &str, timeout: Duration) -> std::io::Result<HaControlClient> {
    let t = datom_common::rpc::dial(addr, timeout).await?;
    Ok(HaControlClient::new(tarpc::client::Config::default(), t).spawn())
}

/// The registered manager of `node` and its answer to ping.
pub async fn ping(coord: &Coord, node: &str, timeout: Duration) -> HaResult<(HaServerRecord, HaStatus)> {
    let Some(rec) = db::server_record(coord, node).await? else {
        return Err(HaError::NoEventManager { node: node.to_string(), path: paths::ha_server(node) });
    };
    let answer = async {
        let client = dial(&rec.address, timeout).await.map_err(|e| e.to_string())?;
        client.ping(datom_common::rpc::ctx(timeout)).await.map_err(|e| e.to_string())
    };
    match answer.await {
        Ok(s) => Ok((rec, s)),
        Err(e) => Err(HaError::Control(format!(
            "the event manager of node {node:?} is registered (pid {} on host {}, control address {}) but did not \
             answer ping: {e}. Run ha_api on that host; if the process is gone its registration disappears when its \
             ZooKeeper session expires",
            rec.pid, rec.host, rec.address
        ))),
    }
}

/// What `stop` found.
#[derive(Debug, Clone, PartialEq)]
pub enum StopOutcome {
    /// The manager stopped; its registration is gone.
    Stopped(HaServerRecord),
    /// No manager was registered for the node.
    NotRunning,
}

/// Stops the manager of `node` and waits (up to `timeout`) until its registration is gone.
pub async fn stop(coord: &Coord, node: &str, timeout: Duration) -> HaResult<StopOutcome> {
    let Some(rec) = db::server_record(coord, node).await? else { return Ok(StopOutcome::NotRunning) };
    let client = dial(&rec.address, Duration::from_secs(3)).await.map_err(|e| {
        HaError::Control(format!(
            "cannot reach the event manager of node {node:?} at {} (pid {} on host {}): {e}; run ha_api on that host",
            rec.address, rec.pid, rec.host
        ))
    })?;
    client
        .stop(datom_common::rpc::ctx(Duration::from_secs(3)))
        .await
        .map_err(|e| HaError::Control(format!("the event manager of node {node:?} did not accept stop: {e}")))?;
    let deadline = Instant::now() + timeout;
    loop {
        match coord.get::<HaServerRecord>(&paths::ha_server(node)).await? {
            Some(v) if v.value.pid == rec.pid => {}
            _ => return Ok(StopOutcome::Stopped(rec)),
        }
        if Instant::now() >= deadline {
            return Err(HaError::Control(format!(
                "the event manager of node {node:?} (pid {}) accepted stop but is still registered after {} ms",
                rec.pid,
                timeout.as_millis()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How to start a manager.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// The `datom-ha` binary.
    pub exe: PathBuf,
    /// The datom node.
    pub node: String,
    /// Flags passed through (`--zk`, `--session-timeout`, `--connect-timeout`, `--listen`).
    pub args: Vec<String>,
    /// Where the process's log (stderr) goes, appended.
    pub log_file: PathBuf,
    /// How long to wait for it to answer ping.
    pub timeout: Duration,
}

/// What `start` did.
#[derive(Debug, Clone, PartialEq)]
pub enum StartOutcome {
    /// A new process was started and answers ping.
    Started(HaServerRecord),
    /// One was already running and answers ping; nothing was started.
    AlreadyRunning(HaServerRecord),
}

/// Finds the `datom-ha` binary: `$DATOM_HA_BIN`, else next to the running executable, else on
/// `$PATH`.
pub fn find_binary() -> HaResult<PathBuf> {
    if let Some(p) = std::env::var_os("DATOM_HA_BIN") {
        return Ok(PathBuf::from(p));
    }
    if let Ok(me) = std::env::current_exe()
        && let Some(dir) = me.parent()
    {
        let p = dir.join("datom-ha");
        if p.is_file() {
            return Ok(p);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("datom-ha");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(HaError::Control(
        "cannot find the datom-ha binary next to datom or on PATH; install it, or point DATOM_HA_BIN at it".into(),
    ))
}

fn log_tail(path: &Path) -> String {
    let data = std::fs::read(path).unwrap_or_default();
    crate::driver::tail(&data, 800)
}

/// Starts the manager of `opts.node` as a detached process (own process group, stdin closed,
/// stderr appended to the log file) unless one already answers, then waits until the new one
/// is registered and answers ping.
pub async fn start(coord: &Coord, opts: &StartOptions) -> HaResult<StartOutcome> {
    if db::server_record(coord, &opts.node).await?.is_some() {
        match ping(coord, &opts.node, Duration::from_secs(3)).await {
            Ok((rec, _)) => return Ok(StartOutcome::AlreadyRunning(rec)),
            Err(HaError::NoEventManager { .. }) => {}
            // Registered but silent: a crashed manager whose session has not expired yet. The
            // new process waits for that registration to go (register_ephemeral).
            Err(e) => tracing::warn!(error = %e, "a stale registration is in the way; starting anyway"),
        }
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&opts.log_file)
        .map_err(|e| HaError::Control(format!("cannot open log file {}: {e}", opts.log_file.display())))?;
    let mut cmd = std::process::Command::new(&opts.exe);
    cmd.arg("run").arg("--node").arg(&opts.node).args(&opts.args);
    // The daemon logs at info unless DATOM_HA_LOG says otherwise; RUST_LOG set for the
    // command itself (often `warn`) is not meant for it.
    cmd.env("RUST_LOG", std::env::var("DATOM_HA_LOG").unwrap_or_else(|_| "info".into())).env("NO_COLOR", "1");
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::from(log));
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().map_err(|e| HaError::Control(format!("cannot start {}: {e}", opts.exe.display())))?;
    let pid = child.id();
    // Watch for an early exit while waiting; once we return, the detached child outlives us.
    let deadline = Instant::now() + opts.timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(HaError::Control(format!(
                "the event manager exited at start ({status}); its log ({}) ends with:\n{}",
                opts.log_file.display(),
                log_tail(&opts.log_file)
            )));
        }
        if let Some(rec) = db::server_record(coord, &opts.node).await?
            && rec.pid == pid
            && ping(coord, &opts.node, Duration::from_secs(2)).await.is_ok()
        {
            return Ok(StartOutcome::Started(rec));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(HaError::Control(format!(
                "the event manager (pid {pid}) did not answer within {} ms and was killed; its log ({}) ends \
                 with:\n{}",
                opts.timeout.as_millis(),
                opts.log_file.display(),
                log_tail(&opts.log_file)
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
