//! Primary-backup replication and the volume server (issue 8): real ZooKeeper, real
//! `datom-volume-server` processes, real faults (SIGKILL, SIGSTOP, a failpoint, a torn journal).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use datom_common::{Coord, paths};
use datom_pb::types::{MemberState, MemberStateRecord, TermRecord, TermStatus};
use datom_tests::{coord, datom, fresh_zk, harness, stderr, stdout, wait_for};
use datom_volume_server::client::{ClientError, VolumeClient};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const SESSION_MS: &str = "1500";
const LONG: Duration = Duration::from_secs(60);

/// One `datom-volume-server` process: a replica of one volume.
struct Server {
    member: String,
    dir: PathBuf,
    port: u16,
    zk: String,
    volume: String,
    env: Vec<(String, String)>,
    child: Option<Child>,
    starts: u32,
}

impl Server {
    fn start(zk: &str, volume: &str, member: &str, root: &Path, env: &[(&str, &str)]) -> Server {
        let mut s = Server {
            member: member.to_string(),
            dir: root.join(member),
            port: harness::free_port(),
            zk: zk.to_string(),
            volume: volume.to_string(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            child: None,
            starts: 0,
        };
        s.spawn();
        s
    }

    fn log_path(&self, n: u32) -> PathBuf {
        self.dir.with_extension(format!("log.{n}"))
    }

    fn spawn(&mut self) {
        std::fs::create_dir_all(&self.dir).unwrap();
        self.starts += 1;
        let log = std::fs::File::create(self.log_path(self.starts)).unwrap();
        let mut cmd = Command::new(datom_tests::bin("datom-volume-server"));
        cmd.args(["--zk", &self.zk, "--session-timeout", SESSION_MS, "--connect-timeout", "5000"])
            .args(["--member", &self.member, "--volume", &self.volume])
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--listen", &format!("127.0.0.1:{}", self.port), "--leader-appear-ms", "2000"])
            .env("RUST_LOG", "info,datom_pb=debug,tarpc=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("start datom-volume-server"));
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    fn signal(&self, sig: Signal) {
        let _ = kill(self.pid(), sig);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGCONT);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit by itself (a failpoint); returns its status.
    fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let c = self.child.as_mut().expect("running");
        let st = datom_tests::wait_child_exit(c, timeout)
            .unwrap_or_else(|| panic!("{} did not exit within {timeout:?}", self.member));
        self.child = None;
        st
    }

    fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The current process's log, without terminal colour codes.
    fn log(&self) -> String {
        strip_ansi(&std::fs::read_to_string(self.log_path(self.starts)).unwrap_or_default())
    }

    fn all_logs(&self) -> String {
        (1..=self.starts).map(|n| strip_ansi(&std::fs::read_to_string(self.log_path(n)).unwrap_or_default())).collect()
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A volume with `n` replicas, each a real server process.
struct Cluster {
    zk: String,
    volume: String,
    coord: Coord,
    servers: Vec<Server>,
    root: tempfile::TempDir,
    /// The cluster token writes present, on a secure cluster.
    token: Option<String>,
}

impl Cluster {
    async fn start(test: &str, n: usize) -> Cluster {
        Self::start_with(test, n, |_| Vec::new()).await
    }

    async fn start_with(test: &str, n: usize, env: impl Fn(usize) -> Vec<(&'static str, &'static str)>) -> Cluster {
        let zk = fresh_zk(test).await;
        let out = datom(&zk, &["init"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let volume = "vol1".to_string();
        let out = datom(&zk, &["volume", "create", &volume, "--replicas", &n.to_string()]);
        assert!(out.status.success(), "{}", stderr(&out));
        let root = tempfile::tempdir().unwrap();
        let servers =
            (0..n).map(|i| Server::start(&zk, &volume, &format!("m{}", i + 1), root.path(), &env(i))).collect();
        let coord = coord(&zk).await;
        Cluster { zk, volume, coord, servers, root, token: None }
    }

    /// A secure cluster (`datom init --secure`) whose `n` servers all run with `--auth-file`
    /// (through `DATOM_AUTH_FILE`); the secret file is `<root>/auth.toml`.
    async fn start_secure(test: &str, n: usize) -> Cluster {
        let zk = fresh_zk(test).await;
        let root = tempfile::tempdir().unwrap();
        let auth = root.path().join("auth.toml");
        let auth = auth.to_str().unwrap();
        let out = datom(&zk, &["--auth-file", auth, "init", "--secure"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let volume = "vol1".to_string();
        let out = datom(&zk, &["--auth-file", auth, "volume", "create", &volume, "--replicas", &n.to_string()]);
        assert!(out.status.success(), "{}", stderr(&out));
        let env = [("DATOM_AUTH_FILE", auth)];
        let servers = (0..n).map(|i| Server::start(&zk, &volume, &format!("m{}", i + 1), root.path(), &env)).collect();
        let coord = coord(&zk).await;
        let token = Some(datom_common::auth::AuthFile::load(Path::new(auth)).unwrap().token());
        Cluster { zk, volume, coord, servers, root, token }
    }

    fn auth_file(&self) -> String {
        self.root.path().join("auth.toml").to_str().unwrap().to_string()
    }

    fn client(&self) -> VolumeClient {
        let mut c = VolumeClient::new(self.coord.clone(), &self.volume);
        c.retry_for = Duration::from_secs(30);
        c.token = self.token.clone();
        c
    }

    fn server(&mut self, member: &str) -> &mut Server {
        self.servers.iter_mut().find(|s| s.member == member).expect("member")
    }

    async fn term(&self) -> Option<TermRecord> {
        self.coord.get::<TermRecord>(&paths::group_term(&self.volume)).await.ok().flatten().map(|v| v.value)
    }

    async fn states(&self) -> BTreeMap<String, MemberStateRecord> {
        let mut out = BTreeMap::new();
        for s in &self.servers {
            if let Ok(Some(v)) = self.coord.get::<MemberStateRecord>(&paths::group_state(&self.volume, &s.member)).await
            {
                out.insert(s.member.clone(), v.value);
            }
        }
        out
    }

    /// Waits until one member leads (LEADER_FUNCTIONAL, named by the term record) and every
    /// member in `followers` is FOLLOWER_FUNCTIONAL in that term; returns (leader, term).
    async fn wait_group(&self, followers: usize, what: &str) -> (String, u64) {
        self.wait_group_after(0, followers, what).await
    }

    /// [`Cluster::wait_group`] for a term above `after`.
    async fn wait_group_after(&self, after: u64, followers: usize, what: &str) -> (String, u64) {
        wait_for(what, LONG, || async {
            let t = self.term().await?;
            if t.status != TermStatus::Leading || t.term <= after {
                return None;
            }
            let leader = t.leader.clone()?;
            let states = self.states().await;
            let ls = states.get(&leader)?;
            if ls.state != MemberState::LeaderFunctional || ls.term != t.term {
                return None;
            }
            let functional = states
                .iter()
                .filter(|(m, s)| **m != leader && s.state == MemberState::FollowerFunctional && s.term == t.term)
                .count();
            (functional >= followers).then_some((leader, t.term))
        })
        .await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::env::var_os("DATOM_TEST_KEEP").is_some() {
            let root = std::mem::replace(&mut self.root, tempfile::tempdir().unwrap());
            eprintln!("kept server data and logs in {}", root.keep().display());
        }
        if std::thread::panicking() {
            for s in &self.servers {
                let logs = s.all_logs();
                let tail: Vec<&str> = logs.lines().rev().take(60).collect();
                eprintln!("----- {} (last lines) -----", s.member);
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// The servers are heavy for a 2-core machine: run one fault scenario at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Writes unique keys as fast as acks come back, recording each acknowledged one.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<std::sync::Mutex<Vec<(String, String)>>>,
    errors: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(cluster: &Cluster, writers: usize, prefix: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let errors = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for w in 0..writers {
            let client = cluster.client();
            let (stop, acked, errors) = (stop.clone(), acked.clone(), errors.clone());
            let prefix = prefix.to_string();
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let key = format!("{prefix}-{w}-{i}");
                    let value = format!("value-{w}-{i}");
                    match client.put(&key, &value).await {
                        Ok(_) => acked.lock().unwrap().push((key, value)),
                        Err(_) => {
                            errors.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    i += 1;
                }
            }));
        }
        Load { stop, acked, errors, tasks }
    }

    fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    async fn finish(self) -> Vec<(String, String)> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        let _ = self.errors;
        Arc::try_unwrap(self.acked).unwrap().into_inner().unwrap()
    }
}

/// Reads every acknowledged key back through the current leader.
async fn assert_all_readable(cluster: &Cluster, acked: &[(String, String)]) {
    let client = Arc::new(cluster.client());
    let mut tasks = Vec::new();
    for chunk in acked.chunks(acked.len().div_ceil(16).max(1)) {
        let chunk = chunk.to_vec();
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for (k, v) in chunk {
                let got = client.get(&k).await.unwrap_or_else(|e| panic!("read {k}: {e}"));
                assert_eq!(got.as_deref(), Some(v.as_str()), "acknowledged write {k} lost");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Waits until every running replica has applied the same entries with the same db.
async fn assert_identical_dbs(cluster: &Cluster, members: &[&str]) {
    let client = cluster.client();
    wait_for("identical dbs on every replica", LONG, || async {
        let mut digests = Vec::new();
        for m in members {
            let s = cluster.servers.iter().find(|s| s.member == *m).unwrap();
            let info = client.inspect_at(&s.addr()).await.ok()?;
            digests.push(info.db);
        }
        digests.windows(2).all(|w| w[0] == w[1]).then_some(())
    })
    .await;
}

#[tokio::test]
async fn t01_three_members_elect_one_leader_and_the_others_follow() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start("pb-elect", 3).await;
    let (leader, term) = c.wait_group(2, "a leader and two functional followers").await;
    assert!(term >= 1);
    let states = c.states().await;
    let leaders: Vec<&String> =
        states.iter().filter(|(_, s)| s.role == datom_pb::Role::Leader).map(|(m, _)| m).collect();
    assert_eq!(leaders, vec![&leader], "exactly one leader: {states:?}");
    for (m, s) in &states {
        if *m != leader {
            assert_eq!(s.state, MemberState::FollowerFunctional);
            assert_eq!(s.leader.as_deref(), Some(leader.as_str()));
        }
    }
    // The group works, and `datom volume` shows it.
    let out = datom(&c.zk, &["volume", "put", &c.volume, "k1", "hello"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = datom(&c.zk, &["volume", "get", &c.volume, "k1"]);
    assert_eq!(stdout(&out).trim(), "hello", "{}", stderr(&out));
    let out = datom(&c.zk, &["volume", "status", &c.volume, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["term"]["leader"], leader.as_str());
    assert_eq!(v["members"].as_array().unwrap().len(), 3);
    let out = datom(&c.zk, &["volume", "status", &c.volume]);
    assert!(stdout(&out).contains("LEADER_FUNCTIONAL"), "{}", stdout(&out));
    assert!(stdout(&out).contains("FOLLOWER_FUNCTIONAL"), "{}", stdout(&out));
    // Bad input: a clear error and no change.
    let out = datom(&c.zk, &["volume", "get", "no-such-volume", "k"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    let out = datom(&c.zk, &["volume", "create", "bad/name"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("must not contain '/'"), "{}", stderr(&out));
    let _ = c.root.path();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t02_leader_sigkill_under_load_loses_no_acknowledged_write() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start("pb-kill", 3).await;
    let (leader, term) = c.wait_group(2, "the first leader").await;
    let load = Load::start(&c, 8, "kill");
    wait_for("writes acknowledged before the kill", LONG, || async { (load.acked() >= 300).then_some(()) }).await;
    c.server(&leader).kill();
    let before = load.acked();
    let (new_leader, new_term) = c.wait_group_after(term, 1, "a new leader after the SIGKILL").await;
    assert_ne!(new_leader, leader);
    assert!(new_term > term);
    wait_for("writes acknowledged by the new leader", LONG, || async { (load.acked() >= before + 300).then_some(()) })
        .await;
    let acked = load.finish().await;
    assert_all_readable(&c, &acked).await;
    // The old leader comes back as a follower with the same data.
    c.server(&leader).restart();
    c.wait_group(2, "the old leader rejoins").await;
    assert_identical_dbs(&c, &["m1", "m2", "m3"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t03_a_stale_leader_is_fenced_by_term_and_never_falsely_acknowledges() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start("pb-stale", 3).await;
    let (old, term) = c.wait_group(2, "the first leader").await;
    let client = c.client();
    client.put("before", "1").await.unwrap();
    let old_addr = c.server(&old).addr();
    c.server(&old).signal(Signal::SIGSTOP);
    let (new, new_term) = c.wait_group_after(term, 1, "another leader while the old one is stopped").await;
    assert_ne!(new, old);
    assert!(new_term > term);
    c.server(&old).signal(Signal::SIGCONT);
    // Straight to the old leader, as a client with a stale view would: errors, never acks.
    let mut errors = Vec::new();
    for i in 0..20 {
        match client.put_at(&old_addr, &format!("stale-{i}"), "x").await {
            Ok(ack) => panic!("the stale leader acknowledged stale-{i} at {}", ack.entry),
            Err(e) => errors.push(e.to_string()),
        }
    }
    assert_eq!(errors.len(), 20);
    // It rejoins the new term as a follower; its unacknowledged entries were rolled back.
    c.wait_group_after(term, 2, "the old leader rejoins as a follower").await;
    for i in 0..20 {
        assert_eq!(client.get(&format!("stale-{i}")).await.unwrap(), None, "a rejected write surfaced");
    }
    assert_eq!(client.get("before").await.unwrap().as_deref(), Some("1"));
    assert_identical_dbs(&c, &["m1", "m2", "m3"]).await;
    eprintln!("stale leader errors, e.g.: {}", errors[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t04_a_crash_between_journal_and_db_is_reconciled_on_restart() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start_with("pb-failpoint", 3, |i| {
        if i == 0 { vec![("DATOM_FAILPOINT", "crash-before-apply:40")] } else { vec![] }
    })
    .await;
    c.wait_group(2, "the first leader").await;
    let load = Load::start(&c, 4, "fp");
    let status = tokio::task::block_in_place(|| c.server("m1").wait_exit(LONG));
    assert!(!status.success(), "m1 must die at the failpoint: {status:?}");
    let log = c.server("m1").log();
    let fired =
        log.lines().find(|l| l.contains("failpoint crash-before-apply fired")).unwrap_or_else(|| panic!("{log}"));
    // "failpoint crash-before-apply fired: db at T.I, entries ... journaled, not applied"
    let db_at = fired.split("db at ").nth(1).and_then(|r| r.split(',').next()).unwrap().to_string();
    // On disk: the db stops exactly where the crash hit; the journal holds the entries after it.
    let volume = c.volume.clone();
    let dir = c.server("m1").dir.join(&volume);
    let db: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("db.json")).unwrap()).unwrap();
    let db_applied = format!("{}.{}", db["applied"]["term"], db["applied"]["index"]);
    assert_eq!(db_applied, db_at, "the db on disk is where the crash left it");
    let (journal, _) = datom_pb::journal::Journal::open(&dir.join("journal.log")).unwrap();
    let journal_last = journal.last().index;
    drop(journal);
    let db_index = db["applied"]["index"].as_u64().unwrap();
    assert!(journal_last > db_index, "journal {journal_last} must be ahead of the db {db_index}");
    let before = load.acked();
    wait_for("writes continue without m1", LONG, || async { (load.acked() >= before + 100).then_some(()) }).await;
    // Restart without the failpoint: it detects the divergence and replays the journal.
    let m1 = c.server("m1");
    m1.env.clear();
    m1.restart();
    let expect = format!("db={db_at}");
    wait_for("m1 reconciles its db with its journal", LONG, || async {
        let log = c.servers[0].log();
        log.lines().any(|l| l.contains("the db is behind the journal") && l.contains(&expect)).then_some(())
    })
    .await;
    c.wait_group(2, "m1 rejoins").await;
    let acked = load.finish().await;
    assert_all_readable(&c, &acked).await;
    assert_identical_dbs(&c, &["m1", "m2", "m3"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t05_a_restarted_follower_syncs_then_becomes_functional_with_an_identical_db() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start("pb-follower", 3).await;
    let (leader, term) = c.wait_group(2, "the first leader").await;
    let follower = c.servers.iter().find(|s| s.member != leader).unwrap().member.clone();
    let client = c.client();
    for i in 0..100 {
        client.put(&format!("a-{i}"), &format!("{i}")).await.unwrap();
    }
    c.server(&follower).kill();
    for i in 0..300 {
        client.put(&format!("b-{i}"), &format!("{i}")).await.unwrap();
    }
    client.delete("a-7").await.unwrap();
    c.server(&follower).restart();
    let rec = wait_for("the follower is functional again", LONG, || async {
        let st = c.states().await.remove(&follower)?;
        (st.state == MemberState::FollowerFunctional && st.term >= term).then_some(st)
    })
    .await;
    let path: Vec<MemberState> = rec.transitions.iter().map(|t| t.to).collect();
    let syncing = path.iter().position(|s| *s == MemberState::FollowerSyncing).expect("went through FOLLOWER_SYNCING");
    let functional =
        path.iter().rposition(|s| *s == MemberState::FollowerFunctional).expect("ended FOLLOWER_FUNCTIONAL");
    assert!(syncing < functional, "SYNCING before FUNCTIONAL: {path:?}");
    assert_identical_dbs(&c, &["m1", "m2", "m3"]).await;
    assert_eq!(client.get("a-7").await.unwrap(), None);
    assert_eq!(client.get("b-299").await.unwrap().as_deref(), Some("299"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t06_quorum_loss_puts_the_leader_in_waiting_for_quorum_and_refuses_writes() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start("pb-quorum", 3).await;
    let (leader, _) = c.wait_group(2, "the first leader").await;
    let client = c.client();
    client.put("k1", "v1").await.unwrap();
    let followers: Vec<String> = c.servers.iter().filter(|s| s.member != leader).map(|s| s.member.clone()).collect();
    for f in &followers {
        c.server(f).kill();
    }
    wait_for("the leader waits for quorum", LONG, || async {
        let st = c.states().await.remove(&leader)?;
        (st.state == MemberState::LeaderWaitingForQuorum && !st.acking).then_some(())
    })
    .await;
    let out = datom(&c.zk, &["volume", "put", &c.volume, "k2", "v2"]);
    assert!(!out.status.success(), "a write without quorum must fail");
    let err = stderr(&out);
    assert!(err.contains("LEADER_WAITING_FOR_QUORUM"), "{err}");
    assert!(err.contains("1 of 3 replicas are functional and 2 are needed"), "{err}");
    match client.put("k2", "v2").await {
        Err(ClientError::Volume(e)) => assert!(e.to_string().contains("WAITING_FOR_QUORUM"), "{e}"),
        other => panic!("expected a quorum error, got {other:?}"),
    }
    // One follower back: quorum again.
    c.server(&followers[0]).restart();
    c.wait_group(1, "the leader has its quorum back").await;
    client.put("k3", "v3").await.unwrap();
    assert_eq!(client.get("k1").await.unwrap().as_deref(), Some("v1"));
    assert_eq!(client.get("k2").await.unwrap(), None, "the refused write was not applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t07_a_torn_journal_tail_is_truncated_and_logged_and_nothing_acknowledged_is_lost() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start("pb-torn", 3).await;
    let (leader, term) = c.wait_group(2, "the first leader").await;
    let load = Load::start(&c, 8, "torn");
    wait_for("writes acknowledged", LONG, || async { (load.acked() >= 300).then_some(()) }).await;
    c.server(&leader).kill();
    // Tear the last record of the killed leader's journal, as a crash mid-write would.
    let volume = c.volume.clone();
    let journal = c.server(&leader).dir.join(&volume).join("journal.log");
    let len = std::fs::metadata(&journal).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&journal).unwrap();
    f.set_len(len - 7).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let before = load.acked();
    c.wait_group_after(term, 1, "a new leader").await;
    wait_for("writes continue", LONG, || async { (load.acked() >= before + 200).then_some(()) }).await;
    c.server(&leader).restart();
    let s = c.servers.iter().find(|s| s.member == leader).unwrap();
    wait_for("the torn tail is detected and logged", LONG, || async {
        s.log().contains("journal tail is torn or corrupt: truncated").then_some(())
    })
    .await;
    c.wait_group(2, "the old leader rejoins").await;
    let acked = load.finish().await;
    assert_all_readable(&c, &acked).await;
    assert_identical_dbs(&c, &["m1", "m2", "m3"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t08_a_graceful_stop_hands_leadership_to_a_caught_up_follower_under_load() {
    let _serial = SERIAL.lock().await;
    let mut c = Cluster::start("pb-handoff", 3).await;
    let (leader, term) = c.wait_group(2, "the first leader").await;
    let load = Load::start(&c, 8, "handoff");
    wait_for("writes acknowledged before the stop", LONG, || async { (load.acked() >= 300).then_some(()) }).await;
    c.server(&leader).signal(Signal::SIGTERM);
    let before = load.acked();
    let (successor, new_term) = c.wait_group_after(term, 1, "the successor leads").await;
    assert_ne!(successor, leader);
    // A hand-off, not an election: the very next term, chosen by the old leader.
    assert_eq!(new_term, term + 1, "a hand-off takes exactly one term");
    let rec = c.term().await.unwrap();
    assert_eq!(rec.elector.as_deref(), Some(leader.as_str()), "the old leader chose its successor: {rec:?}");
    let status = tokio::task::block_in_place(|| c.server(&leader).wait_exit(LONG));
    assert!(status.success(), "a graceful stop exits 0: {status:?}");
    let log = c.server(&leader).log();
    assert!(log.contains("handing leadership off"), "{log}");
    wait_for("writes acknowledged by the successor", LONG, || async { (load.acked() >= before + 300).then_some(()) })
        .await;
    let acked = load.finish().await;
    assert_all_readable(&c, &acked).await;
    // The old leader comes back as a follower with the same data.
    c.server(&leader).spawn();
    c.wait_group_after(term, 2, "the old leader rejoins").await;
    assert_identical_dbs(&c, &["m1", "m2", "m3"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t09_a_secure_group_replicates_through_the_token_handshake() {
    let _serial = SERIAL.lock().await;
    let c = Cluster::start_secure("pb-secure", 3).await;
    let (leader, term) = c.wait_group(2, "a leader and two functional followers on a secure cluster").await;
    let client = c.client();
    for i in 0..50 {
        client.put(&format!("k-{i}"), &format!("v-{i}")).await.unwrap();
    }
    for i in 0..50 {
        assert_eq!(client.get(&format!("k-{i}")).await.unwrap(), Some(format!("v-{i}")));
    }
    let auth = c.auth_file();
    let out = datom(&c.zk, &["--auth-file", &auth, "volume", "put", &c.volume, "cli", "hello"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = datom(&c.zk, &["volume", "get", &c.volume, "cli"]);
    assert_eq!(stdout(&out).trim(), "hello", "{}", stderr(&out));
    // Every member journaled every write: the followers are as far as the leader.
    assert_identical_dbs(&c, &["m1", "m2", "m3"]).await;
    assert_eq!(c.term().await.unwrap().term, term, "no election was needed");
    for s in &c.servers {
        assert!(!s.log().contains("refused"), "{} refused a member's connection:\n{}", s.member, s.log());
    }
    eprintln!("secure group: {leader} leads term {term}");
}

/// One length-delimited JSON frame, as the replication port reads them.
fn frame(v: &serde_json::Value) -> Vec<u8> {
    let j = serde_json::to_vec(v).unwrap();
    [&(j.len() as u32).to_be_bytes()[..], &j].concat()
}

/// Connects to `addr`, writes `bytes`, and reads until the member closes the connection:
/// returns everything it sent back.
async fn send_raw(addr: &str, bytes: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut got = Vec::new();
    match tokio::time::timeout(LONG, s.read_to_end(&mut got)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => panic!("reading from {addr}: {e} (after {got:?})"),
        Err(_) => panic!("{addr} did not close the connection"),
    }
    got
}

/// The member's answer to a hello: exactly one frame, then the close.
fn only_answer(got: &[u8]) -> serde_json::Value {
    assert!(got.len() >= 4, "no answer: {got:?}");
    let len = u32::from_be_bytes(got[..4].try_into().unwrap()) as usize;
    assert_eq!(got.len(), 4 + len, "one answer frame and nothing else: {:?}", String::from_utf8_lossy(got));
    serde_json::from_slice(&got[4..]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_forged_replication_peers_are_refused_and_change_nothing() {
    use datom_pb::rpc::{AppendRequest, PbPeerClient, PbPeerRequest, PbPeerResponse, PrepareRequest};
    use datom_pb::types::{EntryId, MemberRecord};
    let _serial = SERIAL.lock().await;
    let c = Cluster::start_secure("pb-forged", 3).await;
    let (leader, term) = c.wait_group(2, "the first leader").await;
    let client = c.client();
    client.put("before", "1").await.unwrap();
    let mut peers = BTreeMap::new();
    for s in &c.servers {
        let rec = c.coord.get::<MemberRecord>(&paths::group_member(&c.volume, &s.member)).await.unwrap().unwrap();
        peers.insert(s.member.clone(), rec.value.address);
    }
    let wrong = datom_common::auth::AuthFile::generate().token();

    // The port is the replication port: with the cluster token, a message gets through (to a
    // group the member does not host, which changes nothing).
    let addr = &peers[&leader];
    let t = datom_pb::net::dial_peer(addr, Duration::from_secs(5), c.token.as_deref()).await.unwrap();
    let ok = PbPeerClient::new(Default::default(), t).spawn();
    let req = PrepareRequest { group: "no-such-group".into(), term: 1, elector: "x".into() };
    let r = ok.prepare(datom_common::rpc::ctx(Duration::from_secs(5)), req).await.unwrap();
    assert!(matches!(r, Err(datom_pb::PbError::UnknownGroup(_))), "{r:?}");

    // A wrong token, and no token: refused, with the reason.
    for (hello, why) in [
        (serde_json::json!({"schema": 1, "token": wrong}), "not derived from this cluster's secret"),
        (serde_json::json!({"schema": 1, "token": null}), "presented no token"),
    ] {
        let answer = only_answer(&send_raw(addr, &frame(&hello)).await);
        assert_eq!(answer["ok"], false, "{answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains("wrong or missing cluster token") && error.contains(why), "{error}");
        assert!(error.contains("--auth-file"), "{error}");
    }

    // A connection that sends nothing: the member keeps serving meanwhile, then drops it.
    {
        use tokio::io::AsyncReadExt as _;
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        client.put("during-silence", "1").await.unwrap();
        let t =
            datom_pb::net::dial_peer::<PbPeerRequest, PbPeerResponse>(addr, Duration::from_secs(5), c.token.as_deref())
                .await;
        assert!(t.is_ok(), "a new member connection is handshaken meanwhile: {:?}", t.err());
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(LONG, silent.read(&mut buf)).await.expect("the silent connection is dropped");
        assert!(matches!(n, Ok(0) | Err(_)), "dropped without an answer: {n:?}");
    }

    // Forged election and append messages with a huge term, pipelined right behind a hello
    // with a wrong token, to every member: only the refusal comes back.
    let huge = u64::MAX / 2;
    for (member, addr) in &peers {
        let ctx = datom_common::rpc::ctx(Duration::from_secs(5));
        let prepare = PbPeerRequest::Prepare {
            req: PrepareRequest { group: c.volume.clone(), term: huge, elector: "mallory".into() },
        };
        let append = PbPeerRequest::Append {
            req: AppendRequest {
                group: c.volume.clone(),
                term: huge,
                leader: "mallory".into(),
                prev: EntryId { term: 0, index: 0 },
                entries: vec![],
                commit: 0,
                leader_last: 0,
            },
        };
        let mut bytes = frame(&serde_json::json!({"schema": 1, "token": wrong}));
        for (id, message) in [(1, prepare), (2, append)] {
            let msg = tarpc::ClientMessage::Request(tarpc::Request { context: ctx, id, message });
            bytes.extend(frame(&serde_json::to_value(&msg).unwrap()));
        }
        let answer = only_answer(&send_raw(addr, &bytes).await);
        assert_eq!(answer["ok"], false, "{member}: {answer}");
        let s = c.servers.iter().find(|s| s.member == *member).unwrap();
        wait_for("the member logs the refusal", LONG, || async {
            s.log().contains("replication connection refused").then_some(())
        })
        .await;
    }

    // Nothing changed: same term and leader, every member still in it, writes acknowledged.
    for i in 0..20 {
        client.put(&format!("after-{i}"), "1").await.unwrap();
    }
    let rec = c.term().await.unwrap();
    assert_eq!((rec.term, rec.leader.as_deref()), (term, Some(leader.as_str())), "the term record is unchanged");
    let states = c.states().await;
    assert_eq!(states.len(), 3);
    for (m, st) in &states {
        assert_eq!(st.term, term, "{m} kept the term: {st:?}");
        assert!(
            matches!(st.state, MemberState::LeaderFunctional | MemberState::FollowerFunctional),
            "{m} is still functional: {st:?}"
        );
    }
    assert_eq!(client.get("before").await.unwrap().as_deref(), Some("1"));
    assert_eq!(client.get("after-19").await.unwrap().as_deref(), Some("1"));
    assert_identical_dbs(&c, &["m1", "m2", "m3"]).await;
}
