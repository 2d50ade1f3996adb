//! The `linux` driver: the kernel routing table through iproute2's `ip`, optionally inside a
//! network namespace (`ip -n NETNS`). Reads use `ip -j` (JSON output).

use std::process::Command;

use super::{RouteDriver, RouteRef, tail};

/// The `linux` driver.
#[derive(Debug, Clone, Default)]
pub struct LinuxDriver {
    /// Network namespace to run `ip` in.
    pub netns: Option<String>,
    /// Interface to pin the route to.
    pub dev: Option<String>,
}

impl LinuxDriver {
    fn ip(&self) -> Command {
        let mut c = Command::new("ip");
        if let Some(ns) = &self.netns {
            c.args(["-n", ns]);
        }
        c
    }
}

/// Runs `cmd`; `Ok(None)` when the kernel says the table does not exist yet (an empty table
/// is created by its first route, so for a read it simply has no routes).
fn run(mut cmd: Command) -> Result<Option<Vec<u8>>, String> {
    let shown = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|e| format!("cannot run `{shown}`: {e} (is iproute2 installed?)"))?;
    if !out.status.success() {
        if String::from_utf8_lossy(&out.stderr).contains("table does not exist") {
            return Ok(None);
        }
        return Err(format!("`{shown}` failed ({}): {}", out.status, tail(&out.stderr, 400)));
    }
    Ok(Some(out.stdout))
}

/// The next hop of the first route in `ip -j route show` output: its `gateway`, or a
/// description of a route without one (multipath, device-only), which never equals an address.
pub fn parse_show(json: &[u8]) -> Result<Option<String>, String> {
    let text = String::from_utf8_lossy(json);
    if text.trim().is_empty() {
        return Ok(None);
    }
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("cannot parse `ip -j route show` output: {e}"))?;
    let Some(first) = v.as_array().and_then(|a| a.first()) else { return Ok(None) };
    if let Some(gw) = first.get("gateway").and_then(|g| g.as_str()) {
        return Ok(Some(gw.to_string()));
    }
    if first.get("nexthops").is_some() {
        return Ok(Some("multipath".into()));
    }
    Ok(Some(format!("dev {}", first.get("dev").and_then(|d| d.as_str()).unwrap_or("?"))))
}

impl RouteDriver for LinuxDriver {
    fn read(&self, r: &RouteRef) -> Result<Option<String>, String> {
        let family = if r.route.contains(':') { "-6" } else { "-4" };
        let mut c = self.ip();
        c.args(["-j", family, "route", "show", "table", &r.table, "exact", &r.route]);
        match run(c)? {
            Some(out) => parse_show(&out),
            None => Ok(None),
        }
    }

    fn write(&self, r: &RouteRef, next_hop: &str) -> Result<(), String> {
        let mut c = self.ip();
        c.args(["route", "replace", &r.route, "via", next_hop]);
        if let Some(dev) = &self.dev {
            c.args(["dev", dev]);
        }
        c.args(["table", &r.table]);
        run(c).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_json() {
        assert_eq!(parse_show(b"[]").unwrap(), None);
        assert_eq!(parse_show(b"").unwrap(), None);
        let one = br#"[{"dst":"192.168.77.0/24","gateway":"10.77.0.1","dev":"v0","flags":[]}]"#;
        assert_eq!(parse_show(one).unwrap().as_deref(), Some("10.77.0.1"));
        let dev = br#"[{"dst":"192.168.77.0/24","dev":"v0","scope":"link","flags":[]}]"#;
        assert_eq!(parse_show(dev).unwrap().as_deref(), Some("dev v0"));
        let mp = br#"[{"dst":"192.168.77.0/24","nexthops":[{"gateway":"10.0.0.1"},{"gateway":"10.0.0.2"}]}]"#;
        assert_eq!(parse_show(mp).unwrap().as_deref(), Some("multipath"));
        assert!(parse_show(b"{oops").is_err());
    }
}
