//! The replication RPC between members of a group (tarpc over TCP, JSON frames): the election
//! message, "become leader", the leader's group info broadcast and journal appends. Every
//! message carries the sender's term; a member refuses terms older than the one it promised.
//!
//! One process can host many groups (a volume server hosts many volumes), so messages name their
//! group and one [`PeerRouter`] per process dispatches them.
//!
//! Connections are authenticated before any message: the dialer presents the cluster token in
//! a handshake ([`crate::net::dial_peer`]) that the router's listener checks
//! ([`PeerRouter::serve_with`]).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use datom_common::auth::TokenVerifier;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::types::{Entry, EntryId, MemberId};

/// Errors of the protocol; the messages say what happened and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum PbError {
    /// This process hosts no member of that group.
    #[error("this process hosts no member of group {0:?}")]
    UnknownGroup(String),
    /// The member is not the leader.
    #[error("not the leader of term {term}{}; retry against the leader", leader.as_ref().map(|l| format!(" (the leader is {l})")).unwrap_or_default())]
    NotLeader {
        /// The leader, if known.
        leader: Option<MemberId>,
        /// The term this member knows.
        term: u64,
    },
    /// The leader lacks a quorum.
    #[error(
        "the leader is LEADER_WAITING_FOR_QUORUM: {functional} of {replicas} replicas are functional and {quorum} are \
         needed; writes are refused until enough replicas rejoin"
    )]
    WaitingForQuorum {
        /// Functional members, the leader included.
        functional: usize,
        /// Members needed.
        quorum: usize,
        /// Group size.
        replicas: usize,
    },
    /// The leader's ZooKeeper session is suspended.
    #[error(
        "the leader's ZooKeeper session is suspended, so it stopped acknowledging writes; the outcome of a pending \
         write is unknown: retry"
    )]
    Suspended,
    /// The leader lost its quorum with the write pending.
    #[error(
        "the leader lost its quorum before acknowledging (LEADER_WAITING_FOR_QUORUM); the outcome is unknown: retry \
         once enough replicas are back"
    )]
    QuorumLost,
    /// The leader stepped down before acknowledging.
    #[error("the leader of term {term} stepped down before acknowledging; the outcome is unknown: retry")]
    SteppedDown {
        /// The term that ended.
        term: u64,
    },
    /// A message from an older term.
    #[error("stale term {term}: this member has promised term {current}")]
    StaleTerm {
        /// The sender's term.
        term: u64,
        /// Ours.
        current: u64,
    },
    /// The leader could not confirm it still leads.
    #[error("the leader could not confirm its leadership with a quorum in time; retry")]
    Unconfirmed,
    /// Local storage failed.
    #[error("storage error: {0}")]
    Io(String),
    /// Bad request.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The group record is missing.
    #[error("group {0:?} does not exist; create it first (for a volume: `datom volume create {0} --replicas 3`)")]
    NoGroup(String),
    /// The group already has all its replicas.
    #[error(
        "group {group:?} already has its {replicas} replicas enrolled ({enrolled}); start this server as one of them \
         (same --member name) or use another group"
    )]
    GroupFull {
        /// Group.
        group: String,
        /// Group size.
        replicas: usize,
        /// Members enrolled, comma-separated.
        enrolled: String,
    },
    /// ZooKeeper failed.
    #[error("coordination unavailable: {0}")]
    Coordination(String),
}

/// The election message for a new term.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrepareRequest {
    /// Group.
    pub group: String,
    /// The new term.
    pub term: u64,
    /// Who runs the election.
    pub elector: MemberId,
}

/// Answer to [`PrepareRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrepareResponse {
    /// Promised: older terms are refused from now on. `last` is the last durable entry.
    Promised {
        /// Last durable journal entry.
        last: EntryId,
    },
    /// Already promised a higher term.
    Rejected {
        /// That term.
        term: u64,
    },
}

/// "Become leader for `term`".
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BecomeLeaderRequest {
    /// Group.
    pub group: String,
    /// The term.
    pub term: u64,
    /// Who ran the election (or the leader handing off).
    pub elector: MemberId,
    /// Version of the term record saying `elected <you>` for `term`, so the new leader can take
    /// charge with one version-checked write instead of a read and a write.
    #[serde(default)]
    pub version: Option<i32>,
}

/// The leader's group info, broadcast to members that are not functional.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupInfo {
    /// Group.
    pub group: String,
    /// Leader's term.
    pub term: u64,
    /// The leader.
    pub leader: MemberId,
    /// Leader's last entry.
    pub leader_last: EntryId,
    /// Commit point.
    pub commit: u64,
    /// Members in the group now (functional), the leader included.
    pub functional: Vec<MemberId>,
}

/// Answer to [`GroupInfo`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupInfoResponse {
    /// Joining: our last durable entry, to start syncing from.
    Joined {
        /// Last durable entry.
        last: EntryId,
    },
    /// We promised a higher term.
    Stale {
        /// That term.
        term: u64,
    },
}

