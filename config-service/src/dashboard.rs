//! The dashboard: an HTTP server in every config service instance (`--http ADDR`), active or
//! standby, because it only reads znodes.
//!
//! A [`TreeCache`](datom_common::coord::watch::TreeCache) over `/datom` mirrors the znodes;
//! every change it reports (pushed by ZooKeeper's persistent watch, no polling) rebuilds the
//! [`ClusterStatus`] and the server-rendered HTML, which are pushed to open pages as
//! server-sent events. The page's few lines of JavaScript swap in the new HTML.
//!
//! | route | serves |
//! |---|---|
//! | `GET /` | the page (HTML, inline CSS and JavaScript, nothing fetched from the network) |
//! | `GET /events` | server-sent events: `status` events carrying `{"version", "html"}` |
//! | `GET /api/status` | the whole [`ClusterStatus`] as JSON (same as `datom status --json`) |
//! | `GET /api/{config-service,nodes,services,groups,redundancy,events}` | one section of it |
//! | `GET /healthz` | `ok` and this instance's role |
//! | `GET /metrics` | Prometheus text format |

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use datom_common::coord::SessionState;
use datom_common::metrics::{self, GroupLabels, NodeStateLabels};
use datom_common::status::{ClusterStatus, NodeState, one_line};
use datom_common::{Coord, paths};
use futures::Stream;
use serde::Serialize;
use tokio::sync::watch;
use tokio_stream::StreamExt;

use crate::active::{Leadership, Role};

/// Who serves the page: shown in its header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServedBy {
    /// Config service instance id.
    pub id: String,
    /// `active`, `suspended` or `standby`.
    pub role: String,
    /// ZooKeeper session state of this instance.
    pub session: String,
}

/// One rendering of the cluster, shared by every request until the next change.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    /// Increments with every change.
    pub version: u64,
    /// Who serves it.
    pub served_by: ServedBy,
    /// The status.
    pub status: ClusterStatus,
    /// The server-rendered HTML of the status (the page's `<main>`).
    pub html: String,
}

type Shared = watch::Receiver<Arc<Snapshot>>;

fn role_name(r: &Role) -> &'static str {
    match r {
        Role::Active => "active",
        Role::Suspended => "suspended",
        Role::Standby => "standby",
    }
}

fn session_name(s: SessionState) -> &'static str {
    match s {
        SessionState::Connected => "connected",
        SessionState::Suspended => "suspended",
        SessionState::Expired => "expired",
        SessionState::Closed => "closed",
    }
}

/// Sets the gauges derived from the znodes: group terms and node counts.
fn update_gauges(status: &ClusterStatus) {
    let m = metrics::global();
    m.group_term.clear();
    for g in &status.groups {
        if let Some(t) = g.term {
            m.group_term.get_or_create(&GroupLabels { group: g.name.clone() }).set(t as i64);
        }
    }
    let live = status.live_nodes() as i64;
    m.nodes.get_or_create(&NodeStateLabels { state: "live" }).set(live);
    m.nodes.get_or_create(&NodeStateLabels { state: "dead" }).set(status.nodes.len() as i64 - live);
}

