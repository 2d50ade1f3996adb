//! `datom up`: a local cluster in one command. Starts a managed ZooKeeper from the installed
//! jars (data under the state dir), runs init, starts a config service with the dashboard and
//! `--nodes N` node agents (each with its own root under the state dir, registered the way
//! `datom addnode` does it), prints the dashboard URL and the status, and on Ctrl-C stops
//! everything in order: agents, config service, ZooKeeper.
//!
//! No process outlives it. Each daemon runs under a small shell watchdog in its own process
//! group whose stdin is a pipe held by `datom up`: when `datom up` exits for any reason, even
//! SIGKILL, the kernel closes the pipe and the watchdog stops the daemon (SIGTERM, then SIGKILL
//! after 5 s). ZooKeeper runs under the harness's watchdog, which works the same way.
//!
//! A second `datom up` against the same state dir finds the first one's `up.json`, says it is
//! running, and shows the status instead of starting anything.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use datom_common::flags::{LogArgs, LogFormat, ZkArgs};
use datom_common::init::{InitOutcome, init_tree};
use datom_common::records::{ConfigServiceInstance, LiveRecord};
use datom_common::rpc::AddNodeRequest;
use datom_common::{Coord, CoordConfig, paths};
use datom_zk_harness::{ServerOptions, ZkServer};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::cmd::status::ColorChoice;

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
    /// Number of node agents to start (n1, n2, ...), each with its own root under the state dir.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=32))]
    pub nodes: u32,
    /// Address of the dashboard, JSON API and /metrics served by the config service (port 0
    /// picks a free one).
    #[arg(long, default_value = "127.0.0.1:7480", value_name = "ADDR")]
    pub http: SocketAddr,
    /// Colour the status: auto (on a terminal, unless NO_COLOR is set), always, never.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
    /// Logging flags, passed on to every daemon.
    #[command(flatten)]
    pub log: LogArgs,
}

/// A daemon started by `datom up`, as recorded in `up.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonRecord {
    /// What it is (`config-service`, `n1`, ...).
    pub name: String,
    /// Its process id.
    pub pid: u32,
    /// Its log file.
    pub log: PathBuf,
}

/// Written to `<state-dir>/up.json` while `datom up` runs.
#[derive(Debug, Serialize, Deserialize)]
pub struct UpRecord {
    /// Process id of `datom up`.
    pub pid: u32,
    /// ZooKeeper connect string.
    pub zk: String,
    /// When it started.
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// Dashboard URL, once the config service serves it.
    #[serde(default)]
    pub dashboard: Option<String>,
    /// The daemons it runs.
    #[serde(default)]
    pub daemons: Vec<DaemonRecord>,
}

fn pid_alive(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok()
}

/// Whether `pid` is running (not gone, not a zombie waiting to be reaped).
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(s) => s.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|st| st != "Z"),
        Err(_) => false,
    }
}

/// The watchdog: runs the daemon in the background, prints its pid, and when its stdin
/// reaches EOF (`datom up` closed it or died) stops the daemon: SIGTERM, SIGKILL after 5 s.
const WATCHDOG: &str = r#"trap '' INT TERM HUP
log="$1"; shift
( trap - TERM HUP; exec "$@" ) </dev/null >>"$log" 2>&1 &
c=$!
echo $c
cat >/dev/null
kill -TERM $c 2>/dev/null
i=0
while [ $i -lt 50 ] && [ -e /proc/$c ] && ! grep -qs '^State:[[:space:]]*Z' /proc/$c/status; do
  sleep 0.1; i=$((i+1))
done
kill -KILL $c 2>/dev/null
wait $c 2>/dev/null
exit 0
"#;

/// A daemon under its watchdog.
struct Daemon {
    name: String,
    pid: u32,
    log: PathBuf,
    wrapper: Child,
    stdin: Option<ChildStdin>,
}

impl Daemon {
    fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> anyhow::Result<Daemon> {
        use std::os::unix::process::CommandExt as _;
        let mut wrapper = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("datom-watchdog")
            .arg(log)
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // Its own process group: Ctrl-C reaches `datom up`, which stops daemons in order.
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let mut line = String::new();
        BufReader::new(wrapper.stdout.take().expect("piped")).read_line(&mut line)?;
        let pid: u32 = line.trim().parse().with_context(|| format!("watchdog for {name} printed {line:?}"))?;
        let stdin = wrapper.stdin.take();
        Ok(Daemon { name: name.to_string(), pid, log: log.to_path_buf(), wrapper, stdin })
    }

