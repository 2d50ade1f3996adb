//! The node agent: runs on every machine added with `datom addnode`, publishes that the node is
//! up, and serves the node's own API. Its bootup follows seed 003's "Service bootup", in order:
//!
//! 1. read `<root>/node.json`, the record the config service returned to `datom addnode`;
//! 2. initialise the coordination client;
//! 3. initialise properties ([`properties`]): watched, live-reloaded, served by the API;
//! 4. initialise the connection cache;
//! 5. serve the `NodeAgent` API ([`api`]) on the address of `--nic-if` at `--port`;
//! 6. create its znode and publish that it is up: the ephemeral `/datom/nodes/<node>/live`.
//!
//! The live znode is registered with the coordination client, so it is published again after a
//! session expiry. On SIGTERM the agent deletes it at once, not at session timeout.

pub mod api;
pub mod bootup;
pub mod fence;
pub mod properties;
pub mod supervisor;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use chrono::Utc;
use datom_common::coord::{CoordConfig, encode};
use datom_common::flags::{LogArgs, ZkArgs};
use datom_common::records::{LiveRecord, NodeRecord, SCHEMA, datom_version};
use datom_common::{Coord, paths};

/// The seed's service bootup arguments (`--nic_if, root, port, domain_name, service_name`).
#[derive(clap::Parser, Debug)]
#[command(name = "datom-node-agent", version, about = "datom's node agent")]
pub struct Args {
    /// ZooKeeper flags.
    #[command(flatten)]
    pub zk: ZkArgs,
    /// Logging flags.
    #[command(flatten)]
    pub log: LogArgs,
    /// The node's root directory: holds node.json (written by `datom addnode`), and the agent's
    /// state and service logs.
    #[arg(long)]
    pub root: PathBuf,
    /// Port the agent's API listens on, on the --nic-if address (0 picks a free port).
    #[arg(long, default_value_t = 7500)]
    pub port: u16,
    /// Network interface whose (first IPv4) address the agent serves and publishes; `lo` for
    /// 127.0.0.1. An IP address is accepted too.
    #[arg(long = "nic-if", alias = "nic_if", default_value = "lo")]
    pub nic_if: String,
    /// DNS domain the node belongs to; the node's FQDN is `<node>.<domain>` (informational,
    /// served by the API).
    #[arg(long = "domain-name", alias = "domain_name", default_value = "local")]
    pub domain_name: String,
    /// Name of the service this agent process provides in the registry (seed 003's
    /// `service_name`; `node-agent` for the standard agent).
    #[arg(long = "service-name", alias = "service_name", default_value = "node-agent")]
    pub service_name: String,
    /// Stop the node's services when the agent is stopped on purpose (default: leave them
    /// running for the next agent to adopt).
    #[arg(long)]
    pub stop_services_on_exit: bool,
    /// Self-fencing: stop failover-enabled services once the session has been suspended (or
    /// the agent stalled) for this fraction of the session timeout.
    #[arg(long, default_value_t = 0.5)]
    pub fence_fraction: f64,
    /// Report CPU and memory use in the live record every 5 s, for placement (`false` makes
    /// placement see this node as idle: useful when several agents share one machine).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub report_load: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics (port 0 picks a free one); published in
    /// the live znode's `http` field. Off when not given.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
}

impl Args {
    /// Builds the agent config from flags; fails when `--auth-file` cannot be used.
    pub fn into_config(self) -> anyhow::Result<Config> {
        Ok(Config {
            coord: self.zk.config()?,
            root: self.root,
            port: self.port,
            nic_if: self.nic_if,
            domain_name: self.domain_name,
            service_name: self.service_name,
            stop_services_on_exit: self.stop_services_on_exit,
            fence_fraction: self.fence_fraction,
            report_load: self.report_load,
            http: self.http,
        })
    }
}

