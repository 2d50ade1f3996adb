//! Redundancy node parameters: the flags of `create_node`, `set_params` and `clear_params`,
//! what each driver needs, and the validation every record passes before it is written.
//!
//! Everything here is pure: the commands validate completely before touching ZooKeeper, so bad
//! input changes nothing.

use std::collections::BTreeMap;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use datom_common::names::{self, NameKind};

use crate::error::{HaError, HaResult};
use crate::record::{DEFAULT_TIMEOUT_MS, DriverKind, RedundancyNode, RouterMode, SCHEMA};

/// Lowest redundancy node index (seed 002: 1 .. 1023).
pub const INDEX_MIN: u16 = 1;
/// Highest redundancy node index.
pub const INDEX_MAX: u16 = 1023;
/// Bounds of `--handler-timeout`, in ms.
pub const TIMEOUT_RANGE_MS: (u64, u64) = (100, 600_000);

/// clap value parser for `-i/--index`: a whole number in 1..1023.
pub fn parse_index(s: &str) -> Result<u16, String> {
    let n: i64 = s.trim().parse().map_err(|_| format!("{s:?} is not a whole number; give an index from 1 to 1023"))?;
    check_index(n).map_err(|e| e.to_string())
}

/// Checks that `n` is a valid redundancy node index.
pub fn check_index(n: i64) -> HaResult<u16> {
    if (INDEX_MIN as i64..=INDEX_MAX as i64).contains(&n) { Ok(n as u16) } else { Err(HaError::IndexOutOfRange(n)) }
}

/// The drivers and their parameters, shown by `-h` of every redundancy node command.
pub const DRIVERS_HELP: &str = "\
Drivers (-d/--driver) and their parameters:
  linux  The kernel routing table, through `ip route`. Reads with
         `ip -j [-n NETNS] -4|-6 route show table ID exact ROUTE`, writes with
         `ip [-n NETNS] route replace ROUTE via NEXT_HOP [dev IFACE] table ID`.
           -t/--route-table ID  kernel table number (1..4294967295) or name (main, or from rt_tables)
           --netns NAME         optional: run `ip` inside this network namespace
           --dev IFACE          optional: pin the route to this interface
  file   A JSON route table on disk, for demos and tests:
         {\"schema\":1,\"tables\":{\"ID\":{\"ROUTE\":{\"next_hop\":\"IP\",\"updated_at\":\"...\"}}}}
           --path FILE          required: absolute path; created on first write, always replaced
                                atomically (temp file, fsync, rename)
  exec   An operator's program, for example a wrapper around a cloud CLI. Run without a shell as
           PROG read TABLE ROUTE             print the current next hop (nothing: no such route)
           PROG write TABLE ROUTE NEXT_HOP   point the route at NEXT_HOP
         exit 0 on success; anything else is a failure whose stderr is recorded. Environment:
         DATOM_HA_OP, DATOM_HA_INDEX, DATOM_HA_EVENT, DATOM_HA_NODE, DATOM_HA_ROUTE_TABLE,
         DATOM_HA_ROUTE, and DATOM_HA_NEXT_HOP (write only).
           --command PROG       required: absolute path of the program

Every node also needs --node, -t/--route-table, -r/--route, -n/--next-hop, -m/--mode, --peer and
-d/--driver. The event manager of --node (`datom ha_api -c start --node NODE`) acts on it.";

/// Parameters of a redundancy node as flags; every one optional so `set_params` can change
/// only those given. `create_node` requires the ones [`build_new`] lists.
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeParams {
    /// The datom node (router) this redundancy node belongs to; its event manager acts on it.
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
    /// Route table id, as the driver names it (kernel table, cloud route table id, file table key).
    #[arg(short = 't', long, value_name = "ID")]
    pub route_table: Option<String>,
    /// The route this node moves, in CIDR notation (10.1.0.0/16).
    #[arg(short = 'r', long, value_name = "CIDR")]
    pub route: Option<String>,
    /// This router's address: the next hop the route gets when this router takes it.
    #[arg(short = 'n', long, value_name = "IP")]
    pub next_hop: Option<String>,
    /// primary (a recovered primary takes the route back) or secondary.
    #[arg(short = 'm', long, value_enum)]
    pub mode: Option<RouterMode>,
    /// The peer router's datom node; when its presence vanishes this node raises peerFail.
    #[arg(long, value_name = "NODE")]
    pub peer: Option<String>,
    /// Route-table driver: linux, file or exec (parameters below).
    #[arg(short = 'd', long, value_enum)]
    pub driver: Option<DriverKind>,
    /// file driver: absolute path of the JSON route table.
    #[arg(long, value_name = "FILE")]
    pub path: Option<String>,
    /// linux driver: network namespace to run `ip` in.
    #[arg(long, value_name = "NAME")]
    pub netns: Option<String>,
    /// linux driver: interface to pin the route to.
    #[arg(long, value_name = "IFACE")]
    pub dev: Option<String>,
    /// exec driver: absolute path of the program to run.
    #[arg(long, value_name = "PROG")]
    pub command: Option<String>,
    /// Bound on the route-table lock wait and on the event handler, each, in ms [default: 10000].
    #[arg(long, value_name = "MS")]
    pub handler_timeout: Option<u64>,
    /// Raise peerFail automatically when the peer's presence vanishes [default: true].
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub auto_peer_fail: Option<bool>,
    /// Raise revert automatically (primary mode) when this node's presence comes back [default: true].
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub auto_revert: Option<bool>,
}

/// One parameter of a redundancy node, by flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    /// `--node`
    Node,
    /// `--route-table`
    RouteTable,
    /// `--route`
    Route,
    /// `--next-hop`
    NextHop,
    /// `--mode`
    Mode,
    /// `--peer`
    Peer,
    /// `--driver`
    Driver,
    /// `--path` (file)
    Path,
    /// `--netns` (linux)
    Netns,
    /// `--dev` (linux)
    Dev,
    /// `--command` (exec)
    Command,
    /// `--handler-timeout`
    HandlerTimeout,
    /// `--auto-peer-fail`
    AutoPeerFail,
    /// `--auto-revert`
    AutoRevert,
}