    fn record(&self) -> DaemonRecord {
        DaemonRecord { name: self.name.clone(), pid: self.pid, log: self.log.clone() }
    }

    fn running(&self) -> bool {
        running(self.pid)
    }

    /// The last lines of its log, for errors.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(6).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n  ")
    }

    /// Fails if the daemon has exited.
    fn check(&self) -> anyhow::Result<()> {
        if self.running() {
            Ok(())
        } else {
            bail!("{} exited; the end of its log ({}):\n  {}", self.name, self.log.display(), self.log_tail())
        }
    }

    /// SIGTERM now.
    fn terminate(&self) {
        if self.running() {
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        }
    }

    /// Closes the watchdog's pipe (it SIGKILLs what is left after its grace) and reaps it.
    fn finish(mut self) {
        drop(self.stdin.take());
        let _ = self.wrapper.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.stdin.take().is_some() {
            let _ = self.wrapper.wait();
        }
    }
}

/// Stops daemons gracefully and together: SIGTERM to all, wait up to `grace`, then let the
/// watchdogs finish them.
async fn stop_daemons(daemons: Vec<Daemon>, grace: Duration) {
    if daemons.is_empty() {
        return;
    }
    for d in &daemons {
        d.terminate();
    }
    let deadline = Instant::now() + grace;
    while daemons.iter().any(Daemon::running) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = tokio::task::spawn_blocking(move || daemons.into_iter().for_each(Daemon::finish)).await;
}

/// The binaries `datom up` starts live next to the `datom` executable.
fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the datom executable")?;
    let p = exe.parent().map(|d| d.join(name)).unwrap_or_else(|| PathBuf::from(name));
    if !p.exists() {
        bail!("{} is missing: build every binary with `cargo build --workspace --bins`", p.display());
    }
    Ok(p)
}

/// SIGINT or SIGTERM, listened for from creation on (so Ctrl-C during start-up is seen).
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals { int: signal(SignalKind::interrupt())?, term: signal(SignalKind::terminate())? })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

/// What is running.
struct Cluster {
    zk: String,
    state_dir: PathBuf,
    config_service: Vec<Daemon>,
    agents: Vec<Daemon>,
    dashboard: Option<String>,
}

impl Cluster {
    fn record(&self) -> UpRecord {
        UpRecord {
            pid: std::process::id(),
            zk: self.zk.clone(),
            started_at: chrono::Utc::now(),
            dashboard: self.dashboard.clone(),
            daemons: self.config_service.iter().chain(&self.agents).map(Daemon::record).collect(),
        }
    }

    fn check(&self) -> anyhow::Result<()> {
        self.config_service.iter().chain(&self.agents).try_for_each(Daemon::check)
    }
}