/// Everything the agent needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// How to reach ZooKeeper.
    pub coord: CoordConfig,
    /// Node root directory.
    pub root: PathBuf,
    /// API port.
    pub port: u16,
    /// Interface (or IP) to serve on.
    pub nic_if: String,
    /// DNS domain.
    pub domain_name: String,
    /// This agent's service name.
    pub service_name: String,
    /// Stop services on a deliberate shutdown.
    pub stop_services_on_exit: bool,
    /// Self-fencing threshold, as a fraction of the session timeout.
    pub fence_fraction: f64,
    /// Report load for placement.
    pub report_load: bool,
    /// Metrics address, if served.
    pub http: Option<SocketAddr>,
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    datom_common::flags::shutdown_signal().await
}

/// Shared state of a running agent.
#[derive(Clone)]
pub struct Agent {
    /// The node record from node.json.
    pub node: NodeRecord,
    /// Coordination client.
    pub coord: Coord,
    /// The API address.
    pub address: String,
    /// When the agent started.
    pub started: Instant,
    /// Live properties.
    pub properties: properties::Properties,
    /// The bootup arguments, for `info`.
    pub args: BTreeMap<String, String>,
    /// Service supervision.
    pub supervisor: supervisor::Supervisor,
    /// The process's connection cache (seed 003's getConnection()).
    pub cache: datom_common::cache::ConnectionCache,
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    // 1. node.json
    let node = bootup::read_node_json(&config.root)?;
    tracing::info!(node = %node.name, root = %config.root.display(), "booting node agent");
    // 2. coordination client
    let coord = Coord::connect(config.coord.clone()).await?;
    if let Err(e) = bootup::check_registered(&coord, &node).await {
        coord.close().await;
        return Err(e);
    }
    // 3. properties
    let properties = properties::Properties::start(&coord, &node);
    // 4. connection cache: one per process, shared by everything in the agent.
    let cache = datom_common::cache::ConnectionCache::start(coord.clone());
    // 5. API
    let ip = resolve_nic(&config.nic_if)?;
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, config.port))
        .await
        .with_context(|| format!("cannot listen on {ip}:{}; choose another --port", config.port))?;
    let address = listener.local_addr()?.to_string();
    let args = BTreeMap::from([
        ("root".to_string(), config.root.display().to_string()),
        ("port".to_string(), config.port.to_string()),
        ("nic_if".to_string(), config.nic_if.clone()),
        ("domain_name".to_string(), config.domain_name.clone()),
        ("service_name".to_string(), config.service_name.clone()),
        ("fqdn".to_string(), format!("{}.{}", node.name, config.domain_name)),
    ]);
    let supervisor =
        supervisor::Supervisor::start(coord.clone(), node.name.clone(), address.clone(), config.root.clone());
    let agent = Agent {
        node: node.clone(),
        coord: coord.clone(),
        address: address.clone(),
        started: Instant::now(),
        properties,
        args,
        supervisor: supervisor.clone(),
        cache: cache.clone(),
    };
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = api::AgentServer { agent: agent.clone() };
    let rpc = tokio::spawn(async move {
        use datom_common::rpc::NodeAgent as _;
        datom_common::serve_tcp!(listener, server.serve(), async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        });
    });
    let mut http = None;
    if let Some(addr) = config.http {
        let mut http_stop = stop_tx.subscribe();
        let stopped = async move {
            let _ = http_stop.wait_for(|s| *s).await;
        };
        match datom_common::metrics::serve_http(addr, datom_common::metrics::router(), stopped).await {
            Ok((bound, _task)) => {
                tracing::info!(%bound, "metrics at http://{bound}/metrics");
                http = Some(bound.to_string());
            }
            Err(e) => {
                coord.close().await;
                anyhow::bail!("cannot serve metrics on {addr}: {e}; choose another address with --http");
            }
        }
    }
    // 6. publish that we are up
    let live = LiveRecord {
        schema: SCHEMA,
        node: node.name.clone(),
        address: address.clone(),
        http,
        pid: std::process::id(),
        version: datom_version(),
        started_at: Utc::now(),
        load: None,
    };
    let live_path = paths::node_live(&node.name);
    let data = encode(&live_path, &live)?;
    let wait = coord.negotiated_timeout() * 2 + std::time::Duration::from_secs(1);
    let handle = match coord.register_ephemeral(&live_path, data, wait).await {
        Ok(h) => h,
        Err(e) => {
            coord.close().await;
            anyhow::bail!("cannot publish {live_path}: {e} (is another agent running for node {}?)", node.name);
        }
    };
    tracing::info!(node = %node.name, %address, "node agent up; published {live_path}");
    // Back from a deliberate stop: the node is managed again.
    let _ = coord.delete_if_exists(&paths::node_maintenance(&node.name)).await;
    let handle = std::sync::Arc::new(handle);
    let fence_task = tokio::spawn(fence::monitor(coord.clone(), supervisor.clone(), config.fence_fraction));
    let load_task = tokio::spawn(report_load(handle.clone(), live.clone(), config.report_load));
    shutdown.await;
    tracing::info!("shutting down: removing {live_path}");
    fence_task.abort();
    load_task.abort();
    let left_running = !config.stop_services_on_exit
        && supervisor.states().await.values().any(|s| *s != datom_common::records::ServiceState::Oos);
    supervisor.shutdown(config.stop_services_on_exit).await;
    if left_running {
        // Maintenance: services keep running unsupervised; the transition master must not fail
        // them over while this marker exists (the next agent removes it and adopts them).
        let rec = datom_common::records::MaintenanceRecord {
            schema: SCHEMA,
            since: Utc::now(),
            reason: "agent stopped on purpose; services left running".into(),
        };
        let path = paths::node_maintenance(&node.name);
        let _ = coord.delete_if_exists(&path).await;
        if let Err(e) = coord.create(&path, &rec, datom_common::coord::Mode::Persistent).await {
            tracing::warn!(error = %e, "cannot write the maintenance marker");
        }
    }
    cache.close();
    let _ = stop_tx.send(true);
    if let Ok(h) = std::sync::Arc::try_unwrap(handle) {
        let _ = h.remove().await;
    }
    coord.close().await;
    rpc.abort();
    Ok(())
}

