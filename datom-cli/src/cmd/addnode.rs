//! `datom addnode`, run on the node itself (seed 003, "Adding nodes"): discover the hardware,
//! register with the active config service, and stamp the returned record at
//! `<root>/node.json` (temp file, fsync, rename). On a terminal it asks, as the seed's sketch
//! does: "enter root", "discovered hardware", "service to run"; flags do the same without a
//! terminal.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use datom_common::flags::ZkArgs;
use datom_common::names::{self, NameKind};
use datom_common::records::{ConfigServiceInstance, HardwareReport, NodeRecord};
use datom_common::rpc::{AddNodeRequest, ConfigError, ctx};
use datom_common::{Coord, paths};

/// Flags of `datom addnode`.
#[derive(clap::Args, Debug)]
pub struct AddnodeArgs {
    /// The node's root directory; node.json is written there (asked for on a terminal).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Node name (default: this machine's host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Services this node should run, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub services: Vec<String>,
    /// Do not ask anything; take every answer from flags.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Print the registered node record as JSON.
    #[arg(long)]
    pub json: bool,
    /// Use this machine id instead of /etc/machine-id (e.g. for cloned VMs that share one).
    #[arg(long)]
    pub machine_id: Option<String>,
    /// How long to wait for the config service, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub rpc_timeout: u64,
    /// The cluster token (a file with mode 0600 holding it; `datom token` writes one), needed to
    /// join a secure cluster. Without it the token is derived from --auth-file, if given.
    #[arg(long, env = "DATOM_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Dial the config service over TLS, trusting the PEM CA certificate(s) in this file (for a
    /// config service started with --tls-cert/--tls-key).
    #[arg(long, env = "DATOM_TLS_CA", value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
}

/// The cluster token to present: from `token_file`, else derived from `--auth-file`, else none
/// (an open cluster).
pub fn cluster_token(zk: &ZkArgs, token_file: Option<&Path>) -> anyhow::Result<Option<String>> {
    if let Some(p) = token_file {
        return Ok(Some(datom_common::auth::load_token(p)?));
    }
    Ok(zk.auth()?.map(|a| a.token()))
}

fn prompt(question: &str, default: Option<&str>) -> anyhow::Result<String> {
    let mut err = std::io::stderr();
    match default {
        Some(d) if !d.is_empty() => write!(err, "{question} [{d}]: ")?,
        _ => write!(err, "{question}: ")?,
    }
    err.flush()?;
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line)? == 0 {
        bail!("no answer to {question:?} (end of input)");
    }
    let answer = line.trim();
    Ok(if answer.is_empty() { default.unwrap_or("").to_string() } else { answer.to_string() })
}

fn spinner(msg: &str) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = indicatif::ProgressBar::new_spinner();
    pb.enable_steady_tick(Duration::from_millis(100));
    pb.set_message(msg.to_string());
    Some(pb)
}

fn done(pb: Option<indicatif::ProgressBar>, msg: &str) {
    if let Some(pb) = pb {
        pb.finish_with_message(msg.to_string());
    }
}

