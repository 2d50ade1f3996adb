//! Real ZooKeeper on loopback: standalone servers and N-member ensembles, started from the
//! installed jars, for datom's tests, benchmarks and `datom up`.
//!
//! Every JVM is started under a tiny shell watchdog whose stdin is a pipe held by this process.
//! When this process exits for any reason (normal exit, panic, SIGKILL), the kernel closes the
//! pipe, the watchdog's `cat` returns and it SIGKILLs the JVM: no ZooKeeper outlives its test.
//!
//! The harness can stop, SIGKILL, restart, pause (SIGSTOP) and resume (SIGCONT) members, find
//! the ensemble leader with the `srvr` four-letter word, and force a client's session to expire.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Harness failures.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// ZooKeeper's jars are not installed.
    #[error(
        "ZooKeeper jars not found: looked for {0}. Install them with scripts/install-deps \
         (Debian package 'zookeeper'), or set ZOOKEEPER_HOME to an Apache ZooKeeper distribution"
    )]
    NoJars(String),
    /// Java is missing.
    #[error("cannot run java ({0}); install a JRE (Debian: default-jre-headless)")]
    NoJava(String),
    /// A server did not become ready.
    #[error("ZooKeeper on port {port} not ready after {waited:?}; its log is {log}: {tail}")]
    NotReady {
        /// Client port.
        port: u16,
        /// How long we waited.
        waited: Duration,
        /// Log path.
        log: String,
        /// Last lines of the log.
        tail: String,
    },
    /// I/O error.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Result alias.
pub type Result<T> = std::result::Result<T, HarnessError>;

/// Finds the Java classpath for ZooKeeper: `$ZOOKEEPER_HOME` (an Apache distribution, with
/// `lib/*.jar`) or Debian's `/usr/share/java/zookeeper.jar`, whose manifest lists its deps.
pub fn classpath() -> Result<String> {
    if let Ok(home) = std::env::var("ZOOKEEPER_HOME") {
        let home = PathBuf::from(home);
        let mut jars = Vec::new();
        for dir in [home.clone(), home.join("lib")] {
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    let p = e.path();
                    if p.extension().is_some_and(|x| x == "jar") {
                        jars.push(p.to_string_lossy().into_owned());
                    }
                }
            }
        }
        if jars.iter().any(|j| j.contains("zookeeper")) {
            jars.sort();
            return Ok(jars.join(":"));
        }
        return Err(HarnessError::NoJars(format!("{}/lib/*.jar (ZOOKEEPER_HOME)", home.display())));
    }
    let debian = Path::new("/usr/share/java/zookeeper.jar");
    if debian.exists() {
        return Ok(debian.to_string_lossy().into_owned());
    }
    Err(HarnessError::NoJars(debian.display().to_string()))
}

/// True when ZooKeeper's jars and java are available.
pub fn available() -> bool {
    classpath().is_ok() && Command::new("java").arg("-version").stderr(Stdio::null()).status().is_ok()
}

/// A free TCP port on 127.0.0.1, chosen below the kernel's ephemeral range so that no
/// outgoing connection (which takes ephemeral ports) can grab it between our check and the
/// server's bind. Random within 10000..start-of-ephemeral-range, verified by binding.
pub fn free_port() -> u16 {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let low_ephemeral: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap_or(32768);
    let (lo, hi) = (10_000u32, low_ephemeral.max(10_100));
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        ^ ((std::process::id() as u64) << 32)
        ^ SEQ.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    for _ in 0..1000 {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = (lo + (x % (hi - lo) as u64) as u32) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("bind an ephemeral port")
}

/// Sends a four-letter word (`ruok`, `srvr`, `stat`, ...) and returns the reply.
pub fn four_letter(port: u16, word: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_millis(1000)))?;
    s.write_all(word.as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// The `Mode:` line of `srvr`: `standalone`, `leader` or `follower`, once the server serves.
pub fn server_mode(port: u16) -> Option<String> {
    let reply = four_letter(port, "srvr").ok()?;
    reply.lines().find_map(|l| l.strip_prefix("Mode: ").map(|m| m.trim().to_string()))
}

/// Options for a server or ensemble.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// tickTime in ms; sessions are clamped to 2..20 ticks. Tests use 200 so failures are fast.
    pub tick_ms: u32,
    /// Keep data here instead of a temporary directory (for `datom up`).
    pub data_dir: Option<PathBuf>,
    /// Client port; a free one when `None`.
    pub client_port: Option<u16>,
    /// fsync the transaction log (ZooKeeper's default). Benchmarks want the real thing.
    pub force_sync: bool,
    /// JVM heap limit in MiB.
    pub heap_mb: u32,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions { tick_ms: 200, data_dir: None, client_port: None, force_sync: true, heap_mb: 256 }
    }
}

