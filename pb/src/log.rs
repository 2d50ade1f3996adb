//! Pure decisions of journal replication: which member the election chooses, whether a follower
//! accepts an append, where the leader retries after a mismatch, and how far the commit point
//! may advance. No I/O; the replication core (`crate::core`) applies them.
//!
//! Together they give the safety properties argued in `docs/primary-backup.md`: a leader only
//! counts replicas for entries of its own term, members refuse older terms once they have
//! promised a newer one, and the election picks the most complete journal by (term, index).

use std::collections::BTreeMap;

use crate::types::{Entry, EntryId, MemberId};

/// The election's choice among the journal positions a quorum reported: the greatest
/// `(term, index)`. Ties go to `prefer` (the elector, which saves a hand-over), then to the
/// smallest member name. `None` when there are no replies.
pub fn choose_leader(replies: &BTreeMap<MemberId, EntryId>, prefer: &MemberId) -> Option<MemberId> {
    let best = replies.values().max()?;
    if replies.get(prefer) == Some(best) {
        return Some(prefer.clone());
    }
    replies.iter().find(|(_, last)| *last == best).map(|(m, _)| m.clone())
}

/// The successor a leader hands off to on a graceful stop: a functional follower whose
/// journal has everything the leader's has (`matched >= last`, the leader's last index). Its
/// journal then holds every committed entry, which is what the election's most-complete rule
/// guarantees, so the hand-off needs no election round. Ties go to the smallest member name.
/// `None` while no follower has caught up.
pub fn choose_successor<'a>(
    last: u64,
    followers: impl IntoIterator<Item = (&'a MemberId, u64, bool)>,
) -> Option<MemberId> {
    followers
        .into_iter()
        .filter(|(_, matched, functional)| *functional && *matched >= last)
        .map(|(m, _, _)| m)
        .min()
        .cloned()
}

/// A follower's decision on an append from a leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendCheck {
    /// The sender's term is older than our promise: refuse, telling it our term.
    Stale {
        /// Our term.
        term: u64,
    },
    /// Our journal does not contain the sender's `prev` entry.
    Mismatch {
        /// Our last entry.
        last: EntryId,
        /// The term we hold at `prev.index` and the first index of that term in our journal,
        /// when we hold an entry there (with a different term).
        conflict: Option<(u64, u64)>,
    },
    /// Accept: truncate our journal from `truncate_from` (entries that conflict with the
    /// leader's), then append `entries[skip..]`.
    Accept {
        /// First index to drop, if any.
        truncate_from: Option<u64>,
        /// Entries of the request we already hold.
        skip: usize,
    },
}

/// Decides an append of `entries` following `prev` from a leader of `term`, given our promised
/// term, our last entry and a lookup of our journal's term at an index.
pub fn check_append(
    promised: u64,
    last: EntryId,
    term_at: impl Fn(u64) -> Option<u64>,
    first_index_of_term: impl Fn(u64, u64) -> u64,
    term: u64,
    prev: EntryId,
    entries: &[Entry],
) -> AppendCheck {
    if term < promised {
        return AppendCheck::Stale { term: promised };
    }
    if prev.index > last.index {
        return AppendCheck::Mismatch { last, conflict: None };
    }
    if prev.index > 0 {
        match term_at(prev.index) {
            Some(t) if t == prev.term => {}
            Some(t) => {
                return AppendCheck::Mismatch { last, conflict: Some((t, first_index_of_term(t, prev.index))) };
            }
            None => return AppendCheck::Mismatch { last, conflict: None },
        }
    }
    let mut skip = 0;
    let mut truncate_from = None;
    for e in entries {
        if e.index > last.index {
            break;
        }
        if term_at(e.index) == Some(e.term) {
            skip += 1;
            continue;
        }
        truncate_from = Some(e.index);
        break;
    }
    AppendCheck::Accept { truncate_from, skip }
}

/// Where the leader sends from next after a mismatch. `next` is what it sent from;
/// `leader_last_of_term(t)` is the leader's last index of term `t`, if it has any. Always
/// returns something in `1..next` (progress), or 1.
pub fn next_after_mismatch(
    next: u64,
    follower_last: EntryId,
    conflict: Option<(u64, u64)>,
    leader_last_of_term: impl Fn(u64) -> Option<u64>,
) -> u64 {
    let candidate = match conflict {
        None => follower_last.index + 1,
        Some((t, first)) => match leader_last_of_term(t) {
            Some(l) if l >= first => l + 1,
            _ => first,
        },
    };
    candidate.min(next.saturating_sub(1)).max(1)
}

