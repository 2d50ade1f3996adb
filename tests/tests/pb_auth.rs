//! Replication connections dialed through the shared connection cache on a secure cluster
//! (issues 8 and 11): the cluster token this process presents is process-wide
//! (`datom_pb::set_cluster_token`), so these tests get their own test binary. Real ZooKeeper;
//! the members are in-process routers, so the cache's own error is what the test sees.

use std::time::Duration;

use datom_common::auth::{AuthFile, TokenVerifier};
use datom_common::cache::{CacheError, ConnectionCache, Peer};
use datom_common::paths;
use datom_pb::rpc::{PbPeerClient, PrepareRequest};
use datom_pb::types::MemberRecord;
use datom_pb::{PbError, PeerRouter};
use datom_tests::{coord, fresh_zk, wait_for};

const LONG: Duration = Duration::from_secs(60);

fn member_record(member: &str, address: &str) -> Vec<u8> {
    let rec = MemberRecord {
        schema: 1,
        member: member.into(),
        address: address.into(),
        client_address: None,
        pid: std::process::id(),
        started_at: chrono::Utc::now(),
    };
    datom_common::coord::encode("member", &rec).unwrap()
}

/// A replication listener hosting no group, checking tokens with `verifier`.
async fn serve(verifier: Option<TokenVerifier>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(PeerRouter::new().serve_with(listener, verifier, futures::future::pending()));
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_refusing_this_process_token_is_peer_unavailable_with_the_reason() {
    // This process presents its cluster's token; m1 belongs to another cluster (another
    // secret), m2 to this one, m3 to an open cluster.
    let ours = AuthFile::generate();
    datom_pb::set_cluster_token(Some(ours.token())).unwrap();
    datom_pb::set_cluster_token(Some(ours.token())).expect("the same token again is fine");
    let err = datom_pb::set_cluster_token(None).expect_err("one process, one cluster");
    assert!(err.contains("another cluster token"), "{err}");

    let zk = fresh_zk("pb-auth-cache").await;
    let coord = coord(&zk).await;
    coord.ensure_path(&paths::group_members("g")).await.unwrap();
    let cache = ConnectionCache::start(coord.clone());
    let mut regs = Vec::new();
    for (m, verifier) in
        [("m1", Some(TokenVerifier::new(&AuthFile::generate()))), ("m2", Some(TokenVerifier::new(&ours))), ("m3", None)]
    {
        let address = serve(verifier).await;
        let reg = coord.register_ephemeral(&paths::group_member("g", m), member_record(m, &address), LONG).await;
        regs.push(reg.unwrap());
        let peer = Peer::group_member("g", m);
        wait_for(&format!("the cache to register {peer}"), LONG, || async {
            (cache.address(&peer).as_deref() == Some(address.as_str())).then_some(())
        })
        .await;
    }

    let err = tokio::time::timeout(LONG, cache.get_connection::<PbPeerClient>(&Peer::group_member("g", "m1")))
        .await
        .expect("never hangs")
        .expect_err("refused");
    assert!(matches!(err, CacheError::PeerUnavailable { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("wrong or missing cluster token") && msg.contains("--auth-file"), "{msg}");
    assert_eq!(cache.stats().dial_failures, 1, "one dial attempt, refused");

    for m in ["m2", "m3"] {
        let c = wait_for(&format!("a connection to {m}"), LONG, || async {
            cache.get_connection::<PbPeerClient>(&Peer::group_member("g", m)).await.ok()
        })
        .await;
        let req = PrepareRequest { group: "g".into(), term: 1, elector: "x".into() };
        let r = c.prepare(datom_common::rpc::ctx(Duration::from_secs(5)), req).await.unwrap();
        assert!(matches!(r, Err(PbError::UnknownGroup(_))), "{m} answered: {r:?}");
    }
    cache.close();
}