/// One JVM running ZooKeeper under the watchdog.
struct Jvm {
    wrapper: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
}

impl Jvm {
    fn spawn(main_class: &str, cfg: &Path, log: &Path, heap_mb: u32) -> Result<Jvm> {
        let cp = classpath()?;
        let java_cmd = format!(
            "exec java -Xmx{heap_mb}m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xss512k \
             -Dzookeeper.admin.enableServer=false -Dzookeeper.4lw.commands.whitelist='*' \
             -Dzookeeper.jmx.log4j.disable=true -cp '{cp}' {main_class} '{}'",
            cfg.display()
        );
        // The watchdog ignores SIGINT/SIGTERM from the terminal's process group and relies on
        // the pipe: when its stdin reaches EOF (our process closed or died), it kills the JVM.
        let script = format!(
            "trap '' INT TERM HUP; ( {java_cmd} ) </dev/null >>'{log}' 2>&1 & j=$!; echo $j; \
             cat >/dev/null; kill -9 $j 2>/dev/null; wait $j 2>/dev/null; exit 0",
            log = log.display()
        );
        let mut wrapper = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| HarnessError::NoJava(e.to_string()))?;
        let stdout = wrapper.stdout.take().expect("piped");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let pid: u32 = line.trim().parse().map_err(|_| HarnessError::NoJava(format!("watchdog printed {line:?}")))?;
        let stdin = wrapper.stdin.take();
        Ok(Jvm { wrapper, stdin, pid })
    }

    fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(self.pid as i32), sig);
    }

    fn alive(&self) -> bool {
        // A zombie still answers kill(0); check /proc state too.
        match std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(s) => s.split_whitespace().nth(2).is_none_or(|st| st != "Z"),
            Err(_) => false,
        }
    }

    /// Graceful (SIGTERM, then SIGKILL after `grace`) or immediate stop; reaps the watchdog.
    fn stop(mut self, grace: Duration) {
        self.signal(Signal::SIGCONT);
        if grace.is_zero() {
            self.signal(Signal::SIGKILL);
        } else {
            self.signal(Signal::SIGTERM);
            let deadline = Instant::now() + grace;
            while self.alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            self.signal(Signal::SIGKILL);
        }
        drop(self.stdin.take());
        let _ = self.wrapper.wait();
    }
}

impl Drop for Jvm {
    fn drop(&mut self) {
        if self.stdin.is_some() {
            self.signal(Signal::SIGCONT);
            self.signal(Signal::SIGKILL);
            drop(self.stdin.take());
            let _ = self.wrapper.wait();
        }
    }
}

enum DataDir {
    Temp(tempfile::TempDir),
    Kept(PathBuf),
}

impl DataDir {
    fn path(&self) -> &Path {
        match self {
            DataDir::Temp(t) => t.path(),
            DataDir::Kept(p) => p,
        }
    }
}

/// One ZooKeeper server process: standalone, or a member of a [`ZkEnsemble`].
pub struct ZkServer {
    client_port: u16,
    dir: DataDir,
    cfg: PathBuf,
    main_class: &'static str,
    heap_mb: u32,
    jvm: Option<Jvm>,
}

impl ZkServer {
    /// Starts a standalone server (ZooKeeperServerMain semantics through a standalone config)
    /// and waits until it answers `ruok` and `srvr`.
    pub fn start(opts: ServerOptions) -> Result<ZkServer> {
        let dir = match &opts.data_dir {
            Some(p) => {
                std::fs::create_dir_all(p)?;
                DataDir::Kept(p.clone())
            }
            None => DataDir::Temp(tempfile::Builder::new().prefix("datom-zk-").tempdir()?),
        };
        let client_port = opts.client_port.unwrap_or_else(free_port);
        let cfg = dir.path().join("zoo.cfg");
        std::fs::create_dir_all(dir.path().join("data"))?;
        std::fs::write(&cfg, base_config(&opts, dir.path(), client_port))?;
        let mut server = ZkServer {
            client_port,
            dir,
            cfg,
            main_class: "org.apache.zookeeper.server.ZooKeeperServerMain",
            heap_mb: opts.heap_mb,
            jvm: None,
        };
        server.launch()?;
        server.wait_ready(Duration::from_secs(60), |m| m == "standalone")?;
        Ok(server)
    }

