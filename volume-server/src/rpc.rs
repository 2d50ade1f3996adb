//! The volume server's client API (tarpc over TCP, JSON frames): put, get and delete on a
//! volume's leader, and inspect on any replica.

use datom_pb::{EntryId, MemberState, PbError};
use serde::{Deserialize, Serialize};

use crate::db::DbDigest;

/// Largest key, in bytes.
pub const MAX_KEY: usize = 1024;
/// Largest value, in bytes.
pub const MAX_VALUE: usize = 512 * 1024;

/// Errors of the volume API; each says what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum VolumeError {
    /// This server hosts no replica of the volume.
    #[error("this server hosts no replica of volume {0:?}")]
    NoSuchVolume(String),
    /// Replication refused or failed (not leader, no quorum, suspended, ...).
    #[error("{0}")]
    Pb(#[from] PbError),
    /// Bad key or value.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A write without the cluster token, or with a wrong one, on a secure cluster.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The write was journaled but not acknowledged in time.
    #[error("the write was not acknowledged within {0} ms; its outcome is unknown: retry")]
    Timeout(u64),
}

/// Acknowledgement of a write: the journal entry that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteAck {
    /// The entry.
    pub entry: EntryId,
}

/// What one replica says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaInfo {
    /// Volume.
    pub volume: String,
    /// Member name.
    pub member: String,
    /// State.
    pub state: MemberState,
    /// Promised term.
    pub term: u64,
    /// Last journal entry.
    pub last: EntryId,
    /// Commit point.
    pub commit: u64,
    /// The db's fingerprint.
    pub db: DbDigest,
}

/// The volume server's API.
#[tarpc::service]
pub trait VolumeApi {
    /// Sets `key` to `value`; acknowledged once a quorum journaled it. Leader only.
    /// Needs the cluster token on a secure cluster.
    async fn put(volume: String, key: String, value: String, token: Option<String>) -> Result<WriteAck, VolumeError>;
    /// Removes `key`; acknowledged once a quorum journaled it. Leader only. Needs the cluster
    /// token on a secure cluster.
    async fn delete(volume: String, key: String, token: Option<String>) -> Result<WriteAck, VolumeError>;
    /// Reads `key` after confirming leadership with a quorum. Leader only.
    async fn get(volume: String, key: String) -> Result<Option<String>, VolumeError>;
    /// This replica's state and db fingerprint (any replica).
    async fn inspect(volume: String) -> Result<ReplicaInfo, VolumeError>;
}

/// Checks a key and value before they are journaled.
pub fn validate(key: &str, value: Option<&str>) -> Result<(), VolumeError> {
    if key.is_empty() {
        return Err(VolumeError::Invalid("the key must not be empty".into()));
    }
    if key.len() > MAX_KEY {
        return Err(VolumeError::Invalid(format!("the key is {} bytes; the limit is {MAX_KEY}", key.len())));
    }
    if let Some(v) = value
        && v.len() > MAX_VALUE
    {
        return Err(VolumeError::Invalid(format!("the value is {} bytes; the limit is {MAX_VALUE}", v.len())));
    }
    Ok(())
}
