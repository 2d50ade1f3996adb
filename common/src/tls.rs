//! Optional TLS for the RPC plane (rustls with the ring provider): loading PEM certificates and
//! keys, and tarpc transports over TLS for servers ([`incoming`], used by `serve_tls!`) and
//! clients ([`dial_tls`]). TLS to ZooKeeper is not implemented (see docs/security.md).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::{Deserialize, Serialize};
use tarpc::serde_transport::Transport;
use tarpc::tokio_serde::formats::Json;
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

pub use rustls::{ClientConfig, ServerConfig};

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} holds an invalid PEM certificate: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display()));
    }
    Ok(certs)
}

/// A server config from a PEM certificate chain and its PEM private key.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let chain = certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read a PEM private key from {}: {e}", key.display()))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("certificate {} does not match its key: {e}", cert.display()))?;
    Ok(Arc::new(config))
}

/// A client config trusting the PEM CA certificates in `ca`.
pub fn client_config(ca: &Path) -> Result<Arc<ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca)? {
        roots.add(c).map_err(|e| format!("{} holds an unusable CA certificate: {e}", ca.display()))?;
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().max_frame_length(crate::coord::MAX_RECORD_BYTES * 4).new_codec()
}

/// TLS transports accepted on `listener`: handshakes run concurrently (at most 16 at once, each
/// bounded by a timeout); failed handshakes are logged and dropped.
pub fn incoming<Item, SinkItem>(
    listener: tokio::net::TcpListener,
    config: Arc<ServerConfig>,
) -> impl futures::Stream<Item = Transport<tokio_rustls::server::TlsStream<TcpStream>, Item, SinkItem, Json<Item, SinkItem>>>
where
    Item: for<'de> Deserialize<'de>,
    SinkItem: Serialize,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    futures::stream::unfold(listener, |l| async move {
        loop {
            match l.accept().await {
                Ok((tcp, peer)) => return Some(((tcp, peer), l)),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
    .map(move |(tcp, peer)| {
        let acceptor = acceptor.clone();
        async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => Some(tarpc::serde_transport::new(Framed::new(tls, codec()), Json::default())),
                Ok(Err(e)) => {
                    tracing::warn!(%peer, error = %e, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    tracing::warn!(%peer, "TLS handshake timed out");
                    None
                }
            }
        }
    })
    .buffer_unordered(16)
    .filter_map(|t| async move { t })
}

/// Dials `addr` over TLS within `timeout`, checking the server's certificate for the host part
/// of `addr` (an IP address or a DNS name).
pub async fn dial_tls<Req, Resp>(
    addr: &str,
    timeout: Duration,
    config: Arc<ClientConfig>,
) -> std::io::Result<
    Transport<
        tokio_rustls::client::TlsStream<TcpStream>,
        tarpc::Response<Resp>,
        tarpc::ClientMessage<Req>,
        Json<tarpc::Response<Resp>, tarpc::ClientMessage<Req>>,
    >,
>
where
    Req: Serialize + Send + 'static,
    Resp: for<'de> Deserialize<'de> + Send + 'static,
{
    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr).trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_string()).map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr}: {host:?} is not a TLS server name: {e}"))
    })?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let work = async {
        let tcp = TcpStream::connect(addr).await?;
        let tls = connector.connect(name, tcp).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("TLS handshake with {addr} failed: {e} (is --tls-ca the right CA?)"))
        })?;
        Ok(tarpc::serde_transport::new(Framed::new(tls, codec()), Json::default()))
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => {
            Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("dial {addr}: timed out after {timeout:?}")))
        }
    }
}

/// Dials the config service at `addr`: over TLS when `tls` is given, else plain TCP.
pub async fn dial_config_service(
    addr: &str,
    timeout: Duration,
    tls: Option<Arc<ClientConfig>>,
) -> std::io::Result<crate::rpc::ConfigServiceClient> {
    match tls {
        None => crate::rpc::dial_config_service(addr, timeout).await,
        Some(config) => {
            let t = dial_tls(addr, timeout, config).await?;
            Ok(crate::rpc::ConfigServiceClient::new(tarpc::client::Config::default(), t).spawn())
        }
    }
}

/// Serves a tarpc service over TLS on a `tokio::net::TcpListener` until `shutdown` resolves;
/// the TLS twin of `serve_tcp!`.
///
/// `serve_tls!(listener, server_config, MyServer { .. }.serve(), shutdown_future)`
#[macro_export]
macro_rules! serve_tls {
    ($listener:expr, $tls:expr, $service:expr, $shutdown:expr) => {{ $crate::serve_transports!($crate::tls::incoming($listener, $tls), $service, $shutdown) }};
}
