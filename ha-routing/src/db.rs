//! The redundancy node manager (seed 002): the database of redundancy nodes, kept in
//! ZooKeeper at `/datom/redundancy/<index>` — add, modify, delete, find by index, walk in
//! index order — and the event requests `datom node_event` queues under a node.
//!
//! Every change is version-checked or a multi-op; validation happens before any write.

use std::time::{Duration, Instant};

use chrono::Utc;
use datom_common::coord::{Coord, CoordError, Mode, Op, Versioned};
use datom_common::paths;

use crate::error::{HaError, HaResult};
use crate::params::{self, NodeParams, Param};
use crate::record::{EventRequest, HaServerRecord, LastEvent, RedundancyNode, RequestState, SCHEMA, hostname};

async fn require_tree(coord: &Coord) -> HaResult<()> {
    if coord.exists(paths::REDUNDANCY).await?.is_none() {
        return Err(HaError::NotInitialized);
    }
    Ok(())
}

/// Reads redundancy node `index`.
pub async fn get_node(coord: &Coord, index: u16) -> HaResult<Option<Versioned<RedundancyNode>>> {
    params::check_index(index as i64)?;
    Ok(coord.get::<RedundancyNode>(&paths::redundancy(index)).await?)
}

/// Every redundancy node, in index order (the seed's "find the next node" walk).
pub async fn list_nodes(coord: &Coord) -> HaResult<Vec<RedundancyNode>> {
    require_tree(coord).await?;
    let mut indices: Vec<u16> =
        coord.children(paths::REDUNDANCY).await?.iter().filter_map(|c| c.parse().ok()).collect();
    indices.sort();
    let mut out = Vec::new();
    for i in indices {
        if let Some(v) = coord.get::<RedundancyNode>(&paths::redundancy(i)).await? {
            out.push(v.value);
        }
    }
    Ok(out)
}

/// The first redundancy node with an index above `after` (0 for the first), or `None`.
pub async fn next_node(coord: &Coord, after: u16) -> HaResult<Option<RedundancyNode>> {
    Ok(list_nodes(coord).await?.into_iter().find(|n| n.index > after))
}

/// `create_node`: validates completely, then creates the node; refuses an existing index.
pub async fn create_node(coord: &Coord, index: u16, p: &NodeParams) -> HaResult<RedundancyNode> {
    let rec = params::build_new(index, p, Utc::now())?;
    require_tree(coord).await?;
    match coord.create(&paths::redundancy(index), &rec, Mode::Persistent).await {
        Ok(_) => Ok(rec),
        Err(CoordError::NodeExists { .. }) => Err(HaError::AlreadyExists(index)),
        Err(e) => Err(e.into()),
    }
}

/// Applies `change` to node `index` with a version-checked write, re-reading and retrying when
/// someone else changed it first. Returns (before, after).
async fn modify<F>(coord: &Coord, index: u16, mut change: F) -> HaResult<(RedundancyNode, RedundancyNode)>
where
    F: FnMut(&RedundancyNode) -> HaResult<RedundancyNode>,
{
    params::check_index(index as i64)?;
    require_tree(coord).await?;
    let path = paths::redundancy(index);
    for _ in 0..16 {
        let Some(cur) = coord.get::<RedundancyNode>(&path).await? else {
            return Err(HaError::NoSuchNode(index));
        };
        let new = change(&cur.value)?;
        if new == cur.value {
            return Ok((cur.value, new));
        }
        match coord.set(&path, &new, Some(cur.version)).await {
            Ok(_) => return Ok((cur.value, new)),
            Err(CoordError::Conflict { .. }) => continue,
            Err(CoordError::NoNode { .. }) => return Err(HaError::NoSuchNode(index)),
            Err(e) => return Err(e.into()),
        }
    }
    Err(CoordError::Conflict { path, expected: -1 }.into())
}

/// `set_params`: changes exactly the given parameters.
pub async fn set_params(coord: &Coord, index: u16, p: &NodeParams) -> HaResult<(RedundancyNode, RedundancyNode)> {
    modify(coord, index, |cur| params::apply_set(cur, p, Utc::now())).await
}

/// `clear_params`: removes the named parameters.
pub async fn clear_params(coord: &Coord, index: u16, which: &[Param]) -> HaResult<(RedundancyNode, RedundancyNode)> {
    params::check_clearable(which, None)?;
    modify(coord, index, |cur| params::apply_clear(cur, which, Utc::now())).await
}

