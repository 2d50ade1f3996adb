//! A model check of the safety argument in `docs/primary-backup.md`, driving the library's own
//! pure decisions (`choose_leader`, `choose_successor`, `check_append`, `next_after_mismatch`,
//! `quorum_commit`): three members, random elections among random quorums (each promises the new
//! term and reports its journal), graceful hand-offs from a leader to a caught-up follower (no
//! election round), stale leaders that keep writing and replicating, and commits by any leader
//! that has not yet learned of a newer term. Checked after every step: an acknowledged write is in
//! the journal of every leader of a term above the one that acknowledged it, at its index, and
//! no index is acknowledged twice with different entries.

use std::collections::BTreeMap;

use datom_pb::log::{AppendCheck, check_append, choose_leader, choose_successor, next_after_mismatch, quorum_commit};
use datom_pb::types::{Entry, EntryId};
use proptest::prelude::*;

const N: usize = 3;
const QUORUM: usize = 2;

#[derive(Clone, Debug, Default)]
struct Member {
    log: Vec<Entry>,
    promised: u64,
}

impl Member {
    fn last(&self) -> EntryId {
        self.log.last().map(|e| e.id()).unwrap_or_default()
    }
    fn term_at(&self, i: u64) -> Option<u64> {
        if i == 0 { Some(0) } else { self.log.get(i as usize - 1).map(|e| e.term) }
    }
}

#[derive(Clone, Debug)]
struct Leader {
    member: usize,
    term: u64,
    matched: [u64; N],
    commit: u64,
}

#[derive(Debug, Clone)]
enum Step {
    Elect {
        elector: usize,
        quorum: u8,
    },
    Write {
        leader: usize,
    },
    /// Sends the follower the leader's journal except the last `cut` entries (batches).
    Replicate {
        leader: usize,
        follower: usize,
        cut: usize,
    },
    Commit {
        leader: usize,
    },
    /// Graceful stop: the leader stops acknowledging and hands the next term to a follower
    /// whose journal matches its own, if the term record still says it leads.
    HandOff {
        leader: usize,
    },
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => (0..N, 0u8..8).prop_map(|(elector, quorum)| Step::Elect { elector, quorum }),
        3 => (0usize..8).prop_map(|leader| Step::Write { leader }),
        4 => (0usize..8, 0..N, 0usize..3).prop_map(|(leader, follower, cut)| Step::Replicate { leader, follower, cut }),
        3 => (0usize..8).prop_map(|leader| Step::Commit { leader }),
        1 => (0usize..8).prop_map(|leader| Step::HandOff { leader }),
    ]
}

#[derive(Default)]
struct Model {
    members: Vec<Member>,
    leaders: Vec<Leader>,
    next_term: u64,
    next_write: u64,
    /// Acknowledged entries by index, with the term of the leader that acknowledged them.
    acked: BTreeMap<u64, (Entry, u64)>,
}

impl Model {
    fn new() -> Model {
        Model { members: vec![Member::default(); N], ..Default::default() }
    }

