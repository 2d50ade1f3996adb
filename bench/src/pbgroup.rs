//! A replicated volume made of real `datom-volume-server` processes, for the `volume` and
//! `pb-failover` scenarios: start, kill, stop gracefully, restart, and wait on the group's
//! published state through a ZooKeeper tree cache.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use datom_common::coord::Mode;
use datom_common::coord::watch::TreeCache;
use datom_common::{Coord, CoordConfig, paths};
use datom_pb::types::{GroupRecord, MemberState, MemberStateRecord, TermRecord, TermStatus};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Where the ZooKeeper under test is, and the server the scenario started, if any.
pub struct Zk {
    /// Connect string (with a fresh chroot).
    pub connect: String,
    /// A private server started with `--local`.
    pub _server: Option<datom_zk_harness::ZkServer>,
}

/// Resolves `--zk` / `--local` to a fresh chroot. `--local` starts a private standalone server
/// (fsync on, tickTime 200 ms so session timeouts can be short).
pub async fn zk(addr: &Option<String>, local: bool, prefix: &str) -> anyhow::Result<Zk> {
    let (base, server) = crate::target::resolve(addr, local, 200).await?;
    let connect = datom_zk_harness::unique_chroot(&base, prefix).await;
    Ok(Zk { connect, _server: server })
}

/// Path of a sibling binary (built together with datom-bench).
pub fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let p = exe.parent().context("bench binary has no directory")?.join(name);
    anyhow::ensure!(p.exists(), "{} not found; build it with `cargo build --release --workspace --bins`", p.display());
    Ok(p)
}

struct Proc {
    member: String,
    port: u16,
    child: Option<Child>,
}

/// A volume group of `replicas` server processes.
pub struct Group {
    /// Connect string.
    pub zk: String,
    /// Volume name.
    pub volume: String,
    /// Coordination client of the scenario.
    pub coord: Coord,
    cache: TreeCache,
    procs: Vec<Proc>,
    root: tempfile::TempDir,
    session_ms: u64,
    bin: PathBuf,
}

impl Group {
    /// Creates the tree and the volume, then starts the replicas.
    pub async fn start(zk: &str, replicas: usize, session_ms: u64) -> anyhow::Result<Group> {
        let config = CoordConfig::new(zk).with_session_timeout(Duration::from_millis(session_ms));
        let coord = Coord::connect(config).await?;
        datom_common::init::init_tree(&coord, "bench").await?;
        let volume = "bench".to_string();
        let record = GroupRecord {
            schema: 1,
            kind: "volume".into(),
            replicas: replicas as u32,
            enrolled: Vec::new(),
            created_at: chrono::Utc::now(),
        };
        coord.create(&paths::group(&volume), &record, Mode::Persistent).await?;
        let cache = coord.tree_cache(&paths::group(&volume));
        cache.wait_synced().await;
        let mut g = Group {
            zk: zk.to_string(),
            volume,
            coord,
            cache,
            procs: Vec::new(),
            root: tempfile::Builder::new().prefix("datom-bench-pb-").tempdir()?,
            session_ms,
            bin: sibling("datom-volume-server")?,
        };
        for i in 0..replicas {
            let member = format!("r{}", i + 1);
            let port = datom_zk_harness::free_port();
            g.procs.push(Proc { member, port, child: None });
            g.spawn(i)?;
        }
        Ok(g)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let p = &self.procs[i];
        let dir = self.root.path().join(&p.member);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.path().join(format!("{}.log", p.member)))?;
        let child = Command::new(&self.bin)
            .args(["--zk", &self.zk, "--session-timeout", &self.session_ms.to_string()])
            .args(["--member", &p.member, "--volume", &self.volume, "--listen", &format!("127.0.0.1:{}", p.port)])
            .arg("--data-dir")
            .arg(dir)
            .env("RUST_LOG", std::env::var("DATOM_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start datom-volume-server")?;
        self.procs[i].child = Some(child);
        Ok(())
    }

    fn index(&self, member: &str) -> usize {
        self.procs.iter().position(|p| p.member == member).expect("known member")
    }

    /// SIGKILL.
    pub fn kill(&mut self, member: &str) {
        let i = self.index(member);
        if let Some(mut c) = self.procs[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM (graceful stop) without waiting; [`Group::restart`] reaps the process.
    pub fn signal_stop(&mut self, member: &str) {
        let i = self.index(member);
        if let Some(c) = &self.procs[i].child {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        }
    }

    /// Starts a stopped or killed member again.
    pub fn restart(&mut self, member: &str) -> anyhow::Result<()> {
        let i = self.index(member);
        if let Some(mut c) = self.procs[i].child.take() {
            // A gracefully stopping process is given a moment to finish before it is killed.
            for _ in 0..100 {
                if c.try_wait()?.is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.spawn(i)
    }

    /// The term record.
    pub fn term(&self) -> Option<TermRecord> {
        self.cache.get(&paths::group_term(&self.volume)).and_then(|n| serde_json::from_slice(&n.data).ok())
    }

    fn state(&self, member: &str) -> Option<MemberStateRecord> {
        self.cache.get(&paths::group_state(&self.volume, member)).and_then(|n| serde_json::from_slice(&n.data).ok())
    }

    /// The group as it stands: `(leader, term)` when a leader of a term above `after` is
    /// LEADER_FUNCTIONAL and at least `followers` members are FOLLOWER_FUNCTIONAL in its term.
    pub fn functional(&self, after: u64, followers: usize) -> Option<(String, u64)> {
        let t = self.term()?;
        if t.status != TermStatus::Leading || t.term <= after {
            return None;
        }
        let leader = t.leader?;
        let ls = self.state(&leader)?;
        if ls.state != MemberState::LeaderFunctional || ls.term != t.term {
            return None;
        }
        let n = self
            .procs
            .iter()
            .filter(|p| p.member != leader)
            .filter_map(|p| self.state(&p.member))
            .filter(|s| s.state == MemberState::FollowerFunctional && s.term == t.term)
            .count();
        (n >= followers).then_some((leader, t.term))
    }

    /// Waits (on tree cache events, not polling) for [`Group::functional`].
    pub async fn wait_functional(
        &self,
        after: u64,
        followers: usize,
        timeout: Duration,
    ) -> anyhow::Result<(String, u64)> {
        let mut events = self.cache.subscribe();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.functional(after, followers) {
                return Ok(v);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            anyhow::ensure!(!left.is_zero(), "the group did not become functional within {timeout:?}");
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), events.recv()).await;
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if std::env::var_os("DATOM_BENCH_KEEP").is_some() {
            let root = std::mem::replace(&mut self.root, tempfile::tempdir().expect("tempdir"));
            eprintln!("kept the servers' data and logs in {}", root.keep().display());
        }
        for p in &mut self.procs {
            if let Some(mut c) = p.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
