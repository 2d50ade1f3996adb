//! Placement: seed 001's pluggable "configuration strategy module". A strategy is a pure
//! function from cluster state to a placement — no I/O — so it can be tested with tables of
//! input state and expected placement, like Pacemaker's scheduler tests.
//!
//! The seed's first-cut strategy asks, for each resource group, every node for the cost of
//! providing it (infinite if it cannot), then places it on the cheapest. [`CostStrategy`] is
//! that, with costs from free CPU and memory (hardware from addnode, usage reported by the
//! agents) and the services a node already runs. Ties go to the lowest node name.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::records::{NodeLoad, NodeRecord};
use crate::spec::{DependencyGraph, ServiceSpec};

/// What the strategy knows about one node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    /// The registered record (hardware, unschedulable).
    pub record: NodeRecord,
    /// Whether its agent is live.
    pub live: bool,
    /// Usage the agent last reported.
    pub load: Option<NodeLoad>,
    /// Services desired in service on it.
    pub running: BTreeSet<String>,
}

/// Cluster state, as the transition master collected it (seed 001 step 3: "collect a config
/// report from every node").
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterState {
    /// Nodes by name.
    pub nodes: BTreeMap<String, NodeView>,
    /// Service specs by name.
    pub specs: BTreeMap<String, ServiceSpec>,
}

/// A node's cost for a unit: finite (lower is better) or infinite with the reason.
#[derive(Debug, Clone, PartialEq)]
pub enum Cost {
    /// The node can provide the unit at this cost.
    Finite(f64),
    /// The node cannot provide it.
    Infinite(String),
}

/// What to place: services that go together (a group, or a service with its dependencies),
/// on `replicas` distinct nodes, avoiding `exclude`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    /// The services of the unit (dependencies included).
    pub services: Vec<String>,
    /// Distinct nodes wanted.
    pub replicas: u32,
    /// Nodes that must not be chosen (e.g. the one that just died or failed it).
    pub exclude: BTreeSet<String>,
}

/// Why nothing could be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("cannot place {services:?}: {reason}")]
pub struct PlacementError {
    /// The unit.
    pub services: Vec<String>,
    /// Per-node reasons, or a summary.
    pub reason: String,
}

/// A placement strategy (seed 001's configuration strategy module).
pub trait PlacementStrategy: Send + Sync {
    /// Its name in the cluster config.
    fn name(&self) -> &'static str;

    /// The cost of `node` providing `services` (seed 001 step 4).
    fn cost(&self, state: &ClusterState, node: &str, services: &[String]) -> Cost;

    /// Chooses `request.replicas` distinct nodes, cheapest first, ties by name.
    fn place(&self, state: &ClusterState, request: &Request) -> Result<Vec<String>, PlacementError> {
        let mut costs: Vec<(f64, &str)> = Vec::new();
        let mut why = Vec::new();
        for name in state.nodes.keys() {
            if request.exclude.contains(name) {
                why.push(format!("{name}: excluded"));
                continue;
            }
            match self.cost(state, name, &request.services) {
                Cost::Finite(c) => costs.push((c, name)),
                Cost::Infinite(r) => why.push(format!("{name}: {r}")),
            }
        }
        costs.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(b.1)));
        let want = request.replicas.max(1) as usize;
        if costs.len() < want {
            let reason = if why.is_empty() {
                "no nodes".to_string()
            } else {
                format!("{} capable node(s) for {want} replica(s) ({})", costs.len(), why.join("; "))
            };
            return Err(PlacementError { services: request.services.clone(), reason });
        }
        Ok(costs.into_iter().take(want).map(|(_, n)| n.to_string()).collect())
    }
}

