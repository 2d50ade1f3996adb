//! One cached connection: its shared state (what callers wait on) and the task that owns it —
//! dials, runs the connection's driver, and redials with backoff when the connection breaks.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::dial::{Dial, Dialed};
use super::peer::Peer;
use super::stats::Counters;
use super::{Inner, Unavailable};

/// Where a connection stands.
pub(crate) enum ConnState<C> {
    /// A dial is in flight; callers wait for it (single flight).
    Dialing,
    /// Connected; callers get a clone of the client at once.
    Ready(C),
    /// The last dial failed, or the connection broke and the redial failed; the task retries
    /// after a backoff. Callers fail fast with this reason.
    Failed(Unavailable),
    /// Evicted: the peer went away or moved, or the cache was closed. Terminal.
    Closed(Unavailable),
}

/// The state of one connection (one peer, one client type), shared by its task and callers.
pub(crate) struct Slot<C> {
    pub peer: Peer,
    pub address: String,
    pub state: watch::Sender<ConnState<C>>,
}

/// The type-erased parts of a [`Slot`] the cache needs without knowing the client type.
pub(crate) trait ErasedSlot: Send + Sync {
    fn address(&self) -> &str;
    fn close(&self, why: Unavailable);
    /// Whether the connection is waiting out a redial backoff after a failure.
    fn is_failed(&self) -> bool;
}

impl<C: Dial> ErasedSlot for Slot<C> {
    fn address(&self) -> &str {
        &self.address
    }
    fn close(&self, why: Unavailable) {
        self.state.send_replace(ConnState::Closed(why));
    }
    fn is_failed(&self) -> bool {
        matches!(*self.state.borrow(), ConnState::Failed(_))
    }
}

/// A connection held in the cache's map.
pub(crate) struct Entry {
    pub slot: Arc<dyn ErasedSlot>,
    pub any: Arc<dyn Any + Send + Sync>,
    pub task: AbortHandle,
    /// For a connection made from a ZooKeeper read-through (the registry did not have the
    /// peer yet): how many registry listings had started when that read was sent.
    pub read_through: Option<u64>,
}

impl Entry {
    /// Marks the connection closed (waking waiters) and stops its task, which drops the
    /// connection's driver: every clone of the client then fails fast.
    pub fn close(&self, why: Unavailable) {
        self.slot.close(why);
        self.task.abort();
    }

    /// Whether this entry holds `slot`.
    pub fn holds<C: Dial>(&self, slot: &Arc<Slot<C>>) -> bool {
        std::ptr::addr_eq(Arc::as_ptr(&self.any), Arc::as_ptr(slot))
    }
}

/// A connection that lived at least this long resets the backoff when it breaks.
const STABLE: Duration = Duration::from_secs(1);

/// The connection's task: dial, serve until the connection breaks, redial with backoff, for as
/// long as the peer stays registered at this address. Aborted on eviction.
pub(crate) async fn run<C: Dial>(inner: Arc<Inner>, slot: Arc<Slot<C>>) {
    let cfg = &inner.config;
    let new_backoff = || {
        backon::ExponentialBuilder::new()
            .with_min_delay(cfg.min_backoff)
            .with_max_delay(cfg.max_backoff)
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut backoff = new_backoff();
    let mut first = true;
    loop {
        if !first {
            Counters::inc(&inner.counters.redials);
            crate::metrics::global().cache.redials.inc();
            slot.state.send_replace(ConnState::Dialing);
        }
        first = false;
        Counters::inc(&inner.counters.dials);
        crate::metrics::global().cache.dials.inc();
        let mut wait = true;
        match C::dial(slot.address.clone(), cfg.dial_timeout).await {
            Ok(Dialed { client, dispatch }) => {
                tracing::debug!(peer = %slot.peer, address = slot.address, "connected");
                slot.state.send_replace(ConnState::Ready(client));
                let since = Instant::now();
                let why = match dispatch.await {
                    Ok(()) => "closed by the peer".to_string(),
                    Err(e) => e,
                };
                tracing::info!(peer = %slot.peer, address = slot.address, why, "connection broke; redialing");
                slot.state
                    .send_replace(ConnState::Failed(Unavailable::Broken { address: slot.address.clone(), error: why }));
                if since.elapsed() >= STABLE {
                    // A connection that worked for a while gets one immediate redial.
                    backoff = new_backoff();
                    wait = false;
                }
            }
            Err(e) => {
                Counters::inc(&inner.counters.dial_failures);
                tracing::debug!(peer = %slot.peer, address = slot.address, error = %e, "dial failed");
                let why = if e.kind() == std::io::ErrorKind::TimedOut {
                    Unavailable::DialTimeout { address: slot.address.clone(), timeout_ms: cfg.dial_timeout.as_millis() }
                } else {
                    Unavailable::DialFailed { address: slot.address.clone(), error: e.to_string() }
                };
                slot.state.send_replace(ConnState::Failed(why));
            }
        }
        if !inner.still_wanted(&slot) {
            return;
        }
        if wait {
            tokio::time::sleep(backoff.next().unwrap_or(cfg.max_backoff)).await;
        }
    }
}
