//! The transition master (seed 001): the active config service already holds the lock, so it
//! is the master. It mirrors `/datom` with a tree cache, and on every change collects the
//! cluster state, runs the pure [`decide`] with the configured placement strategy, and applies
//! each transition as one fenced multi-op: desired states move, the placement record is stamped,
//! and the transition is recorded under `/datom/events`.
//!
//! Fencing: a transition that takes services off a dead node asserts, in the same multi-op,
//! that the node's live ephemeral is still absent (create-then-delete of that path), so a node
//! that came back in the meantime keeps its services.

pub mod decide;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::Utc;
use datom_common::coord::watch::NodeData;
use datom_common::coord::{CoordError, Mode, Op, decode, encode};
use datom_common::placement::{self, ClusterState, NodeView, PlacementStrategy, Request};
use datom_common::records::{
    ClusterRecord, Decision, DesiredRecord, InstanceRecord, LiveRecord, NodeRecord, Operation, PlacementRecord, SCHEMA,
    TransitionRecord, Trigger, Unplaced,
};
use datom_common::rpc::ConfigError;
use datom_common::spec::{DependencyGraph, ServiceSpec};
use datom_common::{Coord, paths};
use tokio::sync::watch;

use crate::active::{Fenced, Leadership, Role};
use decide::{MasterView, Transition};

/// Transitions kept under `/datom/events`.
pub const MAX_EVENTS: usize = 500;

/// The transition master; cheap to clone.
#[derive(Clone)]
pub struct Master {
    coord: Coord,
    leadership: Leadership,
    /// `/datom/events` is known to exist (created once, never deleted by datom).
    events_ready: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

fn children<'a>(tree: &'a BTreeMap<String, NodeData>, parent: &str) -> Vec<(&'a str, &'a NodeData)> {
    let prefix = format!("{parent}/");
    tree.range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .filter(|(k, _)| !k[prefix.len()..].contains('/'))
        .map(|(k, v)| (&k[prefix.len()..], v))
        .collect()
}

/// Collects the master's view from a snapshot of `/datom` (seed 001 step 3).
pub fn collect(tree: &BTreeMap<String, NodeData>) -> (MasterView, BTreeMap<String, i32>) {
    let mut versions = BTreeMap::new();
    let cluster: Option<ClusterRecord> = tree.get(paths::ROOT).and_then(|n| decode(paths::ROOT, &n.data).ok());
    let mut specs = BTreeMap::new();
    let mut instances: BTreeMap<String, BTreeMap<String, InstanceRecord>> = BTreeMap::new();
    let mut last_move = BTreeMap::new();
    for (name, data) in children(tree, paths::SERVICES) {
        let path = paths::service(name);
        if let Ok(s) = decode::<ServiceSpec>(&path, &data.data) {
            specs.insert(name.to_string(), s);
        }
        for (node, d) in children(tree, &paths::service_instances(name)) {
            if let Ok(i) = decode::<InstanceRecord>(&paths::service_instance(name, node), &d.data) {
                instances.entry(name.to_string()).or_default().insert(node.to_string(), i);
            }
        }
        let pp = paths::service_placement(name);
        if let Some(p) = tree.get(&pp) {
            versions.insert(pp.clone(), p.version);
            if let Ok(r) = decode::<PlacementRecord>(&pp, &p.data) {
                last_move.insert(name.to_string(), r.moved_at);
            }
        }
    }
    let mut nodes = BTreeMap::new();
    let mut desired: BTreeMap<String, BTreeMap<String, DesiredRecord>> = BTreeMap::new();
    let mut maintenance = BTreeSet::new();
    for (name, data) in children(tree, paths::NODES) {
        let Ok(record) = decode::<NodeRecord>(&paths::node(name), &data.data) else { continue };
        versions.insert(paths::node(name), data.version);
        let live = tree.get(&paths::node_live(name));
        let load = live.and_then(|l| decode::<LiveRecord>(&paths::node_live(name), &l.data).ok()).and_then(|l| l.load);
        if tree.contains_key(&paths::node_maintenance(name)) {
            maintenance.insert(name.to_string());
        }
        let mut running = BTreeSet::new();
        for (svc, d) in children(tree, &paths::node_services(name)) {
            let path = paths::node_service(name, svc);
            versions.insert(path.clone(), d.version);
            if let Ok(rec) = decode::<DesiredRecord>(&path, &d.data) {
                if rec.op == Operation::InService {
                    running.insert(svc.to_string());
                }
                desired.entry(name.to_string()).or_default().insert(svc.to_string(), rec);
            }
        }
        nodes.insert(name.to_string(), NodeView { record, live: live.is_some(), load, running });
    }
    let view = MasterView {
        state: ClusterState { nodes, specs },
        desired,
        instances,
        maintenance,
        last_move,
        joined: BTreeSet::new(),
        now: Utc::now(),
        min_move_interval: Duration::from_secs(cluster.as_ref().and_then(|c| c.min_move_interval_s).unwrap_or(30)),
    };
    (view, versions)
}

