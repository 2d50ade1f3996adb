//! `datom status`: the cluster at a glance, read from the znodes: config service active and
//! standbys, nodes live or dead with a hardware summary, services per node, groups, redundancy
//! nodes and the last transitions. `--json` prints the [`ClusterStatus`] document (records as
//! stored in their znodes); `--watch` redraws whenever ZooKeeper pushes a change.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::process::ExitCode;

use datom_common::flags::ZkArgs;
use datom_common::status::{ClusterStatus, NodeState, one_line};
use datom_common::{Coord, paths};

/// When to colour the output.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ColorChoice {
    /// On a terminal, unless NO_COLOR is set or TERM is dumb.
    #[default]
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

impl ColorChoice {
    /// Whether to colour stdout.
    pub fn enabled(self) -> bool {
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                std::io::stdout().is_terminal()
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                    && std::env::var("TERM").map(|t| t != "dumb").unwrap_or(true)
            }
        }
    }
}

/// Flags of `datom status`.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Print one JSON document (the records as stored in their znodes).
    #[arg(long)]
    pub json: bool,
    /// Keep running and redraw whenever ZooKeeper reports a change (Ctrl-C stops).
    #[arg(long)]
    pub watch: bool,
    /// Colour the output: auto (on a terminal, unless NO_COLOR is set), always, never.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
}

/// Reads the status once.
pub async fn read(coord: &Coord) -> anyhow::Result<ClusterStatus> {
    let tree = coord.list_tree(paths::ROOT).await?;
    Ok(ClusterStatus::from_tree(&tree))
}

/// The error for a ZooKeeper without the datom tree.
fn not_initialized() -> anyhow::Error {
    anyhow::anyhow!("datom is not initialized in this ZooKeeper ({} is missing): run `datom init` first", paths::ROOT)
}

/// Runs `datom status`.
pub async fn run(zk: &ZkArgs, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let coord = zk.connect().await?;
    let res = if args.watch { watch(&coord, &args).await } else { once(&coord, &args).await };
    coord.close().await;
    res
}

async fn once(coord: &Coord, args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let st = read(coord).await?;
    if st.cluster.is_none() {
        return Err(not_initialized());
    }
    if args.json {
        println!("{}", serde_json::to_string(&st)?);
    } else {
        print!("{}", render(&st, args.color.enabled()));
    }
    Ok(ExitCode::SUCCESS)
}

async fn watch(coord: &Coord, args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let cache = coord.tree_cache(paths::ROOT);
    let mut events = cache.subscribe();
    let color = args.color.enabled();
    let tty = std::io::stdout().is_terminal();
    let draw = |st: &ClusterStatus| -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        if args.json {
            writeln!(out, "{}", serde_json::to_string(st).expect("status serialises"))?;
        } else {
            if tty {
                write!(out, "\x1b[2J\x1b[H")?;
            } else {
                writeln!(out, "----")?;
            }
            if st.cluster.is_none() {
                writeln!(out, "{}", not_initialized())?;
            } else {
                write!(out, "{}", render(st, color))?;
            }
            if !tty {
                writeln!(out, "---- watching for changes (Ctrl-C stops)")?;
            }
        }
        out.flush()
    };
    tokio::select! {
        _ = cache.wait_synced() => {}
        _ = crate::cmd::up::wait_for_shutdown() => return Ok(ExitCode::SUCCESS),
    }
    // Drop what queued up during the first listing: the snapshot already has it.
    while events.try_recv().is_ok() {}
    let mut shown = ClusterStatus::from_tree(&cache.snapshot());
    draw(&shown)?;
    let stop = crate::cmd::up::wait_for_shutdown();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    while events.try_recv().is_ok() {}
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            _ = &mut stop => break,
        }
        let st = ClusterStatus::from_tree(&cache.snapshot());
        if st != shown {
            draw(&st)?;
            shown = st;
        }
    }
    Ok(ExitCode::SUCCESS)
}

struct Style {
    on: bool,
}

impl Style {
    fn paint(&self, code: &str, s: &str) -> String {
        if self.on { format!("\x1b[{code}m{s}\x1b[0m") } else { s.to_string() }
    }
    fn bold(&self, s: &str) -> String {
        self.paint("1", s)
    }
    fn dim(&self, s: &str) -> String {
        self.paint("2", s)
    }
    /// Colours a state word: green for good, red for bad, yellow otherwise.
    fn state(&self, s: &str) -> String {
        let l = s.to_ascii_lowercase();
        let code = if ["live", "active", "running", "started", "leader", "functional", "up", "ok", "master"]
            .iter()
            .any(|w| l.contains(w))
        {
            "32"
        } else if ["dead", "failed", "down", "error", "stopped", "no instance"].iter().any(|w| l.contains(w)) {
            "31"
        } else {
            "33"
        };
        self.paint(code, s)
    }
}

