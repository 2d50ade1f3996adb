//! Route-table locks: only one router writes a given route table per event. A lock is
//! zookeeper-client's Curator-compatible mutex (ephemeral sequential contenders under
//! `/datom/ha/locks/<key>`), taken through the process's [`Coord`] session, so a holder that
//! dies releases it when its session expires.

use std::time::Duration;

use datom_common::coord::{Coord, CoordError, Mode};
use datom_common::paths;
use zookeeper_client as zk;

use crate::record::LockRecord;

/// The lock directory name of a route table: `t-<id>` when the id is a safe path segment,
/// else `x-<hex of the id>`, so distinct ids never share a lock and any id is accepted.
pub fn table_key(table: &str) -> String {
    let safe = !table.is_empty()
        && table.len() <= 100
        && table.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if safe {
        format!("t-{table}")
    } else {
        let hex: String = table.bytes().map(|b| format!("{b:02x}")).collect();
        format!("x-{hex}")
    }
}

/// Creates `path` holding `{}` unless it exists (containers).
pub async fn ensure_container(coord: &Coord, path: &str) -> Result<(), CoordError> {
    match coord.create(path, &serde_json::json!({}), Mode::Persistent).await {
        Ok(_) | Err(CoordError::NodeExists { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// A held route-table lock. Release it with [`TableLock::release`]; dropping it releases it in
/// the background.
pub struct TableLock {
    coord: Coord,
    lock: zk::OwnedLockClient,
    session: i64,
}

impl TableLock {
    /// Waits up to `timeout` to take the lock of `record.route_table`.
    pub async fn acquire(coord: &Coord, record: &LockRecord, timeout: Duration) -> Result<TableLock, String> {
        let dir = paths::ha_lock(&table_key(&record.route_table));
        for p in [paths::HA, paths::HA_LOCKS, dir.as_str()] {
            ensure_container(coord, p).await.map_err(|e| format!("cannot create lock directory {p}: {e}"))?;
        }
        let data = serde_json::to_vec_pretty(record).expect("lock records serialise");
        let client = coord.client().await.map_err(|e| e.to_string())?;
        let session = client.session_id().0;
        let acl = coord.config().acl.clone();
        let acls = if acl.is_empty() { zk::Acls::anyone_all() } else { zk::Acls::new(&acl) };
        let prefix = zk::LockPrefix::new_curator(&dir, "lock-").map_err(|e| format!("bad lock path {dir}: {e}"))?;
        match tokio::time::timeout(timeout, client.lock(prefix, &data, zk::LockOptions::new(acls))).await {
            Ok(Ok(lock)) => Ok(TableLock { coord: coord.clone(), lock: lock.into_owned(), session }),
            Ok(Err(e)) => Err(format!("cannot take the lock of route table {:?} ({dir}): {e}", record.route_table)),
            Err(_) => Err(format!(
                "route table {:?} stayed locked by another writer for {} ms ({dir}); nothing was written",
                record.route_table,
                timeout.as_millis()
            )),
        }
    }

    /// The contender znode that holds the lock.
    pub fn path(&self) -> &str {
        self.lock.lock_path()
    }

    /// True while the lock znode still exists in the session that took it (it is gone if that
    /// session expired: another router may then hold the lock).
    pub async fn still_held(&self) -> bool {
        match self.coord.get_raw(self.lock.lock_path()).await {
            Ok(Some((_, stat))) => stat.ephemeral_owner == self.session,
            _ => false,
        }
    }

    /// Releases the lock now.
    pub async fn release(self) {
        let path = self.lock.lock_path().to_string();
        let _ = self.coord.delete_if_exists(&path).await;
        drop(self.lock);
    }
}

#[cfg(test)]
mod tests {
    use super::table_key;

    #[test]
    fn keys_are_segments_and_distinct() {
        assert_eq!(table_key("rtb-0abc"), "t-rtb-0abc");
        assert_eq!(table_key("100"), "t-100");
        let azure = "/subscriptions/x/routeTables/rt";
        let k = table_key(azure);
        assert!(k.starts_with("x-") && !k.contains('/'), "{k}");
        assert_ne!(table_key("a b"), table_key("a_b"));
        assert_eq!(table_key(".."), "t-..", "a valid segment once prefixed");
    }
}
