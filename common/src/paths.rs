//! The znode layout: every ZooKeeper path datom uses is built here and nowhere else.
//!
//! `docs/znodes.md` describes the same tree for operators; change both together. Functions
//! that take a name expect it to have passed [`crate::names::validate`] already; they only
//! concatenate.

/// Root of the datom tree; holds the cluster record.
pub const ROOT: &str = "/datom";
/// Marks an initialised datom instance (seed 003); holds the config service record.
pub const CONFIG_SERVICE: &str = "/datom/configservice";
/// Ephemeral: the active config service instance.
pub const CONFIG_SERVICE_INSTANCE: &str = "/datom/configservice/instance";
/// Lock directory that config service instances contend on to become active.
pub const CONFIG_SERVICE_LOCK: &str = "/datom/configservice/lock";
/// Container of node records.
pub const NODES: &str = "/datom/nodes";
/// Container of service specs and their instances.
pub const SERVICES: &str = "/datom/services";
/// Container of node and service properties.
pub const PROPERTIES: &str = "/datom/properties";
/// Container of replication and service groups.
pub const GROUPS: &str = "/datom/groups";
/// Container of HA routing redundancy nodes.
pub const REDUNDANCY: &str = "/datom/redundancy";

/// Containers `datom init` creates under [`ROOT`], in creation order.
pub const CONTAINERS: [&str; 6] = [CONFIG_SERVICE, NODES, SERVICES, PROPERTIES, GROUPS, REDUNDANCY];

/// `/datom/nodes/<node>`: the node record written by the config service.
pub fn node(node: &str) -> String {
    format!("{NODES}/{node}")
}

/// `/datom/nodes/<node>/live`: ephemeral published by the node's agent while it runs.
pub fn node_live(node: &str) -> String {
    format!("{NODES}/{node}/live")
}

/// `/datom/services/<svc>`: a service spec.
pub fn service(svc: &str) -> String {
    format!("{SERVICES}/{svc}")
}

/// `/datom/nodes/<node>/services`: desired states of the services on a node.
pub fn node_services(node: &str) -> String {
    format!("{NODES}/{node}/services")
}

/// `/datom/nodes/<node>/services/<svc>`: desired state of one service on a node.
pub fn node_service(node: &str, svc: &str) -> String {
    format!("{NODES}/{node}/services/{svc}")
}

/// `/datom/services/<svc>/instances`: container of a service's running instances.
pub fn service_instances(svc: &str) -> String {
    format!("{SERVICES}/{svc}/instances")
}

/// `/datom/services/<svc>/instances/<node>`: ephemeral record of an instance.
pub fn service_instance(svc: &str, node: &str) -> String {
    format!("{SERVICES}/{svc}/instances/{node}")
}

/// `/datom/properties/nodes/<node>`: a node's properties.
pub fn node_properties(node: &str) -> String {
    format!("{PROPERTIES}/nodes/{node}")
}

/// `/datom/properties/services/<svc>`: a service's properties.
pub fn service_properties(svc: &str) -> String {
    format!("{PROPERTIES}/services/{svc}")
}

/// `/datom/groups/<group>`: a group's record.
pub fn group(group: &str) -> String {
    format!("{GROUPS}/{group}")
}

/// `/datom/groups/<group>/members`: container of the group's member registrations.
pub fn group_members(group: &str) -> String {
    format!("{GROUPS}/{group}/members")
}

/// `/datom/groups/<group>/members/<member>`: ephemeral; a running member and its RPC address.
pub fn group_member(group: &str, member: &str) -> String {
    format!("{GROUPS}/{group}/members/{member}")
}

/// `/datom/groups/<group>/lock`: the group coordination lock (ephemeral sequential contenders).
pub fn group_lock(group: &str) -> String {
    format!("{GROUPS}/{group}/lock")
}

/// `/datom/groups/<group>/term`: the group's term record (term, status, elector, leader).
pub fn group_term(group: &str) -> String {
    format!("{GROUPS}/{group}/term")
}

/// `/datom/groups/<group>/states`: container of the members' published states.
pub fn group_states(group: &str) -> String {
    format!("{GROUPS}/{group}/states")
}

