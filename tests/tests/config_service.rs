//! Config service, `datom addnode` and node agent bootup (issue 4): real ZooKeeper, real
//! binaries.

use std::time::{Duration, Instant};

use datom_common::paths;
use datom_common::records::{HardwareReport, LiveRecord, NodeRecord};
use datom_common::rpc::{AddNodeRequest, ConfigError, ctx, dial_config_service};
use datom_tests::{addnode, config_service, coord, datom, fresh_zk, node_agent, stderr, stdout, wait_active, wait_for};
use nix::sys::signal::Signal;

fn fake_hw(machine: &str) -> HardwareReport {
    HardwareReport {
        machine_id: machine.into(),
        hostname: "h".into(),
        os: "Debian 12".into(),
        kernel: "6.1".into(),
        cpu_model: "test".into(),
        arch: "x86_64".into(),
        cpus: 4,
        memory_bytes: 8 << 30,
        disks: vec![],
        nics: vec![],
    }
}

async fn try_add(addr: &str, name: &str, machine: &str) -> Result<NodeRecord, String> {
    let client = dial_config_service(addr, Duration::from_millis(500)).await.map_err(|e| e.to_string())?;
    let req = AddNodeRequest { name: name.into(), hardware: fake_hw(machine), services: vec![] };
    match client.add_node(ctx(Duration::from_secs(2)), req, None).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(format!("{e:?}")),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test]
async fn t01_config_service_refuses_a_fresh_zookeeper_without_init() {
    let zk = fresh_zk("cs-fresh").await;
    let (mut cs, _) = config_service(&zk, "cs-a", &[]);
    let status = cs.wait_exit(Duration::from_secs(20)).expect("exits");
    assert!(!status.success());
    assert!(cs.output().contains("Run `datom init` first"), "{}", cs.output());
    let c = coord(&zk).await;
    assert!(c.exists(paths::ROOT).await.unwrap().is_none(), "nothing written");

    // With --init it creates the tree and becomes active.
    let (_cs, _) = config_service(&zk, "cs-b", &["--init"]);
    let (id, _) = wait_active(&c, Duration::from_secs(20)).await;
    assert_eq!(id, "cs-b");
}