impl Param {
    /// Parameters every redundancy node needs, in help order.
    pub const ALWAYS_REQUIRED: [Param; 7] =
        [Param::Node, Param::RouteTable, Param::Route, Param::NextHop, Param::Mode, Param::Peer, Param::Driver];

    /// The flag, e.g. `--route-table`.
    pub fn flag(self) -> &'static str {
        match self {
            Param::Node => "--node",
            Param::RouteTable => "--route-table",
            Param::Route => "--route",
            Param::NextHop => "--next-hop",
            Param::Mode => "--mode",
            Param::Peer => "--peer",
            Param::Driver => "--driver",
            Param::Path => "--path",
            Param::Netns => "--netns",
            Param::Dev => "--dev",
            Param::Command => "--command",
            Param::HandlerTimeout => "--handler-timeout",
            Param::AutoPeerFail => "--auto-peer-fail",
            Param::AutoRevert => "--auto-revert",
        }
    }

    /// For a driver parameter: its key in [`RedundancyNode::params`], its driver, and whether
    /// that driver requires it.
    pub fn driver_param(self) -> Option<(&'static str, DriverKind, bool)> {
        match self {
            Param::Path => Some(("path", DriverKind::File, true)),
            Param::Netns => Some(("netns", DriverKind::Linux, false)),
            Param::Dev => Some(("dev", DriverKind::Linux, false)),
            Param::Command => Some(("command", DriverKind::Exec, true)),
            _ => None,
        }
    }

    /// Every driver parameter.
    pub const DRIVER_PARAMS: [Param; 4] = [Param::Path, Param::Netns, Param::Dev, Param::Command];
}

/// The parameters `driver` requires, as flags.
pub fn required_driver_params(driver: DriverKind) -> Vec<Param> {
    Param::DRIVER_PARAMS.into_iter().filter(|p| matches!(p.driver_param(), Some((_, d, true)) if d == driver)).collect()
}