/// Runs `datom up`.
pub async fn run(zk_args: &ZkArgs, args: UpArgs) -> anyhow::Result<ExitCode> {
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
            "datom up is already running (pid {}, ZooKeeper at {}, state in {}).",
            rec.pid,
            rec.zk,
            state_dir.display()
        );
        if let Some(d) = &rec.dashboard {
            println!("dashboard: {d}");
        }
        println!();
        show_status(&rec.zk, args.color).await?;
        return Ok(ExitCode::SUCCESS);
    }
    if std::net::TcpListener::bind(("127.0.0.1", args.zk_port)).is_err() {
        bail!(
            "port {} is already in use on 127.0.0.1; stop whatever listens there or pick another with --zk-port",
            args.zk_port
        );
    }
    if args.http.port() != 0 && std::net::TcpListener::bind(args.http).is_err() {
        bail!("{} is already in use; stop whatever listens there or pick another with --http", args.http);
    }
    let config_service_bin = sibling("datom-config-service")?;
    let agent_bin = sibling("datom-node-agent")?;
    let mut signals = Signals::install()?;

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
    let mut cluster = Cluster {
        zk: zk.clone(),
        state_dir: state_dir.clone(),
        config_service: vec![],
        agents: vec![],
        dashboard: None,
    };
    datom_common::fsutil::write_atomic(&marker, &serde_json::to_vec_pretty(&cluster.record())?)?;

    let started = tokio::select! {
        r = bring_up(&mut cluster, zk_args, &args, &config_service_bin, &agent_bin) => Some(r),
        _ = signals.recv() => None,
    };
    let result = match started {
        Some(Ok(())) => {
            datom_common::fsutil::write_atomic(&marker, &serde_json::to_vec_pretty(&cluster.record())?)?;
            show_status(&zk, args.color).await?;
            println!();
            println!("datom is up: ZooKeeper at {zk}, {} node agent(s).", cluster.agents.len());
            if let Some(d) = &cluster.dashboard {
                println!("dashboard: {d}");
            }
            println!("In another terminal: datom --zk {zk} status --watch");
            println!("Logs: {}", state_dir.join("logs").display());
            println!("Press Ctrl-C to stop.");
            signals.recv().await;
            Ok(())
        }
        Some(Err(e)) => Err(e),
        None => Ok(()),
    };
    eprintln!("stopping ...");
    stop_daemons(std::mem::take(&mut cluster.agents), Duration::from_secs(5)).await;
    stop_daemons(std::mem::take(&mut cluster.config_service), Duration::from_secs(5)).await;
    tokio::task::spawn_blocking(move || server.stop()).await?;
    let _ = std::fs::remove_file(&marker);
    result?;
    eprintln!("stopped; state kept in {}", state_dir.display());
    Ok(ExitCode::SUCCESS)
}

fn log_format_flag(f: LogFormat) -> &'static str {
    match f {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    }
}