/// `delete_node`: removes the node and its queued event requests in one multi-op. Returns
/// false (not an error, as the seed says) when the node did not exist.
pub async fn delete_node(coord: &Coord, index: u16) -> HaResult<bool> {
    params::check_index(index as i64)?;
    require_tree(coord).await?;
    let path = paths::redundancy(index);
    for _ in 0..16 {
        let Some((_, stat)) = coord.get_raw(&path).await? else { return Ok(false) };
        let children = match coord.children(&path).await {
            Ok(c) => c,
            Err(CoordError::NoNode { .. }) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let mut ops: Vec<Op> =
            children.iter().map(|c| Op::Delete { path: paths::join(&path, c), version: None }).collect();
        ops.push(Op::Delete { path: path.clone(), version: Some(stat.version) });
        match coord.multi(&ops).await {
            Ok(()) => return Ok(true),
            // A request arrived, one was pruned, or the node changed: look again.
            Err(CoordError::NotEmpty { .. } | CoordError::NoNode { .. } | CoordError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(HaError::Control(format!("{path} kept changing while being deleted; try again")))
}

/// The event manager record of `node`, if one is running.
pub async fn server_record(coord: &Coord, node: &str) -> HaResult<Option<HaServerRecord>> {
    Ok(coord.get::<HaServerRecord>(&paths::ha_server(node)).await?.map(|v| v.value))
}

/// `node_event`: queues `event` for node `index`, waits up to `wait` for its event manager to
/// handle it, and returns the result. Refuses (writing nothing) when the node does not exist or
/// no event manager runs for its router. If no manager takes the request in time it is
/// withdrawn, so nothing happens later by surprise.
pub async fn request_event(coord: &Coord, index: u16, event: &str, wait: Option<Duration>) -> HaResult<LastEvent> {
    let Some(node) = get_node(coord, index).await? else { return Err(HaError::NoSuchNode(index)) };
    let owner = node.value.node.clone();
    if server_record(coord, &owner).await?.is_none() {
        return Err(HaError::NoEventManager { node: owner.clone(), path: paths::ha_server(&owner) });
    }
    let wait = wait.unwrap_or(Duration::from_millis(node.value.timeout_ms * 2 + 5000));
    let req = EventRequest {
        schema: SCHEMA,
        event: event.to_string(),
        state: RequestState::Pending,
        requested_at: Utc::now(),
        requested_by: format!("{}:{}", hostname(), std::process::id()),
        claimed_by: None,
        outcome: None,
    };
    let path = match coord.create(&paths::redundancy_event_prefix(index), &req, Mode::PersistentSequential).await {
        Ok(p) => p,
        Err(CoordError::NoNode { .. }) => return Err(HaError::NoSuchNode(index)),
        Err(e) => return Err(e.into()),
    };
    let mut rx = coord.watch_data(&path).await;
    let deadline = Instant::now() + wait;
    let mut claimed = false;
    loop {
        let current = rx.borrow_and_update().clone();
        if let Some((data, _)) = current
            && let Ok(r) = datom_common::coord::decode::<EventRequest>(&path, &data)
        {
            match (r.state, r.outcome) {
                (RequestState::Done, Some(outcome)) => {
                    let _ = coord.delete_if_exists(&path).await;
                    return Ok(outcome);
                }
                (RequestState::Running, _) => claimed = true,
                _ => {}
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tokio::time::timeout(left, rx.changed()).await.is_err() {
            break;
        }
    }
    // Withdraw the request if nobody took it (version 0 = still as written).
    if !claimed {
        match coord.delete(&path, Some(0)).await {
            Ok(()) | Err(CoordError::NoNode { .. }) => {
                return Err(HaError::EventTimeout(format!(
                    "the event manager of node {owner:?} did not take the {event} event for redundancy node {index} \
                     within {} ms; the request was withdrawn and nothing was done. Check it with \
                     `datom ha_api -c ping --node {owner}`",
                    wait.as_millis()
                )));
            }
            Err(_) => {}
        }
    }
    Err(HaError::EventTimeout(format!(
        "the event manager of node {owner:?} took the {event} event for redundancy node {index} but did not finish \
         within {} ms; its result will appear in last_event of {}",
        wait.as_millis(),
        paths::redundancy(index)
    )))
}
