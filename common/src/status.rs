//! The cluster at a glance, computed from a snapshot of the znodes under `/datom`: the model
//! behind `datom status` and the dashboard.
//!
//! [`ClusterStatus::from_tree`] is a pure function of the snapshot (what [`Coord::list_tree`]
//! returns and a [`crate::coord::watch::TreeCache`] holds), so the CLI and the dashboard show
//! the same thing and it is tested without ZooKeeper. Records that other parts of datom are
//! still defining (services, groups, redundancy nodes, events) are read tolerantly: every
//! record is kept as the JSON stored in its znode, and the few fields shown in summaries are
//! picked out when present. Unknown or malformed records are shown raw, never dropped.
//!
//! [`Coord::list_tree`]: crate::Coord::list_tree

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::coord::watch::NodeData;
use crate::paths;

/// Schema of the status document (`datom status --json`, `/api/status`).
pub const STATUS_SCHEMA: u32 = 1;

/// How many of the most recent events a status keeps.
pub const MAX_EVENTS: usize = 50;

/// The whole cluster, as the znodes say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Schema of this document.
    pub schema: u32,
    /// The cluster record at `/datom`, as stored (`None` before `datom init`).
    pub cluster: Option<Value>,
    /// Config service instances: the active one and the lock contenders.
    pub config_service: ConfigServiceStatus,
    /// Every registered node, sorted by name.
    pub nodes: Vec<NodeStatus>,
    /// Every service spec under `/datom/services`, sorted by name.
    pub services: Vec<ServiceStatus>,
    /// Every group under `/datom/groups`, sorted by name.
    pub groups: Vec<GroupStatus>,
    /// Every HA routing redundancy node under `/datom/redundancy`, by index.
    pub redundancy: Vec<RedundancyStatus>,
    /// The most recent transitions under `/datom/events` (at most [`MAX_EVENTS`]), oldest first.
    pub events: Vec<EventStatus>,
}

/// Config service instances.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigServiceStatus {
    /// The record at `/datom/configservice/instance`, as stored (`None`: no active instance).
    pub active: Option<Value>,
    /// Every contender for the activity lock, in lock order (the first holds the lock).
    pub contenders: Vec<Contender>,
}

impl ConfigServiceStatus {
    /// Contenders that do not hold the lock: the standbys.
    pub fn standbys(&self) -> impl Iterator<Item = &Contender> {
        self.contenders.iter().filter(|c| !c.holder)
    }
}

/// One instance contending for the config service lock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contender {
    /// The lock znode's name under `/datom/configservice/lock`.
    pub lock: String,
    /// Instance id, from the lock node's data.
    pub id: Option<String>,
    /// RPC address, from the lock node's data.
    pub address: Option<String>,
    /// Dashboard address, when it serves one.
    pub http: Option<String>,
    /// Whether this contender holds the lock (lowest sequence number).
    pub holder: bool,
}

/// Whether a node's agent is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// The agent's live ephemeral exists.
    Live,
    /// Registered, but no agent is up.
    Dead,
}

/// One node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node name.
    pub name: String,
    /// Live or dead.
    pub state: NodeState,
    /// A one-line hardware summary (CPUs, memory, architecture, OS).
    pub hardware: String,
    /// The node record at `/datom/nodes/<node>`, as stored.
    pub record: Value,
    /// The agent's live record at `/datom/nodes/<node>/live`, as stored.
    pub live: Option<Value>,
    /// Services on this node: those its record asks for and those with an instance here.
    pub services: Vec<NodeServiceStatus>,
    /// Any other znodes under the node (path relative to the node), as stored.
    pub other: BTreeMap<String, Value>,
}

/// A service as seen on one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeServiceStatus {
    /// Service name.
    pub service: String,
    /// Its state: the instance's `state` field, `running` for an instance without one, or
    /// `no instance`.
    pub state: String,
    /// The instance record at `/datom/services/<svc>/instances/<node>`, as stored.
    pub instance: Option<Value>,
}

