//! tarpc over TCP with Nagle's algorithm off. Replication and client requests are small
//! messages answered at once; with Nagle on, a request written while the previous segment is
//! unacknowledged waits for the peer's delayed ACK, which shows up as multi-millisecond tails.
//! `serve_tcp_nodelay!` and [`dial_nodelay`] are the nodelay counterparts of the common
//! `serve_tcp!` and `rpc::dial`.

use std::time::Duration;

use std::marker::PhantomData;
use std::pin::Pin;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tarpc::tokio_util::bytes::{Bytes, BytesMut};
use tarpc::tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio::net::TcpStream;

/// JSON frames, parsed from the frame's bytes in one pass (tokio-serde's `Json` parses through
/// an `io::Read` adapter, byte by byte, which dominated the CPU profile of the volume
/// benchmark). Same wire format.
pub struct Json<Item, SinkItem>(PhantomData<fn(SinkItem) -> Item>);

impl<Item, SinkItem> Default for Json<Item, SinkItem> {
    fn default() -> Self {
        Json(PhantomData)
    }
}

impl<Item: DeserializeOwned, SinkItem> tarpc::tokio_serde::Deserializer<Item> for Json<Item, SinkItem> {
    type Error = std::io::Error;
    fn deserialize(self: Pin<&mut Self>, src: &BytesMut) -> Result<Item, Self::Error> {
        serde_json::from_slice(src).map_err(std::io::Error::other)
    }
}

impl<Item, SinkItem: Serialize> tarpc::tokio_serde::Serializer<SinkItem> for Json<Item, SinkItem> {
    type Error = std::io::Error;
    fn serialize(self: Pin<&mut Self>, item: &SinkItem) -> Result<Bytes, Self::Error> {
        serde_json::to_vec(item).map(Bytes::from).map_err(std::io::Error::other)
    }
}

/// A JSON-framed tarpc transport over TCP.
pub type JsonTransport<Item, SinkItem> =
    tarpc::serde_transport::Transport<TcpStream, Item, SinkItem, Json<Item, SinkItem>>;

fn framed(stream: TcpStream) -> Framed<TcpStream, LengthDelimitedCodec> {
    let _ = stream.set_nodelay(true);
    let codec =
        LengthDelimitedCodec::builder().max_frame_length(datom_common::coord::MAX_RECORD_BYTES * 64).new_codec();
    Framed::new(stream, codec)
}

/// Wraps an accepted connection (nodelay) in a transport.
pub fn server_transport<Item, SinkItem>(stream: TcpStream) -> JsonTransport<Item, SinkItem>
where
    Item: DeserializeOwned,
    SinkItem: Serialize,
{
    tarpc::serde_transport::new(framed(stream), Json::default())
}

/// Dials `addr` within `timeout` and returns a client transport with nodelay set.
pub async fn dial_nodelay<Req, Resp>(
    addr: &str,
    timeout: Duration,
) -> std::io::Result<JsonTransport<tarpc::Response<Resp>, tarpc::ClientMessage<Req>>>
where
    Req: Serialize,
    Resp: DeserializeOwned,
{
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => Ok(tarpc::serde_transport::new(framed(stream), Json::default())),
        Ok(Err(e)) => Err(e),
        Err(_) => {
            Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("dial {addr}: timed out after {timeout:?}")))
        }
    }
}

#[doc(hidden)]
pub mod __reexport {
    pub use futures::StreamExt;
    pub use tarpc::server::{BaseChannel, Channel};
}

/// Serves a tarpc service on a `tokio::net::TcpListener` (nodelay on every connection) until
/// `shutdown` resolves. `serve_tcp_nodelay!(listener, MyServer { .. }.serve(), shutdown)`.
#[macro_export]
macro_rules! serve_tcp_nodelay {
    ($listener:expr, $service:expr, $shutdown:expr) => {{
        use $crate::net::__reexport::{BaseChannel, Channel as _, StreamExt as _};
        let service = $service;
        let listener: ::tokio::net::TcpListener = $listener;
        let shutdown = $shutdown;
        let accept = async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((s, _)) => s,
                    Err(e) => {
                        ::tracing::warn!(error = %e, "accept failed");
                        ::tokio::time::sleep(::std::time::Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let transport = $crate::net::server_transport(stream);
                let service = service.clone();
                ::tokio::spawn(BaseChannel::with_defaults(transport).execute(service).for_each(|fut| async {
                    ::tokio::spawn(fut);
                }));
            }
        };
        ::tokio::select! {
            _ = accept => {}
            _ = shutdown => {}
        }
    }};
}
