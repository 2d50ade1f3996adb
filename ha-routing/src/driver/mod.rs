//! Route-table drivers: the one trait the event handler reads and writes routes through, and
//! its three implementations (`linux`, `file`, `exec`). Drivers are synchronous and run only
//! inside the short-lived event-handler process, whose lifetime the event manager bounds.

pub mod exec;
pub mod file;
pub mod linux;

use std::collections::BTreeMap;

use crate::record::DriverKind;

/// The route a driver call is about, with the context the exec driver passes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRef {
    /// Route table id.
    pub table: String,
    /// Route in CIDR notation.
    pub route: String,
    /// Redundancy node index.
    pub index: u16,
    /// The event being handled.
    pub event: String,
    /// The datom node handling it.
    pub node: String,
}

/// Reads and writes one route's next hop in some route table.
pub trait RouteDriver {
    /// The route's current next hop; `None` when the table has no such route.
    fn read(&self, route: &RouteRef) -> Result<Option<String>, String>;
    /// Points the route at `next_hop`, creating it if needed.
    fn write(&self, route: &RouteRef, next_hop: &str) -> Result<(), String>;
}

/// Builds the driver `kind` from a redundancy node's driver parameters.
pub fn build(kind: DriverKind, params: &BTreeMap<String, String>) -> Result<Box<dyn RouteDriver>, String> {
    let get = |k: &str| params.get(k).cloned();
    Ok(match kind {
        DriverKind::Linux => Box::new(linux::LinuxDriver { netns: get("netns"), dev: get("dev") }),
        DriverKind::File => Box::new(file::FileDriver {
            path: get("path").ok_or("the file driver needs the path parameter (set_params --path FILE)")?.into(),
        }),
        DriverKind::Exec => Box::new(exec::ExecDriver {
            command: get("command").ok_or("the exec driver needs the command parameter (set_params --command PROG)")?,
        }),
    })
}

/// The last `max` bytes of `s`, trimmed, for error messages.
pub(crate) fn tail(s: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(s);
    let t = text.trim();
    if t.len() <= max {
        return t.to_string();
    }
    let mut start = t.len() - max;
    while !t.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &t[start..])
}
