//! The event manager's decisions (seed 002, "Event Manager"), as pure functions: how to respond
//! to an event, what to write once the route has been read, whether a write took, and which
//! events to raise automatically when presence changes. No I/O here.

use crate::params::same_hop;
use crate::record::{Outcome, ResultKind, RouterMode};

/// An event on a redundancy node. The names are the seed's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A failure of the peer router has been detected.
    PeerFail,
    /// A router has recovered and wants to be the active router again.
    Revert,
    /// Test whether the route can be updated: read it and write it back unchanged.
    Verify,
    /// Anything else: nothing is done.
    Other(String),
}

impl Event {
    /// Parses an event name; unknown names become [`Event::Other`].
    pub fn parse(s: &str) -> Event {
        match s {
            "peerFail" => Event::PeerFail,
            "revert" => Event::Revert,
            "verify" => Event::Verify,
            other => Event::Other(other.to_string()),
        }
    }

    /// The event's name.
    pub fn as_str(&self) -> &str {
        match self {
            Event::PeerFail => "peerFail",
            Event::Revert => "revert",
            Event::Verify => "verify",
            Event::Other(s) => s,
        }
    }
}

/// How to respond to an event, decided before anything is read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "plan")]
pub enum Plan {
    /// Do nothing (seed response d).
    Nothing {
        /// Why, for the operator.
        reason: String,
    },
    /// Read the route; write our next hop only if the route's differs (seed response b).
    WriteIfDifferent,
    /// Read the route and write it back unchanged (seed response c).
    WriteBackUnchanged,
}

/// The response to `event` on a node in `mode`:
///
/// | event | response |
/// |---|---|
/// | peerFail | read; write only if the next hop differs from ours |
/// | revert | primary only: read; write only if different. secondary: nothing |
/// | verify | read and write back unchanged |
/// | anything else | nothing |
pub fn plan(event: &Event, mode: RouterMode) -> Plan {
    match (event, mode) {
        (Event::PeerFail, _) => Plan::WriteIfDifferent,
        (Event::Revert, RouterMode::Primary) => Plan::WriteIfDifferent,
        (Event::Revert, RouterMode::Secondary) => {
            Plan::Nothing { reason: "revert applies only to primary-mode nodes; this one is secondary".into() }
        }
        (Event::Verify, _) => Plan::WriteBackUnchanged,
        (Event::Other(name), _) => {
            Plan::Nothing { reason: format!("unknown event {name:?}; known events are peerFail, revert and verify") }
        }
    }
}

/// What to do once the route has been read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write the route with this next hop.
    Write {
        /// The next hop to write.
        next_hop: String,
    },
    /// Leave the route as it is.
    Keep,
    /// Give up: there is nothing sensible to write.
    Fail {
        /// Why.
        reason: String,
    },
}

/// Given the plan, the route's current next hop (`None`: no such route) and ours.
pub fn after_read(plan: &Plan, current: Option<&str>, ours: &str) -> Action {
    match plan {
        Plan::Nothing { .. } => Action::Keep,
        Plan::WriteIfDifferent => match current {
            Some(c) if same_hop(c, ours) => Action::Keep,
            _ => Action::Write { next_hop: ours.to_string() },
        },
        Plan::WriteBackUnchanged => match current {
            Some(c) => Action::Write { next_hop: c.to_string() },
            None => Action::Fail { reason: "the route is not in the table, so there is nothing to write back".into() },
        },
    }
}

/// The outcome once the action ran: `reread` is the next hop read back after a write
/// (the verification step).
pub fn outcome(plan: &Plan, current: Option<&str>, action: &Action, reread: Option<&str>) -> Outcome {
    let before = current.map(str::to_string);
    match action {
        Action::Keep => Outcome {
            result: ResultKind::Unchanged,
            detail: format!("the route already points at {}; nothing written", current.unwrap_or("?")),
            before,
            after: None,
        },
        Action::Fail { reason } => Outcome { result: ResultKind::Failed, detail: reason.clone(), before, after: None },
        Action::Write { next_hop } => {
            let after = reread.map(str::to_string);
            if !reread.is_some_and(|r| same_hop(r, next_hop)) {
                return Outcome {
                    result: ResultKind::Failed,
                    detail: format!(
                        "wrote next hop {next_hop} but read back {}; the route table did not take the write",
                        reread.unwrap_or("no route")
                    ),
                    before,
                    after,
                };
            }
            match plan {
                Plan::WriteBackUnchanged => Outcome {
                    result: ResultKind::Rewritten,
                    detail: format!("read next hop {next_hop} and wrote it back unchanged; the route is writable"),
                    before,
                    after,
                },
                _ => Outcome {
                    result: ResultKind::Updated,
                    detail: format!("route now points at {next_hop} (was {})", current.unwrap_or("absent")),
                    before,
                    after,
                },
            }
        }
    }
}

