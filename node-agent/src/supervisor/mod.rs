//! Service supervision on this node. The supervisor mirrors two subtrees with tree caches —
//! the node's desired states (`/datom/nodes/<node>/services`) and the specs
//! (`/datom/services`) — and, whenever either or a service's state changes, runs the pure
//! [`plan`] and hands the resulting operations to each service's [`runtime`].
//!
//! Restarting the agent does not restart services: a new agent adopts running processes
//! through their pid file and a probe (OCF resources through `monitor`), like Pacemaker's
//! probes. Stopping the agent leaves services running unless `--stop-services-on-exit`.

pub mod health;
pub mod plan;
pub mod process;
pub mod runtime;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use datom_common::coord::decode;
use datom_common::records::{DesiredRecord, ServiceState};
use datom_common::rpc::DiagnoseReport;
use datom_common::spec::ServiceSpec;
use datom_common::{Coord, paths};
use tokio::sync::{Mutex, Notify, oneshot};

use plan::{Action, Observed, Target};
use process::Layout;
use runtime::{Cmd, Ctx, RuntimeHandle};

/// The desired records directly under `root` in the cache, by service.
fn desired_records(cache: &datom_common::coord::watch::TreeCache, root: &str) -> BTreeMap<String, DesiredRecord> {
    cache
        .snapshot()
        .into_iter()
        .filter(|(p, _)| paths::parent(p) == root)
        .filter_map(|(p, n)| decode::<DesiredRecord>(&p, &n.data).ok().map(|d| (paths::basename(&p).to_string(), d)))
        .collect()
}

/// Stops processes left by a previous agent whose pid file matches a live process but whose
/// desired state here is no longer `in_service`.
fn stop_orphans(layout: &Layout, desired: &BTreeMap<String, DesiredRecord>) {
    let Ok(entries) = std::fs::read_dir(layout.root.join("run")) else { return };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "pid") {
            continue;
        }
        let Some(svc) = path.file_stem().map(|s| s.to_string_lossy().into_owned()) else { continue };
        let wanted = desired.get(&svc).is_some_and(|d| d.op == datom_common::records::Operation::InService);
        if wanted {
            continue;
        }
        if let Some(pf) = process::read_pid_file(&path)
            && process::probe(&pf)
        {
            tracing::warn!(service = %svc, pid = pf.pid, "stopping an orphaned copy left by a previous agent (no longer wanted here)");
            process::signal(pf.pid, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = std::fs::remove_file(&path);
    }
}

