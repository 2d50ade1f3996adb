//! `datom up`: the README's run command brings up ZooKeeper, a config service with the
//! dashboard and N node agents, shows the status, and on Ctrl-C (or its own death) leaves no
//! process behind.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use datom_tests::{bin, harness, http_get, pid_running, processes_mentioning};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

fn wait_gone(pids: &[u32], needle: &str, timeout: Duration) {
    let start = Instant::now();
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|p| pid_running(*p)).collect();
        let mentioning = processes_mentioning(needle);
        if left.is_empty() && mentioning.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "still running after {timeout:?}: daemons {left:?}, processes mentioning {needle}: {mentioning:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `datom up` in its own process group (as a terminal would) and reads its output until
/// it says it is up.
fn start_up(state: &std::path::Path, port: u16, nodes: u32) -> (std::process::Child, String) {
    let mut child = Command::new(bin("datom"))
        .args(["up", "--state-dir", state.to_str().unwrap(), "--zk-port", &port.to_string()])
        .args(["--nodes", &nodes.to_string(), "--http", "127.0.0.1:0", "--color", "never"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut out = String::new();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let start = Instant::now();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            panic!("datom up exited early; output so far:\n{out}");
        }
        out.push_str(&line);
        if line.contains("Press Ctrl-C to stop") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "datom up not ready:\n{out}");
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in reader.lines() {});
    (child, out)
}

fn daemon_pids(state: &std::path::Path) -> Vec<u32> {
    let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(state.join("up.json")).unwrap()).unwrap();
    rec["daemons"].as_array().unwrap().iter().map(|d| d["pid"].as_u64().unwrap() as u32).collect()
}

#[test]
fn up_with_two_nodes_shows_them_serves_the_dashboard_and_ctrl_c_leaves_nothing_behind() {
    let state = tempfile::tempdir().unwrap();
    let port = harness::free_port();
    let (mut child, out) = start_up(state.path(), port, 2);
    assert!(out.contains("2/2 nodes live"), "status shown:\n{out}");
    for node in ["n1", "n2"] {
        assert!(out.lines().any(|l| l.trim_start().starts_with(node) && l.contains("live")), "{node} live:\n{out}");
    }
    assert!(out.contains(&format!("127.0.0.1:{port}")), "{out}");
    let dashboard = out
        .lines()
        .find_map(|l| l.strip_prefix("dashboard: http://"))
        .map(|a| a.trim_end_matches('/').to_string())
        .unwrap_or_else(|| panic!("dashboard URL printed:\n{out}"));

    // The dashboard answers, with both nodes, and so does its JSON API.
    let (code, _, page) = http_get(&dashboard, "/").unwrap();
    assert_eq!(code, 200);
    assert!(page.contains("data-node=\"n1\" data-state=\"live\""), "{page}");
    assert!(page.contains("data-node=\"n2\" data-state=\"live\""), "{page}");
    let (code, _, json) = http_get(&dashboard, "/api/nodes").unwrap();
    assert_eq!(code, 200);
    let nodes: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(nodes.as_array().unwrap().len(), 2);

    // `datom status` against it agrees.
    let zk = format!("127.0.0.1:{port}");
    let st = datom_tests::datom(&zk, &["status", "--json"]);
    assert!(st.status.success(), "{}", datom_tests::stderr(&st));
    let doc: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    let live = doc["nodes"].as_array().unwrap().iter().filter(|n| n["state"] == "live").count();
    assert_eq!(live, 2);

    // A second `datom up` says one is running and shows the status.
    let second = Command::new(bin("datom"))
        .args(["up", "--state-dir", state.path().to_str().unwrap(), "--zk-port", &port.to_string()])
        .args(["--color", "never"])
        .output()
        .unwrap();
    assert!(second.status.success());
    let text = String::from_utf8_lossy(&second.stdout);
    assert!(text.contains("already running") && text.contains("2/2 nodes live"), "{text}");

    let pids = daemon_pids(state.path());
    assert_eq!(pids.len(), 3, "config service and two agents");
    // Ctrl-C: SIGINT to the whole foreground process group.
    killpg(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "datom up exit: {status:?}");
    wait_gone(&pids, state.path().to_str().unwrap(), Duration::from_secs(15));
    assert!(harness::four_letter(port, "ruok").is_err(), "ZooKeeper still answers");
    assert!(!state.path().join("up.json").exists(), "marker removed");
}

#[test]
fn sigkilled_up_takes_its_daemons_and_zookeeper_with_it() {
    let state = tempfile::tempdir().unwrap();
    let port = harness::free_port();
    let (mut child, _) = start_up(state.path(), port, 1);
    let pids = daemon_pids(state.path());
    assert_eq!(pids.len(), 2, "config service and one agent");
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    // The watchdogs see their pipes close and stop the daemons and the JVM.
    wait_gone(&pids, state.path().to_str().unwrap(), Duration::from_secs(20));
    assert!(harness::four_letter(port, "ruok").is_err(), "ZooKeeper still answers");
}
