//! The event handler (seed 002, "Event Handler"): a separate, short-lived process that reads
//! and writes the route table for one event, so a hung driver (a cloud CLI that never returns)
//! cannot wedge the event manager. The manager runs `datom-ha handle-event`, writes a
//! [`HandlerJob`] as JSON on its stdin, reads an [`Outcome`] as JSON from its stdout, and kills
//! its whole process group when the timeout passes.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::decide::{self, Action, Plan};
use crate::driver::{self, RouteDriver, RouteRef};
use crate::record::{DriverKind, Outcome};

/// What the event manager asks one handler process to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandlerJob {
    /// Redundancy node index.
    pub index: u16,
    /// The datom node handling the event.
    pub node: String,
    /// The event name.
    pub event: String,
    /// The response decided by [`decide::plan`].
    pub plan: Plan,
    /// Driver.
    pub driver: DriverKind,
    /// Driver parameters.
    pub params: BTreeMap<String, String>,
    /// Route table id.
    pub route_table: String,
    /// Route (CIDR).
    pub route: String,
    /// Our next hop.
    pub next_hop: String,
}

impl HandlerJob {
    fn route_ref(&self) -> RouteRef {
        RouteRef {
            table: self.route_table.clone(),
            route: self.route.clone(),
            index: self.index,
            event: self.event.clone(),
            node: self.node.clone(),
        }
    }
}

/// Reads the route, decides with [`decide::after_read`], writes if needed and reads back to
/// verify the write took. All the I/O is the driver's.
pub fn execute(job: &HandlerJob, driver: &dyn RouteDriver) -> Outcome {
    let r = job.route_ref();
    let current = match driver.read(&r) {
        Ok(c) => c,
        Err(e) => {
            return Outcome::failed(format!("reading route {} in table {} failed: {e}", job.route, job.route_table));
        }
    };
    let action = decide::after_read(&job.plan, current.as_deref(), &job.next_hop);
    let reread = match &action {
        Action::Write { next_hop } => {
            if let Err(e) = driver.write(&r, next_hop) {
                let mut o = Outcome::failed(format!(
                    "writing route {} via {next_hop} in table {} failed: {e}",
                    job.route, job.route_table
                ));
                o.before = current;
                return o;
            }
            match driver.read(&r) {
                Ok(v) => v,
                Err(e) => {
                    let mut o = Outcome::failed(format!("the write returned, but reading the route back failed: {e}"));
                    o.before = current;
                    return o;
                }
            }
        }
        _ => None,
    };
    decide::outcome(&job.plan, current.as_deref(), &action, reread.as_deref())
}

/// Body of `datom-ha handle-event`: job on stdin, outcome on stdout. Exit status 0 whenever
/// an outcome was printed (a failed route write is a `failed` outcome, not a crash).
pub fn main_handle_event() -> std::process::ExitCode {
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut input) {
        eprintln!("error: cannot read the job from stdin: {e}");
        return std::process::ExitCode::from(2);
    }
    let job: HandlerJob = match serde_json::from_slice(&input) {
        Ok(j) => j,
        Err(e) => {
            eprintln!(
                "error: stdin is not a handler job ({e}); `datom-ha handle-event` is run by the event manager, \
                 not by hand"
            );
            return std::process::ExitCode::from(2);
        }
    };
    let outcome = match driver::build(job.driver, &job.params) {
        Ok(d) => execute(&job, d.as_ref()),
        Err(e) => Outcome::failed(e),
    };
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, &outcome);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
    std::process::ExitCode::SUCCESS
}