/// Waits for `what` (checked every 50 ms against ZooKeeper) while the daemons keep running.
async fn wait_until<T, F, Fut>(cluster: &Cluster, what: &str, timeout: Duration, mut cond: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond().await {
            return Ok(v);
        }
        cluster.check()?;
        if Instant::now() > deadline {
            bail!("{what} did not happen within {timeout:?}; logs are in {}", cluster.state_dir.join("logs").display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Init, config service, node registration and agents, demo service.
async fn bring_up(
    cluster: &mut Cluster,
    zk_args: &ZkArgs,
    args: &UpArgs,
    config_service_bin: &Path,
    agent_bin: &Path,
) -> anyhow::Result<()> {
    let zk = cluster.zk.clone();
    // With --auth-file the demo cluster is secure too: the same credentials for every process.
    let mut config = zk_args.config()?;
    config.connect = zk.clone();
    let coord = Coord::connect(config).await?;
    let res = bring_up_with(cluster, &coord, zk_args, args, config_service_bin, agent_bin).await;
    coord.close().await;
    res
}

async fn bring_up_with(
    cluster: &mut Cluster,
    coord: &Coord,
    zk_args: &ZkArgs,
    args: &UpArgs,
    config_service_bin: &Path,
    agent_bin: &Path,
) -> anyhow::Result<()> {
    match init_tree(coord, &args.cluster).await? {
        InitOutcome::Created(r) => eprintln!("initialized cluster {:?}", r.name),
        InitOutcome::AlreadyInitialized(r) => eprintln!("cluster {:?} already initialized; reusing it", r.name),
    }
    let logs = cluster.state_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let common = vec![
        "--zk".to_string(),
        cluster.zk.clone(),
        "--session-timeout".to_string(),
        zk_args.session_timeout.to_string(),
        "--log-format".to_string(),
        log_format_flag(args.log.log_format).to_string(),
    ];
    let mut common = common;
    if let Some(p) = &zk_args.auth_file {
        common.push(format!("--auth-file={}", p.display()));
    }

    eprintln!("starting the config service (dashboard on {}) ...", args.http);
    let mut cs_args = common.clone();
    cs_args.extend(["--listen", "127.0.0.1:0", "--id", "cs-1", "--http"].map(String::from));
    cs_args.push(args.http.to_string());
    cluster.config_service.push(Daemon::spawn(
        "config-service",
        config_service_bin,
        &cs_args,
        &logs.join("config-service.log"),
    )?);
    let active = wait_until(cluster, "an active config service", Duration::from_secs(30), || async {
        coord.get::<ConfigServiceInstance>(paths::CONFIG_SERVICE_INSTANCE).await.ok().flatten().map(|v| v.value)
    })
    .await?;
    cluster.dashboard = active.http.as_ref().map(|h| format!("http://{h}/"));

    if args.nodes > 0 {
        eprintln!("registering {} node(s) and starting their agents ...", args.nodes);
        let hw = tokio::task::spawn_blocking(|| datom_common::hardware::discover(None))
            .await?
            .map_err(anyhow::Error::msg)?;
        for i in 1..=args.nodes {
            let name = format!("n{i}");
            let root = cluster.state_dir.join("nodes").join(&name);
            crate::cmd::addnode::check_root_writable(&root)?;
            let req = AddNodeRequest { name: name.clone(), hardware: hw.clone(), services: vec![] };
            let token = crate::cmd::addnode::cluster_token(zk_args, None)?;
            let record = crate::cmd::addnode::register(coord, req, token, None, Duration::from_secs(20)).await?;
            datom_common::fsutil::write_atomic(&root.join("node.json"), &serde_json::to_vec_pretty(&record)?)
                .with_context(|| format!("cannot stamp {}/node.json", root.display()))?;
            let mut agent_args = common.clone();
            agent_args.extend(
                ["--port", "0", "--nic-if", "lo", "--http", "127.0.0.1:0", "--stop-services-on-exit", "--root"]
                    .map(String::from),
            );
            agent_args.push(root.display().to_string());
            let log = logs.join(format!("{name}.log"));
            cluster.agents.push(Daemon::spawn(&name, agent_bin, &agent_args, &log)?);
        }
        let names: Vec<String> = (1..=args.nodes).map(|i| format!("n{i}")).collect();
        wait_until(cluster, "every node agent publishing that it is up", Duration::from_secs(30), || async {
            for n in &names {
                coord.get::<LiveRecord>(&paths::node_live(n)).await.ok().flatten()?;
            }
            Some(())
        })
        .await?;
    }
    start_demo_service(coord, cluster).await
}

/// The demo service `datom up` applies and starts: a long sleep, in group `demo`, with
/// failover on, so the dashboard has something to show and failover can be tried by killing
/// its node's agent.
pub const DEMO_SPEC: &str = r#"name = "demo"
type = "process"
command = "sleep"
args = ["infinity"]
group = "demo"
failover = true
stop_timeout_ms = 2000
"#;

/// Applies the demo spec and starts it on the first node (agents run with
/// `--stop-services-on-exit`, so Ctrl-C stops it too).
async fn start_demo_service(coord: &Coord, cluster: &Cluster) -> anyhow::Result<()> {
    let Some(first) = cluster.agents.first() else { return Ok(()) };
    let spec = datom_common::spec::ServiceSpec::from_toml(DEMO_SPEC).map_err(|e| anyhow::anyhow!("demo spec: {e}"))?;
    datom_common::services::apply(coord, &spec).await?;
    datom_common::services::start(coord, &spec.name, &first.name, "datom up demo").await?;
    let inst = paths::service_instance(&spec.name, &first.name);
    wait_until(cluster, "the demo service in service", Duration::from_secs(30), || async {
        let v = coord.get::<datom_common::records::InstanceRecord>(&inst).await.ok().flatten()?;
        (v.value.state == datom_common::records::ServiceState::InService).then_some(())
    })
    .await?;
    eprintln!("demo service {:?} is in service on {}", spec.name, first.name);
    Ok(())
}

async fn show_status(zk: &str, color: ColorChoice) -> anyhow::Result<()> {
    let coord = Coord::connect(CoordConfig::new(zk.to_string()).with_connect_timeout(Duration::from_secs(3))).await?;
    let st = crate::cmd::status::read(&coord).await;
    coord.close().await;
    print!("{}", crate::cmd::status::render(&st?, color.enabled()));
    Ok(())
}

/// Waits for Ctrl-C (SIGINT) or SIGTERM.
pub async fn wait_for_shutdown() {
    datom_common::flags::shutdown_signal().await
}