/// Checks that `root` exists (creating it) and is writable, changing nothing else.
pub fn check_root_writable(root: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(root).map_err(|e| {
        anyhow::anyhow!("root {} is not writable: cannot create it ({e}); choose another --root", root.display())
    })?;
    let probe = root.join(format!(".datom-write-test.{}", std::process::id()));
    std::fs::write(&probe, b"probe").map_err(|e| {
        anyhow::anyhow!("root {} is not writable ({e}); fix its permissions or choose another --root", root.display())
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// A one-paragraph summary of discovered hardware.
pub fn summarize(hw: &HardwareReport) -> String {
    let mut s = format!(
        "  host {} ({}, kernel {}, {})\n  cpu  {} × {}\n  mem  {:.1} GiB\n  id   {}\n",
        hw.hostname,
        hw.os,
        hw.kernel,
        hw.arch,
        hw.cpus,
        hw.cpu_model,
        hw.memory_bytes as f64 / (1u64 << 30) as f64,
        hw.machine_id
    );
    for d in &hw.disks {
        s.push_str(&format!(
            "  disk {} ({}, {:.1} GiB)\n",
            d.mount_point,
            d.filesystem,
            d.total_bytes as f64 / (1u64 << 30) as f64
        ));
    }
    for n in &hw.nics {
        s.push_str(&format!("  nic  {} {} mtu {:?} {}\n", n.name, n.mac, n.mtu, n.ips.join(" ")));
    }
    s
}

/// Finds the active config service's address through ZooKeeper.
pub async fn active_config_service(coord: &Coord) -> anyhow::Result<String> {
    if coord.exists(paths::CONFIG_SERVICE).await?.is_none() {
        bail!(
            "datom is not initialized in this ZooKeeper ({} is missing): run `datom init` first",
            paths::CONFIG_SERVICE
        );
    }
    match coord.get::<ConfigServiceInstance>(paths::CONFIG_SERVICE_INSTANCE).await? {
        Some(v) => Ok(v.value.address),
        None => bail!(
            "no active config service ({} is absent): start one with `datom-config-service --zk ...`",
            paths::CONFIG_SERVICE_INSTANCE
        ),
    }
}

/// Registers through the active config service, following NotActive redirects and riding out a
/// failover in progress, within `timeout`.
pub async fn register(
    coord: &Coord,
    req: AddNodeRequest,
    token: Option<String>,
    tls: Option<std::sync::Arc<datom_common::tls::ClientConfig>>,
    timeout: Duration,
) -> anyhow::Result<NodeRecord> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last: anyhow::Error;
    let mut addr = active_config_service(coord).await?;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match datom_common::tls::dial_config_service(&addr, left.min(Duration::from_secs(3)), tls.clone()).await {
            Ok(client) => {
                match client.add_node(ctx(left.max(Duration::from_millis(100))), req.clone(), token.clone()).await {
                    Ok(Ok(rec)) => return Ok(rec),
                    Ok(Err(ConfigError::NotActive { active: Some(a) })) if a != addr => {
                        addr = a;
                        continue;
                    }
                    Ok(Err(e @ ConfigError::NotActive { .. })) => last = e.into(),
                    Ok(Err(e)) => return Err(e.into()),
                    Err(e) => last = anyhow::anyhow!("config service at {addr} did not answer: {e}"),
                }
            }
            Err(e) => last = anyhow::anyhow!("cannot reach the config service at {addr}: {e}"),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(last.context(format!("registration did not complete within {} ms", timeout.as_millis())));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Ok(a) = active_config_service(coord).await {
            addr = a;
        }
        // Out of time: report the last real failure, not a dial with no time left.
        if tokio::time::Instant::now() >= deadline {
            return Err(last.context(format!("registration did not complete within {} ms", timeout.as_millis())));
        }
    }
}

/// Runs `datom addnode`.
pub async fn run(zk: &ZkArgs, args: AddnodeArgs) -> anyhow::Result<ExitCode> {
    let interactive = std::io::stdin().is_terminal() && !args.yes;
    let root = match (&args.root, interactive) {
        (Some(r), _) => r.clone(),
        (None, true) => PathBuf::from(prompt("enter root", Some("/var/lib/datom"))?),
        (None, false) => bail!("--root is required when not on a terminal (or when --yes is given)"),
    };
    check_root_writable(&root)?;

    let pb = spinner("discovering hardware");
    let machine_id = args.machine_id.clone();
    let hw = tokio::task::spawn_blocking(move || datom_common::hardware::discover(machine_id))
        .await?
        .map_err(anyhow::Error::msg)?;
    done(pb, "discovered hardware");
    if interactive {
        eprintln!("discovered hardware:\n{}", summarize(&hw));
        let ok = prompt("register this machine? (y/n)", Some("y"))?;
        if !ok.eq_ignore_ascii_case("y") && !ok.eq_ignore_ascii_case("yes") {
            bail!("cancelled; nothing was registered");
        }
    }
    let default_name: String = hw
        .hostname
        .split('.')
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    let name = match (&args.name, interactive) {
        (Some(n), _) => n.clone(),
        (None, true) => prompt("node name", Some(&default_name))?,
        (None, false) => default_name.clone(),
    };
    names::validate(NameKind::Node, &name).context("choose another name with --name")?;
    let services = if args.services.is_empty() && interactive {
        let s = prompt("service to run (comma-separated, empty for none)", None)?;
        s.split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect()
    } else {
        args.services.clone()
    };
    for s in &services {
        names::validate(NameKind::Service, s)?;
    }

    let token = cluster_token(zk, args.token_file.as_deref())?;
    let tls = match &args.tls_ca {
        Some(ca) => Some(datom_common::tls::client_config(ca).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let pb = spinner("registering with the config service");
    let coord = zk.connect().await?;
    let req = AddNodeRequest { name: name.clone(), hardware: hw, services };
    let res = register(&coord, req, token, tls, Duration::from_millis(args.rpc_timeout)).await;
    coord.close().await;
    let record = match res {
        Ok(r) => r,
        Err(e) => {
            if let Some(pb) = pb {
                pb.abandon_with_message("registration failed");
            }
            return Err(e);
        }
    };
    done(pb, "registered");

    let path = root.join("node.json");
    let data = serde_json::to_vec_pretty(&record)?;
    datom_common::fsutil::write_atomic(&path, &data)
        .map_err(|e| anyhow::anyhow!("registered, but cannot write {}: {e}", path.display()))?;
    if args.json {
        println!("{}", serde_json::to_string(&record)?);
    } else {
        println!(
            "node {:?} registered (machine {}); record stamped at {}",
            record.name,
            record.machine_id,
            path.display()
        );
        println!("start its agent with: datom-node-agent --zk {} --root {}", zk.zk, root.display());
    }
    Ok(ExitCode::SUCCESS)
}