/// Starts the dashboard on `addr`; serves until `shutdown` resolves. Returns the bound address.
pub async fn start(
    coord: Coord,
    leadership: Leadership,
    addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let cache = coord.tree_cache(paths::ROOT);
    let mut events = cache.subscribe();
    let mut roles = leadership.watch_role();
    let mut session = coord.watch_status();
    let served =
        |roles: &watch::Receiver<Role>, session: &watch::Receiver<datom_common::coord::SessionStatus>| ServedBy {
            id: leadership.id().to_string(),
            role: role_name(&roles.borrow()).to_string(),
            session: session_name(session.borrow().state).to_string(),
        };
    let first = build(0, served(&roles, &session), ClusterStatus::from_tree(&cache.snapshot()));
    let (tx, rx) = watch::channel(Arc::new(first));
    let id = leadership.id().to_string();
    // On shutdown the updater stops and drops the sender, which ends every event stream, so
    // the server's graceful shutdown does not wait on open pages.
    let (done_tx, mut done) = watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = done_tx.send(true);
    };
    // The updater: one rebuild per burst of changes pushed by ZooKeeper.
    let updater = tokio::spawn(async move {
        let mut version = 0u64;
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        while events.try_recv().is_ok() {}
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                r = roles.changed() => if r.is_err() { return },
                s = session.changed() => if s.is_err() { return },
                _ = done.wait_for(|d| *d) => return,
            }
            version += 1;
            let by = ServedBy {
                id: id.clone(),
                role: role_name(&roles.borrow_and_update()).to_string(),
                session: session_name(session.borrow_and_update().state).to_string(),
            };
            let status = ClusterStatus::from_tree(&cache.snapshot());
            update_gauges(&status);
            tx.send_replace(Arc::new(build(version, by, status)));
            if tx.is_closed() {
                return;
            }
        }
    });
    let app = router(rx);
    let (bound, server) = metrics::serve_http(addr, app, shutdown).await?;
    let task = tokio::spawn(async move {
        let _ = server.await;
        updater.abort();
    });
    Ok((bound, task))
}

fn build(version: u64, served_by: ServedBy, status: ClusterStatus) -> Snapshot {
    let html = render_main(&status, &served_by);
    Snapshot { version, served_by, status, html }
}

/// The dashboard's routes over a stream of snapshots.
pub fn router(rx: Shared) -> axum::Router {
    axum::Router::new()
        .route("/", get(page))
        .route("/events", get(sse))
        .route("/api/status", get(api_status))
        .route("/api/config-service", get(|s: State<Shared>| section(s, |st| json(&st.config_service))))
        .route("/api/nodes", get(|s: State<Shared>| section(s, |st| json(&st.nodes))))
        .route("/api/services", get(|s: State<Shared>| section(s, |st| json(&st.services))))
        .route("/api/groups", get(|s: State<Shared>| section(s, |st| json(&st.groups))))
        .route("/api/redundancy", get(|s: State<Shared>| section(s, |st| json(&st.redundancy))))
        .route("/api/events", get(|s: State<Shared>| section(s, |st| json(&st.events))))
        .route("/healthz", get(healthz))
        .with_state(rx)
        .merge(metrics::router())
}

fn json<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).expect("status serialises")
}

async fn section(State(rx): State<Shared>, f: impl Fn(&ClusterStatus) -> serde_json::Value) -> Json<serde_json::Value> {
    let snap = rx.borrow().clone();
    Json(f(&snap.status))
}

async fn api_status(State(rx): State<Shared>) -> Json<ClusterStatus> {
    let snap = rx.borrow().clone();
    Json(snap.status.clone())
}

async fn healthz(State(rx): State<Shared>) -> String {
    let snap = rx.borrow().clone();
    format!("ok {} {}\n", snap.served_by.id, snap.served_by.role)
}

