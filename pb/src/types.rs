//! The vocabulary of the protocol: member ids, journal entry ids, entries, member states and the
//! group records kept in ZooKeeper under `/datom/groups/<group>/…` (see `docs/znodes.md`).

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Schema version written into every record.
pub const SCHEMA: u32 = 1;

fn schema() -> u32 {
    SCHEMA
}

/// A member's name: stable across restarts (its journal's identity), a valid datom name.
pub type MemberId = String;

/// Identifies a journal entry. Ordered by term first, then index: this is the order the
/// election uses to find the most complete journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct EntryId {
    /// Term of the leader that created the entry.
    pub term: u64,
    /// Position in the journal, from 1; 0 means "no entry".
    pub index: u64,
}

impl EntryId {
    /// The id before the first entry.
    pub const ZERO: EntryId = EntryId { term: 0, index: 0 };

    /// Shorthand constructor.
    pub fn new(term: u64, index: u64) -> Self {
        EntryId { term, index }
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.term, self.index)
    }
}

/// One journal entry: an operation of the replicated service, opaque to this library.
/// An empty `data` is the no-op a new leader appends to commit its term.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Term of the leader that created it.
    pub term: u64,
    /// Position in the journal.
    pub index: u64,
    /// The service's encoded operation (empty for the leader's no-op).
    pub data: String,
}

impl Entry {
    /// This entry's id.
    pub fn id(&self) -> EntryId {
        EntryId { term: self.term, index: self.index }
    }
}

/// The seed's member states, grouped by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MemberState {
    /// Waiting to be contacted by the leader (or to find there is none).
    FollowerWaitToJoinGroup,
    /// Catching up the journal from the leader.
    FollowerSyncing,
    /// In the group: journaling the leader's writes.
    FollowerFunctional,
    /// No leader: queued for the group coordination lock.
    EcAcquireLock,
    /// Holds the lock, has set the status to electing; waits for a quorum of members.
    EcWaitingForQuorum,
    /// Collecting the members' journal positions and choosing the leader.
    EcElectionInProgress,
    /// Leader, but fewer than a quorum of members are synced into its term: refuses writes.
    LeaderWaitingForQuorum,
    /// Leader with a quorum: accepts and acknowledges writes.
    LeaderFunctional,
}

/// The three roles of seed 003.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// FOLLOWER_* states.
    Follower,
    /// EC_* states.
    Elector,
    /// LEADER_* states.
    Leader,
}

impl MemberState {
    /// Every state, in declaration order.
    pub const ALL: [MemberState; 8] = [
        MemberState::FollowerWaitToJoinGroup,
        MemberState::FollowerSyncing,
        MemberState::FollowerFunctional,
        MemberState::EcAcquireLock,
        MemberState::EcWaitingForQuorum,
        MemberState::EcElectionInProgress,
        MemberState::LeaderWaitingForQuorum,
        MemberState::LeaderFunctional,
    ];

    /// The role this state belongs to.
    pub fn role(self) -> Role {
        use MemberState::*;
        match self {
            FollowerWaitToJoinGroup | FollowerSyncing | FollowerFunctional => Role::Follower,
            EcAcquireLock | EcWaitingForQuorum | EcElectionInProgress => Role::Elector,
            LeaderWaitingForQuorum | LeaderFunctional => Role::Leader,
        }
    }

    /// The seed's name, e.g. `FOLLOWER_FUNCTIONAL`.
    pub fn name(self) -> &'static str {
        use MemberState::*;
        match self {
            FollowerWaitToJoinGroup => "FOLLOWER_WAIT_TO_JOIN_GROUP",
            FollowerSyncing => "FOLLOWER_SYNCING",
            FollowerFunctional => "FOLLOWER_FUNCTIONAL",
            EcAcquireLock => "EC_ACQUIRE_LOCK",
            EcWaitingForQuorum => "EC_WAITING_FOR_QUORUM",
            EcElectionInProgress => "EC_ELECTION_IN_PROGRESS",
            LeaderWaitingForQuorum => "LEADER_WAITING_FOR_QUORUM",
            LeaderFunctional => "LEADER_FUNCTIONAL",
        }
    }
}

