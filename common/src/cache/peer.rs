//! Peer identity, what the registry knows about a peer, and the pure functions that turn
//! registry znodes into peers and registry changes into [`PeerEvent`]s. No I/O here.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::coord::watch::NodeData;
use crate::paths::{self, RegistryPath};

/// A process the connection cache can connect to, named by where it registers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Peer {
    /// A node agent: `/datom/nodes/<node>/live`.
    Node {
        /// Node name.
        node: String,
    },
    /// The active config service: `/datom/configservice/instance`.
    ConfigService,
    /// A running service instance: `/datom/services/<service>/instances/<node>`.
    ServiceInstance {
        /// Service name.
        service: String,
        /// Node it runs on.
        node: String,
    },
    /// A live member of a replication or service group: `/datom/groups/<group>/members/<member>`.
    GroupMember {
        /// Group name.
        group: String,
        /// Member name.
        member: String,
    },
}

impl Peer {
    /// The node agent on `node`.
    pub fn node(node: impl Into<String>) -> Peer {
        Peer::Node { node: node.into() }
    }

    /// The instance of `service` on `node`.
    pub fn service_instance(service: impl Into<String>, node: impl Into<String>) -> Peer {
        Peer::ServiceInstance { service: service.into(), node: node.into() }
    }

    /// Member `member` of `group`.
    pub fn group_member(group: impl Into<String>, member: impl Into<String>) -> Peer {
        Peer::GroupMember { group: group.into(), member: member.into() }
    }

    /// The znode this peer registers at.
    pub fn path(&self) -> String {
        match self {
            Peer::Node { node } => paths::node_live(node),
            Peer::ConfigService => paths::CONFIG_SERVICE_INSTANCE.to_string(),
            Peer::ServiceInstance { service, node } => paths::service_instance(service, node),
            Peer::GroupMember { group, member } => paths::group_member(group, member),
        }
    }

    /// The peer registered at `path`, if `path` is a registration znode.
    pub fn from_path(path: &str) -> Option<Peer> {
        Some(match paths::parse_registry_path(path)? {
            RegistryPath::NodeLive { node } => Peer::node(node),
            RegistryPath::ConfigServiceInstance => Peer::ConfigService,
            RegistryPath::ServiceInstance { service, node } => Peer::service_instance(service, node),
            RegistryPath::GroupMember { group, member } => Peer::group_member(group, member),
        })
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Node { node } => write!(f, "node agent {node:?}"),
            Peer::ConfigService => write!(f, "the active config service"),
            Peer::ServiceInstance { service, node } => write!(f, "service {service:?} on node {node:?}"),
            Peer::GroupMember { group, member } => write!(f, "member {member:?} of group {group:?}"),
        }
    }
}

/// What the registry holds for one peer: its address plus the whole registration record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// RPC address (`host:port`), the record's `address` field.
    pub address: String,
    /// The record's `state` field, when it has one (service instances: IN_SERVICE, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Version of the registration znode.
    pub version: i32,
    /// ZooKeeper session that owns the (ephemeral) registration znode.
    pub session: i64,
    /// The registration record as stored.
    pub record: serde_json::Value,
}

/// Why a registration znode does not describe a usable peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRecord {
    /// Not JSON.
    #[error("{path} does not hold JSON: {error}")]
    NotJson {
        /// Path.
        path: String,
        /// Parser message.
        error: String,
    },
    /// No string `address` field.
    #[error("{path} has no string \"address\" field, so there is nothing to dial")]
    NoAddress {
        /// Path.
        path: String,
    },
}

impl PeerInfo {
    /// Decodes the registration record read from `path`.
    pub fn decode(path: &str, node: &NodeData) -> Result<PeerInfo, BadRecord> {
        let record: serde_json::Value = serde_json::from_slice(&node.data)
            .map_err(|e| BadRecord::NotJson { path: path.to_string(), error: e.to_string() })?;
        let address = match record.get("address").and_then(|a| a.as_str()) {
            Some(a) if !a.is_empty() => a.to_string(),
            _ => return Err(BadRecord::NoAddress { path: path.to_string() }),
        };
        let state = record.get("state").and_then(|s| s.as_str()).map(str::to_string);
        Ok(PeerInfo { address, state, version: node.version, session: node.ephemeral_owner, record })
    }
}

/// The registry: every registered peer and what it registered.
pub type Registry = BTreeMap<Peer, PeerInfo>;

