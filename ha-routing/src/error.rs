//! Errors of HA routing commands: each says what is wrong and how to fix it.

use datom_common::CoordError;

/// Why an HA routing operation was refused or failed. Refusals change nothing.
#[derive(Debug, thiserror::Error)]
pub enum HaError {
    /// The index is outside 1..1023.
    #[error("redundancy node index {0} is outside 1..1023; give -i with a number from 1 to 1023")]
    IndexOutOfRange(i64),
    /// The datom tree does not exist.
    #[error("datom is not initialized in this ZooKeeper (no /datom/redundancy): run `datom init` first")]
    NotInitialized,
    /// The redundancy node does not exist.
    #[error("redundancy node {0} does not exist; create it with `datom create_node -i {0} ...` (see create_node -h)")]
    NoSuchNode(u16),
    /// The redundancy node already exists.
    #[error(
        "redundancy node {0} already exists; change it with `datom set_params -i {0} ...` or remove it with \
         `datom delete_node -i {0}`"
    )]
    AlreadyExists(u16),
    /// Required parameters are missing.
    #[error("{command} needs {}; nothing was changed (see `datom {command} -h`)", .params.join(", "))]
    MissingParams {
        /// The command.
        command: &'static str,
        /// The missing flags, e.g. `--route`.
        params: Vec<String>,
    },
    /// A parameter value is malformed.
    #[error("invalid {param} {value:?}: {reason}; nothing was changed")]
    Invalid {
        /// The flag, e.g. `--route`.
        param: String,
        /// The rejected value.
        value: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A parameter cannot be cleared.
    #[error("cannot clear {param}: {reason}; nothing was changed")]
    CannotClear {
        /// The flag.
        param: String,
        /// Why, and what to do instead.
        reason: String,
    },
    /// No event manager runs for the node.
    #[error(
        "no HA event manager is running for node {node:?} (no {path}); start it on that machine with \
         `datom ha_api -c start --node {node}`"
    )]
    NoEventManager {
        /// The node.
        node: String,
        /// The znode that is missing.
        path: String,
    },
    /// The event manager did not take or finish an event in time.
    #[error("{0}")]
    EventTimeout(String),
    /// Talking to an event manager failed.
    #[error("{0}")]
    Control(String),
    /// ZooKeeper failed.
    #[error(transparent)]
    Coord(#[from] CoordError),
}

/// Result alias.
pub type HaResult<T> = Result<T, HaError>;
