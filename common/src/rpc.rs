//! RPC interfaces between datom processes (tarpc over TCP, JSON frames) and the helpers that
//! serve and dial them. Errors are typed enums whose descriptive messages travel over RPC —
//! seed 003: "We will return exceptions. That way it's possible include descriptive error
//! messages".

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tarpc::tokio_serde::formats::Json;

use crate::records::{HardwareReport, NodeRecord};

/// Errors the config service returns; each message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ConfigError {
    /// The datom tree does not exist.
    #[error("datom is not initialized in this ZooKeeper: run `datom init` first")]
    NotInitialized,
    /// This instance is a standby.
    #[error("this config service instance is not active; the active one is at {active:?}")]
    NotActive {
        /// The active instance's RPC address, if one is known.
        active: Option<String>,
    },
    /// A name broke a naming rule.
    #[error("{0}")]
    InvalidName(String),
    /// Another machine registered that node name.
    #[error("node name {name:?} is taken by machine {machine_id}; choose another name with --name")]
    NameTaken {
        /// The name asked for.
        name: String,
        /// The machine that holds it.
        machine_id: String,
    },
    /// The node is not registered.
    #[error("node {0:?} is not registered; add it with `datom addnode`")]
    NoSuchNode(String),
    /// Invalid input other than a name.
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// ZooKeeper could not be reached or refused the write.
    #[error("coordination unavailable: {0}")]
    CoordinationUnavailable(String),
    /// The caller lacks the cluster token.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
}

impl From<crate::CoordError> for ConfigError {
    fn from(e: crate::CoordError) -> Self {
        ConfigError::CoordinationUnavailable(e.to_string())
    }
}

/// What `datom addnode` sends to register a machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddNodeRequest {
    /// Requested node name.
    pub name: String,
    /// Discovered hardware (includes the stable machine id).
    pub hardware: HardwareReport,
    /// Services this node should run.
    pub services: Vec<String>,
}

/// The config service: registers nodes and answers for their records.
///
/// Authentication pattern: every joining or mutating method takes a last parameter
/// `token: Option<String>`, the cluster token ([`crate::auth`]); the server checks it first
/// (`ConfigServer::authorize`) and answers [`ConfigError::PermissionDenied`] before reading or
/// writing anything. A service started without `--auth-file` accepts any token (open cluster).
/// Read-only methods take no token. New mutating methods must follow the same pattern.
#[tarpc::service]
pub trait ConfigService {
    /// Registers a node; idempotent for the same machine id. Needs the cluster token.
    async fn add_node(req: AddNodeRequest, token: Option<String>) -> Result<NodeRecord, ConfigError>;
    /// One node's record.
    async fn get_node(name: String) -> Result<NodeRecord, ConfigError>;
    /// Every node's record, sorted by name.
    async fn list_nodes() -> Result<Vec<NodeRecord>, ConfigError>;
    /// Removes a node's record. Needs the cluster token.
    async fn remove_node(name: String, token: Option<String>) -> Result<(), ConfigError>;
    /// Replaces the services a node should run. Needs the cluster token.
    async fn set_node_services(
        name: String,
        services: Vec<String>,
        token: Option<String>,
    ) -> Result<NodeRecord, ConfigError>;
    /// `startservice` without `--node`: the transition master places and starts the service.
    /// Needs the cluster token.
    async fn place_service(
        service: String,
        token: Option<String>,
    ) -> Result<crate::records::TransitionRecord, ConfigError>;
    /// Moves a service (with what must move with it) to a node. Needs the cluster token.
    async fn move_service(
        service: String,
        to: String,
        token: Option<String>,
    ) -> Result<crate::records::TransitionRecord, ConfigError>;
    /// Marks a node unschedulable and moves everything off it. Needs the cluster token.
    async fn drain_node(node: String, token: Option<String>) -> Result<crate::records::TransitionRecord, ConfigError>;
    /// Makes a drained node schedulable again. Needs the cluster token.
    async fn undrain_node(node: String, token: Option<String>) -> Result<NodeRecord, ConfigError>;
}

/// Health of a node agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentHealth {
    /// Node name.
    pub node: String,
    /// ZooKeeper session state as the agent sees it.
    pub session: String,
    /// Seconds since the agent started.
    pub uptime_s: u64,
}

/// Identity of a node agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// The node record stamped at `<root>/node.json`.
    pub node: NodeRecord,
    /// The agent's RPC address.
    pub address: String,
    /// Process id.
    pub pid: u32,
    /// datom version.
    pub version: String,
    /// The seed's bootup arguments as given.
    pub args: BTreeMap<String, String>,
}

/// Result of running a service's health check now (`datom diagnose`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiagnoseReport {
    /// Service.
    pub service: String,
    /// Node that ran the check.
    pub node: String,
    /// What was checked (`tcp 127.0.0.1:8080`, `process pid 42`, ...).
    pub check: String,
    /// Whether it passed.
    pub healthy: bool,
    /// Details: the error, or what answered.
    pub detail: String,
    /// The instance's state as the agent sees it.
    pub state: Option<crate::records::ServiceState>,
    /// How long the check took.
    pub took_ms: u64,
}

