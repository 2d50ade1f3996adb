//! One service on this node: a task that carries out seed 001's operations (in_service,
//! oo_service, force_oos, mark_oos), watches the process and its health check, restarts it per
//! policy, marks it FAILED past the restart budget, and publishes its instance znode.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use datom_common::coord::{EphemeralHandle, encode};
use datom_common::records::{GroupRole, InstanceRecord, SCHEMA, ServiceState};
use datom_common::rpc::DiagnoseReport;
use datom_common::spec::{ServiceSpec, ServiceType};
use datom_common::{Coord, paths};
use tokio::sync::{Notify, mpsc, oneshot, watch};

use super::health::{self, CheckResult};
use super::plan::{Observed, Target};
use super::process::{self, Layout, Running};

/// An instruction to a runtime.
#[derive(Debug)]
pub enum Cmd {
    /// in_service (adopting a running copy if one is found).
    Start(Box<ServiceSpec>, u64),
    /// Stop, then start fresh at a new generation.
    Restart(Box<ServiceSpec>, u64),
    /// oo_service (graceful) or force_oos.
    Stop {
        /// force_oos.
        force: bool,
    },
    /// mark_oos.
    MarkOos,
    /// Run the check now.
    Diagnose(oneshot::Sender<DiagnoseReport>),
    /// The agent is exiting: leave the service running, stop supervising.
    Detach,
}

/// Handle to a runtime task.
#[derive(Clone)]
pub struct RuntimeHandle {
    /// Instructions.
    pub tx: mpsc::UnboundedSender<Cmd>,
    /// Its state for the planner.
    pub observed: watch::Receiver<Observed>,
}

/// Context shared by all runtimes of an agent.
#[derive(Clone)]
pub struct Ctx {
    /// Coordination client.
    pub coord: Coord,
    /// Node name.
    pub node: String,
    /// The agent's API address.
    pub address: String,
    /// Files.
    pub layout: Layout,
    /// Wakes the supervisor when a state changes.
    pub notify: Arc<Notify>,
}

struct Runtime {
    ctx: Ctx,
    svc: String,
    spec: Option<ServiceSpec>,
    state: ServiceState,
    target: Target,
    since: DateTime<Utc>,
    running: Option<Running>,
    restarts: VecDeque<Instant>,
    failures: u32,
    starting_since: Instant,
    last_error: Option<String>,
    observed: watch::Sender<Observed>,
    publish: watch::Sender<Option<InstanceRecord>>,
    rx: mpsc::UnboundedReceiver<Cmd>,
    deferred: Option<Cmd>,
    restart_due: bool,
}

/// Starts the runtime task for `svc`.
pub fn spawn(ctx: Ctx, svc: &str) -> RuntimeHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let (observed, observed_rx) = watch::channel(Observed { state: ServiceState::Oos, target: Target::Idle });
    let (publish, publish_rx) = watch::channel(None);
    tokio::spawn(publisher(ctx.coord.clone(), paths::service_instance(svc, &ctx.node), publish_rx));
    let rt = Runtime {
        ctx,
        svc: svc.to_string(),
        spec: None,
        state: ServiceState::Oos,
        target: Target::Idle,
        since: Utc::now(),
        running: None,
        restarts: VecDeque::new(),
        failures: 0,
        starting_since: Instant::now(),
        last_error: None,
        observed,
        publish,
        rx,
        deferred: None,
        restart_due: false,
    };
    tokio::spawn(rt.run());
    RuntimeHandle { tx, observed: observed_rx }
}

