//! JSON records stored in znodes. Every record carries a `schema` version so an operator
//! reading it with zkCli, or a newer datom, knows how to interpret it.
//!
//! The field-by-field description lives in `docs/znodes.md`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Schema version written into every record by this build of datom.
pub const SCHEMA: u32 = 1;

fn schema() -> u32 {
    SCHEMA
}

/// The current schema version (serde default for records).
pub fn schema_version() -> u32 {
    SCHEMA
}

/// `/datom`: the cluster record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// Record schema version.
    #[serde(default = "schema")]
    pub schema: u32,
    /// Cluster name, chosen at `datom init --cluster NAME`.
    pub name: String,
    /// When `datom init` created the tree.
    pub created_at: DateTime<Utc>,
    /// The datom version that created the tree.
    pub created_by: String,
    /// Placement strategy the transition master uses (`cost` when absent; or `first-fit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement_strategy: Option<String>,
    /// Minimum seconds between two voluntary moves of one service (failback); 30 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_move_interval_s: Option<u64>,
}

/// `/datom/configservice`: its existence marks an initialised datom instance (seed 003).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigServiceRecord {
    /// Record schema version.
    #[serde(default = "schema")]
    pub schema: u32,
    /// When the tree was created.
    pub created_at: DateTime<Utc>,
}

/// `/datom/configservice/instance`: ephemeral record of the active config service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigServiceInstance {
    /// Record schema version.
    #[serde(default = "schema")]
    pub schema: u32,
    /// Instance id (unique per process start).
    pub id: String,
    /// RPC address clients dial (`host:port`).
    pub address: String,
    /// Dashboard address, when the instance serves one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// Process id on its machine.
    pub pid: u32,
    /// When this instance became active.
    pub started_at: DateTime<Utc>,
}

/// The datom version string recorded in records.
pub fn datom_version() -> String {
    format!("datom {}", env!("CARGO_PKG_VERSION"))
}

/// A disk seen by hardware discovery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskInfo {
    /// Mount point.
    pub mount_point: String,
    /// Filesystem type.
    pub filesystem: String,
    /// Total size in bytes.
    pub total_bytes: u64,
}

/// A network interface seen by hardware discovery (loopback and virtual noise skipped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicInfo {
    /// Interface name.
    pub name: String,
    /// MAC address.
    pub mac: String,
    /// IP addresses with prefix length (`10.0.0.5/24`).
    pub ips: Vec<String>,
    /// MTU in bytes, when known.
    pub mtu: Option<u32>,
}

/// What `datom addnode` discovered about a machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardwareReport {
    /// Stable machine id (`/etc/machine-id`, else a hash of the hostname and MACs).
    pub machine_id: String,
    /// Host name.
    pub hostname: String,
    /// OS name and version.
    pub os: String,
    /// Kernel version.
    pub kernel: String,
    /// CPU model name.
    pub cpu_model: String,
    /// CPU architecture.
    pub arch: String,
    /// Logical CPUs.
    pub cpus: u32,
    /// Physical memory in bytes.
    pub memory_bytes: u64,
    /// Disks.
    pub disks: Vec<DiskInfo>,
    /// Network interfaces.
    pub nics: Vec<NicInfo>,
}

/// `/datom/nodes/<node>`: a registered node, as returned by the config service and stamped at
/// `<root>/node.json` on the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Record schema version.
    #[serde(default = "schema")]
    pub schema: u32,
    /// Node name.
    pub name: String,
    /// Stable machine id; re-adding the same machine returns the same record.
    pub machine_id: String,
    /// Hardware at registration.
    pub hardware: HardwareReport,
    /// Services the node should run.
    #[serde(default)]
    pub services: Vec<String>,
    /// When the node was first registered.
    pub registered_at: DateTime<Utc>,
    /// Config service instance that registered it.
    pub registered_by: String,
    /// Drained nodes take no new placements.
    #[serde(default)]
    pub unschedulable: bool,
}

/// `/datom/nodes/<node>/live`: ephemeral presence of a running node agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveRecord {
    /// Record schema version.
    #[serde(default = "schema")]
    pub schema: u32,
    /// Node name.
    pub node: String,
    /// The agent's RPC address (`host:port`).
    pub address: String,
    /// The agent's metrics/HTTP address, when served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// Agent process id.
    pub pid: u32,
    /// datom version.
    pub version: String,
    /// When the agent started.
    pub started_at: DateTime<Utc>,
    /// Usage the agent reports periodically, for placement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<NodeLoad>,
}

/// A node's usage as its agent measured it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLoad {
    /// CPU busy, 0..100 (whole machine).
    pub cpu_percent: u32,
    /// Memory in use, in bytes.
    pub memory_used_bytes: u64,
    /// When it was measured.
    pub at: DateTime<Utc>,
}