impl NodeParams {
    /// True when no parameter is given.
    pub fn is_empty(&self) -> bool {
        *self == NodeParams::default()
    }

    fn driver_values(&self) -> [(Param, Option<&String>); 4] {
        [
            (Param::Path, self.path.as_ref()),
            (Param::Netns, self.netns.as_ref()),
            (Param::Dev, self.dev.as_ref()),
            (Param::Command, self.command.as_ref()),
        ]
    }
}

fn invalid(param: Param, value: &str, reason: impl Into<String>) -> HaError {
    HaError::Invalid { param: param.flag().to_string(), value: value.to_string(), reason: reason.into() }
}

/// Parses a CIDR route, requiring the host bits to be zero (the kernel and clouds refuse them).
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let Some((addr, len)) = s.split_once('/') else {
        return Err("a route is an address and a prefix length, like 10.1.0.0/16 or fd00::/64".into());
    };
    let ip: IpAddr = addr.parse().map_err(|_| format!("{addr:?} is not an IPv4 or IPv6 address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= max)
        .ok_or_else(|| format!("prefix length {len:?} must be a number from 0 to {max}"))?;
    let network = mask(ip, len);
    if network != ip {
        return Err(format!("it has host bits set; did you mean {network}/{len}?"));
    }
    Ok((ip, len))
}

fn mask(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let m = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = if len == 0 { 0 } else { u128::MAX << (128 - len) };
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

/// True when two next hops name the same address (`fd00::1` = `fd00:0::1`); plain string
/// equality for anything that is not an address.
pub fn same_hop(a: &str, b: &str) -> bool {
    match (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

fn check_name(param: Param, value: &str) -> HaResult<()> {
    names::validate(NameKind::Node, value).map_err(|e| invalid(param, value, e.to_string()))
}

fn check_route_table(value: &str, driver: DriverKind) -> HaResult<()> {
    if value.is_empty() || value.len() > 200 {
        return Err(invalid(Param::RouteTable, value, "a route table id is 1 to 200 bytes long"));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(Param::RouteTable, value, "a route table id has no spaces or control characters"));
    }
    if driver == DriverKind::Linux {
        let numeric_ok = value.parse::<u32>().is_ok_and(|n| n > 0);
        let name_ok = value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            && value.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
        if !numeric_ok && !name_ok {
            return Err(invalid(
                Param::RouteTable,
                value,
                "the linux driver needs a kernel table number (1..4294967295) or a table name like main",
            ));
        }
    }
    Ok(())
}

fn check_abs_path(param: Param, value: &str) -> HaResult<()> {
    if !value.starts_with('/') || value.contains('\0') || value.ends_with('/') {
        return Err(invalid(
            param,
            value,
            "give an absolute file path (the event manager runs on the router, with its own working directory)",
        ));
    }
    Ok(())
}

fn check_netns(value: &str) -> HaResult<()> {
    let ok = !value.is_empty()
        && value.len() <= 255
        && value != "."
        && value != ".."
        && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(Param::Netns, value, "a network namespace name uses letters, digits, '-', '_' and '.'"))
    }
}

fn check_dev(value: &str) -> HaResult<()> {
    let ok = !value.is_empty()
        && value.len() <= 15
        && value != "."
        && value != ".."
        && value.chars().all(|c| c.is_ascii_graphic() && c != '/' && c != ':');
    if ok { Ok(()) } else { Err(invalid(Param::Dev, value, "an interface name is 1 to 15 characters, without '/'")) }
}

/// Checks every field of a record; what `create_node` and `set_params` write has passed this.
/// `command` names the command in a missing-parameter error.
pub fn validate_record(rec: &RedundancyNode, command: &'static str) -> HaResult<()> {
    check_index(rec.index as i64)?;
    check_name(Param::Node, &rec.node)?;
    check_name(Param::Peer, &rec.peer)?;
    if rec.peer == rec.node {
        return Err(invalid(Param::Peer, &rec.peer, "the peer must be the other router, not --node itself"));
    }
    check_route_table(&rec.route_table, rec.driver)?;
    let (route_ip, _) = parse_cidr(&rec.route).map_err(|r| invalid(Param::Route, &rec.route, r))?;
    let hop: IpAddr = rec.next_hop.parse().map_err(|_| {
        invalid(Param::NextHop, &rec.next_hop, "the next hop is this router's IPv4 or IPv6 address, like 10.0.0.4")
    })?;
    if hop.is_ipv4() != route_ip.is_ipv4() {
        return Err(invalid(
            Param::NextHop,
            &rec.next_hop,
            format!("it is not the same IP family as route {}", rec.route),
        ));
    }
    let (lo, hi) = TIMEOUT_RANGE_MS;
    if !(lo..=hi).contains(&rec.timeout_ms) {
        return Err(invalid(
            Param::HandlerTimeout,
            &rec.timeout_ms.to_string(),
            format!("give a number of milliseconds from {lo} to {hi}"),
        ));
    }
    for p in Param::DRIVER_PARAMS {
        let (key, _, _) = p.driver_param().expect("driver param");
        if let Some(v) = rec.params.get(key) {
            match p {
                Param::Path | Param::Command => check_abs_path(p, v)?,
                Param::Netns => check_netns(v)?,
                Param::Dev => check_dev(v)?,
                _ => {}
            }
        }
    }
    for key in rec.params.keys() {
        if !Param::DRIVER_PARAMS.iter().any(|p| p.driver_param().is_some_and(|(k, _, _)| k == key)) {
            return Err(invalid(Param::Driver, key, "unknown driver parameter; known: path, netns, dev, command"));
        }
    }
    let missing: Vec<String> = required_driver_params(rec.driver)
        .into_iter()
        .filter(|p| !rec.params.contains_key(p.driver_param().expect("driver param").0))
        .map(|p| format!("{} (driver {} needs it)", p.flag(), rec.driver.as_str()))
        .collect();
    if !missing.is_empty() {
        return Err(HaError::MissingParams { command, params: missing });
    }
    Ok(())
}

/// Builds the record `create_node -i index` writes, or says which parameters are missing or wrong.
pub fn build_new(index: u16, p: &NodeParams, now: DateTime<Utc>) -> HaResult<RedundancyNode> {
    check_index(index as i64)?;
    let given = [
        (Param::Node, p.node.is_some()),
        (Param::RouteTable, p.route_table.is_some()),
        (Param::Route, p.route.is_some()),
        (Param::NextHop, p.next_hop.is_some()),
        (Param::Mode, p.mode.is_some()),
        (Param::Peer, p.peer.is_some()),
        (Param::Driver, p.driver.is_some()),
    ];
    let mut missing: Vec<String> = given.iter().filter(|(_, g)| !g).map(|(p, _)| p.flag().to_string()).collect();
    if let Some(d) = p.driver {
        for dp in required_driver_params(d) {
            if p.driver_values().iter().any(|(q, v)| *q == dp && v.is_none()) {
                missing.push(format!("{} (driver {} needs it)", dp.flag(), d.as_str()));
            }
        }
    }
    if !missing.is_empty() {
        return Err(HaError::MissingParams { command: "create_node", params: missing });
    }
    let mut params = BTreeMap::new();
    for (param, value) in p.driver_values() {
        if let Some(v) = value {
            params.insert(param.driver_param().expect("driver param").0.to_string(), v.clone());
        }
    }
    let rec = RedundancyNode {
        schema: SCHEMA,
        index,
        node: p.node.clone().expect("checked"),
        route_table: p.route_table.clone().expect("checked"),
        route: p.route.clone().expect("checked"),
        next_hop: p.next_hop.clone().expect("checked"),
        mode: p.mode.expect("checked"),
        peer: p.peer.clone().expect("checked"),
        driver: p.driver.expect("checked"),
        params,
        timeout_ms: p.handler_timeout.unwrap_or(DEFAULT_TIMEOUT_MS),
        auto_peer_fail: p.auto_peer_fail.unwrap_or(true),
        auto_revert: p.auto_revert.unwrap_or(true),
        created_at: now,
        updated_at: now,
        last_event: None,
    };
    validate_record(&rec, "create_node")?;
    Ok(rec)
}

/// `set_params`: `existing` with exactly the given parameters changed, validated as a whole.
pub fn apply_set(existing: &RedundancyNode, p: &NodeParams, now: DateTime<Utc>) -> HaResult<RedundancyNode> {
    let mut rec = existing.clone();
    if let Some(v) = &p.node {
        rec.node = v.clone();
    }
    if let Some(v) = &p.route_table {
        rec.route_table = v.clone();
    }
    if let Some(v) = &p.route {
        rec.route = v.clone();
    }
    if let Some(v) = &p.next_hop {
        rec.next_hop = v.clone();
    }
    if let Some(v) = p.mode {
        rec.mode = v;
    }
    if let Some(v) = &p.peer {
        rec.peer = v.clone();
    }
    if let Some(v) = p.driver {
        rec.driver = v;
    }
    for (param, value) in p.driver_values() {
        if let Some(v) = value {
            rec.params.insert(param.driver_param().expect("driver param").0.to_string(), v.clone());
        }
    }
    if let Some(v) = p.handler_timeout {
        rec.timeout_ms = v;
    }
    if let Some(v) = p.auto_peer_fail {
        rec.auto_peer_fail = v;
    }
    if let Some(v) = p.auto_revert {
        rec.auto_revert = v;
    }
    validate_record(&rec, "set_params")?;
    if rec != *existing {
        rec.updated_at = now;
    }
    Ok(rec)
}

/// Which parameters `clear_params` removes, as flags.
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct ClearFlags {
    /// Refused: every node needs --node.
    #[arg(long)]
    pub node: bool,
    /// Refused: every node needs --route-table.
    #[arg(long)]
    pub route_table: bool,
    /// Refused: every node needs --route.
    #[arg(long)]
    pub route: bool,
    /// Refused: every node needs --next-hop.
    #[arg(long)]
    pub next_hop: bool,
    /// Refused: every node needs --mode.
    #[arg(long)]
    pub mode: bool,
    /// Refused: every node needs --peer.
    #[arg(long)]
    pub peer: bool,
    /// Refused: every node needs --driver.
    #[arg(long)]
    pub driver: bool,
    /// Remove the file driver's --path (refused while the driver is file).
    #[arg(long)]
    pub path: bool,
    /// Remove the linux driver's --netns (ip then runs in the event manager's namespace).
    #[arg(long)]
    pub netns: bool,
    /// Remove the linux driver's --dev.
    #[arg(long)]
    pub dev: bool,
    /// Remove the exec driver's --command (refused while the driver is exec).
    #[arg(long)]
    pub command: bool,
    /// Reset --handler-timeout to its default (10000 ms).
    #[arg(long)]
    pub handler_timeout: bool,
    /// Reset --auto-peer-fail to its default (true).
    #[arg(long)]
    pub auto_peer_fail: bool,
    /// Reset --auto-revert to its default (true).
    #[arg(long)]
    pub auto_revert: bool,
}

impl ClearFlags {
    /// The parameters named, in flag order.
    pub fn params(&self) -> Vec<Param> {
        [
            (Param::Node, self.node),
            (Param::RouteTable, self.route_table),
            (Param::Route, self.route),
            (Param::NextHop, self.next_hop),
            (Param::Mode, self.mode),
            (Param::Peer, self.peer),
            (Param::Driver, self.driver),
            (Param::Path, self.path),
            (Param::Netns, self.netns),
            (Param::Dev, self.dev),
            (Param::Command, self.command),
            (Param::HandlerTimeout, self.handler_timeout),
            (Param::AutoPeerFail, self.auto_peer_fail),
            (Param::AutoRevert, self.auto_revert),
        ]
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(p, _)| p)
        .collect()
    }
}