/// `/datom/groups/<group>/states/<member>`: ephemeral; a member's state, term and lag.
pub fn group_state(group: &str, member: &str) -> String {
    format!("{GROUPS}/{group}/states/{member}")
}

/// `/datom/redundancy/<index>`: an HA routing redundancy node.
pub fn redundancy(index: u16) -> String {
    format!("{REDUNDANCY}/{index}")
}

/// A peer registration znode, as recognised by [`parse_registry_path`]: the inverse of
/// [`node_live`], [`CONFIG_SERVICE_INSTANCE`], [`service_instance`] and [`group_member`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryPath<'a> {
    /// `/datom/nodes/<node>/live`.
    NodeLive {
        /// Node name.
        node: &'a str,
    },
    /// `/datom/configservice/instance`.
    ConfigServiceInstance,
    /// `/datom/services/<service>/instances/<node>`.
    ServiceInstance {
        /// Service name.
        service: &'a str,
        /// Node name.
        node: &'a str,
    },
    /// `/datom/groups/<group>/members/<member>`.
    GroupMember {
        /// Group name.
        group: &'a str,
        /// Member name.
        member: &'a str,
    },
}

/// Recognises a peer registration znode (see [`RegistryPath`]); `None` for every other path.
pub fn parse_registry_path(path: &str) -> Option<RegistryPath<'_>> {
    if path == CONFIG_SERVICE_INSTANCE {
        return Some(RegistryPath::ConfigServiceInstance);
    }
    let segs = |prefix: &str| -> Option<Vec<&str>> {
        let rest = path.strip_prefix(prefix)?.strip_prefix('/')?;
        let v: Vec<&str> = rest.split('/').collect();
        v.iter().all(|s| !s.is_empty()).then_some(v)
    };
    if let Some(v) = segs(NODES) {
        return match v[..] {
            [node, "live"] => Some(RegistryPath::NodeLive { node }),
            _ => None,
        };
    }
    if let Some(v) = segs(SERVICES) {
        return match v[..] {
            [service, "instances", node] => Some(RegistryPath::ServiceInstance { service, node }),
            _ => None,
        };
    }
    if let Some(v) = segs(GROUPS) {
        return match v[..] {
            [group, "members", member] => Some(RegistryPath::GroupMember { group, member }),
            _ => None,
        };
    }
    None
}

/// Name prefix of the event requests queued under a redundancy node (persistent sequential
/// children `ev-0000000007`; issue 9).
pub const REDUNDANCY_EVENT_PREFIX: &str = "ev-";

/// `/datom/redundancy/<index>/ev-`: prefix for creating a sequential event request.
pub fn redundancy_event_prefix(index: u16) -> String {
    format!("{REDUNDANCY}/{index}/{REDUNDANCY_EVENT_PREFIX}")
}

/// Container of HA routing runtime state: event managers and route-table locks. Created on
/// first use by `datom-ha`, not by `datom init`.
pub const HA: &str = "/datom/ha";
/// Container of the running HA event managers' ephemerals.
pub const HA_SERVERS: &str = "/datom/ha/servers";
/// Container of the per-route-table lock directories.
pub const HA_LOCKS: &str = "/datom/ha/locks";

/// `/datom/ha/servers/<node>`: ephemeral published by the node's HA event manager.
pub fn ha_server(node: &str) -> String {
    format!("{HA_SERVERS}/{node}")
}

/// `/datom/ha/locks/<key>`: lock directory of one route table (`key` from
/// `datom_ha_routing::lock::table_key`, a valid path segment).
pub fn ha_lock(key: &str) -> String {
    format!("{HA_LOCKS}/{key}")
}
/// Container of recorded transitions (sequential znodes, bounded history), read by
/// `datom status` and the dashboard. Not created by `datom init`; whoever records the first
/// transition creates it.
pub const EVENTS: &str = "/datom/events";

/// Prefix for creating a transition record (persistent sequential `ev-<seq>`).
pub const EVENT_PREFIX: &str = "/datom/events/ev-";

/// `/datom/services/<svc>/placement`: when the service last moved.
pub fn service_placement(svc: &str) -> String {
    format!("{SERVICES}/{svc}/placement")
}