/// Seed 001's operations on a resource, as an operator's desired state for one service on one
/// node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    /// Bring the service into service (start it).
    InService,
    /// Take it out of service gracefully (SIGTERM, stop timeout, SIGKILL; OCF `stop`).
    OoService,
    /// Take it out of service at once (SIGKILL).
    ForceOos,
    /// Mark a failed service out of service, taking no action on it.
    MarkOos,
}

/// `/datom/nodes/<node>/services/<svc>`: what the operator wants for a service on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredRecord {
    /// Record schema version.
    #[serde(default = "schema")]
    pub schema: u32,
    /// Service name.
    pub service: String,
    /// Desired operation.
    pub op: Operation,
    /// Bumped by `datom restartservice` to ask for a restart.
    #[serde(default)]
    pub restart_generation: u64,
    /// When it was requested.
    pub requested_at: DateTime<Utc>,
    /// Why: `operator`, or the transition that placed it.
    #[serde(default)]
    pub reason: String,
}

/// Seed 001's service states, plus STARTING (spawned, not yet healthy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServiceState {
    /// Started; waiting for its first healthy check (datom's extension of seed 001).
    Starting,
    /// Running and healthy.
    InService,
    /// Being stopped.
    PendingOos,
    /// Stopped.
    Oos,
    /// Exhausted its restart budget; needs an operator (or failover).
    Failed,
}

/// A node's role in a service group (seed 000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupRole {
    /// The node provides the group's service now.
    Active,
    /// The node holds the service but does not provide it now.
    Passive,
}

/// `/datom/services/<svc>/instances/<node>`: ephemeral record of a service instance, published
/// by the agent supervising it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// Record schema version.
    #[serde(default = "schema")]
    pub schema: u32,
    /// Service name.
    pub service: String,
    /// Node running it.
    pub node: String,
    /// The node agent's address (for RPC about this instance).
    pub address: String,
    /// Process id (0 for OCF resources without one).
    pub pid: u32,
    /// Current state.
    pub state: ServiceState,
    /// When it entered this state.
    pub since: DateTime<Utc>,
    /// Restarts within the current window.
    pub restarts: u32,
    /// Service group, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// This node's role in the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<GroupRole>,
    /// Last health check or failure message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// What made the transition master declare a transition (seed 001's step 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Trigger {
    /// A node's live ephemeral disappeared.
    NodeDied {
        /// The node.
        node: String,
    },
    /// A service exhausted its restarts on a node.
    ServiceFailed {
        /// The service.
        service: String,
        /// The node it failed on.
        node: String,
    },
    /// `datom startservice` without `--node`.
    StartRequested {
        /// The service.
        service: String,
    },
    /// A node's live ephemeral appeared.
    NodeJoined {
        /// The node.
        node: String,
    },
    /// `datom move`.
    Move {
        /// The service.
        service: String,
        /// Where to.
        to: String,
    },
    /// `datom node drain`.
    Drain {
        /// The node.
        node: String,
    },
}

/// One placement decision of a transition: a unit of services (start order) goes to `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The services that move together (a group or a service with its dependencies), in start
    /// order.
    pub services: Vec<String>,
    /// Where they were (absent for a fresh start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Where they go.
    pub to: String,
    /// Why this node: its cost, or the rule that chose it.
    pub reason: String,
}

/// A unit the master could not place, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unplaced {
    /// The services.
    pub services: Vec<String>,
    /// Why.
    pub reason: String,
}

/// `/datom/events/ev-<seq>`: a transition, as recorded by the transition master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionRecord {
    /// Record schema version.
    #[serde(default = "schema")]
    pub schema: u32,
    /// When it was declared.
    pub at: DateTime<Utc>,
    /// The config service instance acting as transition master.
    pub master: String,
    /// What triggered it.
    pub trigger: Trigger,
    /// Where services went.
    pub decisions: Vec<Decision>,
    /// What could not be placed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unplaced: Vec<Unplaced>,
}

/// `/datom/services/<svc>/placement`: when the service last moved (for the no-ping-pong rule).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementRecord {
    /// Record schema version.
    #[serde(default = "schema")]
    pub schema: u32,
    /// Node(s) it was placed on last.
    pub nodes: Vec<String>,
    /// When it last moved.
    pub moved_at: DateTime<Utc>,
}

/// `/datom/nodes/<node>/maintenance`: the node's agent was stopped on purpose and left its
/// services running; the transition master does not fail them over. Removed by the next agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceRecord {
    /// Record schema version.
    #[serde(default = "schema")]
    pub schema: u32,
    /// Since when.
    pub since: DateTime<Utc>,
    /// Why.
    pub reason: String,
}
