//! Running services: native processes (own process group, output appended to a log file under
//! the root, a pid file for adoption) and Pacemaker OCF resource agents (run unmodified with
//! `OCF_ROOT` and `OCF_RESKEY_*`, exit codes interpreted per the OCF spec).

use std::path::{Path, PathBuf};
use std::time::Duration;

use datom_common::spec::{ServiceSpec, ServiceType};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// Where the agent keeps a node's service files.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The node root.
    pub root: PathBuf,
}

impl Layout {
    /// `<root>/logs/<svc>.log`: the service's stdout and stderr.
    pub fn log(&self, svc: &str) -> PathBuf {
        self.root.join("logs").join(format!("{svc}.log"))
    }
    /// `<root>/run/<svc>.pid`: what the agent needs to adopt the process after a restart.
    pub fn pid_file(&self, svc: &str) -> PathBuf {
        self.root.join("run").join(format!("{svc}.pid"))
    }
    /// `<root>/services/<svc>`: default working directory.
    pub fn workdir(&self, svc: &str) -> PathBuf {
        self.root.join("services").join(svc)
    }
}

/// Contents of a pid file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidFile {
    /// Process id (also its process group id).
    pub pid: u32,
    /// Kernel start time of the process (clock ticks since boot), guarding against pid reuse.
    pub start_time: u64,
    /// The command, for operators.
    pub command: String,
}

/// The kernel start time of `pid`, if it is alive (not a zombie).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether `pid` is alive and still the process the pid file describes.
pub fn probe(pf: &PidFile) -> bool {
    start_time(pf.pid) == Some(pf.start_time)
}

/// Reads a pid file; `None` if missing or unreadable.
pub fn read_pid_file(path: &Path) -> Option<PidFile> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// A running native process.
pub struct Running {
    /// Its pid (= process group id).
    pub pid: u32,
    /// Our child handle, when we spawned it (adopted processes are not our children).
    pub child: Option<tokio::process::Child>,
}

