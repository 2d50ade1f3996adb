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
    fn path_validation() {
        assert!(validate_path("/datom/nodes").is_ok());
        assert!(validate_path("/").is_ok());
        assert!(validate_path("datom").is_err());
        assert!(validate_path("/datom/").is_err());
        assert!(validate_path("/datom//x").is_err());
        assert!(validate_path("/datom/../x").is_err());
    }
}
