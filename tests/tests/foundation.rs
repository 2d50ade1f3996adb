//! Foundation (issue 3): init, inspection, the coordination client's guarantees, and the
//! harness itself — all against real ZooKeeper.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use datom_common::coord::watch::{TreeEvent, WatchEvent};
use datom_common::coord::{CoordError, Mode, Op, SessionState};
use datom_common::paths;
use datom_tests::{coord, datom, fresh_zk, harness, stderr, stdout, test_config, wait_for};

fn snapshot_versions(tree: &BTreeMap<String, datom_common::coord::watch::NodeData>) -> Vec<(String, i32, Vec<u8>)> {
    tree.iter().map(|(p, n)| (p.clone(), n.version, n.data.clone())).collect()
}

#[tokio::test]
async fn t01_init_creates_exactly_the_documented_tree_and_is_idempotent() {
    let zk = fresh_zk("init").await;
    let out = datom(&zk, &["init", "--cluster", "prod-1"]);
    assert!(out.status.success(), "init failed: {}", stderr(&out));
    assert!(stdout(&out).contains("initialized datom cluster \"prod-1\""), "{}", stdout(&out));

    let c = coord(&zk).await;
    let tree = c.list_tree(paths::ROOT).await.unwrap();
    let expected: Vec<&str> = vec![
        "/datom",
        "/datom/configservice",
        "/datom/groups",
        "/datom/nodes",
        "/datom/properties",
        "/datom/redundancy",
        "/datom/services",
    ];
    assert_eq!(tree.keys().map(String::as_str).collect::<Vec<_>>(), expected);
    // Every record is JSON with a schema field where it is a record.
    let root: serde_json::Value = serde_json::from_slice(&tree["/datom"].data).unwrap();
    assert_eq!(root["name"], "prod-1");
    assert_eq!(root["schema"], 1);
    let cs: serde_json::Value = serde_json::from_slice(&tree["/datom/configservice"].data).unwrap();
    assert_eq!(cs["schema"], 1);

    let before = snapshot_versions(&tree);
    let again = datom(&zk, &["init", "--cluster", "other"]);
    assert!(again.status.success(), "second init must exit 0: {}", stderr(&again));
    assert!(stdout(&again).contains("already initialized"), "{}", stdout(&again));
    let after = snapshot_versions(&c.list_tree(paths::ROOT).await.unwrap());
    assert_eq!(before, after, "second init changed the tree");
}

