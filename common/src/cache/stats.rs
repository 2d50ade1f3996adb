//! The connection cache's counters, and the serialisable snapshot ([`CacheStats`]) that the
//! process's API (and later `/metrics`) exports.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Live counters, shared by the cache's tasks.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub coalesced: AtomicU64,
    pub unavailable: AtomicU64,
    pub dials: AtomicU64,
    pub dial_failures: AtomicU64,
    pub redials: AtomicU64,
    pub evictions: AtomicU64,
    pub resyncs: AtomicU64,
    pub events: AtomicU64,
    pub bad_records: AtomicU64,
}

impl Counters {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// A snapshot of the cache's counters ([`super::ConnectionCache::stats`]). Counters only grow;
/// `peers` and `connections` are current sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStats {
    /// `get_connection` calls answered at once from a connected entry.
    pub hits: u64,
    /// `get_connection` calls that found no entry and started a dial.
    pub misses: u64,
    /// `get_connection` calls that joined a dial already in flight (single flight).
    pub coalesced: u64,
    /// `get_connection` calls that ended in [`super::CacheError::PeerUnavailable`].
    pub unavailable: u64,
    /// Dial attempts (first dials and redials).
    pub dials: u64,
    /// Dial attempts that failed.
    pub dial_failures: u64,
    /// Dial attempts after a connection broke or a dial failed.
    pub redials: u64,
    /// Connections dropped because their peer went away or moved.
    pub evictions: u64,
    /// Full re-lists of the registry (the first listing, and one after every reconnect or
    /// session expiry).
    pub resyncs: u64,
    /// Peer events (Up, Changed, Down) emitted.
    pub events: u64,
    /// Registration znodes ignored because their record was unusable (not JSON, no address).
    pub bad_records: u64,
    /// Peers currently registered.
    pub peers: u64,
    /// Connection entries currently held (connected, dialing or backing off).
    pub connections: u64,
}

impl Counters {
    pub fn snapshot(&self, peers: usize, connections: usize) -> CacheStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CacheStats {
            hits: g(&self.hits),
            misses: g(&self.misses),
            coalesced: g(&self.coalesced),
            unavailable: g(&self.unavailable),
            dials: g(&self.dials),
            dial_failures: g(&self.dial_failures),
            redials: g(&self.redials),
            evictions: g(&self.evictions),
            resyncs: g(&self.resyncs),
            events: g(&self.events),
            bad_records: g(&self.bad_records),
            peers: peers as u64,
            connections: connections as u64,
        }
    }
}