/// One service spec and its instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Service name.
    pub name: String,
    /// The spec at `/datom/services/<svc>`, as stored.
    pub spec: Value,
    /// Instances by node: `/datom/services/<svc>/instances/<node>`, as stored.
    pub instances: BTreeMap<String, Value>,
    /// Any other znodes under the service (path relative to it), as stored.
    pub other: BTreeMap<String, Value>,
}

/// One group (replication or service group).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupStatus {
    /// Group name.
    pub name: String,
    /// The record at `/datom/groups/<group>`, as stored.
    pub record: Value,
    /// The current term, when the group records one.
    pub term: Option<u64>,
    /// The current leader, when there is one.
    pub leader: Option<String>,
    /// The group's status (e.g. electing, functional), when recorded.
    pub status: Option<String>,
    /// Members with their states.
    pub members: Vec<MemberStatus>,
    /// Every znode under the group (path relative to it), as stored.
    pub znodes: BTreeMap<String, Value>,
}

/// One member of a group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberStatus {
    /// Member name.
    pub name: String,
    /// Its state (seed 003's member states), when recorded.
    pub state: Option<String>,
}

/// One HA routing redundancy node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RedundancyStatus {
    /// The index (`1..1023`), as named in the znode.
    pub index: String,
    /// Its state or role, when recorded.
    pub state: Option<String>,
    /// The record at `/datom/redundancy/<index>`, as stored.
    pub record: Value,
    /// Any znodes under it (path relative to it), as stored.
    pub other: BTreeMap<String, Value>,
}

/// One recorded transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventStatus {
    /// The event znode's name (sequential, so names sort in order).
    pub id: String,
    /// When it happened, when recorded.
    pub at: Option<String>,
    /// A one-line summary picked from the record.
    pub summary: String,
    /// The record, as stored.
    pub record: Value,
}

/// Parses znode data as JSON; non-JSON data becomes a JSON string and empty data `null`, so
/// every znode can be shown.
pub fn data_to_value(data: &[u8]) -> Value {
    if data.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(data).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(data).into_owned()))
}

/// The children of `dir` in `tree`, each with its subtree below it (relative paths).
struct Child<'a> {
    name: &'a str,
    data: &'a NodeData,
    below: BTreeMap<String, &'a NodeData>,
}

fn children<'a>(tree: &'a BTreeMap<String, NodeData>, dir: &str) -> Vec<Child<'a>> {
    let prefix = format!("{dir}/");
    let mut out: Vec<Child<'a>> = Vec::new();
    for (path, data) in tree.range(prefix.clone()..) {
        let Some(rest) = path.strip_prefix(&prefix) else { break };
        match rest.split_once('/') {
            None => out.push(Child { name: rest, data, below: BTreeMap::new() }),
            Some((head, tail)) => {
                if let Some(last) = out.last_mut().filter(|c| c.name == head) {
                    last.below.insert(tail.to_string(), data);
                }
            }
        }
    }
    out
}

fn str_field(v: &Value, keys: &[&str]) -> Option<String> {
    for k in keys {
        match v.get(k) {
            Some(Value::String(s)) => return Some(s.clone()),
            Some(Value::Number(n)) => return Some(n.to_string()),
            _ => {}
        }
    }
    None
}

fn u64_field(v: &Value, keys: &[&str]) -> Option<u64> {
    keys.iter().find_map(|k| match v.get(k) {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    })
}

/// A string from a value that is either a string or an object naming something.
fn name_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Object(_) => str_field(v, &["name", "node", "member", "id", "leader"]),
        _ => None,
    }
}

