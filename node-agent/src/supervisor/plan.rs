//! The supervisor's decisions, with no I/O: given what operators want on this node (desired
//! records), the specs, and what each service runtime is doing, which operations to issue now.
//! Dependencies start first and stop last (seed 001's `dependson` / `dependents` lists).

use std::collections::BTreeMap;

use datom_common::records::{DesiredRecord, Operation, ServiceState};
use datom_common::spec::ServiceSpec;

/// What a runtime was last told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Nothing yet, or stopped and forgotten.
    Idle,
    /// Keep it running at this restart generation.
    Run {
        /// The desired record's restart generation it runs at.
        generation: u64,
    },
    /// Take it out of service.
    Stop {
        /// Kill at once (force_oos).
        force: bool,
    },
    /// Marked out of service without action (mark_oos).
    Marked,
}

/// A runtime's state as the planner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// Seed 001 state.
    pub state: ServiceState,
    /// Last instruction.
    pub target: Target,
}

/// An operation to issue to a service runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// in_service.
    Start {
        /// Service.
        svc: String,
        /// Restart generation.
        generation: u64,
    },
    /// Stop and start again at a new generation.
    Restart {
        /// Service.
        svc: String,
        /// New generation.
        generation: u64,
    },
    /// oo_service (graceful) or force_oos.
    Stop {
        /// Service.
        svc: String,
        /// force_oos.
        force: bool,
    },
    /// mark_oos.
    MarkOos {
        /// Service.
        svc: String,
    },
}

/// Why a desired operation is not issued yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// Service.
    pub svc: String,
    /// What it waits for.
    pub reason: String,
}

fn running(o: Option<&Observed>) -> bool {
    o.is_some_and(|o| matches!(o.state, ServiceState::Starting | ServiceState::InService | ServiceState::PendingOos))
}

fn stopped(o: Option<&Observed>) -> bool {
    match o {
        None => true,
        Some(o) => {
            matches!(o.state, ServiceState::Oos) || (o.state == ServiceState::Failed && o.target != Target::Idle)
        }
    }
}

