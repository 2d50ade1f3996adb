//! `VolumeReplica`: one replica of one volume, built on `PBMember` (seed 003: "VolumeReplica
//! derives from PBReplica, overrides hooks onBecomeLeader(), onBecomeFollower()"). It owns the
//! volume's db and applies committed journal entries to it: journal first, then db.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datom_pb::{Entry, EntryId, Replica};

use crate::db::VolumeDb;
use crate::failpoint::Failpoint;

/// One replica of a volume.
pub struct VolumeReplica {
    volume: String,
    db: Arc<VolumeDb>,
    failpoint: Option<Failpoint>,
    passes: AtomicU64,
}

impl VolumeReplica {
    /// A replica over `db`.
    pub fn new(volume: &str, db: Arc<VolumeDb>, failpoint: Option<Failpoint>) -> Self {
        VolumeReplica { volume: volume.to_string(), db, failpoint, passes: AtomicU64::new(0) }
    }

    /// The db.
    pub fn db(&self) -> &Arc<VolumeDb> {
        &self.db
    }
}

impl Replica for VolumeReplica {
    fn applied(&self) -> EntryId {
        self.db.applied()
    }

    fn apply(&self, entries: &[Entry]) -> Result<(), String> {
        if let Some(fp) = &self.failpoint
            && fp.name == "crash-before-apply"
            && entries.iter().any(|e| !e.data.is_empty())
        {
            let n = self.passes.fetch_add(1, Ordering::SeqCst) + 1;
            if n == fp.nth {
                // Make the db durable exactly as it stands before this apply, so the crash
                // leaves the journal ahead of the db by precisely these entries.
                if let Err(e) = self.db.checkpoint() {
                    tracing::error!(error = %e, "failpoint: checkpoint before the crash failed");
                }
                let first = entries.first().map(|e| e.id()).unwrap_or_default();
                let last = entries.last().map(|e| e.id()).unwrap_or_default();
                tracing::error!(
                    volume = self.volume,
                    db = %self.db.applied(),
                    first = %first,
                    last = %last,
                    "failpoint crash-before-apply: aborting after the journal write, before the db apply"
                );
                eprintln!(
                    "failpoint crash-before-apply fired: db at {}, entries {first}..{last} journaled, not applied",
                    self.db.applied()
                );
                std::process::abort();
            }
        }
        self.db.apply(entries)
    }

    fn on_become_leader(&self, term: u64) {
        tracing::info!(volume = self.volume, term, "onBecomeLeader: serving the volume");
    }

    fn on_become_follower(&self, term: u64, leader: Option<&str>) {
        tracing::info!(volume = self.volume, term, leader, "onBecomeFollower: following");
    }
}