#[tokio::test]
async fn t02_addnode_registers_and_stamps_node_json() {
    let zk = fresh_zk("addnode").await;
    assert!(datom(&zk, &["init"]).status.success());
    let (_cs, _) = config_service(&zk, "cs-a", &[]);
    let c = coord(&zk).await;
    wait_active(&c, Duration::from_secs(20)).await;
    let root = tempfile::tempdir().unwrap();
    let out = addnode(&zk, root.path(), "n1", &["--services", "web,db"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed: NodeRecord = serde_json::from_str(stdout(&out).trim()).unwrap();
    let stamped: NodeRecord = serde_json::from_slice(&std::fs::read(root.path().join("node.json")).unwrap()).unwrap();
    assert_eq!(printed, stamped);
    assert_eq!(stamped.services, vec!["web", "db"]);

    // A third-party client reads documented JSON.
    let server = zk.split('/').next().unwrap();
    let chroot = &zk[server.len()..];
    let raw = zookeeper_client::Client::connect(server).await.unwrap();
    let (data, _) = raw.get_data(&format!("{chroot}/datom/nodes/n1")).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&data).unwrap();
    assert_eq!(v["schema"], 1);
    assert_eq!(v["name"], "n1");
    assert!(v["hardware"]["cpus"].as_u64().unwrap() > 0);
    assert!(v["hardware"]["memory_bytes"].as_u64().unwrap() > 0);
    assert!(v["machine_id"].as_str().is_some_and(|m| !m.is_empty()));
}

#[tokio::test]
async fn t03_addnode_is_idempotent_and_names_are_per_machine() {
    let zk = fresh_zk("idem").await;
    assert!(datom(&zk, &["init"]).status.success());
    let (_cs, _) = config_service(&zk, "cs-a", &[]);
    let c = coord(&zk).await;
    wait_active(&c, Duration::from_secs(20)).await;
    let root = tempfile::tempdir().unwrap();
    let first = addnode(&zk, root.path(), "n1", &["--machine-id", "machine-a"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let second = addnode(&zk, root.path(), "n1", &["--machine-id", "machine-a"]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert_eq!(stdout(&first), stdout(&second), "re-adding returns the same record");

    let other = tempfile::tempdir().unwrap();
    let taken = addnode(&zk, other.path(), "n1", &["--machine-id", "machine-b"]);
    assert!(!taken.status.success());
    assert!(stderr(&taken).contains("is taken by machine machine-a"), "{}", stderr(&taken));
    assert!(!other.path().join("node.json").exists(), "nothing stamped on a refused add");

    // Bad input: clear errors, nothing changes.
    let bad = addnode(&zk, other.path(), "bad/name", &[]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("must not contain '/'"), "{}", stderr(&bad));
    let ro = std::path::Path::new("/proc/datom-not-writable");
    let out = addnode(&zk, ro, "n2", &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("is not writable"), "{}", stderr(&out));
    assert_eq!(c.children(paths::NODES).await.unwrap(), vec!["n1"]);
}

#[tokio::test]
async fn t04_addnode_errors_without_config_service_or_zookeeper() {
    let zk = fresh_zk("noactive").await;
    let root = tempfile::tempdir().unwrap();
    let out = addnode(&zk, root.path(), "n1", &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("run `datom init` first"), "{}", stderr(&out));
    assert!(datom(&zk, &["init"]).status.success());
    let out = addnode(&zk, root.path(), "n1", &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no active config service"), "{}", stderr(&out));
    let dead = format!("127.0.0.1:{}", datom_tests::harness::free_port());
    let out = addnode(&dead, root.path(), "n1", &[]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains(&dead), "{}", stderr(&out));
}

#[tokio::test]
async fn t05_standby_takes_over_after_sigkill_within_session_timeout_plus_1s() {
    let zk = fresh_zk("failover").await;
    assert!(datom(&zk, &["init"]).status.success());
    let c = coord(&zk).await;
    let (a, a_addr) = config_service(&zk, "cs-a", &[]);
    let (id, _) = wait_active(&c, Duration::from_secs(20)).await;
    assert_eq!(id, "cs-a");
    let (_b, b_addr) = config_service(&zk, "cs-b", &[]);
    // The standby answers NotActive and points at the active one.
    let err = wait_for("standby answers", Duration::from_secs(20), || async {
        try_add(&b_addr, "x", "m").await.err().filter(|e| e.contains("NotActive"))
    })
    .await;
    assert!(err.contains(&a_addr), "{err}");

    let t = Instant::now();
    a.signal(Signal::SIGKILL);
    let rec = wait_for("add_node on the new active", Duration::from_secs(15), || async {
        try_add(&b_addr, "after-failover", "m1").await.ok()
    })
    .await;
    let took = t.elapsed();
    assert_eq!(rec.registered_by, "cs-b");
    let bound = Duration::from_millis(2000) + Duration::from_secs(1);
    assert!(took <= bound, "failover took {took:?}, bound {bound:?}");
    drop(a);
}

#[tokio::test]
async fn t06_paused_active_accepts_no_mutations_once_it_lost_the_lock() {
    let zk = fresh_zk("pause").await;
    assert!(datom(&zk, &["init"]).status.success());
    let c = coord(&zk).await;
    let (a, a_addr) = config_service(&zk, "cs-a", &[]);
    wait_active(&c, Duration::from_secs(20)).await;
    let (_b, b_addr) = config_service(&zk, "cs-b", &[]);
    wait_for("standby up", Duration::from_secs(20), || async { try_add(&b_addr, "x", "m").await.err() }).await;
    // Open the connection to A before pausing it, so the request is queued while it sleeps.
    let client = dial_config_service(&a_addr, Duration::from_secs(2)).await.unwrap();
    a.signal(Signal::SIGSTOP);
    let (id, _) = wait_for("cs-b active", Duration::from_secs(20), || async {
        let (id, addr) = wait_active(&c, Duration::from_secs(20)).await;
        (id == "cs-b").then_some((id, addr))
    })
    .await;
    assert_eq!(id, "cs-b");
    // Send a mutation to the paused old active, then wake it: it must refuse.
    let req = AddNodeRequest { name: "split-brain".into(), hardware: fake_hw("m9"), services: vec![] };
    let call = tokio::spawn(async move { client.add_node(ctx(Duration::from_secs(10)), req, None).await });
    // The request is queued in the paused process's socket before it wakes.
    let port: u16 = a_addr.rsplit(':').next().unwrap().parse().unwrap();
    wait_for("the request queued in A's socket", Duration::from_secs(10), || async {
        (datom_tests::tcp_rx_queued(port) > 0).then_some(())
    })
    .await;
    a.signal(Signal::SIGCONT);
    let res = call.await.unwrap();
    match res {
        Ok(Ok(r)) => panic!("deposed active registered {r:?}"),
        // Refused: NotActive, or a coordination error from the session it just lost.
        Ok(Err(ConfigError::NotActive { .. } | ConfigError::CoordinationUnavailable(_))) | Err(_) => {}
        Ok(Err(e)) => panic!("unexpected error {e:?}"),
    }
    assert!(c.exists(&paths::node("split-brain")).await.unwrap().is_none(), "a deposed active wrote");
    // And from then on it stays a standby that points at B.
    let err = wait_for("A refuses with NotActive", Duration::from_secs(10), || async {
        try_add(&a_addr, "later", "m8").await.err().filter(|e| e.contains("NotActive"))
    })
    .await;
    assert!(err.contains(&b_addr), "{err}");
    assert!(c.exists(&paths::node("later")).await.unwrap().is_none());
}

#[tokio::test]
async fn t07_agent_refuses_missing_or_corrupt_node_json() {
    let zk = fresh_zk("agent-bad").await;
    assert!(datom(&zk, &["init"]).status.success());
    let root = tempfile::tempdir().unwrap();
    let mut agent = node_agent(&zk, root.path(), "agent-missing", &[]);
    assert!(!agent.wait_exit(Duration::from_secs(10)).expect("exits").success());
    assert!(
        agent.output().contains("node.json is missing") && agent.output().contains("datom addnode"),
        "{}",
        agent.output()
    );
    std::fs::write(root.path().join("node.json"), b"{\"name\": 12").unwrap();
    let mut agent = node_agent(&zk, root.path(), "agent-corrupt", &[]);
    assert!(!agent.wait_exit(Duration::from_secs(10)).expect("exits").success());
    assert!(
        agent.output().contains("node.json is corrupt") && agent.output().contains("datom addnode"),
        "{}",
        agent.output()
    );
}

async fn live_owner(c: &datom_common::Coord, node: &str) -> Option<(i64, LiveRecord)> {
    let v = c.get::<LiveRecord>(&paths::node_live(node)).await.ok().flatten()?;
    Some((v.ephemeral_owner, v.value))
}

#[tokio::test]
async fn t08_agent_publishes_live_and_removes_it_on_sigterm_at_once() {
    let zk = fresh_zk("agent-live").await;
    assert!(datom(&zk, &["init"]).status.success());
    let (_cs, _) = config_service(&zk, "cs-a", &[]);
    let c = coord(&zk).await;
    wait_active(&c, Duration::from_secs(20)).await;
    let root = tempfile::tempdir().unwrap();
    assert!(addnode(&zk, root.path(), "n1", &[]).status.success());
    let mut agent = node_agent(&zk, root.path(), "agent-n1", &[]);
    let (_, live) = wait_for("live", Duration::from_secs(20), || live_owner(&c, "n1")).await;
    assert_eq!(live.pid, agent.pid());
    // The agent's API answers at the published address.
    let client = datom_common::rpc::dial_node_agent(&live.address, Duration::from_secs(2)).await.unwrap();
    let info = client.info(ctx(Duration::from_secs(2))).await.unwrap();
    assert_eq!(info.node.name, "n1");
    // Properties are live-reloaded.
    c.ensure_path(&paths::node_properties("n1")).await.unwrap();
    c.set(&paths::node_properties("n1"), &serde_json::json!({"rack": "r7"}), None).await.unwrap();
    wait_for("property visible", Duration::from_secs(10), || async {
        let p = client.properties(ctx(Duration::from_secs(2))).await.ok()?;
        (p.get("node")?.get("rack")? == "r7").then_some(())
    })
    .await;
    // `datom nodes` shows it live.
    let out = datom(&zk, &["nodes", "--json"]);
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v[0]["name"], "n1");
    assert_eq!(v[0]["live"], true);

    let t = Instant::now();
    agent.signal(Signal::SIGTERM);
    wait_for("live removed", Duration::from_secs(5), || async { live_owner(&c, "n1").await.is_none().then_some(()) })
        .await;
    assert!(t.elapsed() < Duration::from_millis(1500), "removed at once, not at session timeout: {:?}", t.elapsed());
    assert!(agent.wait_exit(Duration::from_secs(5)).expect("exits").success());
    let out = datom(&zk, &["nodes", "--json"]);
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v[0]["live"], false);
}

#[tokio::test]
async fn t09_agent_sigkill_expires_and_pause_republishes() {
    let zk = fresh_zk("agent-kill").await;
    assert!(datom(&zk, &["init"]).status.success());
    let (_cs, _) = config_service(&zk, "cs-a", &[]);
    let c = coord(&zk).await;
    wait_active(&c, Duration::from_secs(20)).await;
    let root = tempfile::tempdir().unwrap();
    assert!(addnode(&zk, root.path(), "n1", &[]).status.success());

    // SIGKILL: the ephemeral goes when the session times out.
    let agent = node_agent(&zk, root.path(), "agent-kill", &[]);
    wait_for("live", Duration::from_secs(20), || live_owner(&c, "n1")).await;
    let t = Instant::now();
    agent.signal(Signal::SIGKILL);
    wait_for("live expired", Duration::from_secs(10), || async { live_owner(&c, "n1").await.is_none().then_some(()) })
        .await;
    assert!(t.elapsed() >= Duration::from_millis(1000), "gone too early for a session expiry: {:?}", t.elapsed());
    drop(agent);

    // Session expiry (paused past the timeout): the agent publishes again on a new session.
    let agent = node_agent(&zk, root.path(), "agent-pause", &[]);
    let (owner, _) = wait_for("live again", Duration::from_secs(20), || live_owner(&c, "n1")).await;
    agent.signal(Signal::SIGSTOP);
    wait_for("expired while paused", Duration::from_secs(10), || async {
        live_owner(&c, "n1").await.is_none().then_some(())
    })
    .await;
    agent.signal(Signal::SIGCONT);
    let (new_owner, live) = wait_for("re-published", Duration::from_secs(20), || live_owner(&c, "n1")).await;
    assert_ne!(new_owner, owner, "a new session owns the re-published live node");
    assert_eq!(live.pid, agent.pid());
}

#[tokio::test]
async fn t10_addnode_asks_on_a_terminal() {
    let zk = fresh_zk("interactive").await;
    assert!(datom(&zk, &["init"]).status.success());
    let (_cs, _) = config_service(&zk, "cs-a", &[]);
    let c = coord(&zk).await;
    wait_active(&c, Duration::from_secs(20)).await;
    let root = tempfile::tempdir().unwrap();
    // `script` gives datom a real terminal; the answers arrive on it line by line.
    let answers = format!("{}\ny\nterm-node\nweb,db\n", root.path().display());
    let cmd = format!("{} --zk {zk} addnode", datom_tests::bin("datom").display());
    let mut child = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("script(1) from util-linux");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(answers.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for q in ["enter root", "discovered hardware", "service to run"] {
        assert!(text.contains(q), "missing prompt {q:?} in:\n{text}");
    }
    let rec: NodeRecord = serde_json::from_slice(&std::fs::read(root.path().join("node.json")).unwrap()).unwrap();
    assert_eq!(rec.name, "term-node");
    assert_eq!(rec.services, vec!["web", "db"]);
}
