//! A volume's db: an in-memory key/value map that records the id of the last journal entry it
//! applied, checkpointed to a snapshot file (temp + fsync + rename) so a restart replays only
//! the journal after the checkpoint.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use datom_pb::{Entry, EntryId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// An operation journaled for a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Set `key` to `value`.
    Put {
        /// Key.
        key: String,
        /// Value.
        value: String,
    },
    /// Remove `key`.
    Delete {
        /// Key.
        key: String,
    },
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    schema: u32,
    volume: String,
    applied: EntryId,
    data: BTreeMap<String, String>,
}

struct State {
    applied: EntryId,
    map: BTreeMap<String, String>,
}

/// The db of one volume replica.
pub struct VolumeDb {
    volume: String,
    path: PathBuf,
    state: RwLock<State>,
    checkpointed: RwLock<EntryId>,
}

/// Fingerprint of a db, to compare replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbDigest {
    /// Last applied entry.
    pub applied: EntryId,
    /// Number of keys.
    pub keys: usize,
    /// SHA-256 over the keys and values, in order.
    pub sha256: String,
}

impl VolumeDb {
    /// Loads the checkpoint at `path` (an empty db if there is none).
    pub fn load(volume: &str, path: &Path) -> std::io::Result<VolumeDb> {
        let (applied, map) = match std::fs::read(path) {
            Ok(data) => {
                let s: Snapshot = serde_json::from_slice(&data)
                    .map_err(|e| std::io::Error::other(format!("{} is not a valid volume db: {e}", path.display())))?;
                (s.applied, s.data)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (EntryId::ZERO, BTreeMap::new()),
            Err(e) => return Err(e),
        };
        Ok(VolumeDb {
            volume: volume.to_string(),
            path: path.to_path_buf(),
            state: RwLock::new(State { applied, map }),
            checkpointed: RwLock::new(applied),
        })
    }

    /// Last applied journal entry.
    pub fn applied(&self) -> EntryId {
        self.state.read().unwrap().applied
    }

    /// Applies committed entries in order (no-ops advance the position only).
    pub fn apply(&self, entries: &[Entry]) -> Result<(), String> {
        let mut s = self.state.write().unwrap();
        for e in entries {
            if e.id() <= s.applied {
                continue;
            }
            if !e.data.is_empty() {
                let op: Op = serde_json::from_str(&e.data).map_err(|err| format!("entry {}: {err}", e.id()))?;
                match op {
                    Op::Put { key, value } => {
                        s.map.insert(key, value);
                    }
                    Op::Delete { key } => {
                        s.map.remove(&key);
                    }
                }
            }
            s.applied = e.id();
        }
        Ok(())
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<String> {
        self.state.read().unwrap().map.get(key).cloned()
    }

    /// Writes a checkpoint if anything was applied since the last one.
    pub fn checkpoint(&self) -> std::io::Result<bool> {
        let (applied, data) = {
            let s = self.state.read().unwrap();
            if s.applied == *self.checkpointed.read().unwrap() {
                return Ok(false);
            }
            (s.applied, s.map.clone())
        };
        let snap = Snapshot { schema: 1, volume: self.volume.clone(), applied, data };
        let bytes = serde_json::to_vec(&snap).expect("snapshots serialise");
        datom_common::fsutil::write_atomic(&self.path, &bytes)?;
        *self.checkpointed.write().unwrap() = applied;
        Ok(true)
    }

    /// Fingerprint of the current contents.
    pub fn digest(&self) -> DbDigest {
        let s = self.state.read().unwrap();
        let mut h = Sha256::new();
        for (k, v) in &s.map {
            h.update((k.len() as u64).to_le_bytes());
            h.update(k.as_bytes());
            h.update((v.len() as u64).to_le_bytes());
            h.update(v.as_bytes());
        }
        DbDigest { applied: s.applied, keys: s.map.len(), sha256: hex::encode(h.finalize()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(t: u64, i: u64, k: &str, v: &str) -> Entry {
        let op = Op::Put { key: k.into(), value: v.into() };
        Entry { term: t, index: i, data: serde_json::to_string(&op).unwrap() }
    }

    #[test]
    fn applies_records_position_and_survives_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("db.json");
        let db = VolumeDb::load("v", &p).unwrap();
        let noop = Entry { term: 1, index: 2, data: String::new() };
        let del = Entry { term: 1, index: 3, data: serde_json::to_string(&Op::Delete { key: "a".into() }).unwrap() };
        db.apply(&[put(1, 1, "a", "1"), noop, del, put(1, 4, "b", "2")]).unwrap();
        assert_eq!(db.applied(), EntryId::new(1, 4));
        assert_eq!(db.get("a"), None);
        assert_eq!(db.get("b").as_deref(), Some("2"));
        // Re-applying old entries changes nothing.
        db.apply(&[put(1, 1, "b", "old")]).unwrap();
        assert_eq!(db.get("b").as_deref(), Some("2"));
        assert!(db.checkpoint().unwrap());
        assert!(!db.checkpoint().unwrap(), "nothing new");
        let again = VolumeDb::load("v", &p).unwrap();
        assert_eq!(again.digest(), db.digest());
    }
}