/// Runs `exe handle-event` for `job`, bounded by `timeout`: on timeout the handler's whole
/// process group (the driver's children included) is killed and the outcome is `failed`.
pub async fn run_handler(exe: &Path, job: &HandlerJob, timeout: Duration) -> Outcome {
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("handle-event")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Outcome::failed(format!("cannot start the event handler {}: {e}", exe.display())),
    };
    let pgid = child.id().map(|p| p as i32);
    let input = serde_json::to_vec(job).expect("jobs serialise");
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let work = async {
        stdin.write_all(&input).await?;
        drop(stdin);
        let mut out = Vec::new();
        let mut err = Vec::new();
        let (a, b) = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
        a?;
        b?;
        let status = child.wait().await?;
        Ok::<_, std::io::Error>((status, out, err))
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok((status, out, err))) => match serde_json::from_slice::<Outcome>(&out) {
            Ok(o) if status.success() => o,
            _ => Outcome::failed(format!(
                "the event handler exited with {status} without a result: {}",
                driver::tail(&err, 400)
            )),
        },
        Ok(Err(e)) => Outcome::failed(format!("talking to the event handler failed: {e}")),
        Err(_) => {
            if let Some(pg) = pgid {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pg), nix::sys::signal::Signal::SIGKILL);
            }
            Outcome::failed(format!(
                "the event handler did not finish within {} ms and was killed; the route may or may not have been \
                 written — send verify to check",
                timeout.as_millis()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::record::ResultKind;

    /// An in-memory route table that can be told to fail or to ignore writes.
    struct Mem {
        hop: RefCell<Option<String>>,
        writes: RefCell<Vec<String>>,
        fail_read: bool,
        ignore_writes: bool,
    }

    impl Mem {
        fn new(hop: Option<&str>) -> Mem {
            Mem {
                hop: RefCell::new(hop.map(str::to_string)),
                writes: RefCell::default(),
                fail_read: false,
                ignore_writes: false,
            }
        }
    }

    impl RouteDriver for Mem {
        fn read(&self, _: &RouteRef) -> Result<Option<String>, String> {
            if self.fail_read { Err("boom".into()) } else { Ok(self.hop.borrow().clone()) }
        }
        fn write(&self, _: &RouteRef, h: &str) -> Result<(), String> {
            self.writes.borrow_mut().push(h.to_string());
            if !self.ignore_writes {
                *self.hop.borrow_mut() = Some(h.to_string());
            }
            Ok(())
        }
    }

    fn job(plan: Plan) -> HandlerJob {
        HandlerJob {
            index: 2,
            node: "r2".into(),
            event: "peerFail".into(),
            plan,
            driver: DriverKind::File,
            params: BTreeMap::new(),
            route_table: "rt".into(),
            route: "10.1.0.0/16".into(),
            next_hop: "10.0.0.2".into(),
        }
    }

    #[test]
    fn executes_the_plan_against_a_driver() {
        let m = Mem::new(Some("10.0.0.1"));
        let o = execute(&job(Plan::WriteIfDifferent), &m);
        assert_eq!(o.result, ResultKind::Updated);
        assert_eq!(*m.writes.borrow(), vec!["10.0.0.2"]);

        let o = execute(&job(Plan::WriteIfDifferent), &m);
        assert_eq!(o.result, ResultKind::Unchanged);
        assert_eq!(m.writes.borrow().len(), 1, "no write when the next hop is already ours");

        let m = Mem::new(Some("10.0.0.1"));
        let o = execute(&job(Plan::WriteBackUnchanged), &m);
        assert_eq!(o.result, ResultKind::Rewritten);
        assert_eq!(*m.writes.borrow(), vec!["10.0.0.1"], "verify writes back what it read");

        let mut m = Mem::new(Some("10.0.0.1"));
        m.ignore_writes = true;
        assert_eq!(execute(&job(Plan::WriteIfDifferent), &m).result, ResultKind::Failed, "the read-back catches it");

        let mut m = Mem::new(None);
        m.fail_read = true;
        let o = execute(&job(Plan::WriteIfDifferent), &m);
        assert_eq!(o.result, ResultKind::Failed);
        assert!(m.writes.borrow().is_empty(), "no write without a successful read");
    }
}