/// The registry described by a listing of znodes (e.g. [`crate::Coord::list_tree`] of
/// [`paths::ROOT`]): registration znodes with a usable record, everything else ignored.
pub fn registry_from_tree(tree: &BTreeMap<String, NodeData>) -> Registry {
    tree.iter().filter_map(|(path, node)| Some((Peer::from_path(path)?, PeerInfo::decode(path, node).ok()?))).collect()
}

/// A change in the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PeerEvent {
    /// The peer registered.
    Up {
        /// Who.
        peer: Peer,
        /// What it registered.
        info: PeerInfo,
    },
    /// The peer's registration changed (address, record, or owning session).
    Changed {
        /// Who.
        peer: Peer,
        /// The new registration.
        info: PeerInfo,
        /// The one it replaced.
        previous: PeerInfo,
    },
    /// The peer's registration went away (it stopped, or its session expired).
    Down {
        /// Who.
        peer: Peer,
        /// Its last registration.
        last: PeerInfo,
    },
}

impl PeerEvent {
    /// The peer the event is about.
    pub fn peer(&self) -> &Peer {
        match self {
            PeerEvent::Up { peer, .. } | PeerEvent::Changed { peer, .. } | PeerEvent::Down { peer, .. } => peer,
        }
    }

    /// Whether the peer re-registered at the same address from another ZooKeeper session: a new
    /// process (a restart) where the old one was, so a broken connection to it is worth
    /// redialing at once.
    pub fn is_restart(&self) -> bool {
        matches!(self, PeerEvent::Changed { info, previous, .. }
            if info.address == previous.address && info.session != previous.session)
    }

    /// The registration the event leaves in place (`None` for Down).
    pub fn info(&self) -> Option<&PeerInfo> {
        match self {
            PeerEvent::Up { info, .. } | PeerEvent::Changed { info, .. } => Some(info),
            PeerEvent::Down { .. } => None,
        }
    }
}

/// Sets `peer`'s registration to `new` (`None`: gone) and returns the event, if anything changed.
pub fn apply(registry: &mut Registry, peer: &Peer, new: Option<PeerInfo>) -> Option<PeerEvent> {
    match (registry.get(peer), new) {
        (None, None) => None,
        (Some(old), Some(new)) if *old == new => None,
        (None, Some(info)) => {
            registry.insert(peer.clone(), info.clone());
            Some(PeerEvent::Up { peer: peer.clone(), info })
        }
        (Some(_), Some(info)) => {
            let previous = registry.insert(peer.clone(), info.clone()).expect("present");
            Some(PeerEvent::Changed { peer: peer.clone(), info, previous })
        }
        (Some(_), None) => {
            let last = registry.remove(peer).expect("present");
            Some(PeerEvent::Down { peer: peer.clone(), last })
        }
    }
}

/// Replaces `registry` with `fresh` (a full re-list) and returns the events that turn one into
/// the other, in peer order.
pub fn replace(registry: &mut Registry, fresh: Registry) -> Vec<PeerEvent> {
    let mut events = Vec::new();
    let gone: Vec<Peer> = registry.keys().filter(|p| !fresh.contains_key(*p)).cloned().collect();
    for p in gone {
        events.extend(apply(registry, &p, None));
    }
    for (p, info) in fresh {
        events.extend(apply(registry, &p, Some(info)));
    }
    events.sort_by(|a, b| a.peer().cmp(b.peer()));
    events
}

/// Which peers a subscriber wants to hear about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PeerFilter {
    /// Every peer.
    #[default]
    All,
    /// The node agent on this node and the service instances running there.
    Node {
        /// Node name.
        node: String,
    },
    /// The instances of this service.
    Service {
        /// Service name.
        service: String,
    },
    /// The members of this group.
    Group {
        /// Group name.
        group: String,
    },
    /// The active config service.
    ConfigService,
}

impl PeerFilter {
    /// Whether `peer` passes the filter.
    pub fn matches(&self, peer: &Peer) -> bool {
        match (self, peer) {
            (PeerFilter::All, _) => true,
            (PeerFilter::Node { node }, Peer::Node { node: n } | Peer::ServiceInstance { node: n, .. }) => n == node,
            (PeerFilter::Service { service }, Peer::ServiceInstance { service: s, .. }) => s == service,
            (PeerFilter::Group { group }, Peer::GroupMember { group: g, .. }) => g == group,
            (PeerFilter::ConfigService, Peer::ConfigService) => true,
            _ => false,
        }
    }

