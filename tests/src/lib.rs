//! Test support: the shared ZooKeeper with a chroot per test, waiting on conditions with
//! deadlines (never sleeping as synchronisation), and running datom's real binaries.

use std::future::Future;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use datom_common::{Coord, CoordConfig};
pub use datom_zk_harness as harness;

pub mod prom;

/// A connect string for a fresh chroot on the binary's shared ZooKeeper server.
pub async fn fresh_zk(test: &str) -> String {
    let server = tokio::task::spawn_blocking(harness::shared_server).await.expect("shared server");
    harness::unique_chroot(&server.connect_string(), test).await
}

/// Connects a [`Coord`] to `zk` with test-friendly timeouts.
pub async fn coord(zk: &str) -> Coord {
    Coord::connect(test_config(zk)).await.expect("connect to test ZooKeeper")
}

/// Coordination config for tests: short session (the shared server's tickTime is 200 ms).
pub fn test_config(zk: &str) -> CoordConfig {
    CoordConfig::new(zk).with_session_timeout(Duration::from_millis(2000)).with_connect_timeout(Duration::from_secs(5))
}

/// Polls `cond` until it returns `Some`, failing the test with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut cond: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = cond().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits up to `timeout` for `child` to exit (polling, for blocking contexts); its status.
pub fn wait_child_exit(child: &mut std::process::Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Path of a workspace binary (built by `cargo build --workspace --bins`, which scripts/test runs).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let p = dir.join(name);
    assert!(p.exists(), "{} not built; run `cargo build --workspace --bins` (scripts/test does)", p.display());
    p
}

/// Runs `datom <args>` with `--zk zk`, returning its output.
pub fn datom(zk: &str, args: &[&str]) -> Output {
    Command::new(bin("datom"))
        .args(["--zk", zk, "--connect-timeout", "3000"])
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run datom")
}

