//! The config service: registers nodes and answers for their records. Several instances run
//! against one ZooKeeper; exactly one is active (it holds the lock under
//! `/datom/configservice/lock` and publishes `/datom/configservice/instance`), the others are
//! standbys that answer every call with `NotActive` and the active instance's address.
//!
//! - [`registry`]: the pure registration decisions (idempotence, NameTaken).
//! - [`active`]: the active/standby loop and fencing of writes.
//! - [`server`]: the tarpc `ConfigService` implementation.
//! - [`dashboard`]: the read-only web dashboard, JSON API and `/metrics` (`--http`).

pub mod active;
pub mod dashboard;
pub mod registry;
pub mod server;
pub mod transitions;

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;
use datom_common::coord::CoordConfig;
use datom_common::flags::{LogArgs, ZkArgs};
use datom_common::init::{InitOutcome, existing_tree, init_tree};
use datom_common::{Coord, paths};

/// Flags of `datom-config-service`.
#[derive(clap::Parser, Debug)]
#[command(name = "datom-config-service", version, about = "datom's config service (several instances, one active)")]
pub struct Args {
    /// ZooKeeper flags.
    #[command(flatten)]
    pub zk: ZkArgs,
    /// Logging flags.
    #[command(flatten)]
    pub log: LogArgs,
    /// Address to serve RPC on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub listen: SocketAddr,
    /// Address clients should dial, published in /datom/configservice/instance (default: the
    /// bound listen address).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Create the datom tree if it does not exist (otherwise a fresh ZooKeeper is refused).
    #[arg(long)]
    pub init: bool,
    /// Cluster name used with --init.
    #[arg(long, default_value = "datom")]
    pub cluster: String,
    /// Instance id (default: cs-<hostname>-<pid>).
    #[arg(long)]
    pub id: Option<String>,
    /// Serve the dashboard, its JSON API and /metrics on this address (port 0 picks a free
    /// one); published in /datom/configservice/instance. Off when not given.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Serve RPC over TLS with this PEM certificate chain (needs --tls-key); clients then dial
    /// with --tls-ca.
    #[arg(long, env = "DATOM_TLS_CERT", value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "DATOM_TLS_KEY", value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
}

impl Args {
    /// Builds the service config from flags.
    pub fn into_config(self) -> anyhow::Result<Config> {
        let id = self.id.unwrap_or_else(|| {
            let host = sysinfo_hostname();
            format!("cs-{host}-{}", std::process::id())
        });
        let token = self.zk.auth()?.map(|a| datom_common::auth::TokenVerifier::new(&a));
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => Some(datom_common::tls::server_config(c, k).map_err(anyhow::Error::msg)?),
            _ => None,
        };
        Ok(Config {
            coord: self.zk.config()?,
            token,
            tls,
            listen: self.listen,
            advertise: self.advertise,
            init: self.init,
            cluster: self.cluster,
            id,
            http: self.http,
        })
    }
}

fn sysinfo_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "host".into())
}

/// Everything the service needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// How to reach ZooKeeper.
    pub coord: CoordConfig,
    /// RPC listen address.
    pub listen: SocketAddr,
    /// Advertised RPC address.
    pub advertise: Option<String>,
    /// Create the tree if missing.
    pub init: bool,
    /// Cluster name for `init`.
    pub cluster: String,
    /// Instance id.
    pub id: String,
    /// Dashboard and metrics address, if served.
    pub http: Option<SocketAddr>,
    /// When set (the service was given `--auth-file`), mutating calls must carry the cluster
    /// token derived from the same secret.
    pub token: Option<datom_common::auth::TokenVerifier>,
    /// When set, RPC is served over TLS with this config.
    pub tls: Option<std::sync::Arc<datom_common::tls::ServerConfig>>,
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    datom_common::flags::shutdown_signal().await
}

/// Runs one config service instance until `shutdown` resolves: serves RPC at once (as a
/// standby), contends for activity, and on shutdown releases the lock so a standby takes over
/// immediately.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let coord = Coord::connect(config.coord.clone()).await?;
    // Seed 003: /datom/configservice marks an existing datom instance; otherwise it is fresh.
    match existing_tree(&coord).await {
        Ok(Some(cluster)) => tracing::info!(cluster = %cluster.name, "existing datom instance; loading its state"),
        Ok(None) if config.init => match init_tree(&coord, &config.cluster).await? {
            InitOutcome::Created(r) | InitOutcome::AlreadyInitialized(r) => {
                tracing::info!(cluster = %r.name, "initialized a fresh datom instance (--init)")
            }
        },
        Ok(None) => {
            coord.close().await;
            anyhow::bail!(
                "{} does not exist: this is a fresh ZooKeeper with no datom tree. Run `datom init` first, \
                 or start the config service with --init",
                paths::CONFIG_SERVICE
            );
        }
        Err(e) => {
            coord.close().await;
            return Err(e.into());
        }
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}; choose another address with --listen", config.listen))?;
    let bound = listener.local_addr()?;
    let advertise = config.advertise.clone().unwrap_or_else(|| bound.to_string());
    tracing::info!(id = %config.id, rpc = %bound, %advertise, "config service up (standby until it holds the lock)");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut leadership = active::Leadership::new(coord.clone(), config.id.clone(), advertise.clone());
    let mut dashboard = None;
    if let Some(addr) = config.http {
        let mut http_stop = stop_rx.clone();
        let stopped = async move {
            let _ = http_stop.wait_for(|s| *s).await;
        };
        let (bound, task) = dashboard::start(coord.clone(), leadership.clone(), addr, stopped)
            .await
            .with_context(|| format!("cannot serve the dashboard on {addr}; choose another address with --http"))?;
        tracing::info!(http = %bound, "dashboard, JSON API and /metrics at http://{bound}/");
        leadership = leadership.with_http(Some(bound.to_string()));
        dashboard = Some(task);
    }
    let master = transitions::Master::new(coord.clone(), leadership.clone());
    let server = server::ConfigServer {
        coord: coord.clone(),
        leadership: leadership.clone(),
        master: master.clone(),
        token: config.token.clone(),
    };
    let master_task = tokio::spawn(master.run(stop_rx.clone()));
    let mut rpc_stop = stop_rx.clone();
    let tls = config.tls.clone();
    let rpc = tokio::spawn(async move {
        use datom_common::rpc::ConfigService as _;
        let stopped = async move {
            let _ = rpc_stop.wait_for(|s| *s).await;
        };
        match tls {
            Some(tls) => datom_common::serve_tls!(listener, tls, server.serve(), stopped),
            None => datom_common::serve_tcp!(listener, server.serve(), stopped),
        }
    });
    let leader_task = tokio::spawn(leadership.clone().run(stop_rx));
    shutdown.await;
    tracing::info!("shutting down: releasing activity");
    let _ = stop_tx.send(true);
    let _ = leader_task.await;
    master_task.abort();
    rpc.abort();
    if let Some(d) = dashboard {
        // Open pages' event streams end with the updater; give the server a moment to finish.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), d).await;
    }
    coord.close().await;
    Ok(())
}
