//! Command-line flags every datom binary shares: how to reach ZooKeeper, and how to log.

use std::time::Duration;

use crate::auth::AuthFile;
use crate::coord::{Coord, CoordConfig, CoordError, CoordResult};

/// `--zk` and `--session-timeout`, shared by every binary.
#[derive(clap::Args, Debug, Clone)]
pub struct ZkArgs {
    /// ZooKeeper connect string: host:port[,host:port...][/chroot].
    #[arg(long = "zk", env = "DATOM_ZK", default_value = "127.0.0.1:2181", value_name = "CONNECT", global = true)]
    pub zk: String,
    /// Requested ZooKeeper session timeout in milliseconds (the server clamps it to 2..20 × tickTime).
    #[arg(long, env = "DATOM_SESSION_TIMEOUT", default_value_t = 6000, value_name = "MS", global = true)]
    pub session_timeout: u64,
    /// How long to wait for the first ZooKeeper connection, in milliseconds.
    #[arg(long, env = "DATOM_CONNECT_TIMEOUT", default_value_t = 5000, value_name = "MS", global = true)]
    pub connect_timeout: u64,
    /// Cluster credentials (TOML, mode 0600; see docs/security.md): the ZooKeeper identity every
    /// znode datom creates is locked to, and the cluster secret. Needed to change a secure cluster.
    #[arg(long, env = "DATOM_AUTH_FILE", value_name = "FILE", global = true)]
    pub auth_file: Option<std::path::PathBuf>,
}

impl ZkArgs {
    /// The coordination config these flags describe, with the credentials of `--auth-file`
    /// (session auth and the ACL for every created znode) when one is given.
    pub fn config(&self) -> CoordResult<CoordConfig> {
        let config = CoordConfig::new(self.zk.clone())
            .with_session_timeout(Duration::from_millis(self.session_timeout))
            .with_connect_timeout(Duration::from_millis(self.connect_timeout));
        Ok(match self.auth()? {
            Some(auth) => config.with_credentials(&auth),
            None => config,
        })
    }

    /// The credentials in `--auth-file`, if one is given.
    pub fn auth(&self) -> CoordResult<Option<AuthFile>> {
        match &self.auth_file {
            None => Ok(None),
            Some(p) => AuthFile::load(p).map(Some).map_err(|e| CoordError::Credentials(e.to_string())),
        }
    }

    /// Connects with these flags.
    pub async fn connect(&self) -> CoordResult<Coord> {
        Coord::connect(self.config()?).await
    }

    /// These flags as arguments for a child datom process (`--zk=...`, `--auth-file=...`).
    pub fn child_args(&self) -> Vec<String> {
        let mut v = vec![
            format!("--zk={}", self.zk),
            format!("--session-timeout={}", self.session_timeout),
            format!("--connect-timeout={}", self.connect_timeout),
        ];
        if let Some(p) = &self.auth_file {
            v.push(format!("--auth-file={}", p.display()));
        }
        v
    }
}

/// Log output format.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `--log-format`, shared by the daemons.
#[derive(clap::Args, Debug, Clone)]
pub struct LogArgs {
    /// Log format: text or json. The level comes from RUST_LOG (default: info).
    #[arg(long, env = "DATOM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// Installs the global tracing subscriber, writing to stderr.
    pub fn init(&self, default_level: &str) {
        init_logging(self.log_format, default_level);
    }
}

/// Installs the global tracing subscriber (stderr; RUST_LOG overrides `default_level`).
pub fn init_logging(format: LogFormat, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // Colour only on a terminal: logs redirected to files or the journal stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM: how every datom daemon is asked to stop.
pub async fn shutdown_signal() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