/// Stdout of an output as a string.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Stderr of an output as a string.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A daemon started by a test: SIGKILLed on drop, output captured to a log file.
pub struct Proc {
    child: std::process::Child,
    /// What it is, for messages.
    pub name: String,
    log: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr going to a log file.
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        let dir = tempfile::Builder::new().prefix("datom-proc-").tempdir().expect("tempdir");
        let log = dir.path().join(format!("{name}.log"));
        let f = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .stdout(f.try_clone().expect("dup log"))
            .stderr(f)
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc { child, name: name.to_string(), log, _dir: Some(dir) }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig`.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig);
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        wait_child_exit(&mut self.child, timeout)
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- {} output ----\n{}", self.name, self.output());
        }
    }
}

/// Starts `datom-config-service` on a free port with a 2 s session; returns it and its address.
pub fn config_service(zk: &str, id: &str, extra: &[&str]) -> (Proc, String) {
    let port = harness::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(bin("datom-config-service"));
    cmd.args(["--zk", zk, "--session-timeout", "2000", "--listen", &addr, "--id", id]).args(extra);
    cmd.env("RUST_LOG", "info");
    (Proc::spawn(id, cmd), addr)
}

/// Starts `datom-node-agent` for `root` on a free port with a 2 s session.
pub fn node_agent(zk: &str, root: &std::path::Path, name: &str, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(bin("datom-node-agent"));
    cmd.args(["--zk", zk, "--session-timeout", "2000", "--root", root.to_str().unwrap(), "--port", "0"]).args(extra);
    cmd.env("RUST_LOG", "info");
    Proc::spawn(name, cmd)
}

/// Runs `datom addnode` non-interactively.
pub fn addnode(zk: &str, root: &std::path::Path, name: &str, extra: &[&str]) -> Output {
    let mut args = vec!["addnode", "--root", root.to_str().unwrap(), "--name", name, "--yes", "--json"];
    args.extend_from_slice(extra);
    datom(zk, &args)
}

/// Waits until the active config service record exists and returns its (id, address).
pub async fn wait_active(c: &Coord, timeout: Duration) -> (String, String) {
    wait_for("an active config service", timeout, || async {
        let v = c
            .get::<datom_common::records::ConfigServiceInstance>(datom_common::paths::CONFIG_SERVICE_INSTANCE)
            .await
            .ok()
            .flatten()?;
        Some((v.value.id, v.value.address))
    })
    .await
}

/// A small cluster for service tests: init, one config service, and agents on `nodes`.
pub struct Cluster {
    /// Connect string (with its chroot).
    pub zk: String,
    /// Coordination client for assertions.
    pub coord: Coord,
    /// The config service.
    pub config_service: Proc,
    /// Agents by node name.
    pub agents: std::collections::BTreeMap<String, Proc>,
    /// Node roots by node name.
    pub roots: std::collections::BTreeMap<String, tempfile::TempDir>,
}

impl Cluster {
    /// Starts a cluster with agents for `nodes`, each with its own root and port.
    pub async fn start(test: &str, nodes: &[&str]) -> Cluster {
        let zk = fresh_zk(test).await;
        let out = datom(&zk, &["init"]);
        assert!(out.status.success(), "init: {}", stderr(&out));
        let (config_service, _) = config_service(&zk, &format!("cs-{test}"), &[]);
        let coord = coord(&zk).await;
        wait_active(&coord, Duration::from_secs(30)).await;
        let mut cluster = Cluster { zk, coord, config_service, agents: Default::default(), roots: Default::default() };
        for n in nodes {
            let root = tempfile::Builder::new().prefix(&format!("datom-root-{n}-")).tempdir().unwrap();
            let out = addnode(&cluster.zk, root.path(), n, &["--machine-id", &format!("machine-{n}")]);
            assert!(out.status.success(), "addnode {n}: {}", stderr(&out));
            cluster.roots.insert(n.to_string(), root);
            cluster.start_agent(n, &[]).await;
        }
        cluster
    }

    /// Starts (or restarts) the agent of `node` and waits until it is live.
    pub async fn start_agent(&mut self, node: &str, extra: &[&str]) {
        let root = self.roots[node].path().to_path_buf();
        // Every test agent shares this machine: their instantaneous load readings would make
        // placement depend on timing, so they report none (placement's load handling has its
        // own table tests).
        let mut args = vec!["--report-load", "false"];
        args.extend_from_slice(extra);
        let agent = node_agent(&self.zk, &root, &format!("agent-{node}"), &args);
        let pid = agent.pid();
        self.agents.insert(node.to_string(), agent);
        let c = self.coord.clone();
        let path = datom_common::paths::node_live(node);
        wait_for(&format!("agent {node} live"), Duration::from_secs(30), || {
            let c = c.clone();
            let path = path.clone();
            async move {
                let v = c.get::<datom_common::records::LiveRecord>(&path).await.ok().flatten()?;
                (v.value.pid == pid).then_some(())
            }
        })
        .await;
    }

    /// Runs `datom <args>` against this cluster.
    pub fn datom(&self, args: &[&str]) -> Output {
        datom(&self.zk, args)
    }

    /// Applies a spec given as TOML text.
    pub fn apply(&self, toml: &str) -> Output {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("spec.toml");
        std::fs::write(&f, toml).unwrap();
        self.datom(&["service", "apply", f.to_str().unwrap()])
    }

    /// Waits until `svc`'s instance on `node` satisfies `pred`, returning it.
    pub async fn wait_instance(
        &self,
        svc: &str,
        node: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&datom_common::records::InstanceRecord) -> bool,
    ) -> datom_common::records::InstanceRecord {
        let path = datom_common::paths::service_instance(svc, node);
        wait_for(&format!("{svc} on {node}: {what}"), timeout, || {
            let c = self.coord.clone();
            let path = path.clone();
            let pred = &pred;
            async move {
                let v = c.get::<datom_common::records::InstanceRecord>(&path).await.ok().flatten()?;
                pred(&v.value).then_some(v.value)
            }
        })
        .await
    }
}

/// Whether `pid` is alive (not a zombie).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s.rsplit(')').next().and_then(|r| r.split_whitespace().next()).is_some_and(|st| st != "Z"),
        Err(_) => false,
    }
}
/// A minimal HTTP/1.1 GET (`Connection: close`) against a loopback server: (status code,
/// headers, body). The body ends at its Content-Length, after its last chunk, or when the
/// server closes the connection.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String, String)> {
    use std::io::{BufRead, Read, Write};
    let sock: std::net::SocketAddr =
        addr.parse().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut reader = std::io::BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok()).flatten()
    });
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    let mut raw = Vec::new();
    match length {
        _ if chunked => loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("chunk size: {e}")))?;
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&chunk[..n]);
        },
        Some(n) => {
            raw.resize(n, 0);
            reader.read_exact(&mut raw)?;
        }
        None => {
            reader.read_to_end(&mut raw)?;
        }
    }
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, head, String::from_utf8_lossy(&raw).into_owned()))
}

/// Starts `datom-config-service` with the dashboard on a free port; returns it, its RPC
/// address and its dashboard address.
pub fn config_service_http(zk: &str, id: &str, extra: &[&str]) -> (Proc, String, String) {
    let http = format!("127.0.0.1:{}", harness::free_port());
    let mut args = vec!["--http", &http];
    args.extend_from_slice(extra);
    let (p, addr) = config_service(zk, id, &args);
    (p, addr, http)
}

/// The live record of `node`, once its agent has published it.
pub async fn wait_live(c: &Coord, node: &str, timeout: Duration) -> datom_common::records::LiveRecord {
    let path = datom_common::paths::node_live(node);
    wait_for(&format!("{path} to exist"), timeout, || async {
        c.get::<datom_common::records::LiveRecord>(&path).await.ok().flatten().map(|v| v.value)
    })
    .await
}

/// Waits until `node`'s live znode is gone.
pub async fn wait_dead(c: &Coord, node: &str, timeout: Duration) {
    let path = datom_common::paths::node_live(node);
    wait_for(&format!("{path} to go away"), timeout, || async {
        matches!(c.exists(&path).await, Ok(None)).then_some(())
    })
    .await
}

/// Whether `pid` is running (not gone and not a zombie).
pub fn pid_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_some_and(|st| st != "Z"),
        Err(_) => false,
    }
}

/// Pids whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline"))
            && String::from_utf8_lossy(&cmd).contains(needle)
            && pid_running(pid)
        {
            out.push(pid);
        }
    }
    out
}

/// Bytes received but not yet read by the process listening on loopback `port`, summed over
/// its established connections (`/proc/net/tcp` rx_queue): lets a test wait until a request
/// has reached a paused server.
pub fn tcp_rx_queued(port: u16) -> u64 {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else { return 0 };
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // f[1] local address, f[3] state (01 = established), f[4] tx_queue:rx_queue
            (f.len() > 4 && f[1].ends_with(&local) && f[3] == "01")
                .then(|| f[4].split(':').nth(1).and_then(|rx| u64::from_str_radix(rx, 16).ok()).unwrap_or(0))
        })
        .sum()
}