/// The commit point a leader of `term` may advance to: the highest index journaled by a
/// quorum (`matches` holds every member's journaled index, the leader's own included) whose
/// entry is of `term` (Raft's rule: older-term entries commit only beneath a current-term one).
/// Never goes below `commit`.
pub fn quorum_commit(
    matches: &[u64],
    quorum: usize,
    commit: u64,
    term: u64,
    term_at: impl Fn(u64) -> Option<u64>,
) -> u64 {
    if quorum == 0 || matches.len() < quorum {
        return commit;
    }
    let mut sorted = matches.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let candidate = sorted[quorum - 1];
    if candidate > commit && term_at(candidate) == Some(term) { candidate } else { commit }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn log_of(terms: &[u64]) -> Vec<Entry> {
        terms.iter().enumerate().map(|(i, t)| Entry { term: *t, index: i as u64 + 1, data: format!("{i}") }).collect()
    }

    fn last_of(log: &[Entry]) -> EntryId {
        log.last().map(|e| e.id()).unwrap_or_default()
    }

    fn term_at(log: &[Entry]) -> impl Fn(u64) -> Option<u64> + '_ {
        move |i| if i == 0 { Some(0) } else { log.get(i as usize - 1).map(|e| e.term) }
    }

    fn first_of_term(log: &[Entry]) -> impl Fn(u64, u64) -> u64 + '_ {
        move |t, upto| {
            let mut first = upto;
            while first > 1 && log[first as usize - 2].term == t {
                first -= 1;
            }
            first
        }
    }

    /// Applies an append decision to a follower log, like the core does.
    fn apply(follower: &mut Vec<Entry>, check: &AppendCheck, entries: &[Entry]) {
        if let AppendCheck::Accept { truncate_from, skip } = check {
            if let Some(t) = truncate_from {
                follower.truncate(*t as usize - 1);
            }
            follower.extend_from_slice(&entries[*skip..]);
        }
    }

    /// Runs the leader's catch-up loop against a follower until it matches; returns rounds.
    fn sync(leader: &[Entry], follower: &mut Vec<Entry>, term: u64) -> usize {
        let mut next = last_of(follower).index.min(last_of(leader).index) + 1;
        for round in 1..=1000 {
            let prev_index = next - 1;
            let prev = EntryId::new(term_at(leader)(prev_index).unwrap(), prev_index);
            let entries = &leader[prev_index as usize..];
            let check =
                check_append(0, last_of(follower), term_at(follower), first_of_term(follower), term, prev, entries);
            match check {
                AppendCheck::Accept { .. } => {
                    apply(follower, &check, entries);
                    return round;
                }
                AppendCheck::Mismatch { last, conflict } => {
                    let leader_last_of_term = |t: u64| leader.iter().rev().find(|e| e.term == t).map(|e| e.index);
                    next = next_after_mismatch(next, last, conflict, leader_last_of_term);
                }
                AppendCheck::Stale { .. } => unreachable!(),
            }
        }
        panic!("no convergence");
    }

    #[test]
    fn hand_off_goes_to_a_caught_up_functional_follower() {
        let (a, b, c) = ("a".to_string(), "b".to_string(), "c".to_string());
        assert_eq!(choose_successor(10, [(&a, 9, true), (&b, 10, true)]), Some(b.clone()), "only b has everything");
        assert_eq!(choose_successor(10, [(&c, 10, true), (&b, 10, true)]), Some(b.clone()), "ties: smallest name");
        assert_eq!(choose_successor(10, [(&a, 10, false)]), None, "not functional (not synced into the term)");
        assert_eq!(choose_successor(10, [(&a, 9, true), (&c, 3, true)]), None, "nobody caught up yet");
        assert_eq!(choose_successor(10, []), None);
    }

    #[test]
    fn election_prefers_the_most_complete_journal_then_the_elector() {
        let mut r = BTreeMap::new();
        r.insert("a".to_string(), EntryId::new(1, 9));
        r.insert("b".to_string(), EntryId::new(2, 3));
        r.insert("c".to_string(), EntryId::new(2, 3));
        assert_eq!(choose_leader(&r, &"a".to_string()).unwrap(), "b", "term beats length");
        assert_eq!(choose_leader(&r, &"c".to_string()).unwrap(), "c", "tie goes to the elector");
        assert_eq!(choose_leader(&BTreeMap::new(), &"a".to_string()), None);
    }

    #[test]
    fn stale_terms_are_refused() {
        let log = log_of(&[1, 1, 2]);
        let c = check_append(3, last_of(&log), term_at(&log), first_of_term(&log), 2, EntryId::new(2, 3), &[]);
        assert_eq!(c, AppendCheck::Stale { term: 3 });
    }

    #[test]
    fn divergent_suffix_is_truncated_and_replaced() {
        let leader = log_of(&[1, 1, 3, 3]);
        let mut follower = log_of(&[1, 1, 2, 2, 2]);
        sync(&leader, &mut follower, 3);
        assert_eq!(follower, leader);
    }

    #[test]
    fn commit_only_counts_current_term_entries() {
        let log = log_of(&[1, 1, 2]);
        // Index 2 (term 1) is on a quorum, but the leader of term 2 may not commit it alone.
        assert_eq!(quorum_commit(&[3, 2, 1], 2, 0, 2, term_at(&log)), 0);
        assert_eq!(quorum_commit(&[3, 3, 1], 2, 0, 2, term_at(&log)), 3);
        assert_eq!(quorum_commit(&[3, 3, 3], 2, 3, 2, term_at(&log)), 3, "never moves back");
    }

    #[test]
    fn mismatch_backoff_always_progresses() {
        assert_eq!(next_after_mismatch(10, EntryId::new(1, 4), None, |_| None), 5);
        assert_eq!(next_after_mismatch(3, EntryId::new(1, 40), None, |_| None), 2);
        assert_eq!(next_after_mismatch(1, EntryId::new(0, 0), None, |_| None), 1);
        assert_eq!(next_after_mismatch(9, EntryId::new(2, 8), Some((2, 5)), |_| None), 5);
        assert_eq!(next_after_mismatch(9, EntryId::new(2, 8), Some((2, 5)), |_| Some(6)), 7);
    }

    fn arb_terms() -> impl Strategy<Value = Vec<u64>> {
        // Non-decreasing terms, like every real journal.
        prop::collection::vec(0u64..3, 0..30).prop_map(|steps| {
            let mut t = 1;
            steps
                .into_iter()
                .map(|s| {
                    t += s / 2;
                    t
                })
                .collect()
        })
    }

    proptest! {
        /// Whatever a follower holds, the catch-up protocol makes it equal to the leader's
        /// journal when the follower's entries below a point agree (log matching).
        #[test]
        fn sync_converges_to_the_leaders_journal(common in arb_terms(), fsuffix in arb_terms(), extra in 1usize..10) {
            let base = common.last().copied().unwrap_or(1);
            let ft: Vec<u64> = common.iter().copied().chain(fsuffix.iter().map(|t| t + base)).collect();
            // The leader was elected after every term the follower saw, and has appended at
            // least its no-op in its own term.
            let top = ft.iter().max().copied().unwrap_or(1) + 1;
            let lt: Vec<u64> = common.iter().copied().chain(std::iter::repeat_n(top, extra)).collect();
            let leader = log_of(&lt);
            let mut follower = log_of(&ft);
            sync(&leader, &mut follower, top);
            prop_assert_eq!(follower, leader);
        }

        /// The chosen leader's position is at least every reply's.
        #[test]
        fn chosen_leader_is_most_complete(positions in prop::collection::btree_map("[a-e]", (0u64..4, 0u64..10), 1..5)) {
            let replies: BTreeMap<MemberId, EntryId> =
                positions.into_iter().map(|(m, (t, i))| (m, EntryId::new(t, i))).collect();
            let w = choose_leader(&replies, &"c".to_string()).unwrap();
            for v in replies.values() {
                prop_assert!(replies[&w] >= *v);
            }
        }

        /// The commit point never exceeds what a quorum journaled, and never moves back.
        #[test]
        fn commit_is_bounded_by_the_quorum(matches in prop::collection::vec(0u64..20, 1..6), commit in 0u64..20) {
            let log = log_of(&[1; 20]);
            let q = matches.len() / 2 + 1;
            let c = quorum_commit(&matches, q, commit, 1, term_at(&log));
            prop_assert!(c >= commit);
            if c > commit {
                prop_assert!(matches.iter().filter(|m| **m >= c).count() >= q);
            }
        }
    }
}
