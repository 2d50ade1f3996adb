//! Primary-backup replication (seed 003, "Replication / Primary backup protocol"): the
//! `PBMember` state machine ([`state`]), its ZooKeeper driver ([`driver`]), the replicated
//! journal ([`journal`], [`core`]) and the replication RPC ([`rpc`], over [`net`], whose
//! connections are authenticated with the cluster token by a handshake).
//!
//! A service replicates itself by implementing [`core::Replica`] (its db's position, how to
//! apply committed entries, and the seed's hooks `onBecomeLeader()` / `onBecomeFollower()`),
//! then starting a [`driver::GroupMember`] per group it serves. Writes go through
//! [`core::Core::submit`] on the leader and are acknowledged once a quorum has journaled them;
//! reads use [`core::Core::read_barrier`]. `docs/primary-backup.md` describes the protocol and
//! why it is safe.

pub mod clients;
pub mod core;
pub mod driver;
pub mod journal;
pub mod log;
pub mod net;
pub mod rpc;
pub mod state;
pub mod types;

pub use clients::{CachePeerClients, PeerClients, set_cluster_token};
pub use core::{Core, CoreStatus, Replica};
pub use driver::{GroupMember, MemberConfig, Timings};
pub use rpc::{PbError, PeerRouter};
pub use state::PBMember;
pub use types::{Entry, EntryId, MemberId, MemberState, Role};
