//! The cache's background task: one persistent recursive watch over [`paths::ROOT`], filtered
//! to registration znodes, plus a full re-list of the registry whenever the watch stream says
//! events may have been missed (first registration, reconnect, new session).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};

use super::Inner;
use super::peer::{Peer, PeerInfo, Registry};
use super::stats::Counters;
use crate::coord::watch::{NodeData, WatchEvent};
use crate::coord::{Coord, CoordError, CoordResult};
use crate::paths;

/// Largest number of watch events folded into one batch of reads.
const MAX_BATCH: usize = 4096;
/// Registration znodes read concurrently.
const READ_CONCURRENCY: usize = 64;

/// Runs until the watch stream ends (the coordination client closed) or the task is aborted.
pub(crate) async fn run(inner: Arc<Inner>) {
    let mut stream = inner.coord.watch(paths::ROOT, true);
    while let Some(first) = stream.next().await {
        // Fold everything already queued into one batch: one read per dirty znode, however
        // many events it had, and one re-list however many resyncs were asked for.
        let mut resync = false;
        let mut dirty: BTreeSet<String> = BTreeSet::new();
        let mut take = |ev: WatchEvent| match ev {
            WatchEvent::Resync => resync = true,
            WatchEvent::Node { path, .. } => {
                if Peer::from_path(&path).is_some() {
                    dirty.insert(path);
                }
            }
        };
        take(first);
        let mut n = 1;
        while n < MAX_BATCH {
            match stream.next().now_or_never() {
                Some(Some(ev)) => take(ev),
                _ => break,
            }
            n += 1;
        }
        if !resync && !dirty.is_empty() {
            match read_paths(&inner.coord, dirty.into_iter().collect()).await {
                Ok(read) => {
                    let changes = read
                        .into_iter()
                        .map(|(path, node)| {
                            let peer = Peer::from_path(&path).expect("filtered to registrations");
                            (peer, node.and_then(|n| decode(&inner, &path, &n)))
                        })
                        .collect();
                    inner.apply_changes(changes);
                }
                Err(e) => {
                    // The re-list below repairs whatever these reads missed.
                    tracing::debug!(error = %e, "reading changed registrations failed; re-listing");
                    resync = true;
                }
            }
        }
        if resync {
            let mut delay = Duration::from_millis(20);
            let listing = inner.listing_started();
            let fresh = loop {
                match list_registry(&inner).await {
                    Ok(r) => break r,
                    Err(CoordError::Closed) => return,
                    Err(e) => {
                        tracing::debug!(error = %e, "listing the peer registry failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(1));
                    }
                }
            };
            inner.apply_full(fresh, listing);
        }
    }
}

fn decode(inner: &Inner, path: &str, node: &NodeData) -> Option<PeerInfo> {
    match PeerInfo::decode(path, node) {
        Ok(info) => Some(info),
        Err(e) => {
            Counters::inc(&inner.counters.bad_records);
            tracing::warn!(error = %e, "ignoring an unusable peer registration");
            None
        }
    }
}

/// Reads `paths` concurrently; a missing znode reads as `None`.
async fn read_paths(coord: &Coord, paths: Vec<String>) -> CoordResult<Vec<(String, Option<NodeData>)>> {
    futures::stream::iter(paths)
        .map(|path| async move {
            let node = coord.get_raw(&path).await?.map(|(data, stat)| NodeData {
                data,
                version: stat.version,
                ephemeral_owner: stat.ephemeral_owner,
            });
            Ok((path, node))
        })
        .buffer_unordered(READ_CONCURRENCY)
        .collect::<Vec<CoordResult<_>>>()
        .await
        .into_iter()
        .collect()
}

/// Children of `path`, or none when it does not exist.
async fn children(coord: &Coord, path: &str) -> CoordResult<Vec<String>> {
    match coord.children(path).await {
        Ok(c) => Ok(c),
        Err(CoordError::NoNode { .. }) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Lists every registration znode and reads it: the whole registry as ZooKeeper holds it now.
pub(crate) async fn list_registry(inner: &Inner) -> CoordResult<Registry> {
    let coord = &inner.coord;
    let mut paths = vec![paths::CONFIG_SERVICE_INSTANCE.to_string()];
    paths.extend(children(coord, paths::NODES).await?.iter().map(|n| paths::node_live(n)));
    let services = children(coord, paths::SERVICES).await?;
    let groups = children(coord, paths::GROUPS).await?;
    let instance_lists = futures::future::try_join_all(services.iter().map(|s| async move {
        Ok::<_, CoordError>(
            children(coord, &paths::service_instances(s))
                .await?
                .into_iter()
                .map(|n| paths::service_instance(s, &n))
                .collect::<Vec<_>>(),
        )
    }));
    let member_lists = futures::future::try_join_all(groups.iter().map(|g| async move {
        Ok::<_, CoordError>(
            children(coord, &paths::group_members(g))
                .await?
                .into_iter()
                .map(|m| paths::group_member(g, &m))
                .collect::<Vec<_>>(),
        )
    }));
    let (instances, members) = futures::future::try_join(instance_lists, member_lists).await?;
    paths.extend(instances.into_iter().flatten());
    paths.extend(members.into_iter().flatten());
    let read = read_paths(coord, paths).await?;
    Ok(read
        .into_iter()
        .filter_map(|(path, node)| {
            let peer = Peer::from_path(&path)?;
            Some((peer, decode(inner, &path, &node?)?))
        })
        .collect())
}
