//! Health checks (seed 000's heartbeat, seed 001's diagnostics): tcp, http, exec and OCF
//! monitor, each bounded by the spec's timeout.

use std::time::Duration;

use datom_common::spec::{Health, HealthKind, ServiceSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::process::{Layout, ocf_action, ocf_code_name};

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// Passed.
    pub healthy: bool,
    /// What was checked.
    pub check: String,
    /// Details.
    pub detail: String,
}

/// Describes a check for messages.
pub fn describe(h: &Health) -> String {
    match h.kind {
        HealthKind::Tcp => format!("tcp {}:{}", h.host.as_deref().unwrap_or("127.0.0.1"), h.port.unwrap_or(0)),
        HealthKind::Http => format!("http GET {}", h.url.as_deref().unwrap_or("")),
        HealthKind::Exec => format!("exec {}", h.command.join(" ")),
        HealthKind::OcfMonitor => "ocf monitor".to_string(),
    }
}

/// Runs `h` once for `spec`.
pub async fn check(layout: &Layout, spec: &ServiceSpec, h: &Health) -> CheckResult {
    let timeout = Duration::from_millis(h.timeout_ms);
    let check = describe(h);
    let outcome: Result<String, String> = match h.kind {
        HealthKind::Tcp => {
            let host = h.host.clone().unwrap_or_else(|| "127.0.0.1".into());
            let port = h.port.unwrap_or(0);
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host.as_str(), port))).await {
                Ok(Ok(_)) => Ok("connected".into()),
                Ok(Err(e)) => Err(format!("connect failed: {e}")),
                Err(_) => Err(format!("no connection within {} ms", h.timeout_ms)),
            }
        }
        HealthKind::Http => match tokio::time::timeout(timeout, http_get(h.url.as_deref().unwrap_or(""))).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {} ms", h.timeout_ms)),
        },
        HealthKind::Exec => {
            let mut cmd = tokio::process::Command::new(&h.command[0]);
            cmd.args(&h.command[1..])
                .envs(&spec.env)
                .env("DATOM_SERVICE", &spec.name)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true);
            match cmd.spawn() {
                Err(e) => Err(format!("cannot run {:?}: {e}", h.command[0])),
                Ok(mut child) => match tokio::time::timeout(timeout, child.wait()).await {
                    Ok(Ok(s)) if s.success() => Ok("exit 0".into()),
                    Ok(Ok(s)) => Err(format!("check command {s}")),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!("check command did not finish within {} ms", h.timeout_ms)),
                },
            }
        }
        HealthKind::OcfMonitor => match ocf_action(layout, spec, "monitor", timeout).await {
            Ok(0) => Ok("OCF_SUCCESS (running)".into()),
            Ok(code) => Err(format!("monitor returned {code} ({})", ocf_code_name(code))),
            Err(e) => Err(e),
        },
    };
    match outcome {
        Ok(detail) => CheckResult { healthy: true, check, detail },
        Err(detail) => CheckResult { healthy: false, check, detail },
    }
}

/// A minimal HTTP/1.0 GET: healthy on a 2xx or 3xx status.
async fn http_get(url: &str) -> Result<String, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("unsupported URL {url:?}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if authority.contains(':') { authority.to_string() } else { format!("{authority}:80") };
    let mut s = tokio::net::TcpStream::connect(&addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: datom-node-agent\r\n\r\n");
    s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
    let head = String::from_utf8_lossy(&buf[..n]);
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {:?}", head.lines().next().unwrap_or("")))?;
    if (200..400).contains(&status) { Ok(format!("HTTP {status}")) } else { Err(format!("HTTP {status}")) }
}
