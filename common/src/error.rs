//! Errors of the coordination layer, with messages that say what failed and what to check.

use std::time::Duration;

/// Errors from [`crate::coord::Coord`]. Each names the path or address involved.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    /// The first session could not be established.
    #[error(
        "cannot connect to ZooKeeper at {addr} within {} ms: {reason}. Check that ZooKeeper is \
         running and reachable at that address (set it with --zk or DATOM_ZK)",
        timeout.as_millis()
    )]
    Connect {
        /// The connect string that was tried.
        addr: String,
        /// How long we waited.
        timeout: Duration,
        /// What the client reported.
        reason: String,
    },
    /// A request got no answer within the per-request timeout.
    #[error(
        "ZooKeeper did not answer {op} {path} within {} ms (connection suspended or server overloaded)",
        timeout.as_millis()
    )]
    Timeout {
        /// The operation.
        op: &'static str,
        /// The path it was for.
        path: String,
        /// The timeout that elapsed.
        timeout: Duration,
    },
    /// The znode does not exist.
    #[error("{path} does not exist")]
    NoNode {
        /// The missing path.
        path: String,
    },
    /// The znode already exists.
    #[error("{path} already exists")]
    NodeExists {
        /// The existing path.
        path: String,
    },
    /// A compare-and-set lost: someone else changed the znode first. Nothing was written.
    #[error("{path} was changed concurrently (expected version {expected}); nothing was written, re-read and retry")]
    Conflict {
        /// The contended path.
        path: String,
        /// The version the caller expected.
        expected: i32,
    },
    /// The znode has children and cannot be deleted.
    #[error("{path} has children; delete them first")]
    NotEmpty {
        /// The path.
        path: String,
    },
    /// ZooKeeper ACLs refused the operation.
    #[error(
        "not authorised to {op} {path}: the znode's ACL refuses it (pass the cluster credentials with --auth-file)"
    )]
    NoAuth {
        /// The operation.
        op: &'static str,
        /// The path.
        path: String,
    },
    /// A znode held data that is not the expected JSON record.
    #[error("{path} does not hold a valid {what} record: {source}")]
    Decode {
        /// The path.
        path: String,
        /// The record type expected.
        what: &'static str,
        /// The JSON error, with line and column.
        source: serde_json::Error,
    },
    /// A record is too large to store.
    #[error("record for {path} is {size} bytes; the limit is {limit} bytes (ZooKeeper's jute.maxbuffer)")]
    TooLarge {
        /// The path.
        path: String,
        /// Encoded size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A malformed path.
    #[error("invalid path: {0}")]
    InvalidPath(String),
    /// The session expired during the call; the supervisor is opening a new one.
    #[error("ZooKeeper session expired during {op} {path}; a new session is being opened, retry")]
    SessionExpired {
        /// The operation.
        op: &'static str,
        /// The path.
        path: String,
    },
    /// The client was closed.
    #[error("the coordination client is closed")]
    Closed,
    /// Any other ZooKeeper error.
    #[error("ZooKeeper {op} {path} failed: {source}")]
    Zk {
        /// The operation.
        op: &'static str,
        /// The path.
        path: String,
        /// The client's error.
        source: zookeeper_client::Error,
    },
    /// The credentials (`--auth-file`) could not be used; nothing was contacted.
    #[error("cannot use the cluster credentials: {0}")]
    Credentials(String),
}

impl CoordError {
    /// Maps a client error for `op` on `path` to the matching variant.
    pub fn from_zk(op: &'static str, path: &str, err: zookeeper_client::Error, version: Option<i32>) -> Self {
        use zookeeper_client::Error as E;
        let path = path.to_string();
        match err {
            E::NoNode => CoordError::NoNode { path },
            E::NodeExists => CoordError::NodeExists { path },
            E::BadVersion => CoordError::Conflict { path, expected: version.unwrap_or(-1) },
            E::NotEmpty => CoordError::NotEmpty { path },
            E::NoAuth => CoordError::NoAuth { op, path },
            E::SessionExpired => CoordError::SessionExpired { op, path },
            E::ClientClosed => CoordError::Closed,
            source => CoordError::Zk { op, path, source },
        }
    }

    /// True for errors that a retry on a fresh connection may fix.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            CoordError::Timeout { .. }
                | CoordError::SessionExpired { .. }
                | CoordError::Zk { source: zookeeper_client::Error::ConnectionLoss, .. }
        )
    }
}

/// Result alias for coordination calls.
pub type CoordResult<T> = Result<T, CoordError>;
