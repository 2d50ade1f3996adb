//! `datom up`: the README's run command brings up ZooKeeper, inits, shows the tree, and on
//! Ctrl-C (or its own death) leaves no process behind.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use datom_tests::{bin, harness};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Pids whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline"))
            && String::from_utf8_lossy(&cmd).contains(needle)
        {
            out.push(pid);
        }
    }
    out
}

fn wait_gone(needle: &str, timeout: Duration) {
    let start = Instant::now();
    while !processes_mentioning(needle).is_empty() {
        assert!(start.elapsed() < timeout, "processes for {needle} still running: {:?}", processes_mentioning(needle));
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start_up(state: &std::path::Path, port: u16) -> (std::process::Child, String) {
    let mut child = Command::new(bin("datom"))
        .args(["up", "--state-dir", state.to_str().unwrap(), "--zk-port", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
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
        assert!(start.elapsed() < Duration::from_secs(90), "datom up not ready:\n{out}");
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in reader.lines() {});
    (child, out)
}

#[test]
fn up_shows_the_tree_and_ctrl_c_leaves_nothing_behind() {
    let state = tempfile::tempdir().unwrap();
    let port = harness::free_port();
    let (mut child, out) = start_up(state.path(), port);
    assert!(out.contains("configservice"), "tree shown:\n{out}");
    assert!(out.contains(&format!("127.0.0.1:{port}")), "{out}");

    // A second `datom up` says one is running and shows the tree.
    let second = Command::new(bin("datom"))
        .args(["up", "--state-dir", state.path().to_str().unwrap(), "--zk-port", &port.to_string()])
        .output()
        .unwrap();
    assert!(second.status.success());
    let text = String::from_utf8_lossy(&second.stdout);
    assert!(text.contains("already running"), "{text}");

    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "datom up exit: {status:?}");
    wait_gone(state.path().to_str().unwrap(), Duration::from_secs(10));
    assert!(harness::four_letter(port, "ruok").is_err(), "ZooKeeper still answers");
}

#[test]
fn sigkilled_up_takes_its_zookeeper_with_it() {
    let state = tempfile::tempdir().unwrap();
    let port = harness::free_port();
    let (mut child, _) = start_up(state.path(), port);
    child.kill().unwrap();
    child.wait().unwrap();
    // The watchdog sees its pipe close and kills the JVM.
    wait_gone(state.path().to_str().unwrap(), Duration::from_secs(10));
}