    /// Whether a registration passes: as [`PeerFilter::matches`], plus service instances that
    /// belong to the group (seed 000's service groups: their instance records name the group).
    pub fn matches_registration(&self, peer: &Peer, info: &PeerInfo) -> bool {
        if self.matches(peer) {
            return true;
        }
        match (self, peer) {
            (PeerFilter::Group { group }, Peer::ServiceInstance { .. }) => {
                info.record.get("group").and_then(|g| g.as_str()) == Some(group.as_str())
            }
            _ => false,
        }
    }

    /// Whether an event passes (a service instance joining or leaving the group counts).
    pub fn matches_event(&self, ev: &PeerEvent) -> bool {
        match ev {
            PeerEvent::Up { peer, info } => self.matches_registration(peer, info),
            PeerEvent::Changed { peer, info, previous } => {
                self.matches_registration(peer, info) || self.matches_registration(peer, previous)
            }
            PeerEvent::Down { peer, last } => self.matches_registration(peer, last),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_data(json: &str, version: i32) -> NodeData {
        NodeData { data: json.as_bytes().to_vec(), version, ephemeral_owner: 7 }
    }

    fn info(addr: &str, version: i32) -> PeerInfo {
        PeerInfo {
            address: addr.into(),
            state: None,
            version,
            session: 7,
            record: serde_json::json!({ "address": addr }),
        }
    }

    #[test]
    fn peers_map_to_their_paths_and_back() {
        for p in [
            Peer::node("n1"),
            Peer::ConfigService,
            Peer::service_instance("web", "n1"),
            Peer::group_member("vol", "n2"),
        ] {
            assert_eq!(Peer::from_path(&p.path()), Some(p.clone()));
        }
        assert_eq!(Peer::from_path("/datom/nodes/n1"), None);
    }

    #[test]
    fn records_need_json_and_an_address() {
        let ok = PeerInfo::decode("/p", &node_data(r#"{"schema":1,"address":"127.0.0.1:1","state":"OOS"}"#, 3));
        let ok = ok.unwrap();
        assert_eq!(ok.address, "127.0.0.1:1");
        assert_eq!(ok.state.as_deref(), Some("OOS"));
        assert_eq!(ok.version, 3);
        assert_eq!(ok.session, 7);
        let err = PeerInfo::decode("/p", &node_data("not json", 0)).unwrap_err();
        assert!(matches!(err, BadRecord::NotJson { .. }));
        let err = PeerInfo::decode("/p", &node_data(r#"{"address":""}"#, 0)).unwrap_err();
        assert!(err.to_string().contains("no string \"address\""), "{err}");
        assert!(PeerInfo::decode("/p", &node_data(r#"{"address":5}"#, 0)).is_err());
    }

    #[test]
    fn registry_from_tree_keeps_only_usable_registrations() {
        let mut tree = BTreeMap::new();
        tree.insert("/datom/nodes/n1".to_string(), node_data(r#"{"address":"x:1"}"#, 0));
        tree.insert("/datom/nodes/n1/live".to_string(), node_data(r#"{"address":"x:1"}"#, 0));
        tree.insert("/datom/nodes/n2/live".to_string(), node_data("garbage", 0));
        tree.insert("/datom/configservice/instance".to_string(), node_data(r#"{"address":"x:2"}"#, 1));
        let r = registry_from_tree(&tree);
        assert_eq!(r.keys().cloned().collect::<Vec<_>>(), vec![Peer::node("n1"), Peer::ConfigService]);
    }

    #[test]
    fn apply_yields_up_changed_down_and_nothing_for_no_change() {
        let mut r = Registry::new();
        let p = Peer::node("n1");
        assert!(matches!(apply(&mut r, &p, Some(info("a:1", 0))), Some(PeerEvent::Up { .. })));
        assert_eq!(apply(&mut r, &p, Some(info("a:1", 0))), None);
        match apply(&mut r, &p, Some(info("a:2", 1))) {
            Some(PeerEvent::Changed { info, previous, .. }) => {
                assert_eq!(info.address, "a:2");
                assert_eq!(previous.address, "a:1");
            }
            other => panic!("{other:?}"),
        }
        match apply(&mut r, &p, None) {
            Some(PeerEvent::Down { last, .. }) => assert_eq!(last.address, "a:2"),
            other => panic!("{other:?}"),
        }
        assert_eq!(apply(&mut r, &p, None), None);
        assert!(r.is_empty());
    }

    #[test]
    fn replace_emits_the_difference() {
        let mut r = Registry::new();
        apply(&mut r, &Peer::node("a"), Some(info("a:1", 0)));
        apply(&mut r, &Peer::node("b"), Some(info("b:1", 0)));
        apply(&mut r, &Peer::node("c"), Some(info("c:1", 0)));
        let mut fresh = Registry::new();
        fresh.insert(Peer::node("a"), info("a:1", 0));
        fresh.insert(Peer::node("b"), info("b:9", 1));
        fresh.insert(Peer::node("d"), info("d:1", 0));
        let ev = replace(&mut r, fresh.clone());
        assert_eq!(r, fresh);
        let kinds: Vec<(String, &str)> = ev
            .iter()
            .map(|e| {
                let k = match e {
                    PeerEvent::Up { .. } => "up",
                    PeerEvent::Changed { .. } => "changed",
                    PeerEvent::Down { .. } => "down",
                };
                (e.peer().to_string(), k)
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("node agent \"b\"".to_string(), "changed"),
                ("node agent \"c\"".to_string(), "down"),
                ("node agent \"d\"".to_string(), "up"),
            ]
        );
        assert!(replace(&mut r, fresh).is_empty());
    }

    #[test]
    fn filters_select_by_node_service_group() {
        let n1 = Peer::node("n1");
        let s_n1 = Peer::service_instance("web", "n1");
        let s_n2 = Peer::service_instance("web", "n2");
        let db_n1 = Peer::service_instance("db", "n1");
        let g = Peer::group_member("vol", "n1");
        let all = [&n1, &s_n1, &s_n2, &db_n1, &g, &Peer::ConfigService];
        let pick = |f: PeerFilter| all.iter().filter(|p| f.matches(p)).count();
        assert_eq!(pick(PeerFilter::All), 6);
        assert_eq!(pick(PeerFilter::Node { node: "n1".into() }), 3);
        assert_eq!(pick(PeerFilter::Service { service: "web".into() }), 2);
        assert_eq!(pick(PeerFilter::Group { group: "vol".into() }), 1);
        assert_eq!(pick(PeerFilter::ConfigService), 1);
        assert!(!PeerFilter::Group { group: "other".into() }.matches(&g));
        // Service instances belong to the group their record names.
        let inst = Peer::service_instance("web", "n1");
        let mut i = info("127.0.0.1:1", 0);
        i.record = serde_json::json!({"address": "127.0.0.1:1", "group": "vol"});
        assert!(PeerFilter::Group { group: "vol".into() }.matches_registration(&inst, &i));
        assert!(!PeerFilter::Group { group: "other".into() }.matches_registration(&inst, &i));
        assert!(PeerFilter::Group { group: "vol".into() }.matches_event(&PeerEvent::Down { peer: inst, last: i }));
    }

    #[test]
    fn a_restart_is_a_new_session_at_the_same_address() {
        let p = Peer::group_member("vol", "m1");
        let old = info("a:1", 0);
        let mut new_session = info("a:1", 0);
        new_session.session = 8;
        let mut moved = new_session.clone();
        moved.address = "a:2".into();
        let mut rewritten = info("a:1", 1);
        rewritten.record = serde_json::json!({ "address": "a:1", "state": "x" });
        let changed =
            |info: &PeerInfo| PeerEvent::Changed { peer: p.clone(), info: info.clone(), previous: old.clone() };
        assert!(changed(&new_session).is_restart());
        assert!(!changed(&moved).is_restart(), "a move is evicted, not a restart");
        assert!(!changed(&rewritten).is_restart(), "same session: the same process");
        assert!(!PeerEvent::Up { peer: p.clone(), info: old.clone() }.is_restart());
        assert!(!PeerEvent::Down { peer: p, last: old }.is_restart());
    }

    #[test]
    fn events_serialise_as_tagged_json() {
        let ev = PeerEvent::Up { peer: Peer::service_instance("web", "n1"), info: info("a:1", 0) };
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["event"], "up");
        assert_eq!(v["peer"]["kind"], "service_instance");
        assert_eq!(v["peer"]["service"], "web");
        assert_eq!(v["info"]["address"], "a:1");
        let back: PeerEvent = serde_json::from_value(v).unwrap();
        assert_eq!(back, ev);
    }
}
