//! The JSON records HA routing keeps in ZooKeeper: redundancy nodes, event requests, the event
//! manager's presence and route-table lock contenders. Described field by field in
//! `docs/znodes.md`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Schema version written into every HA record by this build.
pub const SCHEMA: u32 = 1;

fn schema() -> u32 {
    SCHEMA
}

fn yes() -> bool {
    true
}

/// Default bound on taking a route table's lock and on running the event handler, in ms.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;

fn default_timeout() -> u64 {
    DEFAULT_TIMEOUT_MS
}

/// The role a router plays for a route (seed 002: "mode").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RouterMode {
    /// The preferred next hop: a recovered primary takes the route back (`revert`).
    Primary,
    /// The standby: takes the route over when the primary fails (`peerFail`), never reverts.
    Secondary,
}

impl RouterMode {
    /// The lowercase name used in records and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            RouterMode::Primary => "primary",
            RouterMode::Secondary => "secondary",
        }
    }
}

/// The route-table driver a redundancy node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DriverKind {
    /// The kernel's routing table through `ip route`.
    Linux,
    /// A JSON route table in a local file (demos and tests).
    File,
    /// An operator's program (for example a cloud CLI wrapper).
    Exec,
}

impl DriverKind {
    /// The lowercase name used in records and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            DriverKind::Linux => "linux",
            DriverKind::File => "file",
            DriverKind::Exec => "exec",
        }
    }

    /// Every driver, in help order.
    pub const ALL: [DriverKind; 3] = [DriverKind::Linux, DriverKind::File, DriverKind::Exec];
}

/// What handling an event did to the route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResultKind {
    /// The route was written with a new next hop.
    Updated,
    /// The route was read and already pointed where it should; nothing was written.
    Unchanged,
    /// `verify`: the route was read and written back unchanged.
    Rewritten,
    /// The decision was to do nothing (for example `revert` on a secondary).
    Skipped,
    /// Reading or writing the route failed, or timed out.
    Failed,
}

impl ResultKind {
    /// The snake_case name used in records.
    pub fn as_str(self) -> &'static str {
        match self {
            ResultKind::Updated => "updated",
            ResultKind::Unchanged => "unchanged",
            ResultKind::Rewritten => "rewritten",
            ResultKind::Skipped => "skipped",
            ResultKind::Failed => "failed",
        }
    }
}

/// The result of handling one event, as the event handler reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// What happened.
    pub result: ResultKind,
    /// One sentence for the operator.
    pub detail: String,
    /// The next hop read before any write (`None`: no such route, or not read).
    #[serde(default)]
    pub before: Option<String>,
    /// The next hop read back after the write (`None`: nothing written, or not readable).
    #[serde(default)]
    pub after: Option<String>,
}

impl Outcome {
    /// A `skipped` outcome.
    pub fn skipped(detail: impl Into<String>) -> Outcome {
        Outcome { result: ResultKind::Skipped, detail: detail.into(), before: None, after: None }
    }

    /// A `failed` outcome.
    pub fn failed(detail: impl Into<String>) -> Outcome {
        Outcome { result: ResultKind::Failed, detail: detail.into(), before: None, after: None }
    }
}

/// Who raised an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventSource {
    /// `datom node_event`.
    Cli,
    /// The event manager itself (peer's presence vanished, or this node came back).
    Auto,
}

/// The last event handled for a redundancy node, written back by its event manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastEvent {
    /// Event name (`peerFail`, `revert`, `verify`, or whatever was asked).
    pub event: String,
    /// Who raised it.
    pub source: EventSource,
    /// What happened.
    pub result: ResultKind,
    /// One sentence for the operator.
    pub detail: String,
    /// Next hop read before any write.
    #[serde(default)]
    pub before: Option<String>,
    /// Next hop read back after the write.
    #[serde(default)]
    pub after: Option<String>,
    /// When handling finished.
    pub at: DateTime<Utc>,
    /// Time from taking the event to the result, in ms (lock wait and handler included).
    pub duration_ms: u64,
    /// The datom node whose event manager handled it.
    pub handled_by: String,
}