/// Keeps the instance ephemeral equal to the latest record (registered, updated, removed).
async fn publisher(coord: Coord, path: String, mut rx: watch::Receiver<Option<InstanceRecord>>) {
    let mut handle: Option<EphemeralHandle> = None;
    loop {
        let want = rx.borrow_and_update().clone();
        let mut ok = true;
        match want {
            Some(rec) => {
                let data = match encode(&path, &rec) {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot encode instance record");
                        continue;
                    }
                };
                match &handle {
                    Some(h) => ok = h.set_data(data).await.is_ok(),
                    None => {
                        let wait = coord.negotiated_timeout() * 2 + Duration::from_secs(1);
                        let mut res = coord.register_ephemeral(&path, data.clone(), wait).await;
                        if matches!(res, Err(datom_common::CoordError::NoNode { .. })) {
                            // The instances container is created with the spec; recreate it if
                            // someone removed it.
                            let _ = coord.ensure_path(paths::parent(&path)).await;
                            res = coord.register_ephemeral(&path, data, wait).await;
                        }
                        match res {
                            Ok(h) => handle = Some(h),
                            Err(e) => {
                                tracing::warn!(path, error = %e, "cannot publish instance; retrying");
                                ok = false;
                            }
                        }
                    }
                }
            }
            None => {
                if let Some(h) = handle.take() {
                    ok = h.remove().await.is_ok();
                }
            }
        }
        if !ok {
            tokio::time::sleep(Duration::from_millis(200)).await;
            rx.mark_changed();
        }
        if rx.changed().await.is_err() {
            // The runtime is gone (agent exiting): leave the znode to the session's close.
            if let Some(h) = handle {
                std::mem::forget(h);
            }
            return;
        }
    }
}

impl Runtime {
    fn set_state(&mut self, state: ServiceState) {
        if state == ServiceState::Starting && self.state != ServiceState::Starting {
            self.starting_since = Instant::now();
        }
        if state != self.state {
            tracing::info!(service = %self.svc, from = ?self.state, to = ?state, "service state");
            self.since = Utc::now();
        }
        self.state = state;
        self.observed.send_replace(Observed { state, target: self.target });
        let rec = match state {
            ServiceState::Oos => None,
            _ => Some(InstanceRecord {
                schema: SCHEMA,
                service: self.svc.clone(),
                node: self.ctx.node.clone(),
                address: self.ctx.address.clone(),
                pid: self.running.as_ref().map(|r| r.pid).unwrap_or(0),
                state,
                since: self.since,
                restarts: self.restarts.len() as u32,
                group: self.spec.as_ref().and_then(|s| s.group.clone()),
                role: self
                    .spec
                    .as_ref()
                    .and_then(|s| s.group.as_ref())
                    .map(|_| if state == ServiceState::InService { GroupRole::Active } else { GroupRole::Passive }),
                last_error: self.last_error.clone(),
            }),
        };
        self.publish.send_replace(rec);
        self.ctx.notify.notify_one();
    }

    fn set_target(&mut self, t: Target) {
        self.target = t;
        self.observed.send_replace(Observed { state: self.state, target: t });
        self.ctx.notify.notify_one();
    }

    async fn run(mut self) {
        loop {
            let monitoring = matches!(self.state, ServiceState::Starting | ServiceState::InService);
            let health = self.spec.as_ref().and_then(|s| s.effective_health());
            let cmd = if let Some(c) = self.deferred.take() {
                Some(c)
            } else if self.restart_due {
                self.restart_due = false;
                tracing::info!(service = %self.svc, restart = self.restarts.len(), "restarting");
                self.start(false).await;
                continue;
            } else if monitoring {
                let period = health.as_ref().map(|h| Duration::from_millis(h.period_ms));
                tokio::select! {
                    c = self.rx.recv() => c,
                    why = async {
                        match self.running.as_mut() {
                            Some(r) => r.wait().await,
                            None => std::future::pending().await,
                        }
                    } => {
                        self.running = None;
                        self.on_failure(format!("process {why}")).await;
                        continue;
                    }
                    _ = async {
                        match period {
                            Some(p) => tokio::time::sleep(p).await,
                            None => std::future::pending().await,
                        }
                    } => {
                        self.health_tick().await;
                        continue;
                    }
                }
            } else {
                self.rx.recv().await
            };
            let Some(cmd) = cmd else { return };
            if !matches!(cmd, Cmd::Diagnose(_)) {
                self.restart_due = false;
            }
            match cmd {
                Cmd::Start(spec, generation) => {
                    self.restarts.clear();
                    self.last_error = None;
                    self.spec = Some(*spec);
                    self.set_target(Target::Run { generation });
                    self.start(true).await;
                }
                Cmd::Restart(spec, generation) => {
                    self.set_target(Target::Run { generation });
                    self.stop_service(false).await;
                    self.restarts.clear();
                    self.last_error = None;
                    self.spec = Some(*spec);
                    self.start(false).await;
                }
                Cmd::Stop { force } => {
                    self.set_target(Target::Stop { force });
                    self.stop_service(force).await;
                    self.set_state(ServiceState::Oos);
                }
                Cmd::MarkOos => {
                    // Seed 001's mark_oos: record it, take no action on the resource.
                    self.set_target(Target::Marked);
                    self.running = None;
                    self.set_state(ServiceState::Oos);
                }
                Cmd::Diagnose(reply) => {
                    let report = self.diagnose().await;
                    let _ = reply.send(report);
                }
                Cmd::Detach => {
                    tracing::info!(service = %self.svc, "agent exiting; leaving the service running");
                    return;
                }
            }
        }
    }