/// `/datom/nodes/<node>/maintenance`: present while the node's agent is stopped on purpose
/// with its services left running.
pub fn node_maintenance(node: &str) -> String {
    format!("{NODES}/{node}/maintenance")
}

/// Joins a parent path and a child name the way ZooKeeper lists them.
pub fn join(parent: &str, child: &str) -> String {
    if parent == "/" { format!("/{child}") } else { format!("{parent}/{child}") }
}

/// The last segment of a path (`/a/b` → `b`).
pub fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The parent of a path (`/a/b` → `/a`, `/a` → `/`).
pub fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// Checks that `path` is an absolute ZooKeeper path with no empty, `.` or `..` segments.
pub fn validate_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("path {path:?} must start with '/'"));
    }
    if path == "/" {
        return Ok(());
    }
    if path.ends_with('/') {
        return Err(format!("path {path:?} must not end with '/'"));
    }
    for seg in path[1..].split('/') {
        match seg {
            "" => return Err(format!("path {path:?} has an empty segment ('//')")),
            "." | ".." => return Err(format!("path {path:?} has a '{seg}' segment")),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        assert_eq!(node("n1"), "/datom/nodes/n1");
        assert_eq!(node_live("n1"), "/datom/nodes/n1/live");
        assert_eq!(redundancy(7), "/datom/redundancy/7");
        assert_eq!(join("/", "datom"), "/datom");
        assert_eq!(basename("/datom/nodes/n1"), "n1");
        assert_eq!(parent("/datom/nodes"), "/datom");
        assert_eq!(parent("/datom"), "/");
        for c in CONTAINERS {
            assert_eq!(parent(c), ROOT);
        }
    }

    #[test]
    fn ha_layout() {
        assert_eq!(redundancy_event_prefix(3), "/datom/redundancy/3/ev-");
        assert_eq!(ha_server("r1"), "/datom/ha/servers/r1");
        assert_eq!(ha_lock("t-main"), "/datom/ha/locks/t-main");
        assert_eq!(parent(HA_SERVERS), HA);
        assert_eq!(parent(HA_LOCKS), HA);
        assert_eq!(parent(HA), ROOT);
    }

    #[test]
    fn path_validation() {
        assert!(validate_path("/datom/nodes").is_ok());
        assert!(validate_path("/").is_ok());
        assert!(validate_path("datom").is_err());
        assert!(validate_path("/datom/").is_err());
        assert!(validate_path("/datom//x").is_err());
        assert!(validate_path("/datom/../x").is_err());
    }
}

#[cfg(test)]
mod registry_path_tests {
    use super::*;

    #[test]
    fn registry_paths_round_trip() {
        assert_eq!(parse_registry_path(&node_live("n1")), Some(RegistryPath::NodeLive { node: "n1" }));
        assert_eq!(parse_registry_path(CONFIG_SERVICE_INSTANCE), Some(RegistryPath::ConfigServiceInstance));
        assert_eq!(
            parse_registry_path(&service_instance("web", "n2")),
            Some(RegistryPath::ServiceInstance { service: "web", node: "n2" })
        );
        assert_eq!(
            parse_registry_path(&group_member("vol1", "n3")),
            Some(RegistryPath::GroupMember { group: "vol1", member: "n3" })
        );
        assert_eq!(service_instances("web"), "/datom/services/web/instances");
        assert_eq!(group_members("vol1"), "/datom/groups/vol1/members");
    }

    #[test]
    fn other_paths_are_not_registrations() {
        for p in [
            "/datom",
            "/datom/nodes",
            "/datom/nodes/n1",
            "/datom/nodes/n1/live/x",
            "/datom/nodes//live",
            "/datom/nodesx/n1/live",
            "/datom/configservice",
            "/datom/configservice/lock",
            "/datom/services/web",
            "/datom/services/web/instances",
            "/datom/groups/g/members",
            "/datom/groups/g/term",
            "/datom/properties/nodes/n1",
            "/other/nodes/n1/live",
        ] {
            assert_eq!(parse_registry_path(p), None, "{p}");
        }
    }
}
