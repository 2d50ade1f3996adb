//! A stand-in for a node agent's presence, for tests and benchmarks until node agents exist:
//! `datom-ha stand-in-agent --node N` holds `/datom/nodes/N/live` in its own ZooKeeper session
//! and does nothing else. SIGKILL it and ZooKeeper expires the session, exactly as it would for
//! a crashed agent.

use std::future::Future;
use std::io::Write;

use chrono::Utc;
use datom_common::coord::{Coord, CoordError, Mode, encode};
use datom_common::names::{self, NameKind};
use datom_common::paths;
use datom_common::records::{LiveRecord, SCHEMA, datom_version};

/// Registers `node`'s presence, prints one JSON line `{"ready":true,"pid":..,"session_timeout_ms":..}`
/// on stdout, and holds it until `shutdown` resolves.
pub async fn run(coord: &Coord, node: &str, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    names::validate(NameKind::Node, node)?;
    // The live ephemeral's parent is the node record, written by the config service when the
    // node is added; without one, create a placeholder so the ephemeral has a parent.
    let placeholder = serde_json::json!({
        "schema": SCHEMA,
        "name": node,
        "placeholder": "created by `datom-ha stand-in-agent` (tests and benchmarks); not a registered node record",
    });
    match coord.create(&paths::node(node), &placeholder, Mode::Persistent).await {
        Ok(_) | Err(CoordError::NodeExists { .. }) => {}
        Err(CoordError::NoNode { .. }) => anyhow::bail!("datom is not initialized here: run `datom init` first"),
        Err(e) => return Err(e.into()),
    }
    let live = LiveRecord {
        schema: SCHEMA,
        node: node.to_string(),
        address: String::new(),
        http: None,
        pid: std::process::id(),
        version: datom_version(),
        started_at: Utc::now(),
        load: None,
    };
    let path = paths::node_live(node);
    let wait = coord.negotiated_timeout() + std::time::Duration::from_secs(2);
    let handle = coord.register_ephemeral(&path, encode(&path, &live)?, wait).await?;
    let ready = serde_json::json!({
        "ready": true,
        "pid": std::process::id(),
        "session_timeout_ms": coord.negotiated_timeout().as_millis() as u64,
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "{ready}")?;
    out.flush()?;
    drop(out);
    shutdown.await;
    handle.remove().await?;
    Ok(())
}