/// What the manager knows about one of its redundancy nodes, for automatic events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    /// Index.
    pub index: u16,
    /// Mode.
    pub mode: RouterMode,
    /// The peer's datom node.
    pub peer: String,
    /// Raise peerFail when the peer vanishes.
    pub auto_peer_fail: bool,
    /// Raise revert when this node comes back.
    pub auto_revert: bool,
}

/// Events to raise when the presence of datom node `name` changes from `before` (`None`: not
/// yet known — the manager just started watching) to `now`. `own` is the manager's node.
///
/// - a peer that vanishes (or is absent when first seen) → peerFail, where enabled;
/// - the manager's own node appearing (or present when first seen) → revert for primary-mode
///   nodes, where enabled.
pub fn on_presence(own: &str, nodes: &[Watched], name: &str, before: Option<bool>, now: bool) -> Vec<(u16, Event)> {
    if before == Some(now) {
        return Vec::new();
    }
    let mut out = Vec::new();
    if name == own {
        if now {
            out.extend(
                nodes
                    .iter()
                    .filter(|n| n.mode == RouterMode::Primary && n.auto_revert)
                    .map(|n| (n.index, Event::Revert)),
            );
        }
    } else if !now {
        out.extend(nodes.iter().filter(|n| n.peer == name && n.auto_peer_fail).map(|n| (n.index, Event::PeerFail)));
    }
    out
}

/// The event to raise for a node the manager starts watching (created, moved to this node, or
/// its peer changed) given what is known of its peer's presence.
pub fn on_new_node(node: &Watched, peer_present: Option<bool>) -> Option<Event> {
    (node.auto_peer_fail && peer_present == Some(false)).then_some(Event::PeerFail)
}