/// Journal entries from the leader, following `prev`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppendRequest {
    /// Group.
    pub group: String,
    /// Leader's term.
    pub term: u64,
    /// The leader.
    pub leader: MemberId,
    /// Entry before `entries`.
    pub prev: EntryId,
    /// Entries to journal (may be empty: a heartbeat).
    pub entries: Vec<Entry>,
    /// Leader's commit point.
    pub commit: u64,
    /// Leader's last entry index when sending.
    pub leader_last: u64,
}

/// Answer to [`AppendRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppendResponse {
    /// Journaled (fsync'd) up to `matched`.
    Ok {
        /// Highest index now known to match the leader's journal.
        matched: u64,
    },
    /// We promised a higher term.
    Stale {
        /// That term.
        term: u64,
    },
    /// `prev` is not in our journal.
    Mismatch {
        /// Our last entry.
        last: EntryId,
        /// Our term at `prev.index` and its first index.
        conflict: Option<(u64, u64)>,
    },
}

/// The replication service every member serves.
#[tarpc::service]
pub trait PbPeer {
    /// The election message for a new term: promise it and report the last durable entry.
    async fn prepare(req: PrepareRequest) -> Result<PrepareResponse, PbError>;
    /// Asks the member to lead a term it has promised.
    async fn become_leader(req: BecomeLeaderRequest) -> Result<bool, PbError>;
    /// The leader's group info.
    async fn group_info(req: GroupInfo) -> Result<GroupInfoResponse, PbError>;
    /// Journal entries from the leader.
    async fn append(req: AppendRequest) -> Result<AppendResponse, PbError>;
}

/// What a group member does with incoming replication messages.
pub trait PeerEndpoint: Send + Sync + 'static {
    /// Handles [`PbPeer::prepare`].
    fn prepare(&self, req: PrepareRequest) -> BoxFuture<'_, Result<PrepareResponse, PbError>>;
    /// Handles [`PbPeer::become_leader`].
    fn become_leader(&self, req: BecomeLeaderRequest) -> BoxFuture<'_, Result<bool, PbError>>;
    /// Handles [`PbPeer::group_info`].
    fn group_info(&self, req: GroupInfo) -> BoxFuture<'_, Result<GroupInfoResponse, PbError>>;
    /// Handles [`PbPeer::append`].
    fn append(&self, req: AppendRequest) -> BoxFuture<'_, Result<AppendResponse, PbError>>;
}

/// Dispatches replication messages to the process's group members by group name.
#[derive(Clone, Default)]
pub struct PeerRouter {
    groups: Arc<RwLock<HashMap<String, Arc<dyn PeerEndpoint>>>>,
}

impl PeerRouter {
    /// An empty router.
    pub fn new() -> Self {
        PeerRouter::default()
    }

    /// Routes `group`'s messages to `endpoint`.
    pub fn insert(&self, group: &str, endpoint: Arc<dyn PeerEndpoint>) {
        self.groups.write().unwrap().insert(group.to_string(), endpoint);
    }

    /// Stops routing `group`.
    pub fn remove(&self, group: &str) {
        self.groups.write().unwrap().remove(group);
    }

    fn get(&self, group: &str) -> Result<Arc<dyn PeerEndpoint>, PbError> {
        self.groups.read().unwrap().get(group).cloned().ok_or_else(|| PbError::UnknownGroup(group.to_string()))
    }

    /// The tarpc server for this router.
    pub fn server(&self) -> PeerServer {
        PeerServer { router: self.clone() }
    }

    /// Serves the replication RPC on `listener` until `shutdown` resolves, for an open cluster:
    /// [`PeerRouter::serve_with`] without a token check.
    pub async fn serve(self, listener: tokio::net::TcpListener, shutdown: impl std::future::Future<Output = ()>) {
        self.serve_with(listener, None, shutdown).await
    }

    /// Serves the replication RPC on `listener` until `shutdown` resolves. Every connection
    /// first goes through the handshake ([`crate::net::accept_peer`], on the connection's own
    /// task so a silent dialer never holds up the others): with `verifier` (a secure cluster)
    /// only dialers presenting the cluster token get to tarpc; with `None` (an open cluster)
    /// every dialer does. A refused connection never reaches a group, so a forged message
    /// (say, a prepare with a huge term) from a process without the token changes nothing.
    pub async fn serve_with(
        self,
        listener: tokio::net::TcpListener,
        verifier: Option<TokenVerifier>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        use futures::StreamExt as _;
        use tarpc::server::{BaseChannel, Channel as _};
        let service = self.server().serve();
        let accept = async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let service = service.clone();
                let verifier = verifier.clone();
                tokio::spawn(async move {
                    let Some(frames) = crate::net::accept_peer(stream, verifier.as_ref()).await else { return };
                    let transport = tarpc::serde_transport::new(frames, crate::net::Json::default());
                    BaseChannel::with_defaults(transport)
                        .execute(service)
                        .for_each(|fut| async {
                            tokio::spawn(fut);
                        })
                        .await;
                });
            }
        };
        tokio::select! {
            _ = accept => {}
            _ = shutdown => {}
        }
    }
}