/// A one-line hardware summary from a node record (tolerant of missing fields).
pub fn hardware_summary(record: &Value) -> String {
    let hw = record.get("hardware").unwrap_or(&Value::Null);
    let mut parts = Vec::new();
    if let Some(c) = u64_field(hw, &["cpus"]) {
        parts.push(format!("{c} cpu"));
    }
    if let Some(m) = u64_field(hw, &["memory_bytes"]) {
        parts.push(format!("{:.1} GiB", m as f64 / (1u64 << 30) as f64));
    }
    if let Some(a) = str_field(hw, &["arch"]) {
        parts.push(a);
    }
    if let Some(o) = str_field(hw, &["os"]) {
        parts.push(o);
    }
    if parts.is_empty() { "unknown hardware".to_string() } else { parts.join(", ") }
}

/// A compact one-line rendering of a record, at most `max` characters.
pub fn one_line(v: &Value, max: usize) -> String {
    let s = match v {
        Value::Object(map) => map
            .iter()
            .filter(|(k, _)| k.as_str() != "schema")
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    if s.chars().count() > max {
        let cut: String = s.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        s
    }
}

/// The sequence number Curator-style lock nodes end with (`..-lock-0000000007` → 7).
fn lock_sequence(name: &str) -> u64 {
    let digits: String = name.chars().rev().take_while(|c| c.is_ascii_digit()).collect();
    digits.chars().rev().collect::<String>().parse().unwrap_or(u64::MAX)
}

impl ClusterStatus {
    /// Builds the status from every znode under `/datom` (absolute paths, as
    /// [`crate::Coord::list_tree`] returns them). Pure; never fails.
    pub fn from_tree(tree: &BTreeMap<String, NodeData>) -> ClusterStatus {
        let cluster = tree.get(paths::ROOT).map(|n| data_to_value(&n.data));
        let config_service = ConfigServiceStatus {
            active: tree.get(paths::CONFIG_SERVICE_INSTANCE).map(|n| data_to_value(&n.data)),
            contenders: Self::contenders(tree),
        };

        // Services first: nodes list the instances placed on them.
        let mut services = Vec::new();
        let mut per_node: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
        for svc in children(tree, paths::SERVICES) {
            let mut instances = BTreeMap::new();
            let mut other = BTreeMap::new();
            for (rel, data) in &svc.below {
                match rel.split_once('/') {
                    Some(("instances", node)) if !node.contains('/') => {
                        let v = data_to_value(&data.data);
                        per_node.entry(node.to_string()).or_default().push((svc.name.to_string(), v.clone()));
                        instances.insert(node.to_string(), v);
                    }
                    _ if rel == "instances" => {}
                    _ => {
                        other.insert(rel.clone(), data_to_value(&data.data));
                    }
                }
            }
            services.push(ServiceStatus {
                name: svc.name.to_string(),
                spec: data_to_value(&svc.data.data),
                instances,
                other,
            });
        }

        let mut nodes = Vec::new();
        for node in children(tree, paths::NODES) {
            let record = data_to_value(&node.data.data);
            let live = node.below.get("live").map(|d| data_to_value(&d.data));
            let other: BTreeMap<String, Value> = node
                .below
                .iter()
                .filter(|(rel, _)| rel.as_str() != "live")
                .map(|(rel, d)| (rel.clone(), data_to_value(&d.data)))
                .collect();
            let mut svcs: BTreeMap<String, NodeServiceStatus> = BTreeMap::new();
            if let Some(Value::Array(wanted)) = record.get("services") {
                for s in wanted.iter().filter_map(Value::as_str) {
                    svcs.insert(
                        s.to_string(),
                        NodeServiceStatus { service: s.to_string(), state: "no instance".into(), instance: None },
                    );
                }
            }
            for (svc, inst) in per_node.remove(node.name).unwrap_or_default() {
                let state = str_field(&inst, &["state", "status"]).unwrap_or_else(|| "running".into());
                svcs.insert(svc.clone(), NodeServiceStatus { service: svc, state, instance: Some(inst) });
            }
            nodes.push(NodeStatus {
                name: node.name.to_string(),
                state: if live.is_some() { NodeState::Live } else { NodeState::Dead },
                hardware: hardware_summary(&record),
                record,
                live,
                services: svcs.into_values().collect(),
                other,
            });
        }

        let groups = children(tree, paths::GROUPS).into_iter().map(|g| Self::group(&g)).collect();

        let mut redundancy: Vec<RedundancyStatus> = children(tree, paths::REDUNDANCY)
            .into_iter()
            .map(|r| {
                let record = data_to_value(&r.data.data);
                RedundancyStatus {
                    index: r.name.to_string(),
                    state: str_field(&record, &["state", "role", "status"]),
                    other: r.below.iter().map(|(k, d)| (k.clone(), data_to_value(&d.data))).collect(),
                    record,
                }
            })
            .collect();
        redundancy.sort_by_key(|r| (r.index.parse::<u64>().unwrap_or(u64::MAX), r.index.clone()));

        let all_events = children(tree, paths::EVENTS);
        let skip = all_events.len().saturating_sub(MAX_EVENTS);
        let events = all_events
            .into_iter()
            .skip(skip)
            .map(|e| {
                let record = data_to_value(&e.data.data);
                EventStatus {
                    id: e.name.to_string(),
                    at: str_field(&record, &["at", "time", "timestamp", "declared_at"]),
                    summary: one_line(&record, 160),
                    record,
                }
            })
            .collect();

        ClusterStatus { schema: STATUS_SCHEMA, cluster, config_service, nodes, services, groups, redundancy, events }
    }

    fn contenders(tree: &BTreeMap<String, NodeData>) -> Vec<Contender> {
        let mut out: Vec<Contender> = children(tree, paths::CONFIG_SERVICE_LOCK)
            .into_iter()
            .map(|c| {
                let v = data_to_value(&c.data.data);
                Contender {
                    lock: c.name.to_string(),
                    id: str_field(&v, &["id"]),
                    address: str_field(&v, &["address"]),
                    http: str_field(&v, &["http"]),
                    holder: false,
                }
            })
            .collect();
        out.sort_by_key(|c| (lock_sequence(&c.lock), c.lock.clone()));
        if let Some(first) = out.first_mut() {
            first.holder = true;
        }
        out
    }

    fn group(g: &Child<'_>) -> GroupStatus {
        let record = data_to_value(&g.data.data);
        let znodes: BTreeMap<String, Value> =
            g.below.iter().map(|(k, d)| (k.clone(), data_to_value(&d.data))).collect();
        // Term, leader and status may live in the group record or in child znodes of the
        // same name; take the first found.
        let sources: Vec<&Value> = std::iter::once(&record)
            .chain(["status", "term", "leader"].iter().filter_map(|k| znodes.get(*k)))
            .collect();
        let term = sources.iter().find_map(|v| match v {
            Value::Number(n) => n.as_u64(),
            other => u64_field(other, &["term"]),
        });
        let leader = record
            .get("leader")
            .and_then(name_of)
            .or_else(|| znodes.get("leader").and_then(name_of))
            .or_else(|| znodes.get("status").and_then(|s| s.get("leader")).and_then(name_of));
        let status = str_field(&record, &["status", "state"])
            .or_else(|| znodes.get("status").and_then(|s| str_field(s, &["status", "state"])))
            .or_else(|| znodes.get("status").and_then(Value::as_str).map(str::to_string));

        let mut members: BTreeMap<String, Option<String>> = BTreeMap::new();
        match record.get("members") {
            Some(Value::Array(items)) => {
                for m in items {
                    if let Some(name) = name_of(m) {
                        members.insert(name, str_field(m, &["state", "role", "status"]));
                    }
                }
            }
            Some(Value::Object(map)) => {
                for (name, m) in map {
                    let state = match m {
                        Value::String(s) => Some(s.clone()),
                        other => str_field(other, &["state", "role", "status"]),
                    };
                    members.insert(name.clone(), state);
                }
            }
            _ => {}
        }
        for (rel, v) in &znodes {
            if let Some(("members", name)) = rel.split_once('/')
                && !name.contains('/')
            {
                let state = str_field(v, &["state", "role", "status"]).or_else(|| members.get(name).cloned().flatten());
                members.insert(name.to_string(), state);
            }
        }
        GroupStatus {
            name: g.name.to_string(),
            record,
            term,
            leader,
            status,
            members: members.into_iter().map(|(name, state)| MemberStatus { name, state }).collect(),
            znodes,
        }
    }

    /// The node named `name`, if registered.
    pub fn node(&self, name: &str) -> Option<&NodeStatus> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Number of live nodes.
    pub fn live_nodes(&self) -> usize {
        self.nodes.iter().filter(|n| n.state == NodeState::Live).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tree(entries: &[(&str, Value)]) -> BTreeMap<String, NodeData> {
        entries
            .iter()
            .map(|(p, v)| {
                let data = if v.is_null() { Vec::new() } else { serde_json::to_vec_pretty(v).unwrap() };
                (p.to_string(), NodeData { data, version: 0, ephemeral_owner: 0 })
            })
            .collect()
    }

    #[test]
    fn empty_tree_gives_empty_sections() {
        let s = ClusterStatus::from_tree(&BTreeMap::new());
        assert_eq!(s.cluster, None);
        assert!(s.nodes.is_empty() && s.services.is_empty() && s.groups.is_empty());
        assert!(s.redundancy.is_empty() && s.events.is_empty());
        assert_eq!(s.config_service, ConfigServiceStatus::default());
    }

    #[test]
    fn nodes_are_live_or_dead_with_hardware_and_services() {
        let t = tree(&[
            ("/datom", json!({"schema": 1, "name": "c"})),
            ("/datom/nodes", json!({})),
            (
                "/datom/nodes/n1",
                json!({"name": "n1", "services": ["web", "db"],
                       "hardware": {"cpus": 4, "memory_bytes": 8u64 << 30, "arch": "x86_64", "os": "Debian"}}),
            ),
            ("/datom/nodes/n1/live", json!({"node": "n1", "address": "127.0.0.1:1"})),
            ("/datom/nodes/n1/desired", json!({"web": "started"})),
            ("/datom/nodes/n2", json!({"name": "n2"})),
            ("/datom/services", json!({})),
            ("/datom/services/web", json!({"name": "web"})),
            ("/datom/services/web/instances", Value::Null),
            ("/datom/services/web/instances/n1", json!({"state": "started", "pid": 7})),
            ("/datom/services/web/instances/n9", json!({"pid": 8})),
        ]);
        let s = ClusterStatus::from_tree(&t);
        assert_eq!(s.nodes.len(), 2);
        let n1 = s.node("n1").unwrap();
        assert_eq!(n1.state, NodeState::Live);
        assert_eq!(n1.hardware, "4 cpu, 8.0 GiB, x86_64, Debian");
        assert_eq!(n1.live.as_ref().unwrap()["address"], "127.0.0.1:1");
        assert_eq!(n1.other["desired"], json!({"web": "started"}));
        let states: Vec<(&str, &str)> = n1.services.iter().map(|s| (s.service.as_str(), s.state.as_str())).collect();
        assert_eq!(states, vec![("db", "no instance"), ("web", "started")]);
        let n2 = s.node("n2").unwrap();
        assert_eq!(n2.state, NodeState::Dead);
        assert_eq!(n2.hardware, "unknown hardware");
        assert_eq!(s.live_nodes(), 1);
        assert_eq!(s.services[0].instances.len(), 2);
        assert!(s.services[0].other.is_empty(), "{:?}", s.services[0].other);
    }

    #[test]
    fn contenders_are_in_lock_order_and_the_first_holds() {
        let t = tree(&[
            ("/datom/configservice/instance", json!({"id": "b", "address": "x:2"})),
            ("/datom/configservice/lock", Value::Null),
            ("/datom/configservice/lock/_c_aa-lock-0000000010", json!({"id": "a", "address": "x:1"})),
            ("/datom/configservice/lock/_c_bb-lock-0000000009", json!({"id": "b", "address": "x:2", "http": "x:3"})),
        ]);
        let s = ClusterStatus::from_tree(&t);
        let cs = &s.config_service;
        assert_eq!(cs.active.as_ref().unwrap()["id"], "b");
        assert_eq!(cs.contenders.len(), 2);
        assert!(cs.contenders[0].holder && cs.contenders[0].id.as_deref() == Some("b"));
        assert_eq!(cs.contenders[0].http.as_deref(), Some("x:3"));
        let standbys: Vec<_> = cs.standbys().map(|c| c.id.clone().unwrap()).collect();
        assert_eq!(standbys, vec!["a"]);
    }

    #[test]
    fn groups_read_term_leader_and_members_wherever_recorded() {
        let t = tree(&[
            ("/datom/groups/g1", json!({"term": 3, "leader": "n1", "members": [{"name": "n1", "state": "LEADER"}]})),
            ("/datom/groups/g1/members/n2", json!({"state": "FOLLOWER_FUNCTIONAL"})),
            ("/datom/groups/g2", json!({})),
            ("/datom/groups/g2/status", json!({"term": 9, "leader": {"node": "n3"}, "status": "electing"})),
            ("/datom/groups/g3", json!("not an object")),
        ]);
        let s = ClusterStatus::from_tree(&t);
        let g1 = &s.groups[0];
        assert_eq!((g1.term, g1.leader.as_deref()), (Some(3), Some("n1")));
        let m: Vec<_> = g1.members.iter().map(|m| (m.name.as_str(), m.state.as_deref())).collect();
        assert_eq!(m, vec![("n1", Some("LEADER")), ("n2", Some("FOLLOWER_FUNCTIONAL"))]);
        let g2 = &s.groups[1];
        assert_eq!((g2.term, g2.leader.as_deref(), g2.status.as_deref()), (Some(9), Some("n3"), Some("electing")));
        let g3 = &s.groups[2];
        assert_eq!((g3.term, g3.record.clone()), (None, json!("not an object")));
    }

    #[test]
    fn redundancy_sorts_by_index_and_events_keep_the_latest() {
        let mut entries = vec![
            ("/datom/redundancy/10".to_string(), json!({"state": "active"})),
            ("/datom/redundancy/2".to_string(), json!({"role": "standby"})),
        ];
        for i in 0..(MAX_EVENTS + 5) {
            entries.push((format!("/datom/events/ev-{i:010}"), json!({"at": format!("t{i}"), "trigger": "x"})));
        }
        let refs: Vec<(&str, Value)> = entries.iter().map(|(p, v)| (p.as_str(), v.clone())).collect();
        let s = ClusterStatus::from_tree(&tree(&refs));
        let idx: Vec<_> = s.redundancy.iter().map(|r| (r.index.as_str(), r.state.as_deref())).collect();
        assert_eq!(idx, vec![("2", Some("standby")), ("10", Some("active"))]);
        assert_eq!(s.events.len(), MAX_EVENTS);
        assert_eq!(s.events.last().unwrap().at.as_deref(), Some(&*format!("t{}", MAX_EVENTS + 4)));
        assert_eq!(s.events[0].id, "ev-0000000005");
        assert!(s.events[0].summary.contains("trigger=x"));
    }

    #[test]
    fn non_json_data_is_kept_raw() {
        assert_eq!(data_to_value(b""), Value::Null);
        assert_eq!(data_to_value(b"plain"), json!("plain"));
        assert_eq!(one_line(&json!({"schema": 1, "a": "b", "n": 2}), 100), "a=b n=2");
        assert_eq!(one_line(&json!({"a": "bcdefgh"}), 5), "a=bc…");
    }
}