/// Whether an automatically raised event still applies when its turn comes (it may have queued
/// behind others while presence changed back): a peerFail whose peer is present again, or a
/// revert while this node is absent again, is dropped with the reason.
pub fn auto_still_applies(
    event: &Event,
    peer: &str,
    peer_present: Option<bool>,
    own_present: Option<bool>,
) -> Result<(), String> {
    match event {
        Event::PeerFail if peer_present == Some(true) => {
            Err(format!("peer {peer} is present again; the automatic peerFail no longer applies"))
        }
        Event::Revert if own_present == Some(false) => {
            Err("this node's presence is gone again; the automatic revert no longer applies".into())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RouterMode::*;

    #[test]
    fn plan_table() {
        let table: &[(&str, RouterMode, Plan)] = &[
            ("peerFail", Primary, Plan::WriteIfDifferent),
            ("peerFail", Secondary, Plan::WriteIfDifferent),
            ("revert", Primary, Plan::WriteIfDifferent),
            ("verify", Primary, Plan::WriteBackUnchanged),
            ("verify", Secondary, Plan::WriteBackUnchanged),
        ];
        for (ev, mode, want) in table {
            assert_eq!(&plan(&Event::parse(ev), *mode), want, "{ev} {mode:?}");
        }
        for (ev, mode) in [("revert", Secondary), ("explode", Primary), ("PEERFAIL", Secondary), ("", Primary)] {
            assert!(matches!(plan(&Event::parse(ev), mode), Plan::Nothing { .. }), "{ev} {mode:?}");
        }
    }

    #[test]
    fn after_read_table() {
        let w = |h: &str| Action::Write { next_hop: h.into() };
        let table: &[(Plan, Option<&str>, &str, Action)] = &[
            // peerFail/revert: write only if different.
            (Plan::WriteIfDifferent, Some("10.0.0.1"), "10.0.0.2", w("10.0.0.2")),
            (Plan::WriteIfDifferent, Some("10.0.0.2"), "10.0.0.2", Action::Keep),
            (Plan::WriteIfDifferent, Some("fd00:0::2"), "fd00::2", Action::Keep),
            (Plan::WriteIfDifferent, None, "10.0.0.2", w("10.0.0.2")),
            // verify: write back what was read, whoever it points at.
            (Plan::WriteBackUnchanged, Some("10.0.0.1"), "10.0.0.2", w("10.0.0.1")),
            (Plan::WriteBackUnchanged, Some("10.0.0.2"), "10.0.0.2", w("10.0.0.2")),
            (Plan::Nothing { reason: "x".into() }, Some("10.0.0.1"), "10.0.0.2", Action::Keep),
        ];
        for (p, cur, ours, want) in table {
            assert_eq!(&after_read(p, *cur, ours), want, "{p:?} {cur:?} {ours}");
        }
        assert!(matches!(after_read(&Plan::WriteBackUnchanged, None, "10.0.0.2"), Action::Fail { .. }));
    }

    #[test]
    fn outcome_table() {
        let w = Action::Write { next_hop: "10.0.0.2".into() };
        let o = outcome(&Plan::WriteIfDifferent, Some("10.0.0.1"), &w, Some("10.0.0.2"));
        assert_eq!(
            (o.result, o.before.as_deref(), o.after.as_deref()),
            (ResultKind::Updated, Some("10.0.0.1"), Some("10.0.0.2"))
        );
        let o = outcome(&Plan::WriteIfDifferent, Some("10.0.0.1"), &w, Some("10.0.0.1"));
        assert_eq!(o.result, ResultKind::Failed, "a write that did not take is a failure");
        let o = outcome(&Plan::WriteBackUnchanged, Some("10.0.0.2"), &w, Some("10.0.0.2"));
        assert_eq!(o.result, ResultKind::Rewritten);
        let o = outcome(&Plan::WriteIfDifferent, Some("10.0.0.2"), &Action::Keep, None);
        assert_eq!(o.result, ResultKind::Unchanged);
    }

    #[test]
    fn automatic_events_are_rechecked_when_they_run() {
        let table: &[(Event, Option<bool>, Option<bool>, bool)] = &[
            (Event::PeerFail, Some(false), Some(true), true),
            (Event::PeerFail, None, Some(true), true),
            (Event::PeerFail, Some(true), Some(true), false),
            (Event::Revert, Some(true), Some(true), true),
            (Event::Revert, Some(false), None, true),
            (Event::Revert, Some(true), Some(false), false),
            (Event::Verify, Some(true), Some(false), true),
        ];
        for (ev, peer, own, applies) in table {
            assert_eq!(auto_still_applies(ev, "b", *peer, *own).is_ok(), *applies, "{ev:?} peer={peer:?} own={own:?}");
        }
    }

    fn watched() -> Vec<Watched> {
        vec![
            Watched { index: 1, mode: Primary, peer: "b".into(), auto_peer_fail: true, auto_revert: true },
            Watched { index: 2, mode: Secondary, peer: "b".into(), auto_peer_fail: true, auto_revert: true },
            Watched { index: 3, mode: Primary, peer: "c".into(), auto_peer_fail: false, auto_revert: false },
        ]
    }

    #[test]
    fn automatic_events_table() {
        let n = watched();
        let pf = |i| (i, Event::PeerFail);
        let rv = |i| (i, Event::Revert);
        type Row = (&'static str, Option<bool>, bool, Vec<(u16, Event)>);
        let table: &[Row] = &[
            // The peer vanishes, or is absent when first seen.
            ("b", Some(true), false, vec![pf(1), pf(2)]),
            ("b", None, false, vec![pf(1), pf(2)]),
            // The peer appears or stays: nothing.
            ("b", Some(false), true, vec![]),
            ("b", None, true, vec![]),
            ("b", Some(false), false, vec![]),
            // auto_peer_fail off.
            ("c", Some(true), false, vec![]),
            // This node comes back (or is present at start): revert on primaries with auto_revert.
            ("a", Some(false), true, vec![rv(1)]),
            ("a", None, true, vec![rv(1)]),
            ("a", Some(true), false, vec![]),
            ("a", Some(true), true, vec![]),
            // A node nobody peers with.
            ("z", Some(true), false, vec![]),
        ];
        for (name, before, now, want) in table {
            assert_eq!(&on_presence("a", &n, name, *before, *now), want, "{name} {before:?}→{now}");
        }
        assert_eq!(on_new_node(&n[0], Some(false)), Some(Event::PeerFail));
        assert_eq!(on_new_node(&n[0], Some(true)), None);
        assert_eq!(on_new_node(&n[0], None), None);
        assert_eq!(on_new_node(&n[2], Some(false)), None);
    }
}
