//! Test support: the shared ZooKeeper with a chroot per test, waiting on conditions with
//! deadlines (never sleeping as synchronisation), and running datom's real binaries.

use std::future::Future;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use datom_common::{Coord, CoordConfig};
pub use datom_zk_harness as harness;

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
