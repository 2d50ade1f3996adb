//! Active/standby: which config service instance may write, and the fencing that keeps a
//! deposed one from writing.
//!
//! An instance is active while it holds the lock under `/datom/configservice/lock` *and* its
//! session is connected. The moment the connection is suspended it stops accepting mutations
//! (before the session can expire and a standby take over), and every write it makes carries a
//! multi-op check on its lock node, so even a write already in flight when the lock was lost
//! cannot commit: two actives never both write.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use datom_common::coord::lock::LockGuard;
use datom_common::coord::{CoordError, Mode, Op, SessionState, encode};
use datom_common::records::{ConfigServiceInstance, SCHEMA};
use datom_common::rpc::ConfigError;
use datom_common::{Coord, paths};
use tokio::sync::{Mutex, watch};

/// This instance's role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Not holding the lock.
    Standby,
    /// Holding the lock, but the session is suspended: no mutations.
    Suspended,
    /// Holding the lock on a connected session.
    Active,
}

/// Why a fenced write did not happen.
#[derive(Debug)]
pub enum Fenced {
    /// This instance is not (or no longer) active; nothing was written.
    NotActive(ConfigError),
    /// ZooKeeper refused the write; nothing was written.
    Coord(CoordError),
}

impl From<Fenced> for ConfigError {
    fn from(f: Fenced) -> Self {
        match f {
            Fenced::NotActive(e) => e,
            Fenced::Coord(e) => e.into(),
        }
    }
}

/// Shared view of this instance's activity.
#[derive(Clone)]
pub struct Leadership {
    coord: Coord,
    id: String,
    address: String,
    role: watch::Sender<Role>,
    lock: Arc<Mutex<Option<LockGuard>>>,
    http: Option<String>,
}

impl Leadership {
    /// A standby instance with id `id` advertising `address`.
    pub fn new(coord: Coord, id: String, address: String) -> Leadership {
        Leadership {
            coord,
            id,
            address,
            role: watch::channel(Role::Standby).0,
            lock: Arc::new(Mutex::new(None)),
            http: None,
        }
    }

    /// Sets the dashboard address published in the instance record and the lock node.
    pub fn with_http(mut self, http: Option<String>) -> Leadership {
        self.http = http;
        self
    }

    /// This instance's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    /// Watch the role.
    pub fn watch_role(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }

    /// The active instance's address, read from ZooKeeper.
    pub async fn active_address(&self) -> Option<String> {
        self.coord
            .get::<ConfigServiceInstance>(paths::CONFIG_SERVICE_INSTANCE)
            .await
            .ok()
            .flatten()
            .map(|v| v.value.address)
    }

    /// The error a non-active instance answers with.
    pub async fn not_active(&self) -> ConfigError {
        let active = self.active_address().await.filter(|a| *a != self.address);
        ConfigError::NotActive { active }
    }

    /// Runs `ops` atomically only if this instance is active and still holds its lock.
    pub async fn fenced_multi(&self, mut ops: Vec<Op>) -> Result<(), Fenced> {
        if self.role() != Role::Active {
            return Err(Fenced::NotActive(self.not_active().await));
        }
        let check = {
            let guard = self.lock.lock().await;
            match guard.as_ref() {
                Some(g) => g.check_op(),
                None => return Err(Fenced::NotActive(self.not_active().await)),
            }
        };
        let lock_path = match &check {
            Op::Check { path, .. } => path.clone(),
            _ => unreachable!("check_op returns a check"),
        };
        ops.insert(0, check);
        match self.coord.multi(&ops).await {
            Ok(()) => Ok(()),
            Err(CoordError::NoNode { path } | CoordError::Conflict { path, .. }) if path == lock_path => {
                tracing::warn!("write refused: this instance no longer holds the config service lock");
                Err(Fenced::NotActive(self.not_active().await))
            }
            Err(CoordError::SessionExpired { .. }) => Err(Fenced::NotActive(self.not_active().await)),
            Err(e) => Err(Fenced::Coord(e)),
        }
    }