    fn step(&mut self, s: &Step) {
        match *s {
            Step::Elect { elector, quorum } => {
                // A quorum that includes the elector: the elector plus members picked by the mask.
                let mut q: Vec<usize> = (0..N).filter(|m| *m == elector || quorum & (1 << m) != 0).collect();
                if q.len() < QUORUM {
                    q.push((elector + 1) % N);
                }
                self.next_term += 1;
                let term = self.next_term;
                let mut replies = BTreeMap::new();
                for m in &q {
                    let mem = &mut self.members[*m];
                    mem.promised = mem.promised.max(term);
                    replies.insert(m.to_string(), mem.last());
                }
                let winner: usize = choose_leader(&replies, &elector.to_string()).unwrap().parse().unwrap();
                let w = &mut self.members[winner];
                let index = w.log.len() as u64 + 1;
                w.log.push(Entry { term, index, data: String::new() });
                let mut matched = [0; N];
                matched[winner] = index;
                self.leaders.push(Leader { member: winner, term, matched, commit: 0 });
            }
            Step::Write { leader } => {
                let Some(l) = self.leaders.get(leader % self.leaders.len().max(1)).cloned() else { return };
                let m = &mut self.members[l.member];
                // A leader writes while it has not learned of a newer term (it may be stale).
                if m.promised != l.term || m.log.last().map(|e| e.term) != Some(l.term) {
                    return;
                }
                self.next_write += 1;
                let index = m.log.len() as u64 + 1;
                m.log.push(Entry { term: l.term, index, data: format!("w{}", self.next_write) });
                let i = leader % self.leaders.len();
                self.leaders[i].matched[l.member] = index;
            }
            Step::Replicate { leader, follower, cut } => {
                if self.leaders.is_empty() {
                    return;
                }
                let i = leader % self.leaders.len();
                let l = self.leaders[i].clone();
                if follower == l.member || self.members[l.member].promised != l.term {
                    return;
                }
                let llog = self.members[l.member].log.clone();
                if llog.last().map(|e| e.term) != Some(l.term) {
                    return; // no longer this term's journal
                }
                let f = &mut self.members[follower];
                let mut next = f.last().index.min(llog.len() as u64) + 1;
                loop {
                    let prev_index = next - 1;
                    let prev_term = if prev_index == 0 { 0 } else { llog[prev_index as usize - 1].term };
                    let end = llog.len().saturating_sub(cut).max(prev_index as usize);
                    let entries = &llog[prev_index as usize..end];
                    let flog = f.log.clone();
                    let term_at = |i: u64| if i == 0 { Some(0) } else { flog.get(i as usize - 1).map(|e| e.term) };
                    let first_of = |t: u64, upto: u64| {
                        let mut first = upto;
                        while first > 1 && flog[first as usize - 2].term == t {
                            first -= 1;
                        }
                        first
                    };
                    match check_append(
                        f.promised,
                        f.last(),
                        term_at,
                        first_of,
                        l.term,
                        EntryId::new(prev_term, prev_index),
                        entries,
                    ) {
                        AppendCheck::Stale { term } => {
                            // The leader learns of the newer term and is fenced.
                            let lm = &mut self.members[l.member];
                            lm.promised = lm.promised.max(term);
                            return;
                        }
                        AppendCheck::Mismatch { last, conflict } => {
                            let last_of_term = |t: u64| llog.iter().rev().find(|e| e.term == t).map(|e| e.index);
                            next = next_after_mismatch(next, last, conflict, last_of_term);
                        }
                        AppendCheck::Accept { truncate_from, skip } => {
                            f.promised = l.term;
                            if let Some(t) = truncate_from {
                                f.log.truncate(t as usize - 1);
                            }
                            f.log.extend_from_slice(&entries[skip..]);
                            self.leaders[i].matched[follower] = prev_index + entries.len() as u64;
                            return;
                        }
                    }
                }
            }
            Step::HandOff { leader } => {
                if self.leaders.is_empty() {
                    return;
                }
                let l = self.leaders[leader % self.leaders.len()].clone();
                // The version-checked write of `elected <successor>` for term + 1 only succeeds
                // while the record still says this leader's term is the latest.
                if self.next_term != l.term || self.members[l.member].promised != l.term {
                    return;
                }
                // It stops acknowledging first (modelled as being fenced by the new term).
                let last = self.members[l.member].log.len() as u64;
                let names: Vec<String> = (0..N).map(|m| m.to_string()).collect();
                let followers = (0..N).filter(|m| *m != l.member).map(|m| (&names[m], l.matched[m], true));
                let Some(successor) = choose_successor(last, followers) else { return };
                let successor: usize = successor.parse().unwrap();
                self.next_term += 1;
                let term = self.next_term;
                self.members[l.member].promised = term;
                let s = &mut self.members[successor];
                s.promised = s.promised.max(term);
                let index = s.log.len() as u64 + 1;
                s.log.push(Entry { term, index, data: String::new() });
                let mut matched = [0; N];
                matched[successor] = index;
                self.leaders.push(Leader { member: successor, term, matched, commit: 0 });
            }
            Step::Commit { leader } => {
                if self.leaders.is_empty() {
                    return;
                }
                let i = leader % self.leaders.len();
                let l = self.leaders[i].clone();
                let lm = &self.members[l.member];
                if lm.promised != l.term {
                    return; // fenced: acknowledges nothing
                }
                let mut matches = l.matched.to_vec();
                matches[l.member] = lm.log.len() as u64;
                let c = quorum_commit(&matches, QUORUM, l.commit, l.term, |x| lm.term_at(x));
                for e in &lm.log[l.commit as usize..c as usize] {
                    if e.data.is_empty() {
                        continue;
                    }
                    if let Some((prev, _)) = self.acked.get(&e.index) {
                        assert_eq!(prev, e, "index {} acknowledged twice with different entries", e.index);
                        continue;
                    }
                    self.acked.insert(e.index, (e.clone(), l.term));
                }
                self.leaders[i].commit = c;
            }
        }
    }

    fn check(&self) {
        for (e, acked_in) in self.acked.values() {
            // Leader completeness: every leader of a term above the one that acknowledged it.
            for l in self.leaders.iter().filter(|l| l.term > *acked_in) {
                let log = &self.members[l.member].log;
                // A leader elected after the acknowledgement, or whose member has since followed
                // an even later leader, holds the entry.
                if self.members[l.member].promised >= l.term {
                    assert_eq!(
                        log.get(e.index as usize - 1),
                        Some(e),
                        "acknowledged {:?} missing from the leader of term {} (member {})",
                        e,
                        l.term,
                        l.member
                    );
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn no_acknowledged_write_is_lost(steps in prop::collection::vec(arb_step(), 1..80)) {
        let mut m = Model::new();
        for s in &steps {
            m.step(s);
            m.check();
        }
    }
}