async fn sse(State(rx): State<Shared>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = tokio_stream::wrappers::WatchStream::new(rx).map(|snap| {
        let payload = serde_json::json!({ "version": snap.version, "html": snap.html });
        Ok(Event::default().event("status").data(payload.to_string()))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn page(State(rx): State<Shared>) -> Response {
    let snap = rx.borrow().clone();
    let title = snap
        .status
        .cluster
        .as_ref()
        .and_then(|c| c.get("name"))
        .and_then(|n| n.as_str())
        .map(|n| format!("datom · {n}"))
        .unwrap_or_else(|| "datom".into());
    let body = PAGE.replace("{{title}}", &esc(&title)).replace("{{main}}", &snap.html);
    Html(body).into_response()
}

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn s(v: Option<&serde_json::Value>) -> String {
    match v {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn badge(class: &str, text: &str) -> String {
    format!("<span class=\"badge {}\">{}</span>", esc(class), esc(text))
}

fn state_class(state: &str) -> &'static str {
    let l = state.to_ascii_lowercase();
    if ["live", "active", "running", "started", "leader", "functional", "up", "ok", "master"]
        .iter()
        .any(|w| l.contains(w))
    {
        "ok"
    } else if ["dead", "failed", "down", "error", "stopped", "no instance"].iter().any(|w| l.contains(w)) {
        "bad"
    } else {
        "warn"
    }
}

fn empty(section: &str, hint: &str) -> String {
    format!("<p class=\"empty\" data-empty=\"{}\">none yet — {}</p>", esc(section), esc(hint))
}

/// Renders the page's `<main>`: every section of the status. Pure, so it is tested directly.
pub fn render_main(st: &ClusterStatus, by: &ServedBy) -> String {
    let mut h = String::new();
    let cluster =
        st.cluster.as_ref().and_then(|c| c.get("name")).and_then(|n| n.as_str()).unwrap_or("(not initialized)");
    let _ = write!(
        h,
        "<header><h1>datom <span class=\"cluster\">{}</span></h1><p class=\"meta\">served by <b>{}</b> {} · \
         ZooKeeper {} · {} of {} nodes live</p></header>",
        esc(cluster),
        esc(&by.id),
        badge(state_class(&by.role), &by.role),
        badge(if by.session == "connected" { "ok" } else { "bad" }, &by.session),
        st.live_nodes(),
        st.nodes.len()
    );
    if by.session != "connected" {
        h.push_str("<p class=\"stale\">This instance has lost ZooKeeper: what you see may be stale.</p>");
    }

    // Config service.
    h.push_str("<section id=\"config-service\"><h2>Config service</h2>");
    match &st.config_service.active {
        Some(a) => {
            let _ = write!(
                h,
                "<p>active: <b data-active=\"{id}\">{id}</b> at {addr} since {since}</p>",
                id = esc(&s(a.get("id"))),
                addr = esc(&s(a.get("address"))),
                since = esc(&s(a.get("started_at")))
            );
        }
        None => h.push_str("<p class=\"stale\">no active config service</p>"),
    }
    if st.config_service.contenders.is_empty() {
        h.push_str(&empty("contenders", "no instance is contending for the lock"));
    } else {
        h.push_str("<table><tr><th>instance</th><th>role</th><th>RPC</th><th>dashboard</th><th>lock</th></tr>");
        for c in &st.config_service.contenders {
            let role = if c.holder { "active" } else { "standby" };
            let http =
                c.http.as_deref().map(|a| format!("<a href=\"http://{0}/\">{0}</a>", esc(a))).unwrap_or_default();
            let _ = write!(
                h,
                "<tr data-contender=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"dim\">{}</td></tr>",
                esc(c.id.as_deref().unwrap_or("")),
                esc(c.id.as_deref().unwrap_or("?")),
                badge(state_class(role), role),
                esc(c.address.as_deref().unwrap_or("")),
                http,
                esc(&c.lock)
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</section>");

    // Nodes.
    h.push_str("<section id=\"nodes\"><h2>Nodes</h2>");
    if st.nodes.is_empty() {
        h.push_str(&empty("nodes", "add one with `datom addnode`"));
    } else {
        h.push_str("<table><tr><th>node</th><th>state</th><th>agent</th><th>hardware</th><th>services</th></tr>");
        for n in &st.nodes {
            let state = match n.state {
                NodeState::Live => "live",
                NodeState::Dead => "dead",
            };
            let agent = n
                .live
                .as_ref()
                .map(|l| format!("{} (pid {})", s(l.get("address")), s(l.get("pid"))))
                .unwrap_or_else(|| "—".into());
            let services: Vec<String> = n
                .services
                .iter()
                .map(|sv| format!("{} {}", esc(&sv.service), badge(state_class(&sv.state), &sv.state)))
                .collect();
            let _ = write!(
                h,
                "<tr class=\"node {state}\" data-node=\"{name}\" data-state=\"{state}\"><td><b>{name}</b></td>\
                 <td>{badge}</td><td>{agent}</td><td>{hw}</td><td>{svcs}</td></tr>",
                name = esc(&n.name),
                badge = badge(state_class(state), state),
                agent = esc(&agent),
                hw = esc(&n.hardware),
                svcs = if services.is_empty() { "—".into() } else { services.join(" ") },
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</section>");

    // Services.
    h.push_str("<section id=\"services\"><h2>Services</h2>");
    if st.services.is_empty() {
        h.push_str(&empty("services", "apply one with `datom service apply`"));
    } else {
        h.push_str("<table><tr><th>service</th><th>instances</th><th>spec</th></tr>");
        for sv in &st.services {
            let inst: Vec<String> = sv
                .instances
                .iter()
                .map(|(node, v)| {
                    let state = v.get("state").and_then(|x| x.as_str()).unwrap_or("running");
                    format!("{} {}", esc(node), badge(state_class(state), state))
                })
                .collect();
            let _ = write!(
                h,
                "<tr data-service=\"{n}\"><td><b>{n}</b></td><td>{i}</td><td class=\"dim\">{spec}</td></tr>",
                n = esc(&sv.name),
                i = if inst.is_empty() { "—".into() } else { inst.join(" ") },
                spec = esc(&one_line(&sv.spec, 120))
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</section>");

    // Groups.
    h.push_str("<section id=\"groups\"><h2>Groups</h2>");
    if st.groups.is_empty() {
        h.push_str(&empty("groups", "replication groups appear when volumes are created"));
    } else {
        h.push_str("<table><tr><th>group</th><th>term</th><th>leader</th><th>status</th><th>members</th></tr>");
        for g in &st.groups {
            let members: Vec<String> = g
                .members
                .iter()
                .map(|m| match &m.state {
                    Some(state) => format!("{} {}", esc(&m.name), badge(state_class(state), state)),
                    None => esc(&m.name),
                })
                .collect();
            let _ = write!(
                h,
                "<tr data-group=\"{n}\"><td><b>{n}</b></td><td>{t}</td><td>{l}</td><td>{s}</td><td>{m}</td></tr>",
                n = esc(&g.name),
                t = g.term.map(|t| t.to_string()).unwrap_or_else(|| "—".into()),
                l = esc(g.leader.as_deref().unwrap_or("—")),
                s = esc(g.status.as_deref().unwrap_or("—")),
                m = if members.is_empty() { "—".into() } else { members.join(" ") }
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</section>");

    // Redundancy nodes.
    h.push_str("<section id=\"redundancy\"><h2>Redundancy nodes</h2>");
    if st.redundancy.is_empty() {
        h.push_str(&empty("redundancy", "create one with `datom create_node`"));
    } else {
        h.push_str("<table><tr><th>index</th><th>state</th><th>record</th></tr>");
        for r in &st.redundancy {
            let state = r.state.as_deref().unwrap_or("—");
            let _ = write!(
                h,
                "<tr data-redundancy=\"{i}\"><td><b>{i}</b></td><td>{b}</td><td class=\"dim\">{rec}</td></tr>",
                i = esc(&r.index),
                b = badge(state_class(state), state),
                rec = esc(&one_line(&r.record, 140))
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</section>");

    // Events, newest first.
    h.push_str("<section id=\"events\"><h2>Recent transitions</h2>");
    if st.events.is_empty() {
        h.push_str(&empty("events", "transitions are recorded here as they happen"));
    } else {
        h.push_str("<table><tr><th>event</th><th>at</th><th>what</th></tr>");
        for e in st.events.iter().rev() {
            let _ = write!(
                h,
                "<tr data-event=\"{id}\"><td class=\"dim\">{id}</td><td>{at}</td><td>{sum}</td></tr>",
                id = esc(&e.id),
                at = esc(e.at.as_deref().unwrap_or("")),
                sum = esc(&e.summary)
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</section>");
    h
}

const PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{title}}</title>
<style>
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
main{max-width:1100px;margin:0 auto;padding:12px 20px 40px}
header h1{margin:8px 0 0;font-size:22px}header .cluster{color:#4a5a78;font-weight:500}
.meta{color:#5b6578;margin:4px 0 8px}
section{background:#fff;border:1px solid #dde1e8;border-radius:8px;margin:14px 0;padding:8px 14px 12px}
h2{font-size:15px;margin:6px 0 8px;color:#2c3a55}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:5px 8px;border-top:1px solid #eef0f4;vertical-align:top}
th{font-weight:600;color:#5b6578;border-top:none;font-size:12px;text-transform:uppercase;letter-spacing:.03em}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600}
.badge.ok{background:#dcf5e3;color:#17692f}.badge.bad{background:#fde2e1;color:#a3201a}.badge.warn{background:#fdf1d6;color:#8a5a00}
tr.node.dead td{background:#fff6f6}.dim{color:#7a8499;font-size:12px}.empty{color:#8a93a6;font-style:italic;margin:4px 0}
.stale{color:#a3201a;font-weight:600}#conn{float:right;font-size:12px;color:#7a8499;margin-top:14px}
</style></head>
<body><main><span id="conn">connecting…</span><div id="status">{{main}}</div></main>
<script>
(function(){
  var conn=document.getElementById('conn');
  var es=new EventSource('/events');
  es.addEventListener('status',function(e){
    var m=JSON.parse(e.data);
    document.getElementById('status').innerHTML=m.html;
    document.body.setAttribute('data-version',m.version);
    conn.textContent='live · update '+m.version;
  });
  es.onerror=function(){conn.textContent='reconnecting…';};
})();
</script></body></html>
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use datom_common::coord::watch::NodeData;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn status() -> ClusterStatus {
        let mut t = BTreeMap::new();
        for (p, v) in [
            ("/datom", json!({"name": "demo"})),
            ("/datom/nodes/n1", json!({"name": "n1", "hardware": {"cpus": 2}})),
            ("/datom/nodes/n1/live", json!({"address": "127.0.0.1:9", "pid": 5})),
            ("/datom/nodes/n<2>", json!({"name": "n<2>"})),
            ("/datom/groups/g", json!({"term": 7, "leader": "n1"})),
        ] {
            t.insert(p.to_string(), NodeData { data: v.to_string().into_bytes(), version: 0, ephemeral_owner: 0 });
        }
        ClusterStatus::from_tree(&t)
    }

    fn by() -> ServedBy {
        ServedBy { id: "cs-1".into(), role: "standby".into(), session: "connected".into() }
    }

    #[test]
    fn nodes_carry_their_state_for_scripts_and_styles() {
        let h = render_main(&status(), &by());
        assert!(h.contains("data-node=\"n1\" data-state=\"live\""), "{h}");
        assert!(h.contains("data-node=\"n&lt;2&gt;\" data-state=\"dead\""), "escaped: {h}");
        assert!(h.contains("1 of 2 nodes live"));
        assert!(h.contains("<td>7</td>"), "term shown: {h}");
        assert!(h.contains("data-empty=\"services\""), "empty sections say so: {h}");
        assert!(h.contains("no active config service"));
        assert!(!h.contains("stale."), "connected: no stale banner");
    }

    #[test]
    fn a_disconnected_instance_warns_that_data_may_be_stale() {
        let mut b = by();
        b.session = "suspended".into();
        assert!(render_main(&status(), &b).contains("may be stale"));
    }

    #[test]
    fn escaping() {
        assert_eq!(esc("<a href=\"x\">'&'</a>"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
    }
}
