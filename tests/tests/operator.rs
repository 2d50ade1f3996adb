//! The operator view (issue 10): `datom status` (text, colours, `--json` equal to the znodes,
//! `--watch` pushed by ZooKeeper), the dashboard's JSON API and server-sent events on active
//! and standby config services, `/metrics` in the Prometheus text format, JSON logs, the
//! systemd units' command lines, shell completions and man pages. Real ZooKeeper, real binaries.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datom_common::coord::Mode;
use datom_common::paths;
use datom_common::status::data_to_value;
use datom_tests::{
    addnode, bin, config_service, config_service_http, coord, datom, fresh_zk, http_get, node_agent, prom, stderr,
    stdout, wait_active, wait_for, wait_live,
};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);

/// Raw JSON at `path`, read with a plain ZooKeeper client (not datom's status code).
async fn raw(zk: &str, path: &str) -> Value {
    let server = zk.split('/').next().unwrap();
    let chroot = &zk[server.len()..];
    let client = zookeeper_client::Client::connect(server).await.unwrap();
    let (data, _) = client.get_data(&format!("{chroot}{path}")).await.unwrap();
    data_to_value(&data)
}

/// Writes records the other issues are defining (groups, redundancy nodes, events, services),
/// in plausible shapes, to check that status shows what exists.
async fn seed_other_records(c: &datom_common::Coord) {
    c.create(&paths::group("g1"), &json!({"schema": 1, "term": 3, "leader": "n1"}), Mode::Persistent).await.unwrap();
    c.ensure_path(&format!("{}/members", paths::group("g1"))).await.unwrap();
    c.create(&format!("{}/members/n1", paths::group("g1")), &json!({"state": "LEADER"}), Mode::Persistent)
        .await
        .unwrap();
    c.create(&paths::redundancy(7), &json!({"schema": 1, "state": "active", "peer": "10.0.0.2"}), Mode::Persistent)
        .await
        .unwrap();
    c.ensure_path(paths::EVENTS).await.unwrap();
    c.create(
        &format!("{}/ev-", paths::EVENTS),
        &json!({"schema": 1, "at": "2026-11-24T21:00:00Z", "trigger": "node n2 died", "decision": "web → n1"}),
        Mode::PersistentSequential,
    )
    .await
    .unwrap();
    c.create(&paths::service("web"), &json!({"schema": 1, "name": "web"}), Mode::Persistent).await.unwrap();
    c.ensure_path(&format!("{}/instances", paths::service("web"))).await.unwrap();
    c.create(
        &format!("{}/instances/n1", paths::service("web")),
        &json!({"state": "running", "pid": 1}),
        Mode::Ephemeral,
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn status_json_matches_the_znodes_and_text_shows_every_section() {
    let zk = fresh_zk("status").await;
    assert!(datom(&zk, &["init"]).status.success());
    let (_cs1, _) = config_service(&zk, "cs-a", &[]);
    let c = coord(&zk).await;
    wait_active(&c, T).await;
    let (_cs2, _) = config_service(&zk, "cs-b", &[]);
    wait_for("two lock contenders", T, || async {
        (c.children(paths::CONFIG_SERVICE_LOCK).await.ok()?.len() == 2).then_some(())
    })
    .await;
    let (r1, r2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    assert!(addnode(&zk, r1.path(), "n1", &["--services", "web,db"]).status.success());
    assert!(addnode(&zk, r2.path(), "n2", &[]).status.success());
    let _agent = node_agent(&zk, r1.path(), "agent-n1", &[]);
    wait_live(&c, "n1", T).await;
    seed_other_records(&c).await;

    let out = datom(&zk, &["status", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: Value = serde_json::from_str(stdout(&out).trim()).expect("one JSON document");

    // Every record is the znode's JSON, as a third-party client reads it.
    assert_eq!(doc["cluster"], raw(&zk, paths::ROOT).await);
    assert_eq!(doc["config_service"]["active"], raw(&zk, paths::CONFIG_SERVICE_INSTANCE).await);
    let contenders = doc["config_service"]["contenders"].as_array().unwrap();
    assert_eq!(contenders.len(), 2);
    assert_eq!(contenders[0]["holder"], true);
    assert_eq!(contenders[0]["id"], doc["config_service"]["active"]["id"]);
    assert_eq!(contenders[1]["holder"], false);
    let nodes = doc["nodes"].as_array().unwrap();
    assert_eq!(nodes.iter().map(|n| n["name"].as_str().unwrap()).collect::<Vec<_>>(), vec!["n1", "n2"]);
    assert_eq!(nodes[0]["record"], raw(&zk, &paths::node("n1")).await);
    assert_eq!(nodes[0]["live"], raw(&zk, &paths::node_live("n1")).await);
    assert_eq!((nodes[0]["state"].as_str(), nodes[1]["state"].as_str()), (Some("live"), Some("dead")));
    assert_eq!(nodes[1]["record"], raw(&zk, &paths::node("n2")).await);
    assert_eq!(nodes[1]["live"], Value::Null);
    let n1_services: Vec<(&str, &str)> = nodes[0]["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["service"].as_str().unwrap(), s["state"].as_str().unwrap()))
        .collect();
    assert_eq!(n1_services, vec![("db", "no instance"), ("web", "running")]);
    let g = &doc["groups"][0];
    assert_eq!(g["record"], raw(&zk, &paths::group("g1")).await);
    assert_eq!((g["term"].as_u64(), g["leader"].as_str()), (Some(3), Some("n1")));
    assert_eq!(g["members"], json!([{"name": "n1", "state": "LEADER"}]));
    assert_eq!(doc["redundancy"][0]["record"], raw(&zk, &paths::redundancy(7)).await);
    let ev = &doc["events"][0];
    let ev_path = format!("{}/{}", paths::EVENTS, ev["id"].as_str().unwrap());
    assert_eq!(ev["record"], raw(&zk, &ev_path).await);
    assert_eq!(doc["services"][0]["spec"], raw(&zk, &paths::service("web")).await);

    // Text: every section, no colour when piped; colour when asked.
    let out = datom(&zk, &["status"]);
    let text = stdout(&out);
    assert!(!text.contains('\x1b'), "no colour on a pipe:\n{text}");
    for want in [
        "1/2 nodes live",
        "active   cs-a",
        "standby  cs-b",
        "web:running",
        "db:no instance",
        "n1:LEADER",
        "state=active",
        "node n2 died",
    ] {
        assert!(text.contains(want), "{want:?} missing:\n{text}");
    }
    assert!(text.lines().any(|l| l.trim_start().starts_with("n2") && l.contains("dead")), "{text}");
    let coloured = stdout(&datom(&zk, &["status", "--color", "always"]));
    assert!(coloured.contains("\x1b[31mdead\x1b[0m"), "{coloured}");
}

#[tokio::test]
async fn status_on_a_fresh_zookeeper_says_to_run_init() {
    let zk = fresh_zk("status-fresh").await;
    let out = datom(&zk, &["status"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("run `datom init` first"), "{}", stderr(&out));
}

/// Collects a child's stdout in the background.
fn collect(child: &mut std::process::Child) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let b = buf.clone();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            let mut b = b.lock().unwrap();
            b.push_str(&line);
            b.push('\n');
        }
    });
    buf
}

/// The last complete redraw of `datom status --watch` (non-tty: frames start with `----`).
fn last_frame(buf: &Mutex<String>) -> String {
    let text = buf.lock().unwrap().clone();
    let frames: Vec<&str> = text.split("---- watching for changes").collect();
    if frames.len() < 2 {
        return String::new();
    }
    frames[frames.len() - 2].to_string()
}

#[tokio::test]
async fn status_watch_redraws_when_zookeeper_reports_a_change() {
    let zk = fresh_zk("status-watch").await;
    assert!(datom(&zk, &["init"]).status.success());
    let (_cs, _) = config_service(&zk, "cs-a", &[]);
    let c = coord(&zk).await;
    wait_active(&c, T).await;
    let root = tempfile::tempdir().unwrap();
    assert!(addnode(&zk, root.path(), "n1", &[]).status.success());
    let agent = node_agent(&zk, root.path(), "agent-n1", &[]);
    wait_live(&c, "n1", T).await;

    let mut watch = Command::new(bin("datom"))
        .args(["--zk", &zk, "status", "--watch", "--color", "never"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let buf = collect(&mut watch);
    wait_for("the first frame with n1 live", T, || async {
        let f = last_frame(&buf);
        f.lines().any(|l| l.trim_start().starts_with("n1") && l.contains("live")).then_some(())
    })
    .await;
    // SIGTERM: the agent deletes its live znode at once; the watch pushes the change.
    agent.signal(Signal::SIGTERM);
    wait_for("a redraw with n1 dead", T, || async {
        let f = last_frame(&buf);
        f.lines().any(|l| l.trim_start().starts_with("n1") && l.contains("dead")).then_some(())
    })
    .await;
    // And a new record shows up too.
    c.create(&paths::group("g9"), &json!({"term": 12}), Mode::Persistent).await.unwrap();
    wait_for("a redraw with group g9", T, || async { last_frame(&buf).contains("g9").then_some(()) }).await;
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(watch.id() as i32), Signal::SIGINT);
    let status = watch.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// Reads server-sent events from `/events` on a plain socket, one `data:` payload at a time.
struct SseReader {
    reader: BufReader<std::net::TcpStream>,
}

impl SseReader {
    fn open(addr: &str) -> SseReader {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(s, "GET /events HTTP/1.0\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n").unwrap();
        let mut reader = BufReader::new(s);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            head.push_str(&line);
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        assert!(head.contains(" 200 ") && head.contains("text/event-stream"), "{head}");
        SseReader { reader }
    }

    /// The next `status` event's payload.
    fn next(&mut self) -> Value {
        loop {
            let mut line = String::new();
            assert!(self.reader.read_line(&mut line).unwrap() > 0, "event stream closed");
            if let Some(data) = line.strip_prefix("data: ").or_else(|| line.strip_prefix("data:")) {
                return serde_json::from_str(data.trim()).unwrap();
            }
        }
    }
}

#[tokio::test]
async fn active_and_standby_dashboards_serve_json_and_push_changes() {
    let zk = fresh_zk("dashboard").await;
    assert!(datom(&zk, &["init"]).status.success());
    let (_active, _, active_http) = config_service_http(&zk, "cs-a", &[]);
    let c = coord(&zk).await;
    wait_active(&c, T).await;
    // The standby logs JSON lines.
    let (standby, _, standby_http) = config_service_http(&zk, "cs-b", &["--log-format", "json"]);
    let root = tempfile::tempdir().unwrap();
    assert!(addnode(&zk, root.path(), "n1", &[]).status.success());

    // The active instance publishes its dashboard address.
    let inst = raw(&zk, paths::CONFIG_SERVICE_INSTANCE).await;
    assert_eq!(inst["http"], active_http.as_str());

    for (http, role) in [(&active_http, "active"), (&standby_http, "standby")] {
        let health = wait_for(&format!("{role} dashboard"), T, || async {
            http_get(http, "/healthz").ok().filter(|(c, _, b)| *c == 200 && b.contains(role))
        })
        .await;
        assert!(health.2.starts_with("ok "), "{}", health.2);
        let status = wait_for(&format!("{role} sees n1"), T, || async {
            let (code, _, body) = http_get(http, "/api/status").ok()?;
            let v: Value = serde_json::from_str(&body).ok()?;
            (code == 200 && v["nodes"][0]["name"] == "n1").then_some(v)
        })
        .await;
        assert_eq!(status["nodes"][0]["record"], raw(&zk, &paths::node("n1")).await);
        for section in ["config-service", "nodes", "services", "groups", "redundancy", "events"] {
            let (code, head, body) = http_get(http, &format!("/api/{section}")).unwrap();
            assert_eq!(code, 200, "{section}");
            assert!(head.to_ascii_lowercase().contains("application/json"), "{head}");
            serde_json::from_str::<Value>(&body).unwrap_or_else(|e| panic!("{section}: {e}: {body}"));
        }
        let (code, _, page) = http_get(http, "/").unwrap();
        assert_eq!(code, 200);
        assert!(page.contains("<!doctype html>") && page.contains("EventSource('/events')"), "{page}");
        assert!(page.contains("data-node=\"n1\" data-state=\"dead\""), "{page}");
    }

    // Server-sent events: the first carries the current page; a change in ZooKeeper pushes another.
    let mut events = SseReader::open(&standby_http);
    let first = events.next();
    assert!(first["html"].as_str().unwrap().contains("data-node=\"n1\""), "{first}");
    let mut agent = node_agent(&zk, root.path(), "agent-n1", &[]);
    let pushed = loop {
        let ev = events.next();
        if ev["html"].as_str().unwrap().contains("data-node=\"n1\" data-state=\"live\"") {
            break ev;
        }
    };
    assert!(pushed["version"].as_u64().unwrap() > first["version"].as_u64().unwrap());
    agent.signal(Signal::SIGTERM);
    agent.wait_exit(T).expect("agent exits on SIGTERM");
    loop {
        let ev = events.next();
        if ev["html"].as_str().unwrap().contains("data-node=\"n1\" data-state=\"dead\"") {
            break;
        }
    }

    // --log-format json: every line the standby logged is a JSON object.
    let log = standby.output();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for l in lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v.get("level").is_some() && v.get("fields").is_some(), "{l}");
    }
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_have_the_named_series() {
    let zk = fresh_zk("metrics").await;
    assert!(datom(&zk, &["init"]).status.success());
    let (_cs, _, http) = config_service_http(&zk, "cs-a", &[]);
    let c = coord(&zk).await;
    wait_active(&c, T).await;
    let root = tempfile::tempdir().unwrap();
    assert!(addnode(&zk, root.path(), "n1", &[]).status.success());
    let _agent = node_agent(&zk, root.path(), "agent-n1", &["--http", "127.0.0.1:0"]);
    let live = wait_live(&c, "n1", T).await;
    let agent_http = live.http.expect("the agent publishes its metrics address");
    c.create(&paths::group("g1"), &json!({"schema": 1, "term": 5}), Mode::Persistent).await.unwrap();

    // The config service derives group terms and node counts from the znodes.
    let text = wait_for("group term and live node count in the config service's metrics", T, || async {
        let (_, _, body) = http_get(&http, "/metrics").ok()?;
        (body.contains("datom_group_term{group=\"g1\"} 5") && body.contains("datom_nodes{state=\"live\"} 1"))
            .then_some(body)
    })
    .await;
    let (_, head, _) = http_get(&http, "/metrics").unwrap();
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");

    for (who, body) in [("config service", text), ("agent", http_get(&agent_http, "/metrics").unwrap().2)] {
        let exp = prom::parse(&body).unwrap_or_else(|e| panic!("{who}: {e}\n{body}"));
        let kinds = [
            ("datom_zk_session_state", "gauge"),
            ("datom_zk_session_epoch", "gauge"),
            ("datom_zk_op_duration_seconds", "histogram"),
            ("datom_connection_cache_hits_total", "counter"),
            ("datom_connection_cache_misses_total", "counter"),
            ("datom_connection_cache_dials_total", "counter"),
            ("datom_connection_cache_redials_total", "counter"),
            ("datom_connection_cache_evictions_total", "counter"),
            ("datom_connection_cache_resyncs_total", "counter"),
            ("datom_service_restarts_total", "counter"),
            ("datom_failovers_total", "counter"),
            ("datom_group_term", "gauge"),
            ("datom_nodes", "gauge"),
        ];
        for (name, kind) in kinds {
            let f = exp.get(name).unwrap_or_else(|| panic!("{who}: {name} missing\n{body}"));
            assert_eq!(f.kind, kind, "{who}: {name}");
            assert!(f.help.as_deref().is_some_and(|h| !h.is_empty()), "{who}: {name} has help");
        }
        let connected = exp["datom_zk_session_state"].samples.iter().find(|s| s.label("state") == Some("connected"));
        assert_eq!(connected.map(|s| s.value), Some(1.0), "{who}: session connected");
        let ops = &exp["datom_zk_op_duration_seconds"].samples;
        assert!(
            ops.iter().any(|s| s.name.ends_with("_count") && s.label("outcome") == Some("ok") && s.value > 0.0),
            "{who}: ZooKeeper requests observed"
        );
    }
}

#[tokio::test]
async fn a_busy_dashboard_address_is_a_clear_error() {
    let zk = fresh_zk("dashboard-busy").await;
    assert!(datom(&zk, &["init"]).status.success());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (mut cs, _) = config_service(&zk, "cs-a", &["--http", &addr]);
    let status = cs.wait_exit(T).expect("exits");
    assert!(!status.success());
    assert!(cs.output().contains("choose another address with --http"), "{}", cs.output());
}

/// The `ExecStart=` command line of a unit file in packaging/.
fn exec_start(unit: &str) -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging").join(unit);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let line = text.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("ExecStart");
    line.split_whitespace().map(str::to_string).collect()
}

#[test]
fn systemd_units_run_the_daemons_with_flags_they_accept() {
    for (unit, binary) in
        [("datom-config-service.service", "datom-config-service"), ("datom-node-agent.service", "datom-node-agent")]
    {
        let argv = exec_start(unit);
        assert_eq!(argv[0], format!("/usr/bin/{binary}"));
        // Flags are parsed first: a usage error exits 2; this exits 1 because ZooKeeper (or
        // node.json) is not there, after accepting every flag.
        let out = Command::new(bin(binary))
            .args(&argv[1..])
            .args(["--zk", "127.0.0.1:1", "--connect-timeout", "300"])
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{unit}: {}", stderr(&out));
        assert!(!stderr(&out).contains("unexpected argument"), "{unit}: {}", stderr(&out));
    }
}

#[test]
fn completions_and_man_pages_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(bin("datom")).args(["completions", shell]).output().unwrap();
        assert!(out.status.success());
        let text = stdout(&out);
        assert!(text.contains("datom") && text.contains("status") && text.contains("addnode"), "{shell}: {text}");
    }
    let out = Command::new(bin("datom")).args(["completions", "bash", "--for", "datom-node-agent"]).output().unwrap();
    assert!(stdout(&out).contains("--nic-if"));
    let out = Command::new(bin("datom")).arg("man").output().unwrap();
    assert!(out.status.success());
    assert!(stdout(&out).contains(".TH datom 1"), "{}", stdout(&out));
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin("datom")).args(["man", "--out", dir.path().to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    for page in ["datom.1", "datom-up.1", "datom-status.1", "datom-config-service.1", "datom-node-agent.1"] {
        let mut text = String::new();
        std::fs::File::open(dir.path().join(page)).unwrap().read_to_string(&mut text).unwrap();
        assert!(text.contains(".TH"), "{page}");
    }
    // A bad shell is a usage error naming the choices.
    let out = Command::new(bin("datom")).args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("possible values"), "{}", stderr(&out));
}