/// Checks that `which` may be cleared from a node using `driver`, before anything is read or
/// written where possible (the driver is only known from the record).
pub fn check_clearable(which: &[Param], driver: Option<DriverKind>) -> HaResult<()> {
    for p in which {
        if Param::ALWAYS_REQUIRED.contains(p) {
            let flag = p.flag();
            return Err(HaError::CannotClear {
                param: flag.to_string(),
                reason: format!(
                    "every redundancy node needs it; change it with `set_params {flag} ...`, or remove the node \
                     with delete_node"
                ),
            });
        }
        if let (Some((_, d, true)), Some(cur)) = (p.driver_param(), driver)
            && d == cur
        {
            return Err(HaError::CannotClear {
                param: p.flag().to_string(),
                reason: format!(
                    "driver {} needs it; switch to another driver first with `set_params --driver ...`",
                    d.as_str()
                ),
            });
        }
    }
    Ok(())
}

/// `clear_params`: `existing` without the named parameters (defaults restored for the
/// timeout and the automatic events).
pub fn apply_clear(existing: &RedundancyNode, which: &[Param], now: DateTime<Utc>) -> HaResult<RedundancyNode> {
    check_clearable(which, Some(existing.driver))?;
    let mut rec = existing.clone();
    for p in which {
        match p {
            Param::HandlerTimeout => rec.timeout_ms = DEFAULT_TIMEOUT_MS,
            Param::AutoPeerFail => rec.auto_peer_fail = true,
            Param::AutoRevert => rec.auto_revert = true,
            other => {
                if let Some((key, _, _)) = other.driver_param() {
                    rec.params.remove(key);
                }
            }
        }
    }
    validate_record(&rec, "clear_params")?;
    if rec != *existing {
        rec.updated_at = now;
    }
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> NodeParams {
        NodeParams {
            node: Some("r1".into()),
            route_table: Some("rt-1".into()),
            route: Some("10.1.0.0/16".into()),
            next_hop: Some("10.0.0.4".into()),
            mode: Some(RouterMode::Primary),
            peer: Some("r2".into()),
            driver: Some(DriverKind::File),
            path: Some("/tmp/routes.json".into()),
            ..Default::default()
        }
    }

    #[test]
    fn index_range() {
        assert_eq!(parse_index("1"), Ok(1));
        assert_eq!(parse_index("1023"), Ok(1023));
        for bad in ["0", "1024", "-1", "99999999999"] {
            let e = parse_index(bad).unwrap_err();
            assert!(e.contains("outside 1..1023"), "{bad}: {e}");
        }
        assert!(parse_index("abc").unwrap_err().contains("not a whole number"));
    }

    #[test]
    fn cidr_and_ip_rules() {
        assert_eq!(parse_cidr("10.1.0.0/16").unwrap().1, 16);
        assert!(parse_cidr("fd00::/64").is_ok());
        assert!(parse_cidr("0.0.0.0/0").is_ok());
        assert!(parse_cidr("10.1.2.3/16").unwrap_err().contains("did you mean 10.1.0.0/16"));
        assert!(parse_cidr("10.1.0.0").unwrap_err().contains("prefix length"));
        assert!(parse_cidr("10.1.0.0/33").unwrap_err().contains("0 to 32"));
        assert!(parse_cidr("nope/8").unwrap_err().contains("not an IPv4 or IPv6"));
        assert!(same_hop("fd00::1", "fd00:0::1"));
        assert!(!same_hop("10.0.0.1", "10.0.0.2"));
    }

    #[test]
    fn create_requires_every_common_param_and_the_drivers() {
        let now = Utc::now();
        let rec = build_new(5, &full(), now).unwrap();
        assert_eq!(rec.params.get("path").map(String::as_str), Some("/tmp/routes.json"));
        assert!(rec.auto_peer_fail && rec.auto_revert);
        let err = build_new(5, &NodeParams::default(), now).unwrap_err().to_string();
        for f in ["--node", "--route-table", "--route", "--next-hop", "--mode", "--peer", "--driver"] {
            assert!(err.contains(f), "{err}");
        }
        let mut p = full();
        p.path = None;
        let err = build_new(5, &p, now).unwrap_err().to_string();
        assert!(err.contains("--path (driver file needs it)"), "{err}");
        p.driver = Some(DriverKind::Exec);
        let err = build_new(5, &p, now).unwrap_err().to_string();
        assert!(err.contains("--command (driver exec needs it)"), "{err}");
    }

    #[test]
    fn invalid_values_are_named() {
        let now = Utc::now();
        type Case = (fn(&mut NodeParams), &'static str);
        let cases: Vec<Case> = vec![
            (|p| p.route = Some("10.1.0.1/16".into()), "invalid --route"),
            (|p| p.next_hop = Some("10.0.0".into()), "invalid --next-hop"),
            (|p| p.next_hop = Some("fd00::1".into()), "same IP family"),
            (|p| p.peer = Some("r1".into()), "not --node itself"),
            (|p| p.node = Some("a/b".into()), "invalid --node"),
            (|p| p.path = Some("routes.json".into()), "absolute file path"),
            (|p| p.handler_timeout = Some(5), "invalid --handler-timeout"),
            (|p| p.netns = Some("a/b".into()), "invalid --netns"),
        ];
        for (f, want) in cases {
            let mut p = full();
            f(&mut p);
            let err = build_new(1, &p, now).unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
        }
        let mut p = full();
        p.driver = Some(DriverKind::Linux);
        p.route_table = Some("rt 1".into());
        assert!(build_new(1, &p, now).unwrap_err().to_string().contains("--route-table"));
        p.route_table = Some("rt.1".into());
        assert!(build_new(1, &p, now).unwrap_err().to_string().contains("kernel table number"));
        p.route_table = Some("100".into());
        build_new(1, &p, now).unwrap();
    }

    #[test]
    fn set_changes_only_what_is_given() {
        let t0 = Utc::now();
        let rec = build_new(3, &full(), t0).unwrap();
        let t1 = t0 + chrono::Duration::seconds(1);
        let changed =
            apply_set(&rec, &NodeParams { next_hop: Some("10.0.0.9".into()), ..Default::default() }, t1).unwrap();
        let mut expect = rec.clone();
        expect.next_hop = "10.0.0.9".into();
        expect.updated_at = t1;
        assert_eq!(changed, expect);
        // Switching to a driver whose required parameter is missing is refused.
        let err = apply_set(&rec, &NodeParams { driver: Some(DriverKind::Exec), ..Default::default() }, t1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("set_params needs --command"), "{err}");
        // Nothing given: nothing changes, not even updated_at.
        assert_eq!(apply_set(&rec, &NodeParams::default(), t1).unwrap(), rec);
    }

    #[test]
    fn clear_removes_optional_params_and_refuses_required_ones() {
        let t0 = Utc::now();
        let mut p = full();
        p.driver = Some(DriverKind::Linux);
        p.route_table = Some("100".into());
        p.netns = Some("ns1".into());
        p.handler_timeout = Some(2000);
        let rec = build_new(3, &p, t0).unwrap();
        let cleared = apply_clear(&rec, &[Param::Netns, Param::Path, Param::HandlerTimeout], t0).unwrap();
        assert!(!cleared.params.contains_key("netns"));
        assert!(!cleared.params.contains_key("path"));
        assert_eq!(cleared.timeout_ms, DEFAULT_TIMEOUT_MS);
        let err = apply_clear(&rec, &[Param::Route], t0).unwrap_err().to_string();
        assert!(err.contains("cannot clear --route"), "{err}");
        let file = build_new(4, &full(), t0).unwrap();
        let err = apply_clear(&file, &[Param::Path], t0).unwrap_err().to_string();
        assert!(err.contains("driver file needs it"), "{err}");
    }

    #[test]
    fn help_describes_every_driver_parameter() {
        for p in Param::DRIVER_PARAMS {
            assert!(DRIVERS_HELP.contains(p.flag()), "{}", p.flag());
        }
        for d in DriverKind::ALL {
            assert!(DRIVERS_HELP.contains(&format!("  {}  ", d.as_str())), "{}", d.as_str());
        }
    }
}
