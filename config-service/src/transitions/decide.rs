//! The transition master's decisions, with no I/O: given the cluster as collected from
//! ZooKeeper (seed 001 step 3), which transitions to declare and where services go.
//!
//! Level-triggered: every evaluation looks at the whole state, so a missed event, a master
//! failover or a unit that could not be placed earlier is handled on the next evaluation.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use datom_common::placement::{ClusterState, PlacementStrategy, Request, unit_of};
use datom_common::records::{Decision, DesiredRecord, InstanceRecord, Operation, ServiceState, Trigger, Unplaced};
use datom_common::spec::NodeSet;

/// Everything the master knows at one evaluation.
#[derive(Debug, Clone, Default)]
pub struct MasterView {
    /// Nodes (live, load, desired services) and specs, as placement sees them.
    pub state: ClusterState,
    /// Desired records by node, then service.
    pub desired: BTreeMap<String, BTreeMap<String, DesiredRecord>>,
    /// Published instances by service, then node.
    pub instances: BTreeMap<String, BTreeMap<String, InstanceRecord>>,
    /// Nodes whose agent was stopped on purpose, services left running.
    pub maintenance: BTreeSet<String>,
    /// When each service last moved.
    pub last_move: BTreeMap<String, DateTime<Utc>>,
    /// Nodes that became live since the previous evaluation.
    pub joined: BTreeSet<String>,
    /// Now.
    pub now: DateTime<Utc>,
    /// Minimum time between two voluntary moves of one service.
    pub min_move_interval: Duration,
}

/// A transition to declare: its trigger and what was decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Why.
    pub trigger: Trigger,
    /// Where units go.
    pub decisions: Vec<Decision>,
    /// What could not be placed.
    pub unplaced: Vec<Unplaced>,
    /// Whether `from` nodes must be dead when this commits (fencing check).
    pub from_dead: bool,
    /// Stop the old copies with force_oos (dead or failed) rather than oo_service.
    pub force_stop: bool,
}

fn desired_in_service(view: &MasterView, node: &str) -> Vec<String> {
    view.desired
        .get(node)
        .map(|m| m.iter().filter(|(_, d)| d.op == Operation::InService).map(|(s, _)| s.clone()).collect())
        .unwrap_or_default()
}

/// Places `unit` on one node other than `exclude`, updating `state` so later units see it.
fn place_unit(
    state: &mut ClusterState,
    strategy: &dyn PlacementStrategy,
    unit: &[String],
    exclude: &BTreeSet<String>,
) -> Result<(String, String), String> {
    let req = Request { services: unit.to_vec(), replicas: 1, exclude: exclude.clone() };
    let nodes = strategy.place(state, &req).map_err(|e| e.reason)?;
    let to = nodes[0].clone();
    let cost = strategy.cost(state, &to, unit);
    if let Some(v) = state.nodes.get_mut(&to) {
        v.running.extend(unit.iter().cloned());
    }
    Ok((to, format!("{} strategy: cost {cost:?}", strategy.name())))
}

/// Units (groups with dependencies) to move off `node`: failover-enabled services desired in
/// service there, each unit once, in a stable order.
fn failover_units(view: &MasterView, node: &str) -> Vec<Vec<String>> {
    let mut units: Vec<Vec<String>> = Vec::new();
    let mut covered = BTreeSet::new();
    for svc in desired_in_service(view, node) {
        let Some(spec) = view.state.specs.get(&svc) else { continue };
        if !spec.failover || covered.contains(&svc) {
            continue;
        }
        // The unit: the service's group and dependencies, limited to what runs on this node.
        let here: BTreeSet<String> = desired_in_service(view, node).into_iter().collect();
        let unit: Vec<String> = unit_of(&view.state.specs, &svc).into_iter().filter(|s| here.contains(s)).collect();
        covered.extend(unit.iter().cloned());
        units.push(unit);
    }
    units
}