/// The node agent's own API.
#[tarpc::service]
pub trait NodeAgent {
    /// Runs `service`'s check now (seed 001's manual diagnostics).
    async fn diagnose(service: String) -> Result<DiagnoseReport, String>;
    /// Liveness and session state.
    async fn health() -> AgentHealth;
    /// Who this agent is.
    async fn info() -> AgentInfo;
    /// The node's and its services' properties, as last loaded from ZooKeeper.
    async fn properties() -> BTreeMap<String, serde_json::Value>;
}

/// A request context with `timeout` as its deadline.
pub fn ctx(timeout: Duration) -> tarpc::context::Context {
    let mut c = tarpc::context::current();
    c.deadline = std::time::Instant::now() + timeout;
    c
}

/// Serves a tarpc service on a `tokio::net::TcpListener` until `shutdown` resolves: each
/// connection and each request runs on its own task. A macro because the request futures are
/// only known to be `Send` for concrete service types.
///
/// `serve_tcp!(listener, MyServer { .. }.serve(), shutdown_future)`
#[macro_export]
macro_rules! serve_tcp {
    ($listener:expr, $service:expr, $shutdown:expr) => {{
        use $crate::rpc::__reexport::StreamExt as _;
        match $crate::rpc::__reexport::listen_on($listener).await {
            Err(e) => ::tracing::error!(error = %e, "cannot serve RPC"),
            Ok(incoming) => {
                $crate::serve_transports!(incoming.filter_map(|r| async move { r.ok() }), $service, $shutdown)
            }
        }
    }};
}

/// Serves a tarpc service on a stream of transports until `shutdown` resolves: one task per
/// connection, one per request. The shared body of [`serve_tcp!`] and `serve_tls!`.
#[doc(hidden)]
#[macro_export]
macro_rules! serve_transports {
    ($transports:expr, $service:expr, $shutdown:expr) => {{
        use $crate::rpc::__reexport::{Channel as _, StreamExt as _};
        let service = $service;
        let shutdown = $shutdown;
        let accept = $transports.for_each(move |transport| {
            let service = service.clone();
            let channel = $crate::rpc::__reexport::BaseChannel::with_defaults(transport);
            ::tokio::spawn(channel.execute(service).for_each(|fut| async {
                ::tokio::spawn(fut);
            }));
            async {}
        });
        ::tokio::select! {
            _ = accept => {}
            _ = shutdown => {}
        }
    }};
}

#[doc(hidden)]
pub mod __reexport {
    pub use futures::StreamExt;
    pub use tarpc::server::{BaseChannel, Channel};

    /// Wraps a listener in JSON-framed tarpc transports with datom's frame limit.
    pub async fn listen_on<Item, SinkItem>(
        listener: tokio::net::TcpListener,
    ) -> std::io::Result<
        tarpc::serde_transport::tcp::Incoming<
            Item,
            SinkItem,
            tarpc::tokio_serde::formats::Json<Item, SinkItem>,
            fn() -> tarpc::tokio_serde::formats::Json<Item, SinkItem>,
        >,
    >
    where
        Item: for<'de> serde::Deserialize<'de>,
        SinkItem: serde::Serialize,
    {
        let mut incoming =
            tarpc::serde_transport::tcp::listen_on(listener, tarpc::tokio_serde::formats::Json::default as fn() -> _)
                .await?;
        incoming.config_mut().max_frame_length(crate::coord::MAX_RECORD_BYTES * 4);
        Ok(incoming)
    }
}

/// Dials a tarpc TCP transport to `addr` within `timeout`.
pub async fn dial<Req, Resp>(
    addr: &str,
    timeout: Duration,
) -> std::io::Result<
    tarpc::serde_transport::Transport<
        tokio::net::TcpStream,
        tarpc::Response<Resp>,
        tarpc::ClientMessage<Req>,
        Json<tarpc::Response<Resp>, tarpc::ClientMessage<Req>>,
    >,
>
where
    Req: Serialize + Send + 'static,
    Resp: for<'de> Deserialize<'de> + Send + 'static,
{
    let mut connect = tarpc::serde_transport::tcp::connect(addr, Json::default);
    connect.config_mut().max_frame_length(crate::coord::MAX_RECORD_BYTES * 4);
    match tokio::time::timeout(timeout, connect).await {
        Ok(r) => r,
        Err(_) => {
            Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("dial {addr}: timed out after {timeout:?}")))
        }
    }
}

/// Dials the config service at `addr`.
pub async fn dial_config_service(addr: &str, timeout: Duration) -> std::io::Result<ConfigServiceClient> {
    let t = dial(addr, timeout).await?;
    Ok(ConfigServiceClient::new(tarpc::client::Config::default(), t).spawn())
}

/// Dials a node agent at `addr`.
pub async fn dial_node_agent(addr: &str, timeout: Duration) -> std::io::Result<NodeAgentClient> {
    let t = dial(addr, timeout).await?;
    Ok(NodeAgentClient::new(tarpc::client::Config::default(), t).spawn())
}