/// Handle to the running supervisor.
#[derive(Clone)]
pub struct Supervisor {
    runtimes: Arc<Mutex<BTreeMap<String, RuntimeHandle>>>,
    task: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
    stop: Arc<Notify>,
    fenced: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Supervisor {
    /// Starts supervising `node`'s services.
    pub fn start(coord: Coord, node: String, address: String, root: std::path::PathBuf) -> Supervisor {
        let ctx = Ctx {
            coord: coord.clone(),
            node: node.clone(),
            address,
            layout: Layout { root: root.clone() },
            notify: Arc::new(Notify::new()),
        };
        let sup = Supervisor {
            runtimes: Arc::new(Mutex::new(BTreeMap::new())),
            task: Arc::new(Mutex::new(None)),
            stop: Arc::new(Notify::new()),
            fenced: Arc::new(tokio::sync::watch::channel(false).0),
        };
        let task = tokio::spawn(sup.clone().run(ctx));
        // Log rotation for the services' output.
        let logs = root.join("logs");
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let dir = logs.clone();
                let _ = tokio::task::spawn_blocking(move || process::rotate_logs(&dir, 10 << 20, 3)).await;
            }
        });
        if let Ok(mut t) = sup.task.try_lock() {
            *t = Some(task);
        }
        sup
    }

    async fn run(self, ctx: Ctx) {
        let desired_root = paths::node_services(&ctx.node);
        let desired_cache = ctx.coord.tree_cache(&desired_root);
        let specs_cache = ctx.coord.tree_cache(paths::SERVICES);
        let mut desired_events = desired_cache.subscribe();
        let mut fenced_rx = self.fenced.subscribe();
        let mut spec_events = specs_cache.subscribe();
        desired_cache.wait_synced().await;
        specs_cache.wait_synced().await;
        // Orphans of a previous agent (one that crashed): a copy still running whose desired
        // state is no longer in_service — typically moved away by failover meanwhile — is stopped
        // now; copies still wanted here are adopted by their runtimes below.
        {
            let desired_now = desired_records(&desired_cache, &desired_root);
            stop_orphans(&ctx.layout, &desired_now);
        }
        let mut last_waiting = BTreeSet::new();
        // Targets as sent: the planner must see an operation as issued the moment it is sent,
        // not when the runtime gets round to it, or it would issue it twice.
        let mut sent: BTreeMap<String, Target> = BTreeMap::new();
        loop {
            let desired = desired_records(&desired_cache, &desired_root);
            let specs: BTreeMap<String, ServiceSpec> = specs_cache
                .snapshot()
                .into_iter()
                .filter(|(p, _)| paths::parent(p) == paths::SERVICES)
                .filter_map(|(p, n)| decode::<ServiceSpec>(&p, &n.data).ok().map(|s| (s.name.clone(), s)))
                .collect();
            let observed: BTreeMap<String, Observed> = self
                .runtimes
                .lock()
                .await
                .iter()
                .map(|(k, h)| {
                    let mut o = *h.observed.borrow();
                    if let Some(t) = sent.get(k) {
                        o.target = *t;
                    }
                    (k.clone(), o)
                })
                .collect();
            let (mut actions, waiting) = plan::plan(&desired, &specs, &observed);
            // Self-fencing: while fenced, failover-enabled services are kept stopped here
            // (another node may be running them); everything else carries on.
            if *fenced_rx.borrow_and_update() {
                let failover = |svc: &str| specs.get(svc).is_some_and(|s| s.failover);
                actions.retain(|a| match a {
                    Action::Start { svc, .. } | Action::Restart { svc, .. } => !failover(svc),
                    _ => true,
                });
                for (svc, o) in &observed {
                    if failover(svc) && matches!(o.target, Target::Run { .. }) {
                        tracing::warn!(service = %svc, "self-fencing: stopping a failover-enabled service");
                        actions.push(Action::Stop { svc: svc.clone(), force: true });
                    }
                }
            }
            let now_waiting: BTreeSet<String> = waiting.iter().map(|w| format!("{}: {}", w.svc, w.reason)).collect();
            for w in now_waiting.difference(&last_waiting) {
                tracing::info!("{w}");
            }
            last_waiting = now_waiting;
            for a in actions {
                tracing::info!(?a, "supervisor action");
                let mut rts = self.runtimes.lock().await;
                let svc = match &a {
                    Action::Start { svc, .. }
                    | Action::Restart { svc, .. }
                    | Action::Stop { svc, .. }
                    | Action::MarkOos { svc } => svc.clone(),
                };
                let h = rts.entry(svc.clone()).or_insert_with(|| runtime::spawn(ctx.clone(), &svc));
                let (cmd, target) = match a {
                    Action::Start { generation, .. } => match specs.get(&svc) {
                        Some(s) => (Cmd::Start(Box::new(s.clone()), generation), Target::Run { generation }),
                        None => continue,
                    },
                    Action::Restart { generation, .. } => match specs.get(&svc) {
                        Some(s) => (Cmd::Restart(Box::new(s.clone()), generation), Target::Run { generation }),
                        None => continue,
                    },
                    Action::Stop { force, .. } => (Cmd::Stop { force }, Target::Stop { force }),
                    Action::MarkOos { .. } => (Cmd::MarkOos, Target::Marked),
                };
                if h.tx.send(cmd).is_ok() {
                    sent.insert(svc, target);
                }
            }
            // Wait for anything that may change the plan. Runtimes wake us through notify
            // after they have recorded their new target and state.
            tokio::select! {
                r = desired_events.recv() => if matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) { return },
                r = spec_events.recv() => if matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) { return },
                _ = ctx.notify.notified() => {}
                r = fenced_rx.changed() => if r.is_err() { return },
                _ = self.stop.notified() => return,
            }
            // Fold a burst of queued events into one plan.
            while desired_events.try_recv().is_ok() || spec_events.try_recv().is_ok() {}
        }
    }

    /// Enters or leaves self-fencing (see [`crate::fence`]).
    pub fn set_fenced(&self, fenced: bool) {
        self.fenced.send_if_modified(|f| std::mem::replace(f, fenced) != fenced);
    }

    /// Whether self-fencing is in force.
    pub fn fenced(&self) -> bool {
        *self.fenced.borrow()
    }

    /// Runs a service's check now.
    pub async fn diagnose(&self, svc: &str) -> Result<DiagnoseReport, String> {
        let h = self.runtimes.lock().await.get(svc).cloned();
        let Some(h) = h else { return Err(format!("{svc:?} is not supervised on this node")) };
        let (tx, rx) = oneshot::channel();
        h.tx.send(Cmd::Diagnose(tx)).map_err(|_| "the service's runtime has exited".to_string())?;
        rx.await.map_err(|_| "the service's runtime did not answer".to_string())
    }

    /// The states of the supervised services.
    pub async fn states(&self) -> BTreeMap<String, ServiceState> {
        self.runtimes.lock().await.iter().map(|(k, h)| (k.clone(), h.observed.borrow().state)).collect()
    }

    /// Stops supervising. With `stop_services`, stops every running service first (gracefully,
    /// dependents first as far as the plan allows); otherwise leaves them running for the next
    /// agent to adopt.
    pub async fn shutdown(&self, stop_services: bool) {
        self.stop.notify_one();
        if let Some(t) = self.task.lock().await.take() {
            t.abort();
        }
        let handles: Vec<(String, RuntimeHandle)> =
            self.runtimes.lock().await.iter().map(|(k, h)| (k.clone(), h.clone())).collect();
        if !stop_services {
            for (_, h) in handles {
                let _ = h.tx.send(Cmd::Detach);
            }
            return;
        }
        for (svc, h) in &handles {
            if matches!(h.observed.borrow().target, Target::Run { .. }) {
                tracing::info!(service = %svc, "stopping (--stop-services-on-exit)");
                let _ = h.tx.send(Cmd::Stop { force: false });
            }
        }
        for (_, mut h) in handles {
            let _ = tokio::time::timeout(
                Duration::from_secs(60),
                h.observed.wait_for(|o| o.state == ServiceState::Oos || o.state == ServiceState::Failed),
            )
            .await;
            let _ = h.tx.send(Cmd::Detach);
        }
    }
}