    /// in_service: adopt a copy that is already running (pid file + probe, or OCF monitor),
    /// else start one.
    async fn start(&mut self, may_adopt: bool) {
        let Some(spec) = self.spec.clone() else { return };
        self.failures = 0;
        match &spec.kind {
            ServiceType::Process => {
                if may_adopt
                    && let Some(pf) = process::read_pid_file(&self.ctx.layout.pid_file(&spec.name))
                    && process::probe(&pf)
                {
                    tracing::info!(service = %spec.name, pid = pf.pid, "adopted the running process (pid file + probe)");
                    self.running = Some(Running { pid: pf.pid, child: None });
                    self.set_state(ServiceState::InService);
                    return;
                }
                match process::spawn(&self.ctx.layout, &self.ctx.node, &spec) {
                    Ok(r) => {
                        tracing::info!(service = %spec.name, pid = r.pid, "started");
                        self.running = Some(r);
                        // Without a health check, a running process is in service.
                        let state = if spec.effective_health().is_some() {
                            ServiceState::Starting
                        } else {
                            ServiceState::InService
                        };
                        self.set_state(state);
                    }
                    Err(e) => {
                        self.on_failure(format!("cannot start: {e}")).await;
                    }
                }
            }
            ServiceType::Ocf { .. } => {
                let timeout = Duration::from_millis(spec.stop_timeout_ms.max(20_000));
                if may_adopt && matches!(process::ocf_action(&self.ctx.layout, &spec, "monitor", timeout).await, Ok(0))
                {
                    tracing::info!(service = %spec.name, "adopted the running OCF resource (monitor probe)");
                    self.set_state(ServiceState::InService);
                    return;
                }
                self.set_state(ServiceState::Starting);
                match process::ocf_action(&self.ctx.layout, &spec, "start", timeout).await {
                    Ok(0) => {
                        tracing::info!(service = %spec.name, "OCF start succeeded");
                        let check = self.run_check().await;
                        if check.healthy {
                            self.set_state(ServiceState::InService);
                        } else {
                            self.on_failure(format!("after start: {}", check.detail)).await;
                        }
                    }
                    Ok(code) => {
                        self.on_failure(format!("OCF start returned {code} ({})", process::ocf_code_name(code))).await
                    }
                    Err(e) => self.on_failure(e).await,
                }
            }
        }
    }

    async fn run_check(&mut self) -> CheckResult {
        let Some(spec) = self.spec.clone() else {
            return CheckResult { healthy: false, check: "none".into(), detail: "no spec".into() };
        };
        match spec.effective_health() {
            Some(h) => health::check(&self.ctx.layout, &spec, &h).await,
            None => {
                let alive = self.running.as_mut().is_some_and(|r| r.alive());
                let pid = self.running.as_ref().map(|r| r.pid).unwrap_or(0);
                CheckResult {
                    healthy: alive,
                    check: format!("process pid {pid}"),
                    detail: if alive { "running".into() } else { "not running".into() },
                }
            }
        }
    }