/// The tarpc server side of [`PbPeer`].
#[derive(Clone)]
pub struct PeerServer {
    router: PeerRouter,
}

impl PbPeer for PeerServer {
    async fn prepare(self, _: tarpc::context::Context, req: PrepareRequest) -> Result<PrepareResponse, PbError> {
        let ep = self.router.get(&req.group)?;
        ep.prepare(req).await
    }
    async fn become_leader(self, _: tarpc::context::Context, req: BecomeLeaderRequest) -> Result<bool, PbError> {
        let ep = self.router.get(&req.group)?;
        ep.become_leader(req).await
    }
    async fn group_info(self, _: tarpc::context::Context, req: GroupInfo) -> Result<GroupInfoResponse, PbError> {
        let ep = self.router.get(&req.group)?;
        ep.group_info(req).await
    }
    async fn append(self, _: tarpc::context::Context, req: AppendRequest) -> Result<AppendResponse, PbError> {
        let ep = self.router.get(&req.group)?;
        ep.append(req).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use datom_common::auth::{AuthFile, TokenVerifier};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    const T: Duration = Duration::from_secs(10);

    /// A router hosting no group on a loopback port: a message that gets through is answered
    /// `UnknownGroup`.
    async fn serve(verifier: Option<TokenVerifier>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(PeerRouter::new().serve_with(listener, verifier, futures::future::pending()));
        addr
    }

    async fn client(addr: &str, token: Option<&str>) -> std::io::Result<PbPeerClient> {
        let transport = crate::net::dial_peer(addr, T, token).await?;
        Ok(PbPeerClient::new(tarpc::client::Config::default(), transport).spawn())
    }

    async fn prepare(c: &PbPeerClient, term: u64) -> Result<PrepareResponse, PbError> {
        let req = PrepareRequest { group: "g".into(), term, elector: "x".into() };
        c.prepare(datom_common::rpc::ctx(T), req).await.expect("an answer")
    }

    #[tokio::test]
    async fn only_dialers_with_the_cluster_token_reach_a_secure_router() {
        let auth = AuthFile::generate();
        let addr = serve(Some(TokenVerifier::new(&auth))).await;
        let c = client(&addr, Some(&auth.token())).await.expect("the right token is accepted");
        assert_eq!(prepare(&c, 1).await, Err(PbError::UnknownGroup("g".into())));
        for token in [None, Some(AuthFile::generate().token())] {
            let e = client(&addr, token.as_deref()).await.expect_err("refused");
            assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
            let msg = e.to_string();
            assert!(msg.contains(&addr) && msg.contains("wrong or missing cluster token"), "{msg}");
        }
    }

    #[tokio::test]
    async fn an_open_router_takes_dialers_with_or_without_a_token() {
        let addr = serve(None).await;
        for token in [None, Some(AuthFile::generate().token())] {
            let c = client(&addr, token.as_deref()).await.expect("accepted");
            assert_eq!(prepare(&c, 1).await, Err(PbError::UnknownGroup("g".into())));
        }
    }

    #[tokio::test]
    async fn a_silent_connection_does_not_hold_up_others_and_is_dropped() {
        let auth = AuthFile::generate();
        let addr = serve(Some(TokenVerifier::new(&auth))).await;
        let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let c = client(&addr, Some(&auth.token())).await.expect("served while the silent one waits");
        assert_eq!(prepare(&c, 1).await, Err(PbError::UnknownGroup("g".into())));
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(crate::net::HELLO_TIMEOUT + T, silent.read(&mut buf)).await;
        assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "closed without an answer: {n:?}");
    }

    #[tokio::test]
    async fn a_message_pipelined_after_a_wrong_hello_is_never_handled() {
        let auth = AuthFile::generate();
        let addr = serve(Some(TokenVerifier::new(&auth))).await;
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let frame = |v: serde_json::Value| {
            let j = serde_json::to_vec(&v).unwrap();
            [&(j.len() as u32).to_be_bytes()[..], &j].concat()
        };
        let msg = tarpc::ClientMessage::Request(tarpc::Request {
            context: datom_common::rpc::ctx(T),
            id: 1,
            message: PbPeerRequest::Prepare {
                req: PrepareRequest { group: "g".into(), term: u64::MAX / 2, elector: "x".into() },
            },
        });
        let mut bytes = frame(serde_json::json!({"schema": 1, "token": AuthFile::generate().token()}));
        bytes.extend(frame(serde_json::to_value(&msg).unwrap()));
        s.write_all(&bytes).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(T, s.read_to_end(&mut got)).await.expect("closed").expect("read");
        let len = u32::from_be_bytes(got[..4].try_into().unwrap()) as usize;
        assert_eq!(got.len(), 4 + len, "the refusal and nothing else: {:?}", String::from_utf8_lossy(&got));
        let answer: crate::net::HelloAnswer = serde_json::from_slice(&got[4..]).unwrap();
        assert!(!answer.ok && answer.error.unwrap().contains("wrong or missing cluster token"));
    }
}