impl LastEvent {
    /// Combines an outcome with its context.
    pub fn new(event: &str, source: EventSource, outcome: Outcome, duration_ms: u64, handled_by: &str) -> LastEvent {
        LastEvent {
            event: event.to_string(),
            source,
            result: outcome.result,
            detail: outcome.detail,
            before: outcome.before,
            after: outcome.after,
            at: Utc::now(),
            duration_ms,
            handled_by: handled_by.to_string(),
        }
    }
}

/// `/datom/redundancy/<index>`: a redundancy node (seed 002) — one route in one route table
/// that a router (`node`) points at itself when the events call for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedundancyNode {
    /// Record schema version.
    #[serde(default = "schema")]
    pub schema: u32,
    /// Index, 1..1023 (also the znode name).
    pub index: u16,
    /// The datom node (router) this redundancy node belongs to; its event manager acts on it.
    pub node: String,
    /// Route table id, as the driver names it (kernel table number or name, cloud id, ...).
    pub route_table: String,
    /// The route, in CIDR notation (`10.1.0.0/16`).
    pub route: String,
    /// This router's address: the next hop the route gets when this router takes it.
    pub next_hop: String,
    /// primary or secondary.
    pub mode: RouterMode,
    /// The peer router's datom node name; its presence is watched.
    pub peer: String,
    /// Route-table driver.
    pub driver: DriverKind,
    /// Driver parameters by name (`path`, `netns`, `dev`, `command`). Parameters of other
    /// drivers may be present; only the current driver's are used.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Bound on the lock wait and on the event handler, each, in ms.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Raise `peerFail` when the peer's presence vanishes.
    #[serde(default = "yes")]
    pub auto_peer_fail: bool,
    /// Raise `revert` (primary mode only) when this node's presence comes back.
    #[serde(default = "yes")]
    pub auto_revert: bool,
    /// When `create_node` wrote it.
    pub created_at: DateTime<Utc>,
    /// When `create_node`, `set_params` or `clear_params` last changed its parameters.
    pub updated_at: DateTime<Utc>,
    /// The last event handled, written by the event manager.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event: Option<LastEvent>,
}

/// Where an event request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    /// Written by `node_event`; no event manager has taken it yet.
    Pending,
    /// An event manager claimed it (version-checked) and is handling it.
    Running,
    /// Handled; `outcome` holds the result.
    Done,
}

/// `/datom/redundancy/<index>/ev-NNNNNNNNNN`: an event request from `datom node_event`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRequest {
    /// Record schema version.
    #[serde(default = "schema")]
    pub schema: u32,
    /// The event name.
    pub event: String,
    /// Where it stands.
    pub state: RequestState,
    /// When it was written.
    pub requested_at: DateTime<Utc>,
    /// `host:pid` of the requesting command.
    pub requested_by: String,
    /// `node:pid` of the event manager that claimed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<String>,
    /// The result, once `done`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<LastEvent>,
}

/// `/datom/ha/servers/<node>`: ephemeral presence of a node's event manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaServerRecord {
    /// Record schema version.
    #[serde(default = "schema")]
    pub schema: u32,
    /// The datom node it serves.
    pub node: String,
    /// Control RPC address (loopback; `ha_api -c ping|stop` dials it).
    pub address: String,
    /// Process id.
    pub pid: u32,
    /// Host name of the machine it runs on.
    pub host: String,
    /// datom version.
    pub version: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
}

/// Data of a route-table lock contender (`/datom/ha/locks/<key>/_c_<uuid>-lock-NNNNNNNNNN`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    /// Record schema version.
    #[serde(default = "schema")]
    pub schema: u32,
    /// The route table.
    pub route_table: String,
    /// The datom node contending.
    pub node: String,
    /// The redundancy node whose event it handles.
    pub index: u16,
    /// The event.
    pub event: String,
    /// Contender's process id.
    pub pid: u32,
}

/// Host name of this machine, for records.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}