#[tokio::test]
async fn t02_get_and_tree_print_records() {
    let zk = fresh_zk("inspect").await;
    assert!(datom(&zk, &["init"]).status.success());
    let out = datom(&zk, &["get", "/datom"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("get prints pretty JSON");
    assert_eq!(v["name"], "datom");

    let out = datom(&zk, &["get", "/datom", "--json"]);
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["path"], "/datom");
    assert_eq!(v["data"]["name"], "datom");
    assert_eq!(stdout(&out).trim().lines().count(), 1, "--json is one line");

    let out = datom(&zk, &["tree", "--json"]);
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert!(v.get("/datom/nodes").is_some());

    let out = datom(&zk, &["tree"]);
    assert!(stdout(&out).contains("configservice"));

    let missing = datom(&zk, &["get", "/datom/nope"]);
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("/datom/nope does not exist"), "{}", stderr(&missing));
    let bad = datom(&zk, &["get", "datom/../x"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("must start with '/'"), "{}", stderr(&bad));
}

#[tokio::test]
async fn t03_unreachable_zookeeper_fails_within_the_connect_timeout_naming_the_address() {
    let port = harness::free_port();
    let addr = format!("127.0.0.1:{port}");
    let start = Instant::now();
    let out = std::process::Command::new(datom_tests::bin("datom"))
        .args(["--zk", &addr, "--connect-timeout", "2000", "init"])
        .output()
        .unwrap();
    let took = start.elapsed();
    assert!(!out.status.success());
    assert!(took < Duration::from_secs(4), "took {took:?}");
    let err = stderr(&out);
    assert!(err.contains(&addr), "error must name the address: {err}");
    assert!(err.contains("Check that ZooKeeper is running"), "{err}");

    // Same through the library, with a blackhole-ish address: a paused server.
    let mut server = harness::ZkServer::start(harness::ServerOptions::default()).unwrap();
    server.pause();
    let start = Instant::now();
    let res = datom_common::Coord::connect(
        test_config(&server.connect_string()).with_connect_timeout(Duration::from_millis(1500)),
    )
    .await;
    assert!(matches!(res, Err(CoordError::Connect { .. })), "{res:?}");
    assert!(start.elapsed() < Duration::from_secs(3), "took {:?}", start.elapsed());
    server.resume();
    server.kill();
}

#[tokio::test]
async fn t04_invalid_names_are_rejected_with_the_rule_and_change_nothing() {
    let zk = fresh_zk("names").await;
    for (name, rule) in [
        ("a/b", "must not contain '/'"),
        ("..", "must not be '.' or '..'"),
        ("-x", "must start with an ASCII letter or digit"),
        ("a.b", "allowed characters are"),
    ] {
        let flag = format!("--cluster={name}");
        let out = datom(&zk, &["init", &flag]);
        assert!(!out.status.success(), "{name} accepted");
        assert!(stderr(&out).contains(rule), "{name}: {}", stderr(&out));
    }
    let c = coord(&zk).await;
    assert!(c.exists(paths::ROOT).await.unwrap().is_none(), "a rejected init wrote something");
}

#[tokio::test]
async fn t05_compare_and_set_with_stale_version_conflicts_and_changes_nothing() {
    let zk = fresh_zk("cas").await;
    let c = coord(&zk).await;
    c.create("/rec", &serde_json::json!({"v": 1}), Mode::Persistent).await.unwrap();
    let cur = c.get::<serde_json::Value>("/rec").await.unwrap().unwrap();
    let v2 = c.set("/rec", &serde_json::json!({"v": 2}), Some(cur.version)).await.unwrap();
    let err = c.set("/rec", &serde_json::json!({"v": 3}), Some(cur.version)).await.unwrap_err();
    assert!(matches!(err, CoordError::Conflict { .. }), "{err:?}");
    assert!(err.to_string().contains("nothing was written"));
    let now = c.get::<serde_json::Value>("/rec").await.unwrap().unwrap();
    assert_eq!(now.value["v"], 2);
    assert_eq!(now.version, v2);

    // A multi-op with one stale check applies nothing.
    let err = c
        .multi(&[
            Op::Create { path: "/rec2".into(), data: b"{}".to_vec(), mode: Mode::Persistent },
            Op::Check { path: "/rec".into(), version: cur.version },
        ])
        .await
        .unwrap_err();
    assert!(matches!(err, CoordError::Conflict { ref path, .. } if path == "/rec"), "{err:?}");
    assert!(c.exists("/rec2").await.unwrap().is_none());

    // Oversized records are refused before any write.
    let big = serde_json::json!({ "blob": "x".repeat(1_100_000) });
    let err = c.create("/big", &big, Mode::Persistent).await.unwrap_err();
    assert!(matches!(err, CoordError::TooLarge { .. }), "{err:?}");
    assert!(c.exists("/big").await.unwrap().is_none());
}

#[tokio::test]
async fn t06_session_expiry_restores_ephemerals_and_watches() {
    let zk = fresh_zk("expiry").await;
    let c = coord(&zk).await;
    c.ensure_path("/w").await.unwrap();
    let _eph = c.register_ephemeral("/w/live", b"{\"me\":1}".to_vec(), Duration::from_secs(5)).await.unwrap();
    let mut stream = c.watch("/w", true);
    assert_eq!(stream.next().await, Some(WatchEvent::Resync));
    let cache = c.tree_cache("/w");
    cache.wait_synced().await;
    let mut cache_events = cache.subscribe();
    let first = c.status();
    assert_eq!(first.state, SessionState::Connected);

    harness::expire_session(&zk, c.session_info().await.unwrap()).await.unwrap();

    let mut st = c.watch_status();
    tokio::time::timeout(Duration::from_secs(10), st.wait_for(|s| s.epoch == 1 && s.state == SessionState::Connected))
        .await
        .expect("a new session within 10 s")
        .unwrap();
    let new_session = c.status().session_id;
    assert_ne!(new_session, first.session_id);

    // The registered ephemeral exists again, owned by the new session.
    wait_for("ephemeral re-created", Duration::from_secs(10), || async {
        let v = c.get_raw("/w/live").await.ok().flatten()?;
        (v.1.ephemeral_owner == new_session).then_some(())
    })
    .await;

    // The persistent watch delivers changes made after the new session.
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(ev) = stream.next().await {
            if ev == WatchEvent::Resync {
                return;
            }
        }
    })
    .await
    .expect("the watch re-registers on the new session and asks for a re-list");
    c.create("/w/after", &serde_json::json!({"x": 1}), Mode::Persistent).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(WatchEvent::Node { path, .. }) = stream.next().await
                && path == "/w/after"
            {
                return path;
            }
        }
    })
    .await
    .expect("event for a change after the new session");
    assert_eq!(ev, "/w/after");

    // The tree cache saw it too and equals ZooKeeper.
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(TreeEvent::Upsert { path, .. }) = cache_events.recv().await
                && path == "/w/after"
            {
                return;
            }
        }
    })
    .await
    .expect("tree cache event");
    let truth = c.list_tree("/w").await.unwrap();
    wait_for("cache equals ZooKeeper", Duration::from_secs(5), || async { (cache.snapshot() == truth).then_some(()) })
        .await;
    c.close().await;
}