/// Plans the next operations. Idempotent: an operation already issued (the runtime's target
/// matches) is not issued again.
pub fn plan(
    desired: &BTreeMap<String, DesiredRecord>,
    specs: &BTreeMap<String, ServiceSpec>,
    observed: &BTreeMap<String, Observed>,
) -> (Vec<Action>, Vec<Waiting>) {
    let mut actions = Vec::new();
    let mut waiting = Vec::new();
    let dependents_here = |svc: &str| -> Vec<&String> {
        desired
            .keys()
            .filter(|d| specs.get(*d).is_some_and(|s| s.depends_on.iter().any(|x| x == svc)))
            .collect::<Vec<_>>()
    };
    for (svc, want) in desired {
        let obs = observed.get(svc);
        let target = obs.map(|o| o.target).unwrap_or(Target::Idle);
        let Some(spec) = specs.get(svc) else {
            if matches!(target, Target::Run { .. }) {
                actions.push(Action::Stop { svc: svc.clone(), force: false });
            }
            continue;
        };
        match want.op {
            Operation::InService => match target {
                Target::Run { generation } if generation >= want.restart_generation => {}
                Target::Run { .. } => {
                    actions.push(Action::Restart { svc: svc.clone(), generation: want.restart_generation })
                }
                _ => {
                    if obs.is_some_and(|o| o.state == ServiceState::PendingOos) {
                        waiting.push(Waiting { svc: svc.clone(), reason: "still stopping".into() });
                        continue;
                    }
                    let blocked: Vec<&String> = spec
                        .depends_on
                        .iter()
                        .filter(|d| observed.get(*d).is_none_or(|o| o.state != ServiceState::InService))
                        .collect();
                    if blocked.is_empty() {
                        actions.push(Action::Start { svc: svc.clone(), generation: want.restart_generation });
                    } else {
                        waiting.push(Waiting {
                            svc: svc.clone(),
                            reason: format!(
                                "waiting for dependencies to be IN_SERVICE: {}",
                                blocked.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                            ),
                        });
                    }
                }
            },
            Operation::OoService | Operation::ForceOos => {
                let force = want.op == Operation::ForceOos;
                let already = matches!(target, Target::Stop { force: f } if f || !force);
                if already || (target == Target::Idle && !running(obs)) {
                    continue;
                }
                let busy: Vec<&String> =
                    dependents_here(svc).into_iter().filter(|d| !stopped(observed.get(*d))).collect();
                if force || busy.is_empty() {
                    actions.push(Action::Stop { svc: svc.clone(), force });
                } else {
                    waiting.push(Waiting {
                        svc: svc.clone(),
                        reason: format!(
                            "waiting for dependents to stop: {}",
                            busy.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                        ),
                    });
                }
            }
            Operation::MarkOos => {
                if target != Target::Marked && obs.is_some_and(|o| o.state == ServiceState::Failed) {
                    actions.push(Action::MarkOos { svc: svc.clone() });
                } else if obs.is_some_and(|o| o.state != ServiceState::Failed && o.state != ServiceState::Oos) {
                    waiting.push(Waiting {
                        svc: svc.clone(),
                        reason: "mark_oos applies to FAILED services only; use stopservice".into(),
                    });
                }
            }
        }
    }
    // Runtimes whose desired record is gone: stop them.
    for (svc, o) in observed {
        if !desired.contains_key(svc) && matches!(o.target, Target::Run { .. }) {
            actions.push(Action::Stop { svc: svc.clone(), force: false });
        }
    }
    (actions, waiting)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn spec(name: &str, deps: &[&str]) -> ServiceSpec {
        let mut s =
            ServiceSpec::from_toml(&format!("name = \"{name}\"\ntype = \"process\"\ncommand = \"x\"\n")).unwrap();
        s.depends_on = deps.iter().map(|d| d.to_string()).collect();
        s
    }
    fn want(svc: &str, op: Operation, generation: u64) -> (String, DesiredRecord) {
        (
            svc.to_string(),
            DesiredRecord {
                schema: 1,
                service: svc.into(),
                op,
                restart_generation: generation,
                requested_at: Utc::now(),
                reason: String::new(),
            },
        )
    }
    fn obs(svc: &str, state: ServiceState, target: Target) -> (String, Observed) {
        (svc.to_string(), Observed { state, target })
    }
    fn specs() -> BTreeMap<String, ServiceSpec> {
        [spec("db", &[]), spec("web", &["db"])].into_iter().map(|s| (s.name.clone(), s)).collect()
    }

    #[test]
    fn dependencies_start_first() {
        let desired = BTreeMap::from([want("db", Operation::InService, 0), want("web", Operation::InService, 0)]);
        let (a, w) = plan(&desired, &specs(), &BTreeMap::new());
        assert_eq!(a, vec![Action::Start { svc: "db".into(), generation: 0 }]);
        assert!(w[0].reason.contains("db"), "{w:?}");
        // db starting: web still waits.
        let o = BTreeMap::from([obs("db", ServiceState::Starting, Target::Run { generation: 0 })]);
        let (a, _) = plan(&desired, &specs(), &o);
        assert!(a.is_empty());
        // db in service: web starts.
        let o = BTreeMap::from([obs("db", ServiceState::InService, Target::Run { generation: 0 })]);
        let (a, w) = plan(&desired, &specs(), &o);
        assert_eq!(a, vec![Action::Start { svc: "web".into(), generation: 0 }]);
        assert!(w.is_empty());
    }

    #[test]
    fn dependents_stop_first() {
        let desired = BTreeMap::from([want("db", Operation::OoService, 0), want("web", Operation::OoService, 0)]);
        let o = BTreeMap::from([
            obs("db", ServiceState::InService, Target::Run { generation: 0 }),
            obs("web", ServiceState::InService, Target::Run { generation: 0 }),
        ]);
        let (a, w) = plan(&desired, &specs(), &o);
        assert_eq!(a, vec![Action::Stop { svc: "web".into(), force: false }]);
        assert!(w[0].reason.contains("web"));
        let o = BTreeMap::from([
            obs("db", ServiceState::InService, Target::Run { generation: 0 }),
            obs("web", ServiceState::Oos, Target::Stop { force: false }),
        ]);
        let (a, _) = plan(&desired, &specs(), &o);
        assert_eq!(a, vec![Action::Stop { svc: "db".into(), force: false }]);
    }

    #[test]
    fn force_oos_does_not_wait() {
        let desired = BTreeMap::from([want("db", Operation::ForceOos, 0), want("web", Operation::InService, 0)]);
        let o = BTreeMap::from([
            obs("db", ServiceState::InService, Target::Run { generation: 0 }),
            obs("web", ServiceState::InService, Target::Run { generation: 0 }),
        ]);
        let (a, _) = plan(&desired, &specs(), &o);
        assert_eq!(a, vec![Action::Stop { svc: "db".into(), force: true }]);
    }

    #[test]
    fn issued_operations_are_not_repeated() {
        let desired = BTreeMap::from([want("db", Operation::InService, 0)]);
        let o = BTreeMap::from([obs("db", ServiceState::InService, Target::Run { generation: 0 })]);
        assert_eq!(plan(&desired, &specs(), &o), (vec![], vec![]));
        let desired = BTreeMap::from([want("db", Operation::OoService, 0)]);
        let o = BTreeMap::from([obs("db", ServiceState::PendingOos, Target::Stop { force: false })]);
        assert_eq!(plan(&desired, &specs(), &o), (vec![], vec![]));
        // Nothing running and stop desired: nothing to do.
        assert_eq!(plan(&desired, &specs(), &BTreeMap::new()), (vec![], vec![]));
    }

    #[test]
    fn restart_generation_triggers_restart() {
        let desired = BTreeMap::from([want("db", Operation::InService, 2)]);
        let o = BTreeMap::from([obs("db", ServiceState::InService, Target::Run { generation: 1 })]);
        let (a, _) = plan(&desired, &specs(), &o);
        assert_eq!(a, vec![Action::Restart { svc: "db".into(), generation: 2 }]);
    }

    #[test]
    fn failed_stays_failed_until_restart_or_mark() {
        let desired = BTreeMap::from([want("db", Operation::InService, 0)]);
        let o = BTreeMap::from([obs("db", ServiceState::Failed, Target::Run { generation: 0 })]);
        assert_eq!(plan(&desired, &specs(), &o).0, vec![]);
        let desired = BTreeMap::from([want("db", Operation::MarkOos, 0)]);
        assert_eq!(plan(&desired, &specs(), &o).0, vec![Action::MarkOos { svc: "db".into() }]);
        let o = BTreeMap::from([obs("db", ServiceState::Oos, Target::Marked)]);
        assert_eq!(plan(&desired, &specs(), &o).0, vec![]);
    }

    #[test]
    fn removed_desired_or_spec_stops_the_runtime() {
        let o = BTreeMap::from([obs("db", ServiceState::InService, Target::Run { generation: 0 })]);
        assert_eq!(plan(&BTreeMap::new(), &specs(), &o).0, vec![Action::Stop { svc: "db".into(), force: false }]);
        let desired = BTreeMap::from([want("db", Operation::InService, 0)]);
        assert_eq!(plan(&desired, &BTreeMap::new(), &o).0, vec![Action::Stop { svc: "db".into(), force: false }]);
    }
}
