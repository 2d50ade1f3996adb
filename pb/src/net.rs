//! tarpc over TCP with Nagle's algorithm off. Replication and client requests are small
//! messages answered at once; with Nagle on, a request written while the previous segment is
//! unacknowledged waits for the peer's delayed ACK, which shows up as multi-millisecond tails.
//! `serve_tcp_nodelay!` and [`dial_nodelay`] are the nodelay counterparts of the common
//! `serve_tcp!` and `rpc::dial`.
//!
//! It also owns the replication connection handshake ([`dial_peer`], [`accept_peer`]): before
//! any tarpc frame, the dialer sends one [`Hello`] frame carrying the cluster token and waits
//! for the acceptor's one-frame [`HelloAnswer`]; the acceptor checks the token (on a secure
//! cluster) and only then hands the connection to tarpc. Same length-delimited framing as the
//! tarpc frames that follow, on the same `Framed`.

use std::time::Duration;

use std::marker::PhantomData;
use std::pin::Pin;

use datom_common::auth::TokenVerifier;
use futures::{SinkExt as _, StreamExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tarpc::tokio_util::bytes::{Bytes, BytesMut};
use tarpc::tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
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

/// Largest tarpc frame on a replication or client connection.
const MAX_FRAME_BYTES: usize = datom_common::coord::MAX_RECORD_BYTES * 64;

fn framed(stream: TcpStream) -> Framed<TcpStream, LengthDelimitedCodec> {
    let _ = stream.set_nodelay(true);
    frames(stream, MAX_FRAME_BYTES)
}

fn frames<S: AsyncRead + AsyncWrite>(io: S, max_frame: usize) -> Frames<S> {
    Framed::new(io, LengthDelimitedCodec::builder().max_frame_length(max_frame).new_codec())
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

/// A length-delimited frame stream (the framing under every tarpc transport here).
pub type Frames<S> = Framed<S, LengthDelimitedCodec>;

/// Version of the replication handshake. Every member is assumed to run the same datom
/// version; a hello of another schema is refused with a message saying so.
pub const HELLO_SCHEMA: u32 = 1;

/// How long an acceptor waits for a dialer's [`Hello`] before dropping the connection.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest hello or answer frame. Small, so an unauthenticated connection cannot make the
/// acceptor buffer a large frame; raised to the tarpc limit once the handshake succeeded.
const MAX_HELLO_BYTES: usize = 4096;

/// After a refusal, how long (and how many bytes) the acceptor keeps reading and discarding
/// before it closes, so the refusal reaches a dialer that already sent more (closing a socket
/// with unread data sends a reset, which can destroy the answer in flight).
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 64 * 1024;

/// The first frame a dialer sends on a replication connection (JSON).
#[derive(Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Hello {
    /// [`HELLO_SCHEMA`].
    pub schema: u32,
    /// The cluster token (`datom_common::auth::AuthFile::token`), `None` on an open cluster.
    pub token: Option<String>,
}

impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token (it would end up in logs).
        f.debug_struct("Hello")
            .field("schema", &self.schema)
            .field("token", &self.token.as_ref().map(|_| ".."))
            .finish()
    }
}

/// The acceptor's answer to a [`Hello`] (JSON): `ok`, or the reason it refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct HelloAnswer {
    /// [`HELLO_SCHEMA`].
    pub schema: u32,
    /// Whether the connection is accepted.
    pub ok: bool,
    /// Why not, and how to fix it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Why an acceptor did not take a connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No hello within the timeout, or the connection closed first: dropped without an answer.
    #[error("no replication hello ({0}); connection dropped")]
    Silent(String),
    /// The first frame is not a hello this member understands: answered, then closed.
    #[error("{0}")]
    Garbage(String),
    /// The hello carries a wrong token, or none on a secure cluster: answered, then closed.
    #[error("{0}")]
    Token(String),
}