    fn launch(&mut self) -> Result<()> {
        let log = self.dir.path().join("zookeeper.log");
        self.jvm = Some(Jvm::spawn(self.main_class, &self.cfg, &log, self.heap_mb)?);
        Ok(())
    }

    /// Waits until the server answers `ruok` with `imok` and `srvr` reports a mode `ok` accepts.
    fn wait_ready(&self, timeout: Duration, ok: impl Fn(&str) -> bool) -> Result<()> {
        let start = Instant::now();
        loop {
            let ruok = four_letter(self.client_port, "ruok").map(|r| r == "imok").unwrap_or(false);
            if ruok && server_mode(self.client_port).is_some_and(|m| ok(&m)) {
                return Ok(());
            }
            if start.elapsed() > timeout || !self.jvm.as_ref().is_some_and(|j| j.alive()) {
                let log = self.dir.path().join("zookeeper.log");
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(8).collect();
                return Err(HarnessError::NotReady {
                    port: self.client_port,
                    waited: start.elapsed(),
                    log: log.display().to_string(),
                    tail: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.client_port
    }

    /// `127.0.0.1:<port>`.
    pub fn connect_string(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The JVM's pid, while running.
    pub fn pid(&self) -> Option<u32> {
        self.jvm.as_ref().map(|j| j.pid)
    }

    /// Whether the JVM is running (paused counts as running).
    pub fn is_running(&self) -> bool {
        self.jvm.as_ref().is_some_and(|j| j.alive())
    }

    /// Data directory (holds zoo.cfg, data/ and zookeeper.log).
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Graceful stop: SIGTERM, SIGKILL after 5 s.
    pub fn stop(&mut self) {
        if let Some(j) = self.jvm.take() {
            j.stop(Duration::from_secs(5));
        }
    }

    /// SIGKILL, at once.
    pub fn kill(&mut self) {
        if let Some(j) = self.jvm.take() {
            j.stop(Duration::ZERO);
        }
    }

    /// SIGSTOP: the server stops answering but keeps its sockets.
    pub fn pause(&self) {
        if let Some(j) = &self.jvm {
            j.signal(Signal::SIGSTOP);
        }
    }

    /// SIGCONT after [`ZkServer::pause`].
    pub fn resume(&self) {
        if let Some(j) = &self.jvm {
            j.signal(Signal::SIGCONT);
        }
    }

    /// Starts the server again with the same port and data (after stop or kill) and waits
    /// until it is ready (for an ensemble member: until it has joined a quorum).
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.launch()?;
        let standalone = self.main_class.ends_with("ZooKeeperServerMain");
        self.wait_ready(Duration::from_secs(60), |m| if standalone { m == "standalone" } else { m != "standalone" })
    }

    /// Starts the server again without waiting (an ensemble member cannot be ready alone).
    pub fn restart_nowait(&mut self) -> Result<()> {
        self.kill();
        self.launch()
    }
}

impl Drop for ZkServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn base_config(opts: &ServerOptions, dir: &Path, client_port: u16) -> String {
    format!(
        "tickTime={tick}\ninitLimit=20\nsyncLimit=10\ndataDir={data}\nclientPort={client_port}\n\
         clientPortAddress=127.0.0.1\nmaxClientCnxns=0\n4lw.commands.whitelist=*\n\
         admin.enableServer=false\nforceSync={sync}\nminSessionTimeout={min}\nmaxSessionTimeout={max}\n",
        tick = opts.tick_ms,
        data = dir.join("data").display(),
        sync = if opts.force_sync { "yes" } else { "no" },
        min = opts.tick_ms * 2,
        max = opts.tick_ms * 20,
    )
}

/// An N-member ZooKeeper ensemble (QuorumPeerMain) on loopback.
pub struct ZkEnsemble {
    members: Vec<ZkServer>,
}

impl ZkEnsemble {
    /// Starts `n` members and waits until all serve, one of them as leader.
    pub fn start(n: usize, opts: ServerOptions) -> Result<ZkEnsemble> {
        assert!(n >= 1, "an ensemble needs members");
        let ports: Vec<(u16, u16, u16)> = (0..n).map(|_| (free_port(), free_port(), free_port())).collect();
        let servers: String = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer, elect))| format!("server.{}=127.0.0.1:{peer}:{elect}\n", i + 1))
            .collect();
        let mut members = Vec::with_capacity(n);
        for (i, (client, _, _)) in ports.iter().enumerate() {
            let dir = DataDir::Temp(tempfile::Builder::new().prefix(&format!("datom-zk{}-", i + 1)).tempdir()?);
            std::fs::create_dir_all(dir.path().join("data"))?;
            std::fs::write(dir.path().join("data/myid"), format!("{}\n", i + 1))?;
            let cfg = dir.path().join("zoo.cfg");
            let text = format!(
                "{}{servers}standaloneEnabled=false\nreconfigEnabled=false\nquorumListenOnAllIPs=false\n\
                 electionPortBindRetry=20\n",
                base_config(&opts, dir.path(), *client)
            );
            std::fs::write(&cfg, text)?;
            let mut m = ZkServer {
                client_port: *client,
                dir,
                cfg,
                main_class: "org.apache.zookeeper.server.quorum.QuorumPeerMain",
                heap_mb: opts.heap_mb,
                jvm: None,
            };
            m.launch()?;
            members.push(m);
        }
        let ens = ZkEnsemble { members };
        for m in &ens.members {
            m.wait_ready(Duration::from_secs(90), |mode| mode == "leader" || mode == "follower")?;
        }
        Ok(ens)
    }

    /// `127.0.0.1:p1,127.0.0.1:p2,...`.
    pub fn connect_string(&self) -> String {
        self.members.iter().map(|m| m.connect_string()).collect::<Vec<_>>().join(",")
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: an ensemble has members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Member `i` (0-based).
    pub fn member(&mut self, i: usize) -> &mut ZkServer {
        &mut self.members[i]
    }

    /// The index of the current leader, per `srvr`.
    pub fn leader(&self) -> Option<usize> {
        self.members.iter().position(|m| m.is_running() && server_mode(m.port()).as_deref() == Some("leader"))
    }

    /// Waits until some member reports itself leader and returns it.
    pub fn wait_leader(&self, timeout: Duration) -> Option<usize> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(l) = self.leader() {
                return Some(l);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

static CHROOT_SEQ: AtomicU64 = AtomicU64::new(0);

/// One standalone server shared by every test in this test binary (started on first use,
/// killed by its watchdog when the binary exits). Tests isolate themselves with
/// [`unique_chroot`].
pub fn shared_server() -> &'static ZkServer {
    static SERVER: OnceLock<ZkServer> = OnceLock::new();
    SERVER.get_or_init(|| ZkServer::start(ServerOptions::default()).expect("start the shared ZooKeeper server"))
}

/// Creates a fresh chroot `/<prefix>-<pid>-<n>` on the server at `connect` and returns the
/// connect string that uses it.
pub async fn unique_chroot(connect: &str, prefix: &str) -> String {
    let n = CHROOT_SEQ.fetch_add(1, Ordering::SeqCst);
    let chroot = format!("/{prefix}-{}-{n}", std::process::id());
    let client = zookeeper_client::Client::connect(connect).await.expect("connect to create a chroot");
    let opts = zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all());
    match client.create(&chroot, b"", &opts).await {
        Ok(_) | Err(zookeeper_client::Error::NodeExists) => {}
        Err(e) => panic!("create chroot {chroot}: {e}"),
    }
    format!("{connect}{chroot}")
}

/// Forces the session `session` to expire: opens a second handle with the same id and password,
/// then closes it. The original client then sees `Expired`. Standard ZooKeeper test technique.
pub async fn expire_session(connect: &str, session: zookeeper_client::SessionInfo) -> std::result::Result<(), String> {
    // The chroot does not matter for session identity; connect to the bare servers.
    let servers = connect.split('/').next().unwrap_or(connect);
    let mut last = String::new();
    // The original client may grab the session back while we attach; retry a few times.
    for _ in 0..10 {
        let attach = zookeeper_client::Client::connector()
            .with_session(session.clone())
            .with_connection_timeout(std::time::Duration::from_millis(500))
            .with_fail_eagerly()
            .connect(servers);
        match tokio::time::timeout(std::time::Duration::from_secs(2), attach).await {
            Ok(Ok(client)) => {
                drop(client);
                return Ok(());
            }
            Ok(Err(zookeeper_client::Error::SessionExpired)) => return Ok(()),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "timed out".into(),
        }
    }
    Err(format!("re-attach to session: {last}"))
}
