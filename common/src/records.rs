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