impl Running {
    /// Waits until the process exits; returns a description of how.
    pub async fn wait(&mut self) -> String {
        match &mut self.child {
            Some(c) => match c.wait().await {
                Ok(s) => format!("exited: {s}"),
                Err(e) => format!("wait failed: {e}"),
            },
            None => {
                // Not our child: poll /proc (20 ms, cheap) until it is gone.
                let start = start_time(self.pid);
                loop {
                    if start.is_none() || start_time(self.pid) != start {
                        return "adopted process exited".into();
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// Whether it is still alive.
    pub fn alive(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => start_time(self.pid).is_some(),
        }
    }
}

/// Spawns a `process` service in its own process group, output appended to its log file, and
/// writes its pid file.
pub fn spawn(layout: &Layout, node: &str, spec: &ServiceSpec) -> std::io::Result<Running> {
    let command = spec.command.clone().unwrap_or_default();
    std::fs::create_dir_all(layout.root.join("logs"))?;
    std::fs::create_dir_all(layout.root.join("run"))?;
    let workdir = match &spec.workdir {
        Some(w) => PathBuf::from(w),
        None => {
            let w = layout.workdir(&spec.name);
            std::fs::create_dir_all(&w)?;
            w
        }
    };
    let log = std::fs::OpenOptions::new().create(true).append(true).open(layout.log(&spec.name))?;
    let mut cmd = tokio::process::Command::new(&command);
    cmd.args(&spec.args)
        .envs(&spec.env)
        .env("DATOM_SERVICE", &spec.name)
        .env("DATOM_NODE", node)
        .current_dir(&workdir)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C meant for the agent does not reach it, and stopping
        // signals the whole group.
        .process_group(0)
        .kill_on_drop(false);
    let child = cmd.spawn().map_err(|e| std::io::Error::new(e.kind(), format!("cannot run {command:?}: {e}")))?;
    let pid = child.id().unwrap_or(0);
    let pf = PidFile {
        pid,
        start_time: start_time(pid).unwrap_or(0),
        command: format!("{command} {}", spec.args.join(" ")),
    };
    // No fsync: a pid file is only useful while the machine (and so the process) is up.
    datom_common::fsutil::replace_file(&layout.pid_file(&spec.name), &serde_json::to_vec(&pf)?)?;
    Ok(Running { pid, child: Some(child) })
}

/// Signals the process group (and the process itself, in case it left the group).
pub fn signal(pid: u32, sig: Signal) {
    let _ = killpg(Pid::from_raw(pid as i32), sig);
    let _ = kill(Pid::from_raw(pid as i32), sig);
}

/// Graceful stop: SIGTERM, wait up to `timeout`, then SIGKILL. Returns how it ended.
pub async fn stop(running: &mut Running, timeout: Duration) -> String {
    if !running.alive() {
        return "already exited".into();
    }
    signal(running.pid, Signal::SIGTERM);
    if tokio::time::timeout(timeout, running.wait()).await.is_ok() {
        return "stopped on SIGTERM".into();
    }
    signal(running.pid, Signal::SIGKILL);
    let _ = tokio::time::timeout(Duration::from_secs(5), running.wait()).await;
    format!("killed after the {} ms stop timeout", timeout.as_millis())
}

/// Immediate stop (force_oos).
pub async fn kill_now(running: &mut Running) {
    signal(running.pid, Signal::SIGKILL);
    let _ = tokio::time::timeout(Duration::from_secs(5), running.wait()).await;
}

/// OCF return codes (OCF resource agent API).
pub fn ocf_code_name(code: i32) -> &'static str {
    match code {
        0 => "OCF_SUCCESS",
        1 => "OCF_ERR_GENERIC",
        2 => "OCF_ERR_ARGS",
        3 => "OCF_ERR_UNIMPLEMENTED",
        4 => "OCF_ERR_PERM",
        5 => "OCF_ERR_INSTALLED",
        6 => "OCF_ERR_CONFIGURED",
        7 => "OCF_NOT_RUNNING",
        8 => "OCF_RUNNING_MASTER",
        9 => "OCF_FAILED_MASTER",
        _ => "unknown OCF code",
    }
}

/// `$OCF_ROOT`: `DATOM_OCF_ROOT`, `OCF_ROOT`, or Debian's `/usr/lib/ocf`.
pub fn ocf_root() -> PathBuf {
    std::env::var_os("DATOM_OCF_ROOT")
        .or_else(|| std::env::var_os("OCF_ROOT"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/ocf"))
}

/// Runs an OCF action (`start`, `stop`, `monitor`) for `spec`; returns the exit code.
pub async fn ocf_action(layout: &Layout, spec: &ServiceSpec, action: &str, timeout: Duration) -> Result<i32, String> {
    let ServiceType::Ocf { provider, agent } = &spec.kind else {
        return Err(format!("{} is not an OCF service", spec.name));
    };
    let root = ocf_root();
    let script = root.join("resource.d").join(provider).join(agent);
    if !script.exists() {
        return Err(format!(
            "OCF agent {} not found (install Debian's resource-agents, or set DATOM_OCF_ROOT)",
            script.display()
        ));
    }
    let _ = std::fs::create_dir_all(layout.root.join("logs"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(layout.log(&spec.name))
        .map_err(|e| e.to_string())?;
    let mut cmd = tokio::process::Command::new(&script);
    cmd.arg(action)
        .env("OCF_ROOT", &root)
        .env("OCF_FUNCTIONS_DIR", root.join("lib/heartbeat"))
        .env("OCF_RESOURCE_INSTANCE", &spec.name)
        .env("OCF_RESOURCE_TYPE", agent)
        .env("OCF_RESOURCE_PROVIDER", provider)
        .env("OCF_RESKEY_CRM_meta_timeout", timeout.as_millis().to_string())
        .envs(spec.params.iter().map(|(k, v)| (format!("OCF_RESKEY_{k}"), v.clone())))
        .envs(&spec.env)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(s)) => Ok(s.code().unwrap_or(1)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => {
            let _ = child.kill().await;
            Err(format!("OCF {action} timed out after {} ms", timeout.as_millis()))
        }
    }
}

/// Rotates `<root>/logs/*.log` files larger than `max_bytes` (copy to `.1`, shift older ones,
/// truncate in place: services keep their O_APPEND descriptor, like logrotate's copytruncate).
pub fn rotate_logs(dir: &Path, max_bytes: u64, keep: u32) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "log") {
            continue;
        }
        let Ok(meta) = e.metadata() else { continue };
        if meta.len() <= max_bytes {
            continue;
        }
        for i in (1..keep).rev() {
            let from = PathBuf::from(format!("{}.{i}", p.display()));
            let to = PathBuf::from(format!("{}.{}", p.display(), i + 1));
            let _ = std::fs::rename(&from, &to);
        }
        if keep > 0 && std::fs::copy(&p, format!("{}.1", p.display())).is_err() {
            continue;
        }
        if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&p) {
            let _ = f.set_len(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_self_is_stable() {
        let me = std::process::id();
        let t = start_time(me).unwrap();
        assert_eq!(start_time(me), Some(t));
        assert!(probe(&PidFile { pid: me, start_time: t, command: String::new() }));
        assert!(!probe(&PidFile { pid: me, start_time: t + 1, command: String::new() }));
    }

    #[test]
    fn rotation_keeps_n_copies() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("s.log");
        for round in 0..4 {
            std::fs::write(&log, vec![b'a' + round; 100]).unwrap();
            rotate_logs(dir.path(), 50, 3);
        }
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
        assert_eq!(std::fs::read(dir.path().join("s.log.1")).unwrap()[0], b'd');
        assert_eq!(std::fs::read(dir.path().join("s.log.3")).unwrap()[0], b'b');
        assert!(!dir.path().join("s.log.4").exists());
    }
}