impl fmt::Display for MemberState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Majority of `replicas`: the number of members that must journal a write before it is
/// acknowledged, and that must answer an election.
pub fn quorum(replicas: usize) -> usize {
    replicas / 2 + 1
}

/// `/datom/groups/<group>`: the group record (for a volume, written by `datom volume create`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// Record schema version.
    #[serde(default = "schema")]
    pub schema: u32,
    /// What the group replicates (`volume`).
    pub kind: String,
    /// Number of replicas; the quorum is a majority of it.
    pub replicas: u32,
    /// Members admitted to the group, in order of first join; at most `replicas`.
    #[serde(default)]
    pub enrolled: Vec<MemberId>,
    /// When the group was created.
    pub created_at: DateTime<Utc>,
}

/// `/datom/groups/<group>/members/<member>`: ephemeral registration of a running member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// Record schema version.
    #[serde(default = "schema")]
    pub schema: u32,
    /// Member name.
    pub member: MemberId,
    /// Replication RPC address (`host:port`).
    pub address: String,
    /// The service's client API address, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_address: Option<String>,
    /// Process id.
    pub pid: u32,
    /// When this process started.
    pub started_at: DateTime<Utc>,
}

/// Where the group's coordination stands (the seed's "status").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TermStatus {
    /// An elector holds the lock and is electing a leader for `term`.
    Electing,
    /// The elector chose `leader`; it has not taken charge yet.
    Elected,
    /// `leader` holds the lock and is in charge for `term`.
    Leading,
}

/// `/datom/groups/<group>/term`: the term and who coordinates it. Only ever changed with a
/// version-checked write, so each term has exactly one elector and at most one leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermRecord {
    /// Record schema version.
    #[serde(default = "schema")]
    pub schema: u32,
    /// The term: increases with every election.
    pub term: u64,
    /// Electing, elected or leading.
    pub status: TermStatus,
    /// The member that ran the election for this term.
    pub elector: Option<MemberId>,
    /// The leader chosen for this term (absent while electing).
    pub leader: Option<MemberId>,
    /// When the record was written.
    pub updated_at: DateTime<Utc>,
}

/// One state transition, kept in a member's state record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// Previous state.
    pub from: MemberState,
    /// New state.
    pub to: MemberState,
    /// Term after the transition.
    pub term: u64,
    /// When it happened.
    pub at: DateTime<Utc>,
}

/// `/datom/groups/<group>/states/<member>`: ephemeral; what a member is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStateRecord {
    /// Record schema version.
    #[serde(default = "schema")]
    pub schema: u32,
    /// Member name.
    pub member: MemberId,
    /// The seed's state name.
    pub state: MemberState,
    /// Role of that state.
    pub role: Role,
    /// The highest term this member has promised or joined.
    pub term: u64,
    /// The leader it follows (or itself).
    pub leader: Option<MemberId>,
    /// Last journal entry.
    pub last: EntryId,
    /// Highest entry known committed.
    pub commit: u64,
    /// Highest entry applied to the service's db.
    pub applied: u64,
    /// Entries behind the leader's journal (0 for the leader).
    pub lag: u64,
    /// Leader only: whether it acknowledges writes now (functional and ZooKeeper connected).
    pub acking: bool,
    /// The most recent transitions, oldest first (at most 16).
    pub transitions: Vec<Transition>,
    /// When this record was written.
    pub updated_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_order_by_term_then_index() {
        assert!(EntryId::new(2, 1) > EntryId::new(1, 100));
        assert!(EntryId::new(2, 5) > EntryId::new(2, 4));
        assert_eq!(EntryId::ZERO, EntryId::default());
    }

    #[test]
    fn state_names_are_the_seeds() {
        for s in MemberState::ALL {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.name()));
            assert_eq!(serde_json::from_str::<MemberState>(&json).unwrap(), s);
        }
        assert_eq!(MemberState::EcAcquireLock.role(), Role::Elector);
    }

    #[test]
    fn quorum_is_a_majority() {
        assert_eq!(quorum(1), 1);
        assert_eq!(quorum(2), 2);
        assert_eq!(quorum(3), 2);
        assert_eq!(quorum(5), 3);
    }
}
