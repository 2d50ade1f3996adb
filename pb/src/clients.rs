//! "Get a client for member X": the small interface the protocol needs from a connection cache,
//! and a simple implementation (dial the member's registered address, cache the connection,
//! redial after a failure). The process-wide connection cache can replace it later by
//! implementing [`PeerClients`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;

use crate::rpc::PbPeerClient;

/// Hands out connected replication clients by member name.
pub trait PeerClients: Send + Sync + 'static {
    /// Records (or forgets, with `None`) a member's registered address.
    fn set_address(&self, member: &str, address: Option<String>);
    /// A connected client for `member`, dialing if needed.
    fn client(&self, member: &str) -> BoxFuture<'static, Result<PbPeerClient, String>>;
    /// Drops a cached connection that failed, so the next call redials.
    fn invalidate(&self, member: &str);
}

#[derive(Default)]
struct Entry {
    address: Option<String>,
    client: Option<PbPeerClient>,
}

/// [`PeerClients`] that dials registered addresses and caches one connection per member.
#[derive(Clone)]
pub struct DialCache {
    entries: Arc<Mutex<HashMap<String, Entry>>>,
    dial_timeout: Duration,
}

impl DialCache {
    /// A cache whose dials give up after `dial_timeout`.
    pub fn new(dial_timeout: Duration) -> Self {
        DialCache { entries: Arc::new(Mutex::new(HashMap::new())), dial_timeout }
    }
}

impl PeerClients for DialCache {
    fn set_address(&self, member: &str, address: Option<String>) {
        let mut entries = self.entries.lock().unwrap();
        let e = entries.entry(member.to_string()).or_default();
        if e.address != address {
            e.address = address;
            e.client = None;
        }
    }

    fn client(&self, member: &str) -> BoxFuture<'static, Result<PbPeerClient, String>> {
        let entries = self.entries.clone();
        let member = member.to_string();
        let timeout = self.dial_timeout;
        Box::pin(async move {
            let address = {
                let map = entries.lock().unwrap();
                match map.get(&member) {
                    Some(Entry { client: Some(c), .. }) => return Ok(c.clone()),
                    Some(Entry { address: Some(a), .. }) => a.clone(),
                    _ => return Err(format!("member {member} has no registered address")),
                }
            };
            let transport = crate::net::dial_nodelay(&address, timeout)
                .await
                .map_err(|e| format!("cannot reach member {member} at {address}: {e}"))?;
            let mut config = tarpc::client::Config::default();
            config.max_in_flight_requests = 100_000;
            let client = PbPeerClient::new(config, transport).spawn();
            let mut map = entries.lock().unwrap();
            let e = map.entry(member).or_default();
            if e.address.as_deref() == Some(address.as_str()) {
                e.client = Some(client.clone());
            }
            Ok(client)
        })
    }

    fn invalidate(&self, member: &str) {
        if let Some(e) = self.entries.lock().unwrap().get_mut(member) {
            e.client = None;
        }
    }
}