    async fn health_tick(&mut self) {
        let Some(h) = self.spec.as_ref().and_then(|s| s.effective_health()) else { return };
        let r = self.run_check().await;
        if r.healthy {
            self.failures = 0;
            if self.state == ServiceState::Starting {
                self.set_state(ServiceState::InService);
            }
            return;
        }
        if self.state == ServiceState::Starting {
            // Start grace period: failed checks do not count until start_timeout_ms is over.
            let grace = Duration::from_millis(self.spec.as_ref().map(|s| s.start_timeout_ms).unwrap_or(30_000));
            if self.starting_since.elapsed() > grace {
                self.on_failure(format!(
                    "not healthy within start_timeout_ms ({} ms): {}",
                    grace.as_millis(),
                    r.detail
                ))
                .await;
            }
            return;
        }
        self.failures += 1;
        tracing::warn!(service = %self.svc, failures = self.failures, threshold = h.threshold, detail = %r.detail, "health check failed");
        if self.failures >= h.threshold {
            self.on_failure(format!("health check {} failed {} times: {}", r.check, self.failures, r.detail)).await;
        }
    }

    /// A failure: restart within the budget (with backoff), else FAILED.
    async fn on_failure(&mut self, why: String) {
        tracing::warn!(service = %self.svc, %why, "service failed");
        self.last_error = Some(why);
        let Some(spec) = self.spec.clone() else { return };
        let window = Duration::from_secs(spec.restart.window_s);
        while self.restarts.front().is_some_and(|t| t.elapsed() > window) {
            self.restarts.pop_front();
        }
        // Clean up whatever is left of the failed copy.
        self.stop_service(true).await;
        if self.restarts.len() as u32 >= spec.restart.max_restarts {
            tracing::error!(service = %self.svc, restarts = self.restarts.len(), "restart budget exhausted: FAILED");
            self.set_state(ServiceState::Failed);
            return;
        }
        let exp = self.restarts.len().min(20) as u32;
        let backoff =
            Duration::from_millis(spec.restart.backoff_ms.saturating_mul(1 << exp).min(spec.restart.backoff_max_ms));
        self.restarts.push_back(Instant::now());
        datom_common::metrics::global()
            .service_restarts
            .get_or_create(&datom_common::metrics::ServiceNodeLabels {
                service: self.svc.clone(),
                node: self.ctx.node.clone(),
            })
            .inc();
        self.set_state(ServiceState::Starting);
        // Back off, but let a stop (or anything else) interrupt; the run loop restarts.
        self.restart_due = true;
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            c = self.rx.recv() => self.deferred = c,
        }
    }

    async fn stop_service(&mut self, force: bool) {
        let Some(spec) = self.spec.clone() else { return };
        if self.state != ServiceState::Oos && !force {
            self.set_state(ServiceState::PendingOos);
        }
        match &spec.kind {
            ServiceType::Process => {
                if let Some(mut r) = self.running.take() {
                    if force {
                        process::kill_now(&mut r).await;
                    } else {
                        let how = process::stop(&mut r, Duration::from_millis(spec.stop_timeout_ms)).await;
                        tracing::info!(service = %spec.name, %how, "stopped");
                    }
                }
                let _ = std::fs::remove_file(self.ctx.layout.pid_file(&spec.name));
            }
            ServiceType::Ocf { .. } => {
                let timeout = Duration::from_millis(spec.stop_timeout_ms.max(1000));
                match process::ocf_action(&self.ctx.layout, &spec, "stop", timeout).await {
                    Ok(0) => tracing::info!(service = %spec.name, "OCF stop succeeded"),
                    Ok(code) => {
                        tracing::error!(service = %spec.name, code, "OCF stop failed");
                        self.last_error = Some(format!("OCF stop returned {code} ({})", process::ocf_code_name(code)));
                    }
                    Err(e) => {
                        tracing::error!(service = %spec.name, error = %e, "OCF stop failed");
                        self.last_error = Some(e);
                    }
                }
            }
        }
    }

    async fn diagnose(&mut self) -> DiagnoseReport {
        let t = Instant::now();
        let r = self.run_check().await;
        DiagnoseReport {
            service: self.svc.clone(),
            node: self.ctx.node.clone(),
            check: r.check,
            healthy: r.healthy,
            detail: r.detail,
            state: Some(self.state),
            took_ms: t.elapsed().as_millis() as u64,
        }
    }
}
