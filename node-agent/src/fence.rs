//! Self-fencing, like SBD's watchdog: an agent that may have lost its ZooKeeper session stops
//! its failover-enabled services itself, before the transition master can start them elsewhere.
//!
//! With a negotiated session timeout `T` and `--fence-fraction f` (default 0.5):
//! - the session suspended (connection lost) for `f × T` → fence;
//! - the session expired → fence (the master may already have moved the services);
//! - the agent's own clock ticks stalled for `f × T` (the process was paused or starved, so its
//!   session may have expired unseen) → fence at once, on resume.
//!
//! ZooKeeper expires the session no earlier than `T` after the last heartbeat, and the master
//! acts only then, so a partitioned agent stops its copies about `(1 − f) × T` before another
//! node starts them. A paused agent cannot act while paused: it stops its copies within one
//! tick (100 ms) plus the stop time of resuming.
//!
//! Unfencing: if the same session comes back, at once (the master saw nothing). After a new
//! session, only after it has been connected for `T` (quarantine), so the master has certainly
//! processed the old session's death; the desired states then say whether the services stay
//! here.

use std::time::{Duration, Instant};

use datom_common::Coord;
use datom_common::coord::SessionState;

use crate::supervisor::Supervisor;

/// Runs the fence monitor until the process exits.
pub async fn monitor(coord: Coord, supervisor: Supervisor, fraction: f64) {
    let mut status = coord.watch_status();
    let mut session = coord.status().session_id;
    let mut suspended_since: Option<Instant> = None;
    let mut fenced_session: Option<i64> = None;
    let mut connected_since = Instant::now();
    let tick = Duration::from_millis(100);
    let mut last_tick = Instant::now();
    loop {
        let timeout = coord.negotiated_timeout();
        let fence_after = timeout.mul_f64(fraction.clamp(0.05, 0.95));
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            r = status.changed() => if r.is_err() { return },
        }
        let now = Instant::now();
        let gap = now.duration_since(last_tick);
        last_tick = now;
        let s = *status.borrow_and_update();
        let mut reason: Option<String> = None;
        if gap > fence_after + tick {
            reason = Some(format!("the agent did not run for {} ms (paused or starved)", gap.as_millis()));
        }
        match s.state {
            SessionState::Suspended => {
                let since = *suspended_since.get_or_insert(now);
                if now.duration_since(since) >= fence_after {
                    reason.get_or_insert_with(|| {
                        format!("ZooKeeper connection suspended for {} ms", now.duration_since(since).as_millis())
                    });
                }
            }
            SessionState::Expired => {
                reason.get_or_insert_with(|| "ZooKeeper session expired".into());
            }
            SessionState::Connected => {
                suspended_since = None;
                if s.session_id != session {
                    session = s.session_id;
                    connected_since = now;
                    reason.get_or_insert_with(|| "a new session replaced an expired one".into());
                }
            }
            SessionState::Closed => return,
        }
        if let Some(reason) = reason {
            if !supervisor.fenced() {
                tracing::warn!(%reason, "self-fencing: stopping failover-enabled services");
                supervisor.set_fenced(true);
                fenced_session = Some(session);
            }
            continue;
        }
        if !supervisor.fenced() || s.state != SessionState::Connected {
            continue;
        }
        if fenced_session == Some(s.session_id) {
            // The same session survived: trust it once a request succeeds on it.
            let ok = coord.exists(datom_common::paths::ROOT).await.is_ok();
            if ok && coord.status().session_id == s.session_id && coord.status().state == SessionState::Connected {
                tracing::info!("self-fencing lifted: the same session survived, nothing was failed over");
                supervisor.set_fenced(false);
            }
        } else if connected_since.elapsed() >= timeout {
            tracing::info!("self-fencing lifted: the new session outlived the quarantine");
            supervisor.set_fenced(false);
        }
    }
}