/// The refusal for a missing or wrong token; `presented` says whether the hello had one.
fn token_refusal(presented: bool) -> String {
    let why = if presented {
        "the dialing member presented a token not derived from this cluster's secret"
    } else {
        "the dialing member presented no token; was it started without --auth-file?"
    };
    format!(
        "replication connection refused: wrong or missing cluster token ({why}); start every member with the same \
         --auth-file"
    )
}

/// Dialer side of the handshake on `frames`: sends the [`Hello`] with `token` and waits for the
/// answer (the caller bounds the wait). A refusal is a `PermissionDenied` error carrying the
/// acceptor's reason.
pub async fn hello<S>(frames: &mut Frames<S>, token: Option<&str>) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let hello = Hello { schema: HELLO_SCHEMA, token: token.map(str::to_string) };
    frames.send(Bytes::from(serde_json::to_vec(&hello).map_err(std::io::Error::other)?)).await?;
    let frame = match frames.next().await {
        Some(frame) => frame?,
        None => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the peer closed the connection without answering the replication handshake (is it a datom \
                 replication port, of the same datom version?)",
            ));
        }
    };
    let answer: HelloAnswer = serde_json::from_slice(&frame).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "the peer's answer to the replication handshake is not valid ({e}); is it a datom replication port?"
            ),
        )
    })?;
    if answer.ok {
        Ok(())
    } else {
        let reason = answer.error.unwrap_or_else(|| "replication connection refused".to_string());
        Err(std::io::Error::new(std::io::ErrorKind::PermissionDenied, reason))
    }
}

/// Acceptor side of the handshake on `frames`: reads the [`Hello`] within `timeout` and checks
/// it with `verifier` (`None`: an open cluster, any hello is accepted, with or without a
/// token). Answers `ok` or the refusal, except to a silent connection.
pub async fn accept_hello<S>(
    frames: &mut Frames<S>,
    verifier: Option<&TokenVerifier>,
    timeout: Duration,
) -> Result<(), Refused>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = match tokio::time::timeout(timeout, frames.next()).await {
        Err(_) => return Err(Refused::Silent(format!("nothing within {timeout:?}"))),
        Ok(None) => return Err(Refused::Silent("closed by the dialer".into())),
        Ok(Some(Err(e))) if e.kind() == std::io::ErrorKind::InvalidData => {
            // The codec's "frame size too big": not a hello.
            Err(Refused::Garbage(format!("not a datom replication hello ({e})")))
        }
        Ok(Some(Err(e))) => return Err(Refused::Silent(e.to_string())),
        Ok(Some(Ok(frame))) => match serde_json::from_slice::<Hello>(&frame) {
            Err(e) => Err(Refused::Garbage(format!("not a datom replication hello ({e})"))),
            Ok(h) if h.schema != HELLO_SCHEMA => Err(Refused::Garbage(format!(
                "replication hello schema {} is not supported (this member speaks {HELLO_SCHEMA}); run the same \
                 datom version on every member",
                h.schema
            ))),
            Ok(h) => match verifier {
                None => Ok(()),
                Some(v) => v.verify(h.token.as_deref()).map_err(|_| Refused::Token(token_refusal(h.token.is_some()))),
            },
        },
    };
    let answer = match &frame {
        Ok(()) => HelloAnswer { schema: HELLO_SCHEMA, ok: true, error: None },
        Err(e) => HelloAnswer { schema: HELLO_SCHEMA, ok: false, error: Some(e.to_string()) },
    };
    let bytes = serde_json::to_vec(&answer).map(Bytes::from).map_err(|e| Refused::Garbage(e.to_string()))?;
    match tokio::time::timeout(timeout, frames.send(bytes)).await {
        Ok(Ok(())) => frame,
        Ok(Err(e)) => Err(frame.err().unwrap_or(Refused::Silent(format!("cannot answer the hello: {e}")))),
        Err(_) => Err(frame.err().unwrap_or(Refused::Silent("cannot answer the hello in time".into()))),
    }
}