/// Pads `s` (which may contain colour codes) to `width` visible characters.
fn pad(s: &str, visible: &str, width: usize) -> String {
    let n = visible.chars().count();
    if n >= width { format!("{s}  ") } else { format!("{s}{}  ", " ".repeat(width - n)) }
}

/// A table: header and rows of (painted, plain) cells, columns sized to the plain text.
fn table(out: &mut String, st: &Style, header: &[&str], rows: &[Vec<(String, String)>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, (_, plain)) in r.iter().enumerate() {
            widths[i] = widths[i].max(plain.chars().count());
        }
    }
    let mut line = String::from("  ");
    for (i, h) in header.iter().enumerate() {
        line.push_str(&pad(&st.dim(h), h, widths[i]));
    }
    let _ = writeln!(out, "{}", line.trim_end());
    for r in rows {
        let mut line = String::from("  ");
        for (i, (painted, plain)) in r.iter().enumerate() {
            line.push_str(&pad(painted, plain, widths[i]));
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

fn cell(s: impl Into<String>) -> (String, String) {
    let s = s.into();
    (s.clone(), s)
}

fn field(v: &serde_json::Value, k: &str) -> String {
    match v.get(k) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) | None => String::new(),
        Some(o) => o.to_string(),
    }
}

/// Renders the status for a terminal. Pure, so it is tested directly.
pub fn render(s: &ClusterStatus, color: bool) -> String {
    let st = Style { on: color };
    let mut out = String::new();
    let name = s.cluster.as_ref().map(|c| field(c, "name")).unwrap_or_default();
    let _ = writeln!(
        out,
        "{} {} · {}/{} nodes live",
        st.bold("datom cluster"),
        st.bold(&format!("{name:?}")),
        s.live_nodes(),
        s.nodes.len()
    );

    let none = |out: &mut String, hint: &str| {
        let _ = writeln!(out, "  {}", st.dim(&format!("none ({hint})")));
    };

    let _ = writeln!(out, "\n{}", st.bold("config service"));
    match &s.config_service.active {
        Some(a) => {
            let http = field(a, "http");
            let dash = if http.is_empty() { String::new() } else { format!(", dashboard http://{http}/") };
            let since = field(a, "started_at");
            let since = if since.is_empty() { since } else { format!(" since {since}") };
            let _ = writeln!(
                out,
                "  {}  {} at {}{}{}",
                st.state("active "),
                st.bold(&field(a, "id")),
                field(a, "address"),
                dash,
                since
            );
        }
        None => {
            let _ = writeln!(out, "  {}", st.state("no active instance (start datom-config-service)"));
        }
    }
    for c in s.config_service.standbys() {
        let dash = c.http.as_deref().map(|h| format!(", dashboard http://{h}/")).unwrap_or_default();
        let _ = writeln!(
            out,
            "  {}  {} at {}{}",
            st.state("standby"),
            c.id.as_deref().unwrap_or("?"),
            c.address.as_deref().unwrap_or("?"),
            dash
        );
    }

    let _ = writeln!(out, "\n{}", st.bold("nodes"));
    if s.nodes.is_empty() {
        none(&mut out, "add one with `datom addnode`");
    } else {
        let rows: Vec<Vec<(String, String)>> = s
            .nodes
            .iter()
            .map(|n| {
                let state = if n.state == NodeState::Live { "live" } else { "dead" };
                let agent = n
                    .live
                    .as_ref()
                    .map(|l| format!("{} pid {}", field(l, "address"), field(l, "pid")))
                    .unwrap_or_else(|| "-".into());
                let plain: Vec<String> = n.services.iter().map(|sv| format!("{}:{}", sv.service, sv.state)).collect();
                let painted: Vec<String> =
                    n.services.iter().map(|sv| format!("{}:{}", sv.service, st.state(&sv.state))).collect();
                let (sp, sv) = if plain.is_empty() {
                    ("-".to_string(), "-".to_string())
                } else {
                    (painted.join(" "), plain.join(" "))
                };
                vec![cell(&n.name), (st.state(state), state.to_string()), cell(agent), cell(&n.hardware), (sp, sv)]
            })
            .collect();
        table(&mut out, &st, &["NODE", "STATE", "AGENT", "HARDWARE", "SERVICES"], &rows);
    }

    let _ = writeln!(out, "\n{}", st.bold("services"));
    if s.services.is_empty() {
        none(&mut out, "apply one with `datom service apply`");
    } else {
        let rows: Vec<Vec<(String, String)>> = s
            .services
            .iter()
            .map(|sv| {
                let plain: Vec<String> = sv
                    .instances
                    .iter()
                    .map(|(n, v)| format!("{n}:{}", v.get("state").and_then(|x| x.as_str()).unwrap_or("running")))
                    .collect();
                let painted: Vec<String> = sv
                    .instances
                    .iter()
                    .map(|(n, v)| {
                        format!("{n}:{}", st.state(v.get("state").and_then(|x| x.as_str()).unwrap_or("running")))
                    })
                    .collect();
                let (ip, iv) = if plain.is_empty() {
                    ("-".to_string(), "-".to_string())
                } else {
                    (painted.join(" "), plain.join(" "))
                };
                vec![cell(&sv.name), (ip, iv), cell(one_line(&sv.spec, 60))]
            })
            .collect();
        table(&mut out, &st, &["SERVICE", "INSTANCES", "SPEC"], &rows);
    }

    let _ = writeln!(out, "\n{}", st.bold("groups"));
    if s.groups.is_empty() {
        none(&mut out, "replication groups appear when volumes are created");
    } else {
        let rows: Vec<Vec<(String, String)>> = s
            .groups
            .iter()
            .map(|g| {
                let members_plain: Vec<String> = g
                    .members
                    .iter()
                    .map(|m| match &m.state {
                        Some(state) => format!("{}:{state}", m.name),
                        None => m.name.clone(),
                    })
                    .collect();
                let members_painted: Vec<String> = g
                    .members
                    .iter()
                    .map(|m| match &m.state {
                        Some(state) => format!("{}:{}", m.name, st.state(state)),
                        None => m.name.clone(),
                    })
                    .collect();
                vec![
                    cell(&g.name),
                    cell(g.term.map(|t| t.to_string()).unwrap_or_else(|| "-".into())),
                    cell(g.leader.clone().unwrap_or_else(|| "-".into())),
                    cell(g.status.clone().unwrap_or_else(|| "-".into())),
                    (members_painted.join(" "), members_plain.join(" ")),
                ]
            })
            .collect();
        table(&mut out, &st, &["GROUP", "TERM", "LEADER", "STATUS", "MEMBERS"], &rows);
    }

    let _ = writeln!(out, "\n{}", st.bold("redundancy nodes"));
    if s.redundancy.is_empty() {
        none(&mut out, "create one with `datom create_node`");
    } else {
        let rows: Vec<Vec<(String, String)>> = s
            .redundancy
            .iter()
            .map(|r| {
                let state = r.state.clone().unwrap_or_else(|| "-".into());
                vec![cell(&r.index), (st.state(&state), state.clone()), cell(one_line(&r.record, 80))]
            })
            .collect();
        table(&mut out, &st, &["INDEX", "STATE", "RECORD"], &rows);
    }

    let _ = writeln!(out, "\n{}", st.bold("last transitions"));
    if s.events.is_empty() {
        none(&mut out, "transitions are recorded under /datom/events as they happen");
    } else {
        for e in s.events.iter().rev().take(10) {
            let _ = writeln!(out, "  {} {}", st.dim(e.at.as_deref().unwrap_or(&e.id)), e.summary);
        }
    }
    out
}

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
            ("/datom/configservice/instance", json!({"id": "cs-1", "address": "a:1", "http": "a:2"})),
            ("/datom/configservice/lock/_c_x-lock-0000000001", json!({"id": "cs-1", "address": "a:1"})),
            ("/datom/configservice/lock/_c_y-lock-0000000002", json!({"id": "cs-2", "address": "b:1"})),
            ("/datom/nodes/n1", json!({"name": "n1", "services": ["web"], "hardware": {"cpus": 2}})),
            ("/datom/nodes/n1/live", json!({"address": "127.0.0.1:9", "pid": 5})),
            ("/datom/nodes/n2", json!({"name": "n2"})),
            ("/datom/groups/g", json!({"term": 7, "leader": "n1", "members": {"n1": "LEADER"}})),
        ] {
            t.insert(p.to_string(), NodeData { data: v.to_string().into_bytes(), version: 0, ephemeral_owner: 0 });
        }
        ClusterStatus::from_tree(&t)
    }

    #[test]
    fn plain_rendering_shows_every_section() {
        let text = render(&status(), false);
        assert!(!text.contains('\x1b'), "no colour codes: {text}");
        for want in [
            "datom cluster \"demo\" · 1/2 nodes live",
            "active   cs-1 at a:1, dashboard http://a:2/",
            "standby  cs-2 at b:1",
            "n1    live",
            "n2    dead",
            "2 cpu",
            "web:no instance",
            "g      7     n1",
            "n1:LEADER",
            "none (apply one with `datom service apply`)",
            "none (create one with `datom create_node`)",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
    }

    #[test]
    fn colour_marks_live_green_and_dead_red() {
        let text = render(&status(), true);
        assert!(text.contains("\x1b[32mlive\x1b[0m"), "{text}");
        assert!(text.contains("\x1b[31mdead\x1b[0m"), "{text}");
        // Columns stay aligned: colour codes do not count as width.
        let plain = render(&status(), false);
        let strip = |s: &str| {
            let mut out = String::new();
            let mut esc = false;
            for c in s.chars() {
                match (esc, c) {
                    (false, '\x1b') => esc = true,
                    (true, 'm') => esc = false,
                    (true, _) => {}
                    (false, c) => out.push(c),
                }
            }
            out
        };
        assert_eq!(strip(&text), plain);
    }
}