/// Whether a change to `/datom` can alter the master's decisions. Not: a refresh of a live
/// node's load (agents rewrite it every few seconds), the config service's lock and instance
/// records, or the transitions the master itself records. A resync always can.
fn affects_decisions(ev: &datom_common::coord::watch::TreeEvent, live: &BTreeSet<String>) -> bool {
    use datom_common::coord::watch::TreeEvent;
    let under = |p: &str, root: &str| p == root || p.starts_with(&format!("{root}/"));
    match ev {
        TreeEvent::Synced => true,
        TreeEvent::Upsert { path, .. } | TreeEvent::Removed { path } => {
            if under(path, paths::EVENTS) || under(path, paths::CONFIG_SERVICE) {
                return false;
            }
            // A live node's record rewritten (load): not a join or a death.
            let refresh = matches!(ev, TreeEvent::Upsert { .. })
                && paths::basename(path) == "live"
                && live.contains(paths::basename(paths::parent(path)));
            !refresh
        }
    }
}

/// The strategy named in the cluster record.
pub fn strategy_for(tree: &BTreeMap<String, NodeData>) -> Box<dyn PlacementStrategy> {
    let cluster: Option<ClusterRecord> = tree.get(paths::ROOT).and_then(|n| decode(paths::ROOT, &n.data).ok());
    placement::strategy(cluster.and_then(|c| c.placement_strategy).as_deref())
}

impl Master {
    /// A master acting while `leadership` is active.
    pub fn new(coord: Coord, leadership: Leadership) -> Master {
        Master { coord, leadership, events_ready: Default::default() }
    }