/// Accepts a replication connection: Nagle off, the handshake ([`accept_hello`] with
/// [`HELLO_TIMEOUT`]), then the frames for tarpc. A refused or silent connection is logged
/// and closed, and `None` returned. Run it on the connection's own task: it waits for the
/// dialer.
pub async fn accept_peer(stream: TcpStream, verifier: Option<&TokenVerifier>) -> Option<Frames<TcpStream>> {
    let _ = stream.set_nodelay(true);
    let from = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
    let mut io = frames(stream, MAX_HELLO_BYTES);
    match accept_hello(&mut io, verifier, HELLO_TIMEOUT).await {
        Ok(()) => {
            io.codec_mut().set_max_frame_length(MAX_FRAME_BYTES);
            Some(io)
        }
        Err(e @ Refused::Silent(_)) => {
            tracing::debug!(from, error = %e, "dropped a replication connection");
            None
        }
        Err(e) => {
            tracing::warn!(from, error = %e, "refused a replication connection");
            linger_close(io).await;
            None
        }
    }
}

/// Closes after a refusal: our side first (the answer is already sent), then reads and
/// discards what the dialer still sends, for a bounded time and size, so the kernel does not
/// answer unread data with a reset that could destroy the refusal in flight.
async fn linger_close<S: AsyncRead + AsyncWrite + Unpin>(io: Frames<S>) {
    let mut io = io.into_inner();
    if io.shutdown().await.is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    let mut left = LINGER_BYTES;
    let _ = tokio::time::timeout(LINGER, async {
        while left > 0 {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// Dials a replication peer at `addr`: connects (Nagle off), sends the [`Hello`] with `token`
/// and waits for the answer, all within `timeout`; returns the client transport. A refusal
/// is a `PermissionDenied` error with the acceptor's reason.
pub async fn dial_peer<Req, Resp>(
    addr: &str,
    timeout: Duration,
    token: Option<&str>,
) -> std::io::Result<JsonTransport<tarpc::Response<Resp>, tarpc::ClientMessage<Req>>>
where
    Req: Serialize,
    Resp: DeserializeOwned,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let stream = match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
        Ok(s) => s?,
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("dial {addr}: timed out after {timeout:?}"),
            ));
        }
    };
    let _ = stream.set_nodelay(true);
    let mut io = frames(stream, MAX_HELLO_BYTES);
    match tokio::time::timeout_at(deadline, hello(&mut io, token)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(std::io::Error::new(e.kind(), format!("{addr}: {e}"))),
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("dial {addr}: no answer to the replication handshake within {timeout:?}"),
            ));
        }
    }
    io.codec_mut().set_max_frame_length(MAX_FRAME_BYTES);
    Ok(tarpc::serde_transport::new(io, Json::default()))
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

#[cfg(test)]
mod tests {
    use datom_common::auth::AuthFile;

    use super::*;

    const T: Duration = Duration::from_secs(10);