    /// Contends for activity until `stop` turns true; then releases it.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut status = self.coord.watch_status();
        'contend: loop {
            if *stop.borrow() {
                break;
            }
            let data =
                serde_json::to_vec(&serde_json::json!({ "id": self.id, "address": self.address, "http": self.http }))
                    .expect("json");
            let acquired = tokio::select! {
                r = self.coord.lock(paths::CONFIG_SERVICE_LOCK, "lock-", &data) => r,
                _ = stop.wait_for(|s| *s) => break,
            };
            let guard = match acquired {
                Ok(g) => g,
                Err(e) => {
                    tracing::warn!(error = %e, "contending for the config service lock failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        _ = stop.wait_for(|s| *s) => break,
                    }
                    continue;
                }
            };
            let session = guard.session_id();
            tracing::info!(lock = guard.path(), "acquired the config service lock");
            *self.lock.lock().await = Some(guard);
            if let Err(e) = self.publish_instance().await {
                tracing::warn!(error = %e, "could not publish the instance record; releasing the lock");
                self.release().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            self.role.send_replace(Role::Active);
            tracing::info!(id = %self.id, address = %self.address, "this config service instance is ACTIVE");
            loop {
                let s = *status.borrow_and_update();
                if s.session_id != session || s.state == SessionState::Expired || s.state == SessionState::Closed {
                    tracing::warn!("session lost: no longer active");
                    self.role.send_replace(Role::Standby);
                    *self.lock.lock().await = None;
                    continue 'contend;
                }
                let previous = match s.state {
                    SessionState::Suspended => self.role.send_replace(Role::Suspended),
                    SessionState::Connected => self.role.send_replace(Role::Active),
                    _ => self.role(),
                };
                match (previous, self.role()) {
                    (Role::Active, Role::Suspended) => {
                        tracing::warn!("ZooKeeper connection suspended: refusing mutations until it is back")
                    }
                    (Role::Suspended, Role::Active) => {
                        tracing::info!("connection back on the same session: active again")
                    }
                    _ => {}
                }
                tokio::select! {
                    r = status.changed() => if r.is_err() { break 'contend; },
                    _ = stop.wait_for(|s| *s) => break 'contend,
                }
            }
        }
        self.release().await;
    }

    /// Creates `/datom/configservice/instance`, fenced by the lock; waits out a previous
    /// holder's record (its session is ending).
    async fn publish_instance(&self) -> Result<(), ConfigError> {
        let record = ConfigServiceInstance {
            schema: SCHEMA,
            id: self.id.clone(),
            address: self.address.clone(),
            http: self.http.clone(),
            pid: std::process::id(),
            started_at: Utc::now(),
        };
        let data = encode(paths::CONFIG_SERVICE_INSTANCE, &record)?;
        let deadline = tokio::time::Instant::now() + self.coord.negotiated_timeout() * 3;
        loop {
            let check = match self.lock.lock().await.as_ref() {
                Some(g) => g.check_op(),
                None => return Err(ConfigError::NotActive { active: None }),
            };
            let ops = vec![
                check,
                Op::Create { path: paths::CONFIG_SERVICE_INSTANCE.into(), data: data.clone(), mode: Mode::Ephemeral },
            ];
            match self.coord.multi(&ops).await {
                Ok(()) => return Ok(()),
                Err(CoordError::NodeExists { .. }) if tokio::time::Instant::now() < deadline => {
                    let owner = self.coord.exists(paths::CONFIG_SERVICE_INSTANCE).await?.map(|s| s.ephemeral_owner);
                    let mine = self.lock.lock().await.as_ref().map(|g| g.session_id());
                    if owner.is_some() && owner == mine {
                        return Ok(());
                    }
                    tracing::info!("waiting for the previous active instance's record to expire");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Gives up activity: deletes the instance record (if ours) and the lock.
    async fn release(&self) {
        self.role.send_replace(Role::Standby);
        let guard = self.lock.lock().await.take();
        if let Some(g) = guard {
            if let Ok(Some(stat)) = self.coord.exists(paths::CONFIG_SERVICE_INSTANCE).await
                && stat.ephemeral_owner == g.session_id()
            {
                let _ = self.coord.delete(paths::CONFIG_SERVICE_INSTANCE, None).await;
            }
            let _ = self.coord.delete(g.path(), None).await;
            drop(g);
        }
    }
}
