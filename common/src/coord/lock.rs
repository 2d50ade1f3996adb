//! Exclusive locks on ZooKeeper (Curator-compatible ephemeral sequential nodes), for choosing
//! one active instance among several. A lock dies with the session that took it; after an
//! expiry the holder must contend again on the new session.

use zookeeper_client as zk;

use super::{Coord, CoordError, CoordResult, Op};

/// A held lock. Dropping it releases the lock (deletes its node in the background).
pub struct LockGuard {
    inner: zk::OwnedLockClient,
    path: String,
    session_id: i64,
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard").field("path", &self.path).field("session_id", &self.session_id).finish()
    }
}

impl LockGuard {
    /// The lock node's path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The session that holds the lock.
    pub fn session_id(&self) -> i64 {
        self.session_id
    }

    /// A multi-op check that fails unless this lock is still held: put it in front of every
    /// write the lock holder makes, so a holder that lost its session cannot write (fencing).
    pub fn check_op(&self) -> Op {
        Op::Check { path: self.path.clone(), version: 0 }
    }

    /// The underlying client (the session that holds the lock).
    pub fn client(&self) -> &zk::Client {
        self.inner.client()
    }
}

impl Coord {
    /// Contends for the lock under `dir` and returns once it is held. Cancellation-safe: drop
    /// the future to stop contending. Fails with [`CoordError::SessionExpired`] if the session
    /// expires while waiting; contend again after the supervisor opened a new one.
    pub async fn lock(&self, dir: &str, name: &str, data: &[u8]) -> CoordResult<LockGuard> {
        let client = self.client().await?;
        let session_id = client.session_id().0;
        let prefix = zk::LockPrefix::new_curator(dir, name).map_err(|e| CoordError::from_zk("lock", dir, e, None))?;
        let ancestors = zk::CreateMode::Persistent.with_acls(self.acls());
        let options = zk::LockOptions::new(self.acls())
            .with_ancestor_options(ancestors)
            .map_err(|e| CoordError::from_zk("lock", dir, e, None))?;
        let lock = client.lock(prefix, data, options).await.map_err(|e| CoordError::from_zk("lock", dir, e, None))?;
        let path = lock.lock_path().to_string();
        Ok(LockGuard { inner: lock.into_owned(), path, session_id })
    }
}
