//! [`Dial`]: how the connection cache opens a connection of a given tarpc client type, and the
//! implementations for datom's clients.
//!
//! The cache keeps the client's dispatch future (tarpc's connection driver) on a task it owns
//! instead of letting tarpc spawn it, so it can tell when the connection breaks (the future
//! ends) and can cut a connection off at once when the peer goes away (the task is aborted;
//! every clone of the client then fails fast with `RpcError::Shutdown`).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::rpc::{ConfigServiceClient, NodeAgentClient};

/// A connection's driver: resolves when the connection ends, with the reason if it broke.
pub type Dispatch = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'static>>;

/// A freshly dialed client together with the driver that keeps its connection running.
pub struct Dialed<C> {
    /// The client handed to callers (cheap to clone).
    pub client: C,
    /// The connection's driver; the cache runs it on the connection's own task.
    pub dispatch: Dispatch,
}

/// A client type the [`super::ConnectionCache`] can hand out.
///
/// Implemented for [`NodeAgentClient`] and [`ConfigServiceClient`]; implement it for another
/// tarpc client (e.g. a replication client) with [`impl_dial!`](crate::impl_dial):
/// `datom_common::impl_dial!(MyServiceClient);`.
pub trait Dial: Clone + Send + Sync + 'static {
    /// Opens a connection to `addr` within `timeout`.
    fn dial(addr: String, timeout: Duration) -> impl Future<Output = std::io::Result<Dialed<Self>>> + Send;
}

/// Implements [`Dial`] for a tarpc-generated client type (`FooClient` from
/// `#[tarpc::service] trait Foo`), over datom's TCP + JSON transport ([`crate::rpc::dial`]).
#[macro_export]
macro_rules! impl_dial {
    ($client:ty) => {
        impl $crate::cache::Dial for $client {
            async fn dial(
                addr: String,
                timeout: ::std::time::Duration,
            ) -> ::std::io::Result<$crate::cache::Dialed<Self>> {
                let transport = $crate::rpc::dial(&addr, timeout).await?;
                let new = <$client>::new(::std::default::Default::default(), transport);
                let dispatch = new.dispatch;
                Ok($crate::cache::Dialed {
                    client: new.client,
                    dispatch: ::std::boxed::Box::pin(async move { dispatch.await.map_err(|e| e.to_string()) }),
                })
            }
        }
    };
}

crate::impl_dial!(NodeAgentClient);
crate::impl_dial!(ConfigServiceClient);