/// Refreshes the load in the live record every 5 s (CPU busy %, memory used), for placement.
async fn report_load(
    handle: std::sync::Arc<datom_common::coord::EphemeralHandle>,
    mut live: LiveRecord,
    enabled: bool,
) {
    if !enabled {
        return;
    }
    let mut sys = match sysinfo::System::new() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read CPU and memory usage; placement sees this node as idle");
            return;
        }
    };
    loop {
        sys.refresh_cpu_usage();
        tokio::time::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL.max(std::time::Duration::from_millis(500))).await;
        sys.refresh_cpu_usage();
        sys.refresh_memory();
        live.load = Some(datom_common::records::NodeLoad {
            cpu_percent: sys.global_cpu_usage().round().clamp(0.0, 100.0) as u32,
            memory_used_bytes: sys.used_memory(),
            at: Utc::now(),
        });
        if let Ok(data) = encode(handle.path(), &live)
            && let Err(e) = handle.set_data(data).await
        {
            tracing::debug!(error = %e, "cannot update the live record's load");
        }
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    }
}

/// The address to serve on for `--nic-if`: an IP literal, or the interface's first IPv4
/// address (`lo` → 127.0.0.1).
pub fn resolve_nic(nic: &str) -> anyhow::Result<IpAddr> {
    if let Ok(ip) = nic.parse::<IpAddr>() {
        return Ok(ip);
    }
    let addrs = nix::ifaddrs::getifaddrs().context("cannot list network interfaces")?;
    let mut seen = std::collections::BTreeSet::new();
    for a in addrs {
        seen.insert(a.interface_name.clone());
        if a.interface_name == nic
            && let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in())
        {
            return Ok(IpAddr::V4(sin.ip()));
        }
    }
    anyhow::bail!(
        "--nic-if {nic:?}: no such interface with an IPv4 address (interfaces here: {}); pass an interface name or an IP",
        seen.into_iter().collect::<Vec<_>>().join(", ")
    )
}