#[tokio::test]
async fn t07_graceful_close_deletes_ephemerals_at_once() {
    let zk = fresh_zk("close").await;
    let a = coord(&zk).await;
    let b = coord(&zk).await;
    a.ensure_path("/e").await.unwrap();
    let _h = a.register_ephemeral("/e/x", b"{}".to_vec(), Duration::from_secs(5)).await.unwrap();
    assert!(b.exists("/e/x").await.unwrap().is_some());
    let t = Instant::now();
    a.close().await;
    wait_for("ephemeral gone", Duration::from_millis(1500), || async {
        b.exists("/e/x").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(t.elapsed() < b.negotiated_timeout(), "deleted at once, not at session timeout");
}

#[tokio::test]
async fn t08_ensemble_leader_kill_keeps_the_session_and_writes_resume() {
    let mut ens = tokio::task::spawn_blocking(|| harness::ZkEnsemble::start(3, harness::ServerOptions::default()))
        .await
        .unwrap()
        .expect("3-member ensemble");
    let conn = ens.connect_string();
    let c = datom_common::Coord::connect(test_config(&conn).with_session_timeout(Duration::from_millis(4000)))
        .await
        .unwrap();
    c.create("/k", &serde_json::json!({"n": 0}), Mode::Persistent).await.unwrap();
    let session = c.status().session_id;
    let leader = ens.leader().expect("a leader");
    ens.member(leader).kill();
    // Writes succeed again within a bound, on the same session.
    let mut n = 1;
    wait_for("a write after the leader kill", Duration::from_secs(30), || {
        n += 1;
        let c = c.clone();
        async move { c.set("/k", &serde_json::json!({"n": n}), None).await.ok() }
    })
    .await;
    assert_eq!(c.status().session_id, session, "the session survived");
    assert_eq!(c.status().epoch, 0, "no new session was needed");
    let new_leader = tokio::task::spawn_blocking(move || {
        let l = ens.wait_leader(Duration::from_secs(30));
        (l, ens)
    })
    .await
    .unwrap();
    assert!(new_leader.0.is_some_and(|l| l != leader));
    c.close().await;
}

#[tokio::test]
async fn t09_harness_pause_resume_restart() {
    let mut s = tokio::task::spawn_blocking(|| harness::ZkServer::start(harness::ServerOptions::default()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(harness::four_letter(s.port(), "ruok").unwrap(), "imok");
    s.pause();
    // SIGSTOP takes effect asynchronously; a stopped JVM stops answering.
    wait_for("paused server stops answering", Duration::from_secs(10), || async {
        harness::four_letter(s.port(), "ruok").map(|r| r.is_empty()).unwrap_or(true).then_some(())
    })
    .await;
    s.resume();
    wait_for("resumed", Duration::from_secs(5), || async {
        (harness::four_letter(s.port(), "ruok").ok()? == "imok").then_some(())
    })
    .await;
    let pid = s.pid().unwrap();
    let s = tokio::task::spawn_blocking(move || {
        s.restart().unwrap();
        s
    })
    .await
    .unwrap();
    assert_ne!(s.pid().unwrap(), pid);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat")).map(|t| t.contains(" Z ")).unwrap_or(true)
    );
    drop(s);
}