    /// Runs the handshake over an in-memory pipe: (dialer's result, acceptor's result).
    async fn handshake(
        token: Option<&str>,
        verifier: Option<&TokenVerifier>,
    ) -> (std::io::Result<()>, Result<(), Refused>) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let mut dialer = frames(a, MAX_HELLO_BYTES);
        let mut acceptor = frames(b, MAX_HELLO_BYTES);
        let (d, a) = tokio::join!(hello(&mut dialer, token), accept_hello(&mut acceptor, verifier, T));
        (d, a)
    }

    #[tokio::test]
    async fn a_secure_acceptor_takes_the_right_token_only() {
        let auth = AuthFile::generate();
        let v = TokenVerifier::new(&auth);
        let (d, a) = handshake(Some(&auth.token()), Some(&v)).await;
        assert!(d.is_ok() && a.is_ok(), "{d:?} {a:?}");

        let (d, a) = handshake(Some(&AuthFile::generate().token()), Some(&v)).await;
        let e = d.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
        let msg = e.to_string();
        assert!(msg.contains("replication connection refused: wrong or missing cluster token"), "{msg}");
        assert!(msg.contains("not derived from this cluster's secret"), "{msg}");
        assert!(msg.contains("start every member with the same --auth-file"), "{msg}");
        assert!(matches!(a, Err(Refused::Token(_))), "{a:?}");

        let (d, a) = handshake(None, Some(&v)).await;
        let msg = d.unwrap_err().to_string();
        assert!(msg.contains("wrong or missing cluster token") && msg.contains("presented no token"), "{msg}");
        assert!(matches!(a, Err(Refused::Token(_))), "{a:?}");

        let (d, a) = handshake(Some("not hex"), Some(&v)).await;
        assert_eq!(d.unwrap_err().kind(), std::io::ErrorKind::PermissionDenied);
        assert!(matches!(a, Err(Refused::Token(_))), "{a:?}");
    }

    #[tokio::test]
    async fn an_open_acceptor_takes_any_hello() {
        let (d, a) = handshake(None, None).await;
        assert!(d.is_ok() && a.is_ok(), "{d:?} {a:?}");
        let (d, a) = handshake(Some(&AuthFile::generate().token()), None).await;
        assert!(d.is_ok() && a.is_ok(), "{d:?} {a:?}");
    }

    #[tokio::test]
    async fn a_silent_dialer_is_dropped_unanswered() {
        let (mut a, b) = tokio::io::duplex(1024);
        let mut acceptor = frames(b, MAX_HELLO_BYTES);
        let v = TokenVerifier::new(&AuthFile::generate());
        let r = accept_hello(&mut acceptor, Some(&v), Duration::from_millis(100)).await;
        assert!(matches!(r, Err(Refused::Silent(_))), "{r:?}");
        drop(acceptor);
        let mut buf = Vec::new();
        assert_eq!(a.read_to_end(&mut buf).await.unwrap(), 0, "no answer, just the close");
        // A dialer that closes at once is the same.
        let (a, b) = tokio::io::duplex(1024);
        drop(a);
        let r = accept_hello(&mut frames(b, MAX_HELLO_BYTES), Some(&v), T).await;
        assert!(matches!(r, Err(Refused::Silent(_))), "{r:?}");
    }

    /// Reads the acceptor's answer frame off a raw pipe.
    async fn raw_answer(a: &mut tokio::io::DuplexStream) -> HelloAnswer {
        let len = a.read_u32().await.unwrap() as usize;
        let mut buf = vec![0; len];
        a.read_exact(&mut buf).await.unwrap();
        serde_json::from_slice(&buf).unwrap()
    }

    #[tokio::test]
    async fn garbage_and_other_schemas_are_refused_with_a_reason() {
        let v = TokenVerifier::new(&AuthFile::generate());
        for (bytes, want) in [
            (b"GET / HTTP/1.1\r\n\r\n".to_vec(), "not a datom replication hello"),
            ([&7u32.to_be_bytes()[..], b"{nope}!"].concat(), "not a datom replication hello"),
            (
                {
                    let j = br#"{"schema":2,"token":null}"#;
                    [&(j.len() as u32).to_be_bytes()[..], j].concat()
                },
                "same datom version",
            ),
        ] {
            let (mut a, b) = tokio::io::duplex(64 * 1024);
            a.write_all(&bytes).await.unwrap();
            let r = accept_hello(&mut frames(b, MAX_HELLO_BYTES), Some(&v), T).await;
            assert!(matches!(&r, Err(Refused::Garbage(m)) if m.contains(want)), "{bytes:?}: {r:?}");
            let answer = raw_answer(&mut a).await;
            assert!(!answer.ok && answer.error.as_deref().unwrap_or("").contains(want), "{answer:?}");
        }
    }

    #[test]
    fn the_wire_format_is_plain_json_and_debug_hides_the_token() {
        let h = Hello { schema: 1, token: Some("abc".into()) };
        assert_eq!(serde_json::to_string(&h).unwrap(), r#"{"schema":1,"token":"abc"}"#);
        assert!(!format!("{h:?}").contains("abc"));
        let ok = HelloAnswer { schema: 1, ok: true, error: None };
        assert_eq!(serde_json::to_string(&ok).unwrap(), r#"{"schema":1,"ok":true}"#);
    }
}
