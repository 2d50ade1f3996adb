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