    /// Evaluates and applies transitions whenever `/datom` changes, while active.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let cache = self.coord.tree_cache(paths::ROOT);
        let mut events = cache.subscribe();
        let mut role = self.leadership.watch_role();
        cache.wait_synced().await;
        let mut prev_live: Option<BTreeSet<String>> = None;
        let mut last_unplaced: BTreeMap<String, Vec<Unplaced>> = BTreeMap::new();
        loop {
            if self.leadership.role() == Role::Active {
                let tree = cache.snapshot();
                let (mut view, versions) = collect(&tree);
                let live: BTreeSet<String> =
                    view.state.nodes.iter().filter(|(_, n)| n.live).map(|(k, _)| k.clone()).collect();
                if let Some(prev) = &prev_live {
                    view.joined = live.difference(prev).cloned().collect();
                }
                prev_live = Some(live);
                let strategy = strategy_for(&tree);
                for t in decide::decide(&view, strategy.as_ref()) {
                    let key = serde_json::to_string(&t.trigger).unwrap_or_default();
                    let quiet_repeat = t.decisions.is_empty()
                        && !matches!(t.trigger, Trigger::NodeJoined { .. })
                        && last_unplaced.get(&key) == Some(&t.unplaced);
                    if quiet_repeat {
                        continue;
                    }
                    match self.apply(&t, &view, &versions).await {
                        Ok(()) => {
                            tracing::info!(trigger = ?t.trigger, decisions = ?t.decisions, unplaced = ?t.unplaced, "transition");
                            for d in &t.decisions {
                                for s in &d.services {
                                    datom_common::metrics::global()
                                        .failovers
                                        .get_or_create(&datom_common::metrics::ServiceLabels { service: s.clone() })
                                        .inc();
                                }
                            }
                            last_unplaced.insert(key, t.unplaced.clone());
                        }
                        // A stale view (someone changed a record first): the next change re-evaluates.
                        Err(Fenced::Coord(CoordError::Conflict { .. } | CoordError::NodeExists { .. })) => {
                            tracing::debug!(trigger = ?t.trigger, "transition raced a change; re-evaluating");
                        }
                        Err(e) => tracing::warn!(trigger = ?t.trigger, error = ?e, "transition not applied"),
                    }
                }
            } else {
                prev_live = None;
            }
            // Wait for a change that can alter a decision; agents' periodic load refreshes, the
            // config service's own lock and the transitions we record cannot.
            let live_now = prev_live.clone().unwrap_or_default();
            loop {
                use tokio::sync::broadcast::error::{RecvError, TryRecvError};
                let first = tokio::select! {
                    r = events.recv() => match r {
                        Ok(ev) => Some(ev),
                        Err(RecvError::Lagged(_)) => None,
                        Err(RecvError::Closed) => return,
                    },
                    r = role.changed() => if r.is_err() { return } else { None },
                    _ = stop.wait_for(|s| *s) => return,
                };
                // Fold a burst of changes into one evaluation.
                tokio::time::sleep(Duration::from_millis(5)).await;
                let mut relevant = first.as_ref().is_none_or(|ev| affects_decisions(ev, &live_now));
                loop {
                    match events.try_recv() {
                        Ok(ev) => relevant |= affects_decisions(&ev, &live_now),
                        Err(TryRecvError::Lagged(_)) => relevant = true,
                        Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                    }
                }
                if relevant {
                    break;
                }
            }
        }
    }

    /// Applies a transition as one fenced multi-op and records it.
    async fn apply(&self, t: &Transition, view: &MasterView, versions: &BTreeMap<String, i32>) -> Result<(), Fenced> {
        if !self.events_ready.load(std::sync::atomic::Ordering::Relaxed) {
            self.coord.ensure_path(paths::EVENTS).await.map_err(Fenced::Coord)?;
            self.events_ready.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        for d in &t.decisions {
            self.coord.ensure_path(&paths::node_services(&d.to)).await.map_err(Fenced::Coord)?;
        }
        let mut ops = Vec::new();
        if t.from_dead {
            let dead: BTreeSet<&String> = t.decisions.iter().filter_map(|d| d.from.as_ref()).collect();
            for n in dead {
                // Fencing: fails with NodeExists if the node's agent is back.
                let live = paths::node_live(n);
                ops.push(Op::Create { path: live.clone(), data: b"{}".to_vec(), mode: Mode::Persistent });
                ops.push(Op::Delete { path: live, version: None });
            }
        }
        let now = Utc::now();
        let why = trigger_text(&t.trigger);
        for d in &t.decisions {
            for svc in &d.services {
                if let Some(from) = &d.from {
                    let path = paths::node_service(from, svc);
                    if let Some(old) = view.desired.get(from).and_then(|m| m.get(svc)) {
                        let rec = DesiredRecord {
                            op: if t.force_stop { Operation::ForceOos } else { Operation::OoService },
                            requested_at: now,
                            reason: format!("moved to {} ({why})", d.to),
                            ..old.clone()
                        };
                        let data = encode(&path, &rec).map_err(Fenced::Coord)?;
                        ops.push(Op::Set { path: path.clone(), data, version: versions.get(&path).copied() });
                    }
                }
                ops.extend(self.desired_in_service_ops(view, versions, &d.to, svc, &format!("placed by {why}"))?);
                let pp = paths::service_placement(svc);
                let rec = PlacementRecord { schema: SCHEMA, nodes: vec![d.to.clone()], moved_at: now };
                let data = encode(&pp, &rec).map_err(Fenced::Coord)?;
                ops.push(match versions.get(&pp) {
                    Some(v) => Op::Set { path: pp, data, version: Some(*v) },
                    None => Op::Create { path: pp, data, mode: Mode::Persistent },
                });
            }
        }
        let record = TransitionRecord {
            schema: SCHEMA,
            at: now,
            master: self.leadership.id().to_string(),
            trigger: t.trigger.clone(),
            decisions: t.decisions.clone(),
            unplaced: t.unplaced.clone(),
        };
        let data = encode(paths::EVENT_PREFIX, &record).map_err(Fenced::Coord)?;
        ops.push(Op::Create { path: paths::EVENT_PREFIX.into(), data, mode: Mode::PersistentSequential });
        self.leadership.fenced_multi(ops).await?;
        self.trim_events().await;
        Ok(())
    }

    fn desired_in_service_ops(
        &self,
        view: &MasterView,
        versions: &BTreeMap<String, i32>,
        node: &str,
        svc: &str,
        reason: &str,
    ) -> Result<Vec<Op>, Fenced> {
        let path = paths::node_service(node, svc);
        let existing = view.desired.get(node).and_then(|m| m.get(svc));
        if existing.is_some_and(|e| e.op == Operation::InService) {
            return Ok(vec![]);
        }
        let rec = DesiredRecord {
            schema: SCHEMA,
            service: svc.to_string(),
            op: Operation::InService,
            restart_generation: existing.map(|e| e.restart_generation).unwrap_or(0),
            requested_at: Utc::now(),
            reason: reason.to_string(),
        };
        let data = encode(&path, &rec).map_err(Fenced::Coord)?;
        Ok(vec![match (existing, versions.get(&path)) {
            (Some(_), Some(v)) => Op::Set { path, data, version: Some(*v) },
            _ => Op::Create { path, data, mode: Mode::Persistent },
        }])
    }

    async fn trim_events(&self) {
        if let Ok(mut evs) = self.coord.children(paths::EVENTS).await
            && evs.len() > MAX_EVENTS
        {
            evs.sort();
            let extra = evs.len() - MAX_EVENTS;
            for e in evs.into_iter().take(extra) {
                let _ = self.coord.delete_if_exists(&paths::join(paths::EVENTS, &e)).await;
            }
        }
    }

    async fn fresh_view(&self) -> Result<(MasterView, BTreeMap<String, i32>, Box<dyn PlacementStrategy>), ConfigError> {
        // Only what decisions read: the cluster record, nodes and services (not the recorded
        // transitions or the config service's lock).
        let mut tree = self.coord.list_tree(paths::NODES).await?;
        tree.extend(self.coord.list_tree(paths::SERVICES).await?);
        if let Some((data, stat)) = self.coord.get_raw(paths::ROOT).await? {
            tree.insert(
                paths::ROOT.to_string(),
                NodeData { data, version: stat.version, ephemeral_owner: stat.ephemeral_owner },
            );
        }
        let (view, versions) = collect(&tree);
        Ok((view, versions, strategy_for(&tree)))
    }

    async fn require_active(&self) -> Result<(), ConfigError> {
        if self.leadership.role() == Role::Active { Ok(()) } else { Err(self.leadership.not_active().await) }
    }

    /// `startservice` without `--node`: places `svc` (with its dependencies) on the cheapest
    /// nodes, up to its replica count, and starts it there.
    pub async fn place_service(&self, svc: &str) -> Result<TransitionRecord, ConfigError> {
        datom_common::names::validate(datom_common::names::NameKind::Service, svc)
            .map_err(|e| ConfigError::InvalidName(e.to_string()))?;
        self.require_active().await?;
        for _ in 0..5 {
            let (view, versions, strategy) = self.fresh_view().await?;
            let spec = view
                .state
                .specs
                .get(svc)
                .ok_or_else(|| ConfigError::InvalidArgument(format!("service {svc:?} does not exist")))?;
            let graph = DependencyGraph::new(view.state.specs.values());
            let unit = graph.with_dependencies(svc);
            let running: BTreeSet<String> = view
                .state
                .nodes
                .iter()
                .filter(|(_, n)| n.live && n.running.contains(svc))
                .map(|(k, _)| k.clone())
                .collect();
            let need = (spec.placement.replicas as usize).saturating_sub(running.len());
            let trigger = Trigger::StartRequested { service: svc.to_string() };
            let mut t =
                Transition { trigger, decisions: vec![], unplaced: vec![], from_dead: false, force_stop: false };
            if need > 0 {
                // Group affinity: join a live node where the group already runs, if it can.
                let group_node = spec.group.as_ref().and_then(|g| {
                    view.state.nodes.iter().find_map(|(name, n)| {
                        let has_group =
                            n.running.iter().any(|s| view.state.specs.get(s).and_then(|x| x.group.as_ref()) == Some(g));
                        (n.live
                            && has_group
                            && !running.contains(name)
                            && placement::feasibility(&view.state, name, &[svc.to_string()]).is_ok())
                        .then(|| name.clone())
                    })
                });
                let chosen = match group_node {
                    Some(n) if need == 1 => Ok(vec![n]),
                    _ => strategy
                        .place(
                            &view.state,
                            &Request { services: unit.clone(), replicas: need as u32, exclude: running.clone() },
                        )
                        .map_err(|e| e.reason),
                };
                match chosen {
                    Ok(nodes) => {
                        for to in nodes {
                            let cost = strategy.cost(&view.state, &to, &unit);
                            t.decisions.push(Decision {
                                services: unit.clone(),
                                from: None,
                                to,
                                reason: format!("{} strategy: cost {cost:?}", strategy.name()),
                            });
                        }
                    }
                    Err(reason) => {
                        return Err(ConfigError::InvalidArgument(format!("cannot place {svc:?}: {reason}")));
                    }
                }
            }
            match self.apply(&t, &view, &versions).await {
                Ok(()) => return Ok(self.record(&t)),
                Err(Fenced::Coord(CoordError::Conflict { .. } | CoordError::NodeExists { .. })) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ConfigError::CoordinationUnavailable("the cluster kept changing while placing; retry".into()))
    }

    /// `datom move SVC --to NODE`: moves the service (and what must move with it) gracefully.
    pub async fn move_service(&self, svc: &str, to: &str) -> Result<TransitionRecord, ConfigError> {
        for (kind, n) in [(datom_common::names::NameKind::Service, svc), (datom_common::names::NameKind::Node, to)] {
            datom_common::names::validate(kind, n).map_err(|e| ConfigError::InvalidName(e.to_string()))?;
        }
        self.require_active().await?;
        for _ in 0..5 {
            let (view, versions, strategy) = self.fresh_view().await?;
            if !view.state.specs.contains_key(svc) {
                return Err(ConfigError::InvalidArgument(format!("service {svc:?} does not exist")));
            }
            if !view.state.nodes.contains_key(to) {
                return Err(ConfigError::NoSuchNode(to.to_string()));
            }
            let from: Vec<&String> =
                view.state.nodes.iter().filter(|(_, n)| n.running.contains(svc)).map(|(k, _)| k).collect();
            let from = match from.as_slice() {
                [] => return Err(ConfigError::InvalidArgument(format!("{svc:?} is not started anywhere"))),
                [one] if *one == to => {
                    return Err(ConfigError::InvalidArgument(format!("{svc:?} already runs on {to:?}")));
                }
                [one] => (*one).clone(),
                _ => {
                    return Err(ConfigError::InvalidArgument(format!(
                        "{svc:?} runs on several nodes ({}); stop the replica you want gone and start it with --node",
                        from.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                    )));
                }
            };
            let here: BTreeSet<String> = view.state.nodes[&from].running.clone();
            let unit: Vec<String> =
                placement::unit_of(&view.state.specs, svc).into_iter().filter(|s| here.contains(s)).collect();
            let mut state = view.state.clone();
            if let Some(v) = state.nodes.get_mut(&from) {
                for s in &unit {
                    v.running.remove(s);
                }
            }
            if let placement::Cost::Infinite(r) = strategy.cost(&state, to, &unit) {
                return Err(ConfigError::InvalidArgument(format!("cannot move {svc:?} to {to:?}: {r}")));
            }
            let t = Transition {
                trigger: Trigger::Move { service: svc.to_string(), to: to.to_string() },
                decisions: vec![Decision {
                    services: unit,
                    from: Some(from),
                    to: to.to_string(),
                    reason: "operator move".into(),
                }],
                unplaced: vec![],
                from_dead: false,
                force_stop: false,
            };
            match self.apply(&t, &view, &versions).await {
                Ok(()) => return Ok(self.record(&t)),
                Err(Fenced::Coord(CoordError::Conflict { .. } | CoordError::NodeExists { .. })) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ConfigError::CoordinationUnavailable("the cluster kept changing while moving; retry".into()))
    }

    /// Marks `node` (un)schedulable with a fenced, version-checked write.
    pub async fn set_schedulable(&self, node: &str, schedulable: bool) -> Result<NodeRecord, ConfigError> {
        datom_common::names::validate(datom_common::names::NameKind::Node, node)
            .map_err(|e| ConfigError::InvalidName(e.to_string()))?;
        self.require_active().await?;
        let path = paths::node(node);
        for _ in 0..8 {
            let Some(cur) = self.coord.get::<NodeRecord>(&path).await? else {
                return Err(ConfigError::NoSuchNode(node.to_string()));
            };
            let mut rec = cur.value;
            rec.unschedulable = !schedulable;
            let data = encode(&path, &rec)?;
            match self
                .leadership
                .fenced_multi(vec![Op::Set { path: path.clone(), data, version: Some(cur.version) }])
                .await
            {
                Ok(()) => return Ok(rec),
                Err(Fenced::Coord(CoordError::Conflict { .. })) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ConfigError::CoordinationUnavailable(format!("{path} kept changing; retry")))
    }

    /// `datom node drain NODE`: marks it unschedulable, then moves everything off it.
    pub async fn drain(&self, node: &str) -> Result<TransitionRecord, ConfigError> {
        self.set_schedulable(node, false).await?;
        for _ in 0..5 {
            let (view, versions, strategy) = self.fresh_view().await?;
            let mut state = view.state.clone();
            let here: BTreeSet<String> = view.state.nodes.get(node).map(|n| n.running.clone()).unwrap_or_default();
            let mut units: Vec<Vec<String>> = Vec::new();
            let mut covered = BTreeSet::new();
            for svc in &here {
                if covered.contains(svc) {
                    continue;
                }
                let unit: Vec<String> =
                    placement::unit_of(&view.state.specs, svc).into_iter().filter(|s| here.contains(s)).collect();
                covered.extend(unit.iter().cloned());
                units.push(unit);
            }
            if let Some(v) = state.nodes.get_mut(node) {
                v.running.clear();
            }
            let mut t = Transition {
                trigger: Trigger::Drain { node: node.to_string() },
                decisions: vec![],
                unplaced: vec![],
                from_dead: false,
                force_stop: false,
            };
            let exclude = BTreeSet::from([node.to_string()]);
            for unit in units {
                match strategy.place(&state, &Request { services: unit.clone(), replicas: 1, exclude: exclude.clone() })
                {
                    Ok(nodes) => {
                        let to = nodes[0].clone();
                        if let Some(v) = state.nodes.get_mut(&to) {
                            v.running.extend(unit.iter().cloned());
                        }
                        t.decisions.push(Decision {
                            services: unit,
                            from: Some(node.to_string()),
                            to,
                            reason: "drain".into(),
                        });
                    }
                    Err(e) => t.unplaced.push(Unplaced { services: unit, reason: e.reason }),
                }
            }
            match self.apply(&t, &view, &versions).await {
                Ok(()) => return Ok(self.record(&t)),
                Err(Fenced::Coord(CoordError::Conflict { .. } | CoordError::NodeExists { .. })) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ConfigError::CoordinationUnavailable("the cluster kept changing while draining; retry".into()))
    }

    fn record(&self, t: &Transition) -> TransitionRecord {
        TransitionRecord {
            schema: SCHEMA,
            at: Utc::now(),
            master: self.leadership.id().to_string(),
            trigger: t.trigger.clone(),
            decisions: t.decisions.clone(),
            unplaced: t.unplaced.clone(),
        }
    }
}

fn trigger_text(t: &Trigger) -> String {
    match t {
        Trigger::NodeDied { node } => format!("node {node} died"),
        Trigger::ServiceFailed { service, node } => format!("{service} failed on {node}"),
        Trigger::StartRequested { service } => format!("startservice {service}"),
        Trigger::NodeJoined { node } => format!("node {node} joined"),
        Trigger::Move { service, to } => format!("move {service} to {to}"),
        Trigger::Drain { node } => format!("drain {node}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datom_common::coord::watch::TreeEvent;

    fn upsert(path: &str) -> TreeEvent {
        TreeEvent::Upsert { path: path.into(), node: NodeData { data: vec![], version: 1, ephemeral_owner: 0 } }
    }

    #[test]
    fn load_refreshes_and_own_records_do_not_trigger_evaluations() {
        let live = BTreeSet::from(["n1".to_string()]);
        assert!(!affects_decisions(&upsert(&paths::node_live("n1")), &live), "load refresh");
        assert!(affects_decisions(&upsert(&paths::node_live("n2")), &live), "a join");
        assert!(affects_decisions(&TreeEvent::Removed { path: paths::node_live("n1") }, &live), "a death");
        assert!(!affects_decisions(&upsert("/datom/events/ev-0000000001"), &live));
        assert!(!affects_decisions(&upsert(paths::CONFIG_SERVICE_INSTANCE), &live));
        assert!(affects_decisions(&upsert(&paths::node_service("n1", "web")), &live));
        assert!(affects_decisions(&upsert(&paths::service_instance("web", "n1")), &live));
        assert!(affects_decisions(&TreeEvent::Synced, &live));
    }
}
