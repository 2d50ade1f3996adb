//! The `exec` driver: runs an operator's program to read and write the route, for route tables
//! datom has no driver for (a cloud's CLI, an SDN controller). The contract:
//!
//! - `PROG read TABLE ROUTE` prints the route's current next hop on stdout (the first non-empty
//!   line, trimmed) or nothing when the route does not exist, and exits 0;
//! - `PROG write TABLE ROUTE NEXT_HOP` points the route at `NEXT_HOP` and exits 0;
//! - any other exit status is a failure; its stderr (last 400 bytes) is recorded;
//! - the environment carries the same facts: `DATOM_HA_OP` (`read`/`write`), `DATOM_HA_INDEX`,
//!   `DATOM_HA_EVENT`, `DATOM_HA_NODE`, `DATOM_HA_ROUTE_TABLE`, `DATOM_HA_ROUTE`, and
//!   `DATOM_HA_NEXT_HOP` for writes;
//! - the program runs without a shell, with stdin closed, in the event handler's process group:
//!   when the handler times out the whole group is killed.

use std::process::{Command, Stdio};

use super::{RouteDriver, RouteRef, tail};

/// The `exec` driver.
#[derive(Debug, Clone)]
pub struct ExecDriver {
    /// The program (absolute path).
    pub command: String,
}

impl ExecDriver {
    fn run(&self, op: &str, r: &RouteRef, next_hop: Option<&str>) -> Result<Vec<u8>, String> {
        let mut c = Command::new(&self.command);
        c.arg(op).arg(&r.table).arg(&r.route);
        if let Some(h) = next_hop {
            c.arg(h).env("DATOM_HA_NEXT_HOP", h);
        }
        c.env("DATOM_HA_OP", op)
            .env("DATOM_HA_INDEX", r.index.to_string())
            .env("DATOM_HA_EVENT", &r.event)
            .env("DATOM_HA_NODE", &r.node)
            .env("DATOM_HA_ROUTE_TABLE", &r.table)
            .env("DATOM_HA_ROUTE", &r.route)
            .stdin(Stdio::null());
        let out = c.output().map_err(|e| format!("cannot run exec driver command {}: {e}", self.command))?;
        if !out.status.success() {
            return Err(format!("`{} {op}` failed ({}): {}", self.command, out.status, tail(&out.stderr, 400)));
        }
        Ok(out.stdout)
    }
}

impl RouteDriver for ExecDriver {
    fn read(&self, r: &RouteRef) -> Result<Option<String>, String> {
        let out = self.run("read", r, None)?;
        let text = String::from_utf8_lossy(&out);
        let hop = text.lines().map(str::trim).find(|l| !l.is_empty());
        Ok(hop.map(str::to_string))
    }

    fn write(&self, r: &RouteRef, next_hop: &str) -> Result<(), String> {
        self.run("write", r, Some(next_hop)).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn follows_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("hop");
        let script = dir.path().join("route.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\ncase \"$1\" in\n read) [ -f {s} ] && cat {s}; exit 0;;\n \
                 write) [ \"$4\" = \"$DATOM_HA_NEXT_HOP\" ] || exit 3; echo \"$4\" > {s}; \
                 echo \"$DATOM_HA_OP $DATOM_HA_INDEX $DATOM_HA_EVENT $DATOM_HA_NODE $DATOM_HA_ROUTE_TABLE $DATOM_HA_ROUTE\" > {s}.env;;\n \
                 *) echo bad op >&2; exit 2;;\nesac\n",
                s = state.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let d = ExecDriver { command: script.display().to_string() };
        let r = RouteRef {
            table: "rtb-1".into(),
            route: "10.1.0.0/16".into(),
            index: 7,
            event: "peerFail".into(),
            node: "r2".into(),
        };
        assert_eq!(d.read(&r).unwrap(), None);
        d.write(&r, "10.0.0.2").unwrap();
        assert_eq!(d.read(&r).unwrap().as_deref(), Some("10.0.0.2"));
        let env = std::fs::read_to_string(format!("{}.env", state.display())).unwrap();
        assert_eq!(env.trim(), "write 7 peerFail r2 rtb-1 10.1.0.0/16");

        let broken = ExecDriver { command: "/bin/false".into() };
        assert!(broken.read(&r).unwrap_err().contains("failed"));
        let missing = ExecDriver { command: dir.path().join("nope").display().to_string() };
        assert!(missing.read(&r).unwrap_err().contains("cannot run exec driver command"));
    }
}