/// The checks every strategy shares: infinite cost when the node is not live, drained, excluded
/// by a service's placement, unable to satisfy a dependency, or already running the service.
pub fn feasibility(state: &ClusterState, node: &str, services: &[String]) -> Result<(), String> {
    let Some(view) = state.nodes.get(node) else { return Err("unknown node".into()) };
    if !view.live {
        return Err("not live".into());
    }
    if view.record.unschedulable {
        return Err("drained (unschedulable)".into());
    }
    let graph = DependencyGraph::new(state.specs.values());
    for svc in services {
        let Some(spec) = state.specs.get(svc) else { return Err(format!("{svc}: no spec")) };
        if !spec.placement.nodes.allows(node) {
            return Err(format!("{svc}: placement.nodes excludes it"));
        }
        if view.running.contains(svc) {
            return Err(format!("{svc}: already runs there (replicas go on distinct nodes)"));
        }
        for dep in graph.with_dependencies(svc) {
            match state.specs.get(&dep) {
                None => return Err(format!("{svc}: dependency {dep} has no spec")),
                Some(d) if !d.placement.nodes.allows(node) => {
                    return Err(format!("{svc}: dependency {dep} cannot run there"));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// The default strategy: cost from used CPU and memory and services per CPU.
#[derive(Debug, Clone, Copy, Default)]
pub struct CostStrategy;

impl PlacementStrategy for CostStrategy {
    fn name(&self) -> &'static str {
        "cost"
    }

    fn cost(&self, state: &ClusterState, node: &str, services: &[String]) -> Cost {
        if let Err(r) = feasibility(state, node, services) {
            return Cost::Infinite(r);
        }
        let view = &state.nodes[node];
        let cpus = view.record.hardware.cpus.max(1) as f64;
        let mem = view.record.hardware.memory_bytes.max(1) as f64;
        let (cpu_used, mem_used) = match &view.load {
            Some(l) => {
                ((l.cpu_percent as f64 / 100.0).clamp(0.0, 1.0), (l.memory_used_bytes as f64 / mem).clamp(0.0, 1.0))
            }
            None => (0.0, 0.0),
        };
        let new: BTreeSet<&String> = services.iter().filter(|s| !view.running.contains(*s)).collect();
        let services_per_cpu = (view.running.len() + new.len()) as f64 / cpus;
        // Each term is 0..≈1 per unit of pressure; services dominate so that spreading work is
        // visible even on idle machines.
        Cost::Finite(100.0 * services_per_cpu + 50.0 * cpu_used + 50.0 * mem_used)
    }
}

/// Places on the first capable node by name (seed 001's "lowest node name"); useful when
/// predictability matters more than balance.
#[derive(Debug, Clone, Copy, Default)]
pub struct FirstFitStrategy;

impl PlacementStrategy for FirstFitStrategy {
    fn name(&self) -> &'static str {
        "first-fit"
    }

    fn cost(&self, state: &ClusterState, node: &str, services: &[String]) -> Cost {
        match feasibility(state, node, services) {
            Ok(()) => Cost::Finite(0.0),
            Err(r) => Cost::Infinite(r),
        }
    }
}

/// The strategy named in the cluster config (`cost` when unset or unknown).
pub fn strategy(name: Option<&str>) -> Box<dyn PlacementStrategy> {
    match name {
        Some("first-fit") => Box::new(FirstFitStrategy),
        _ => Box::new(CostStrategy),
    }
}

/// The unit that must move together with `svc`: its dependencies, and every service of its
/// group with their dependencies, in start order.
pub fn unit_of(specs: &BTreeMap<String, ServiceSpec>, svc: &str) -> Vec<String> {
    let graph = DependencyGraph::new(specs.values());
    let mut members: Vec<&str> = vec![svc];
    if let Some(group) = specs.get(svc).and_then(|s| s.group.as_ref()) {
        for s in specs.values() {
            if s.group.as_ref() == Some(group) && s.name != svc {
                members.push(&s.name);
            }
        }
    }
    let mut out: Vec<String> = Vec::new();
    for m in members {
        for s in graph.with_dependencies(m) {
            if !out.contains(&s) {
                out.push(s);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
