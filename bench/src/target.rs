//! Where a scenario runs: the ZooKeeper given with `--zk ADDR`, or a private standalone server
//! started with `--local` (fsync on) that lives as long as the returned guard.

/// The `--zk ADDR` / `--local` flags every scenario takes.
#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// ZooKeeper to use; omit with --local.
    #[arg(long, env = "DATOM_ZK")]
    pub zk: Option<String>,
    /// Start a private standalone ZooKeeper (fsync on, small tickTime) for the run.
    #[arg(long)]
    pub local: bool,
}

/// Resolves `--zk` / `--local` to a connect string, starting a server for `--local`.
pub async fn resolve(
    zk: &Option<String>,
    local: bool,
    tick_ms: u32,
) -> anyhow::Result<(String, Option<datom_zk_harness::ZkServer>)> {
    match (zk, local) {
        (_, true) => {
            let opts = datom_zk_harness::ServerOptions { tick_ms, ..Default::default() };
            let s = tokio::task::spawn_blocking(move || datom_zk_harness::ZkServer::start(opts)).await??;
            Ok((s.connect_string(), Some(s)))
        }
        (Some(z), false) => Ok((z.clone(), None)),
        (None, false) => anyhow::bail!("give the ZooKeeper to use with --zk ADDR, or --local to start one"),
    }
}
