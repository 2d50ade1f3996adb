//! The dashboard in a real browser: headless Chromium (Debian's `chromium`, installed by
//! scripts/install-deps) driven over the DevTools protocol. The page lists the nodes; after an
//! agent is SIGKILLed, the page marks that node dead without reloading, pushed by server-sent
//! events fed from ZooKeeper watches. A screenshot is saved in the test's temp dir (and copied
//! to `$DATOM_SCREENSHOT_DIR` when set, for a person to look at).

use std::io::Write;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use datom_tests::{addnode, config_service_http, coord, datom, fresh_zk, http_get, node_agent, wait_active, wait_live};
use futures::{SinkExt, StreamExt};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(60);

/// Headless Chromium in its own process group under a watchdog: when the test drops it, or
/// the test process dies, the pipe closes and the whole group is SIGKILLed.
struct Browser {
    watchdog: Child,
    stdin: Option<ChildStdin>,
    profile: tempfile::TempDir,
    log: PathBuf,
}

fn chromium() -> PathBuf {
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("headless Chromium is not installed: run scripts/install-deps (Debian package 'chromium')");
}

impl Browser {
    fn launch(dir: &Path) -> Browser {
        let profile = tempfile::Builder::new().prefix("datom-chromium-").tempdir().unwrap();
        let log = dir.join("chromium.log");
        let script = r#"log="$1"; shift; "$@" </dev/null >"$log" 2>&1 & cat >/dev/null; kill -KILL 0"#;
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("browser-watchdog")
            .arg(&log)
            .arg(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--disable-extensions",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromium");
        let stdin = watchdog.stdin.take();
        Browser { watchdog, stdin, profile, log }
    }

    /// The DevTools HTTP address, once Chromium wrote it to its profile.
    async fn devtools(&self) -> String {
        let file = self.profile.path().join("DevToolsActivePort");
        let start = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(&file)
                && let Some(port) = text.lines().next().and_then(|l| l.trim().parse::<u16>().ok())
            {
                return format!("127.0.0.1:{port}");
            }
            assert!(
                start.elapsed() < T,
                "Chromium did not open its DevTools port; its log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.watchdog.wait();
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A DevTools protocol session with one page.
struct Cdp {
    ws: Ws,
    next: u64,
}

impl Cdp {
    async fn attach(devtools: &str) -> Cdp {
        let targets: Value = {
            let start = Instant::now();
            loop {
                if let Ok((200, _, body)) = http_get(devtools, "/json/list")
                    && let Ok(v) = serde_json::from_str::<Value>(&body)
                    && v.as_array().is_some_and(|a| a.iter().any(|t| t["type"] == "page"))
                {
                    break v;
                }
                assert!(start.elapsed() < T, "no page target in Chromium");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let page = targets.as_array().unwrap().iter().find(|t| t["type"] == "page").unwrap();
        let url = page["webSocketDebuggerUrl"].as_str().expect("page websocket").to_string();
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.expect("connect to the page's DevTools");
        Cdp { ws, next: 1 }
    }

    /// Calls `method` and returns its result (events in between are skipped).
    async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next;
        self.next += 1;
        let msg = json!({ "id": id, "method": method, "params": params });
        self.ws.send(Message::Text(msg.to_string().into())).await.expect("send to DevTools");
        let reply = tokio::time::timeout(T, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(t.as_str()).expect("DevTools sends JSON");
                        if v["id"] == id {
                            return v;
                        }
                    }
                    Some(Ok(_)) => {}
                    other => panic!("DevTools connection ended: {other:?}"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{method} got no reply"));
        assert!(reply.get("error").is_none(), "{method}: {reply}");
        reply["result"].clone()
    }

    /// Evaluates a JavaScript expression in the page and returns its value.
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self.call("Runtime.evaluate", json!({ "expression": expr, "returnByValue": true })).await;
        r["result"]["value"].clone()
    }

    /// Waits until `expr` evaluates to `want`.
    async fn wait_eval(&mut self, what: &str, expr: &str, want: Value) {
        let start = Instant::now();
        loop {
            let got = self.eval(expr).await;
            if got == want {
                return;
            }
            assert!(start.elapsed() < T, "timed out waiting for {what}: {expr} is {got}, want {want}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

const NODES: &str =
    "Array.from(document.querySelectorAll('tr[data-node]')).map(e => e.dataset.node + ':' + e.dataset.state).join(',')";

#[tokio::test]
async fn the_dashboard_marks_a_killed_agent_dead_without_reloading() {
    let zk = fresh_zk("browser").await;
    assert!(datom(&zk, &["init", "--cluster", "browser-test"]).status.success());
    let (_cs, _, http) = config_service_http(&zk, "cs-a", &[]);
    let c = coord(&zk).await;
    wait_active(&c, T).await;
    let (r1, r2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    assert!(addnode(&zk, r1.path(), "n1", &["--services", "web"]).status.success());
    assert!(addnode(&zk, r2.path(), "n2", &[]).status.success());
    let _a1 = node_agent(&zk, r1.path(), "agent-n1", &[]);
    let a2 = node_agent(&zk, r2.path(), "agent-n2", &[]);
    wait_live(&c, "n1", T).await;
    wait_live(&c, "n2", T).await;
    datom_tests::wait_for("the dashboard", T, || async { http_get(&http, "/healthz").ok().filter(|r| r.0 == 200) })
        .await;

    let dir = tempfile::Builder::new().prefix("datom-browser-test-").tempdir().unwrap();
    let browser = Browser::launch(dir.path());
    let devtools = browser.devtools().await;
    let mut cdp = Cdp::attach(&devtools).await;
    cdp.call("Page.enable", json!({})).await;
    cdp.call("Page.navigate", json!({ "url": format!("http://{http}/") })).await;
    cdp.wait_eval("the page to load", "document.readyState", json!("complete")).await;
    cdp.wait_eval("the node list", NODES, json!("n1:live,n2:live")).await;
    cdp.wait_eval("the event stream", "document.getElementById('conn').textContent.startsWith('live')", json!(true))
        .await;
    // A mark on this document: a reload would lose it.
    cdp.eval("window.__datomMark = 'same page'; true").await;

    a2.signal(Signal::SIGKILL);
    cdp.wait_eval("n2 marked dead", NODES, json!("n1:live,n2:dead")).await;
    assert_eq!(cdp.eval("window.__datomMark").await, json!("same page"), "the page was not reloaded");
    let header = cdp.eval("document.querySelector('header').textContent").await;
    assert!(header.as_str().unwrap().contains("1 of 2 nodes live"), "{header}");

    let shot = cdp.call("Page.captureScreenshot", json!({ "format": "png" })).await;
    let png = base64::engine::general_purpose::STANDARD.decode(shot["data"].as_str().unwrap()).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = dir.path().join("dashboard.png");
    std::fs::File::create(&path).unwrap().write_all(&png).unwrap();
    if let Some(keep) = std::env::var_os("DATOM_SCREENSHOT_DIR") {
        std::fs::create_dir_all(&keep).unwrap();
        std::fs::copy(&path, Path::new(&keep).join("dashboard.png")).unwrap();
    }
    eprintln!("screenshot: {} ({} bytes)", path.display(), png.len());
    drop(cdp);
    drop(browser);
}