/// Decides the transitions for this evaluation.
pub fn decide(view: &MasterView, strategy: &dyn PlacementStrategy) -> Vec<Transition> {
    let mut out = Vec::new();
    let mut state = view.state.clone();

    // 1. Dead nodes: fail over their failover-enabled services (unless in maintenance).
    for (name, node) in &view.state.nodes {
        if node.live || view.maintenance.contains(name) {
            continue;
        }
        let units = failover_units(view, name);
        if units.is_empty() {
            continue;
        }
        let exclude = BTreeSet::from([name.clone()]);
        let mut t = Transition {
            trigger: Trigger::NodeDied { node: name.clone() },
            decisions: vec![],
            unplaced: vec![],
            from_dead: true,
            force_stop: true,
        };
        for unit in units {
            // Their old node no longer counts them.
            if let Some(v) = state.nodes.get_mut(name) {
                for s in &unit {
                    v.running.remove(s);
                }
            }
            match place_unit(&mut state, strategy, &unit, &exclude) {
                Ok((to, reason)) => t.decisions.push(Decision { services: unit, from: Some(name.clone()), to, reason }),
                Err(reason) => t.unplaced.push(Unplaced { services: unit, reason }),
            }
        }
        out.push(t);
    }

    // 2. FAILED instances of failover-enabled services on live nodes: move them elsewhere.
    for (svc, by_node) in &view.instances {
        for (node, inst) in by_node {
            let failed = inst.state == ServiceState::Failed;
            let wanted = view.desired.get(node).and_then(|m| m.get(svc)).is_some_and(|d| d.op == Operation::InService);
            let failover = view.state.specs.get(svc).is_some_and(|s| s.failover);
            let live = view.state.nodes.get(node).is_some_and(|n| n.live);
            if !(failed && wanted && failover && live) {
                continue;
            }
            let here: BTreeSet<String> = desired_in_service(view, node).into_iter().collect();
            let unit: Vec<String> = unit_of(&view.state.specs, svc).into_iter().filter(|s| here.contains(s)).collect();
            if let Some(v) = state.nodes.get_mut(node) {
                for s in &unit {
                    v.running.remove(s);
                }
            }
            let exclude = BTreeSet::from([node.clone()]);
            let mut t = Transition {
                trigger: Trigger::ServiceFailed { service: svc.clone(), node: node.clone() },
                decisions: vec![],
                unplaced: vec![],
                from_dead: false,
                force_stop: true,
            };
            match place_unit(&mut state, strategy, &unit, &exclude) {
                Ok((to, reason)) => t.decisions.push(Decision { services: unit, from: Some(node.clone()), to, reason }),
                Err(reason) => t.unplaced.push(Unplaced { services: unit, reason }),
            }
            out.push(t);
        }
    }

    // 3. Joined nodes: declare the transition; fail back services that prefer this node.
    for joined in &view.joined {
        let mut t = Transition {
            trigger: Trigger::NodeJoined { node: joined.clone() },
            decisions: vec![],
            unplaced: vec![],
            from_dead: false,
            force_stop: false,
        };
        for (svc, spec) in &view.state.specs {
            if !spec.failback {
                continue;
            }
            let NodeSet::Only(pref) = &spec.placement.nodes else { continue };
            if pref.first() != Some(joined) {
                continue;
            }
            let Some(current) = view.desired.iter().find_map(|(n, m)| {
                (n != joined && m.get(svc).is_some_and(|d| d.op == Operation::InService)).then(|| n.clone())
            }) else {
                continue;
            };
            let recent = view.last_move.get(svc).is_some_and(|t| {
                view.now.signed_duration_since(*t).to_std().unwrap_or_default() < view.min_move_interval
            });
            if recent {
                t.unplaced.push(Unplaced {
                    services: vec![svc.clone()],
                    reason: format!(
                        "failback deferred: moved less than {} s ago (no ping-pong)",
                        view.min_move_interval.as_secs()
                    ),
                });
                continue;
            }
            let here: BTreeSet<String> = desired_in_service(view, &current).into_iter().collect();
            let unit: Vec<String> = unit_of(&view.state.specs, svc).into_iter().filter(|s| here.contains(s)).collect();
            match datom_common::placement::feasibility(&state, joined, &unit) {
                Ok(()) => t.decisions.push(Decision {
                    services: unit,
                    from: Some(current),
                    to: joined.clone(),
                    reason: "failback to the preferred node".into(),
                }),
                Err(r) => t.unplaced.push(Unplaced { services: unit, reason: format!("failback impossible: {r}") }),
            }
        }
        out.push(t);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use datom_common::placement::{CostStrategy, NodeView};
    use datom_common::records::{GroupRole, HardwareReport, NodeRecord};
    use datom_common::spec::ServiceSpec;

    fn spec(name: &str, deps: &[&str], group: Option<&str>, failover: bool, extra: &str) -> ServiceSpec {
        let mut t = format!("name = {name:?}\ntype = \"process\"\ncommand = \"x\"\nfailover = {failover}\n");
        if let Some(g) = group {
            t.push_str(&format!("group = {g:?}\n"));
        }
        t.push_str(extra);
        let mut s = ServiceSpec::from_toml(&t).unwrap();
        s.depends_on = deps.iter().map(|d| d.to_string()).collect();
        s
    }

    fn node(name: &str, live: bool, running: &[&str]) -> (String, NodeView) {
        let hw = HardwareReport {
            machine_id: name.into(),
            hostname: name.into(),
            os: String::new(),
            kernel: String::new(),
            cpu_model: String::new(),
            arch: String::new(),
            cpus: 4,
            memory_bytes: 8 << 30,
            disks: vec![],
            nics: vec![],
        };
        let record = NodeRecord {
            schema: 1,
            name: name.into(),
            machine_id: name.into(),
            hardware: hw,
            services: vec![],
            registered_at: Utc::now(),
            registered_by: "t".into(),
            unschedulable: false,
        };
        (
            name.to_string(),
            NodeView { record, live, load: None, running: running.iter().map(|s| s.to_string()).collect() },
        )
    }

    fn desired(entries: &[(&str, &str, Operation)]) -> BTreeMap<String, BTreeMap<String, DesiredRecord>> {
        let mut m: BTreeMap<String, BTreeMap<String, DesiredRecord>> = BTreeMap::new();
        for (n, s, op) in entries {
            m.entry(n.to_string()).or_default().insert(
                s.to_string(),
                DesiredRecord {
                    schema: 1,
                    service: s.to_string(),
                    op: *op,
                    restart_generation: 0,
                    requested_at: Utc::now(),
                    reason: String::new(),
                },
            );
        }
        m
    }

    fn view(nodes: Vec<(String, NodeView)>, specs: Vec<ServiceSpec>, d: &[(&str, &str, Operation)]) -> MasterView {
        MasterView {
            state: ClusterState {
                nodes: nodes.into_iter().collect(),
                specs: specs.into_iter().map(|s| (s.name.clone(), s)).collect(),
            },
            desired: desired(d),
            now: Utc::now(),
            min_move_interval: Duration::from_secs(30),
            ..Default::default()
        }
    }

    use Operation::InService as IN;

    #[test]
    fn dead_node_fails_over_only_failover_services() {
        let v = view(
            vec![node("n1", false, &["web", "batch"]), node("n2", true, &["x"]), node("n3", true, &[])],
            vec![
                spec("web", &[], None, true, ""),
                spec("batch", &[], None, false, ""),
                spec("x", &[], None, false, ""),
            ],
            &[("n1", "web", IN), ("n1", "batch", IN), ("n2", "x", IN)],
        );
        let t = decide(&v, &CostStrategy);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].trigger, Trigger::NodeDied { node: "n1".into() });
        assert_eq!(t[0].decisions.len(), 1);
        assert_eq!(t[0].decisions[0].services, vec!["web"]);
        assert_eq!(t[0].decisions[0].to, "n3", "the cheapest surviving node");
        assert!(t[0].from_dead && t[0].force_stop);
    }

    #[test]
    fn a_group_with_dependencies_moves_together_in_order() {
        let v = view(
            vec![node("n1", false, &["db", "web"]), node("n2", true, &[]), node("n3", true, &[])],
            vec![spec("db", &[], Some("app"), true, ""), spec("web", &["db"], Some("app"), true, "")],
            &[("n1", "db", IN), ("n1", "web", IN)],
        );
        let t = decide(&v, &CostStrategy);
        assert_eq!(t[0].decisions.len(), 1, "one unit");
        assert_eq!(t[0].decisions[0].services, vec!["db", "web"]);
        assert_eq!(t[0].decisions[0].to, "n2");
    }

    #[test]
    fn maintenance_nodes_and_live_nodes_are_left_alone() {
        let mut v = view(
            vec![node("n1", false, &["web"]), node("n2", true, &[])],
            vec![spec("web", &[], None, true, "")],
            &[("n1", "web", IN)],
        );
        v.maintenance.insert("n1".into());
        assert!(decide(&v, &CostStrategy).is_empty());
        v.maintenance.clear();
        v.state.nodes.get_mut("n1").unwrap().live = true;
        assert!(decide(&v, &CostStrategy).is_empty());
    }

    #[test]
    fn nowhere_to_go_is_reported_unplaced() {
        let v = view(
            vec![node("n1", false, &["web"]), node("n2", false, &[])],
            vec![spec("web", &[], None, true, "")],
            &[("n1", "web", IN)],
        );
        let t = decide(&v, &CostStrategy);
        assert!(t[0].decisions.is_empty());
        assert_eq!(t[0].unplaced[0].services, vec!["web"]);
    }

    #[test]
    fn two_units_spread_over_survivors() {
        let v = view(
            vec![node("n1", false, &["a", "b"]), node("n2", true, &[]), node("n3", true, &[])],
            vec![spec("a", &[], None, true, ""), spec("b", &[], None, true, "")],
            &[("n1", "a", IN), ("n1", "b", IN)],
        );
        let t = decide(&v, &CostStrategy);
        let tos: Vec<&str> = t[0].decisions.iter().map(|d| d.to.as_str()).collect();
        assert_eq!(tos, vec!["n2", "n3"]);
    }

    #[test]
    fn failed_instance_moves_elsewhere() {
        let mut v = view(
            vec![node("n1", true, &["web"]), node("n2", true, &[])],
            vec![spec("web", &[], None, true, "")],
            &[("n1", "web", IN)],
        );
        v.instances.insert(
            "web".into(),
            BTreeMap::from([(
                "n1".to_string(),
                InstanceRecord {
                    schema: 1,
                    service: "web".into(),
                    node: "n1".into(),
                    address: String::new(),
                    pid: 0,
                    state: ServiceState::Failed,
                    since: Utc::now(),
                    restarts: 3,
                    group: None,
                    role: Some(GroupRole::Passive),
                    last_error: None,
                },
            )]),
        );
        let t = decide(&v, &CostStrategy);
        assert_eq!(t[0].trigger, Trigger::ServiceFailed { service: "web".into(), node: "n1".into() });
        assert_eq!(t[0].decisions[0].to, "n2");
        assert!(!t[0].from_dead);
    }

    #[test]
    fn failback_respects_the_minimum_interval() {
        let mut v = view(
            vec![node("n1", true, &[]), node("n2", true, &["web"])],
            vec![spec("web", &[], None, true, "failback = true\n[placement]\nnodes = [\"n1\", \"n2\"]\n")],
            &[("n2", "web", IN)],
        );
        v.joined.insert("n1".into());
        v.last_move.insert("web".into(), Utc::now());
        let t = decide(&v, &CostStrategy);
        assert_eq!(t[0].trigger, Trigger::NodeJoined { node: "n1".into() });
        assert!(t[0].decisions.is_empty());
        assert!(t[0].unplaced[0].reason.contains("no ping-pong"));
        v.last_move.insert("web".into(), Utc::now() - chrono::Duration::seconds(60));
        let t = decide(&v, &CostStrategy);
        assert_eq!(t[0].decisions[0].to, "n1");
        assert_eq!(t[0].decisions[0].from.as_deref(), Some("n2"));
    }

    #[test]
    fn without_failback_a_returning_node_gets_nothing_back() {
        let mut v = view(
            vec![node("n1", true, &[]), node("n2", true, &["web"])],
            vec![spec("web", &[], None, true, "[placement]\nnodes = [\"n1\", \"n2\"]\n")],
            &[("n2", "web", IN)],
        );
        v.joined.insert("n1".into());
        let t = decide(&v, &CostStrategy);
        assert_eq!(t.len(), 1, "the join is still declared");
        assert!(t[0].decisions.is_empty() && t[0].unplaced.is_empty());
    }
}
