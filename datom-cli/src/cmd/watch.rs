//! `datom watch`: prints every peer event (Up, Changed, Down) as the connection cache sees it,
//! optionally filtered to one node, service or group, until SIGINT or SIGTERM.

use std::io::Write;
use std::process::ExitCode;

use datom_common::cache::{ConnectionCache, Peer, PeerEvent, PeerFilter, PeerInfo};
use datom_common::flags::ZkArgs;
use datom_common::names::{self, NameKind};
use tokio::signal::unix::{SignalKind, signal};

/// Flags of `datom watch`.
#[derive(clap::Args, Debug)]
pub struct WatchArgs {
    /// Only the members of this group.
    #[arg(long, value_name = "GROUP", conflicts_with_all = ["service", "node"])]
    pub group: Option<String>,
    /// Only the instances of this service.
    #[arg(long, value_name = "SERVICE", conflicts_with_all = ["group", "node"])]
    pub service: Option<String>,
    /// Only this node's agent and the service instances running on it.
    #[arg(long, value_name = "NODE", conflicts_with_all = ["group", "service"])]
    pub node: Option<String>,
    /// Print one compact JSON object per event, one per line.
    #[arg(long)]
    pub json: bool,
}

impl WatchArgs {
    /// The subscription filter these flags ask for, with names checked.
    pub fn filter(&self) -> anyhow::Result<PeerFilter> {
        Ok(if let Some(g) = &self.group {
            names::validate(NameKind::Group, g)?;
            PeerFilter::Group { group: g.clone() }
        } else if let Some(s) = &self.service {
            names::validate(NameKind::Service, s)?;
            PeerFilter::Service { service: s.clone() }
        } else if let Some(n) = &self.node {
            names::validate(NameKind::Node, n)?;
            PeerFilter::Node { node: n.clone() }
        } else {
            PeerFilter::All
        })
    }
}

/// Runs `datom watch`.
pub async fn run(zk: &ZkArgs, args: WatchArgs) -> anyhow::Result<ExitCode> {
    let filter = args.filter()?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let coord = zk.connect().await?;
    if coord.exists(datom_common::paths::ROOT).await?.is_none() {
        eprintln!(
            "note: {} does not exist yet (run `datom init`); waiting for peers anyway",
            datom_common::paths::ROOT
        );
    }
    let cache = ConnectionCache::start(coord.clone());
    let mut events = tokio::select! {
        _ = cache.wait_synced() => cache.subscribe(filter),
        _ = sigint.recv() => return finish(cache, coord).await,
        _ = sigterm.recv() => return finish(cache, coord).await,
    };
    let mut out = std::io::stdout().lock();
    loop {
        let ev = tokio::select! {
            ev = events.next() => ev,
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        };
        let Some(ev) = ev else { break };
        let line = if args.json { json_line(&ev) } else { text_line(&ev) };
        if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
            // The reader went away (e.g. `datom watch | head`): stop quietly.
            break;
        }
    }
    drop(out);
    finish(cache, coord).await
}

async fn finish(cache: ConnectionCache, coord: datom_common::Coord) -> anyhow::Result<ExitCode> {
    cache.close();
    coord.close().await;
    Ok(ExitCode::SUCCESS)
}

/// One event as one line of JSON: the event, plus the time it was printed.
pub fn json_line(ev: &PeerEvent) -> String {
    let mut v = serde_json::to_value(ev).expect("events serialise");
    v["at"] = serde_json::Value::String(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    serde_json::to_string(&v).expect("values serialise")
}

/// One event as a line for people: time, event, peer, address (and state when known).
pub fn text_line(ev: &PeerEvent) -> String {
    let at = chrono::Local::now().format("%H:%M:%S%.3f");
    let describe = |info: &PeerInfo| match &info.state {
        Some(s) => format!("{} {s}", info.address),
        None => info.address.clone(),
    };
    match ev {
        PeerEvent::Up { peer, info } => format!("{at} UP      {} {}", peer_name(peer), describe(info)),
        PeerEvent::Changed { peer, info, previous } => {
            format!("{at} CHANGED {} {} (was {})", peer_name(peer), describe(info), describe(previous))
        }
        PeerEvent::Down { peer, last } => format!("{at} DOWN    {} (was {})", peer_name(peer), last.address),
    }
}

fn peer_name(peer: &Peer) -> String {
    match peer {
        Peer::Node { node } => format!("node/{node}"),
        Peer::ConfigService => "configservice".to_string(),
        Peer::ServiceInstance { service, node } => format!("service/{service}@{node}"),
        Peer::GroupMember { group, member } => format!("group/{group}/{member}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(addr: &str, state: Option<&str>) -> PeerInfo {
        PeerInfo {
            address: addr.into(),
            state: state.map(str::to_string),
            version: 0,
            session: 1,
            record: serde_json::json!({ "address": addr }),
        }
    }

    #[test]
    fn text_lines_name_the_event_peer_and_address() {
        let up =
            text_line(&PeerEvent::Up { peer: Peer::service_instance("web", "n1"), info: info("a:1", Some("OOS")) });
        assert!(up.ends_with("UP      service/web@n1 a:1 OOS"), "{up}");
        let ch = text_line(&PeerEvent::Changed {
            peer: Peer::node("n1"),
            info: info("a:2", None),
            previous: info("a:1", None),
        });
        assert!(ch.ends_with("CHANGED node/n1 a:2 (was a:1)"), "{ch}");
        let down = text_line(&PeerEvent::Down { peer: Peer::group_member("g", "m"), last: info("a:3", None) });
        assert!(down.ends_with("DOWN    group/g/m (was a:3)"), "{down}");
        let cs = text_line(&PeerEvent::Down { peer: Peer::ConfigService, last: info("a:4", None) });
        assert!(cs.contains("configservice"), "{cs}");
    }

    #[test]
    fn json_lines_are_one_object_with_a_time() {
        let line = json_line(&PeerEvent::Up { peer: Peer::node("n1"), info: info("a:1", None) });
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event"], "up");
        assert_eq!(v["peer"]["node"], "n1");
        assert!(v["at"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn filters_check_names() {
        let args = |g: Option<&str>, s: Option<&str>, n: Option<&str>| WatchArgs {
            group: g.map(str::to_string),
            service: s.map(str::to_string),
            node: n.map(str::to_string),
            json: false,
        };
        assert_eq!(args(None, None, None).filter().unwrap(), PeerFilter::All);
        assert_eq!(args(Some("g1"), None, None).filter().unwrap(), PeerFilter::Group { group: "g1".into() });
        assert_eq!(args(None, Some("web"), None).filter().unwrap(), PeerFilter::Service { service: "web".into() });
        assert_eq!(args(None, None, Some("n1")).filter().unwrap(), PeerFilter::Node { node: "n1".into() });
        let err = args(None, Some("../x"), None).filter().unwrap_err().to_string();
        assert!(err.contains("service"), "{err}");
    }
}
