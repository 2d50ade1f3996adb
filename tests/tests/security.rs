//! Security (issue 11): a secure cluster's znodes carry digest ACLs (world reads, only the
//! datom identity writes), ephemerals keep them after session expiry, mutating RPC calls need
//! the cluster token, and bad input is refused before any write. Real ZooKeeper, real binaries.
//! Multi-threaded runtimes: the tests run CLI commands synchronously, and the test's own
//! session must keep its heartbeats going meanwhile.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use datom_common::auth::AuthFile;
use datom_common::records::{HardwareReport, InstanceRecord, LiveRecord, NodeRecord, ServiceState};
use datom_common::rpc::{AddNodeRequest, ConfigError, ctx, dial_config_service};
use datom_common::{Coord, paths};
use datom_tests::{
    addnode, config_service, datom, fresh_zk, harness, node_agent, stderr, stdout, test_config, wait_for,
};
use nix::sys::signal::Signal;
use zookeeper_client as zk;

const T: Duration = Duration::from_secs(30);

fn fake_hw(machine: &str) -> HardwareReport {
    HardwareReport {
        machine_id: machine.into(),
        hostname: "h".into(),
        os: "Debian 12".into(),
        kernel: "6.1".into(),
        cpu_model: "test".into(),
        arch: "x86_64".into(),
        cpus: 1,
        memory_bytes: 1 << 30,
        disks: vec![],
        nics: vec![],
    }
}

/// `datom init --secure` in a fresh chroot: returns (zk, dir holding auth.toml and token).
async fn secure_init(test: &str) -> (String, tempfile::TempDir) {
    let zk = fresh_zk(test).await;
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("auth.toml");
    let token = dir.path().join("token");
    let out = datom(&zk, &["--auth-file", s(&auth), "init", "--secure", "--token-out", s(&token)]);
    assert!(out.status.success(), "init --secure: {}", stderr(&out));
    for f in [&auth, &token] {
        assert_eq!(std::fs::metadata(f).unwrap().permissions().mode() & 0o777, 0o600, "{}", f.display());
    }
    (zk, dir)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

async fn authed_coord(zk: &str, auth: &Path) -> Coord {
    Coord::connect(test_config(zk).with_credentials(&AuthFile::load(auth).unwrap())).await.unwrap()
}

/// A plain zookeeper-client session with no credentials, and the chroot prefix to use with it.
async fn anonymous(zk: &str) -> (zk::Client, String) {
    let server = zk.split('/').next().unwrap();
    let chroot = zk[server.len()..].to_string();
    (zk::Client::connect(server).await.unwrap(), chroot)
}

fn locked(acl: &[zk::Acl], auth: &AuthFile) -> bool {
    let digest = auth.digest_id();
    !Coord::acl_is_open(acl)
        && acl.iter().any(|a| a.scheme() == "digest" && a.id() == digest && a.permission() == zk::Permission::ALL)
        && acl.iter().any(|a| a.scheme() == "world" && a.permission() == zk::Permission::READ)
}

/// Every znode under `root`, depth first.
async fn walk(c: &Coord, root: &str) -> Vec<String> {
    let mut out = vec![];
    let mut stack = vec![root.to_string()];
    while let Some(p) = stack.pop() {
        for child in c.children(&p).await.unwrap_or_default() {
            stack.push(paths::join(&p, &child));
        }
        out.push(p);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t01_secure_cluster_world_reads_and_cannot_write_and_ephemerals_keep_the_acl() {
    let (zk, dir) = secure_init("sec-acl").await;
    let auth_path = dir.path().join("auth.toml");
    let auth = AuthFile::load(&auth_path).unwrap();
    let token = dir.path().join("token");
    let (_cs, _) = config_service(&zk, "cs-sec", &["--auth-file", s(&auth_path)]);
    let c = authed_coord(&zk, &auth_path).await;
    datom_tests::wait_active(&c, T).await;

    // Joining needs the token: refused without it, nothing registered; accepted with it.
    let root = tempfile::tempdir().unwrap();
    let out = addnode(&zk, root.path(), "n1", &["--machine-id", "m1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("permission denied"), "{}", stderr(&out));
    assert!(c.exists(&paths::node("n1")).await.unwrap().is_none(), "nothing registered");
    let out = addnode(&zk, root.path(), "n1", &["--machine-id", "m1", "--token-file", s(&token)]);
    assert!(out.status.success(), "{}", stderr(&out));

    // The agent runs with the credentials; a service runs on it.
    let agent = node_agent(&zk, root.path(), "agent-n1", &["--auth-file", s(&auth_path)]);
    let live = paths::node_live("n1");
    let first = wait_for("agent live", T, || async { c.get::<LiveRecord>(&live).await.ok().flatten() }).await;
    let spec_dir = tempfile::tempdir().unwrap();
    let spec = spec_dir.path().join("sleeper.toml");
    std::fs::write(&spec, "name = \"sleeper\"\ntype = \"process\"\ncommand = \"sleep\"\nargs = [\"300\"]\n").unwrap();
    let out = datom(&zk, &["--auth-file", s(&auth_path), "service", "apply", s(&spec)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = datom(&zk, &["--auth-file", s(&auth_path), "startservice", "sleeper", "--node", "n1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let inst = paths::service_instance("sleeper", "n1");
    wait_for("sleeper in service", T, || async {
        let v = c.get::<InstanceRecord>(&inst).await.ok().flatten()?;
        (v.value.state == ServiceState::InService).then_some(())
    })
    .await;

    // Without credentials: reads work, every write is refused.
    let (anon, chroot) = anonymous(&zk).await;
    let p = |path: &str| format!("{chroot}{path}");
    let (data, _) = anon.get_data(&p(&paths::node("n1"))).await.unwrap();
    let rec: NodeRecord = serde_json::from_slice(&data).unwrap();
    assert_eq!(rec.name, "n1");
    assert!(anon.get_data(&p(&live)).await.is_ok(), "world reads the live znode");
    assert_eq!(anon.list_children(&p(paths::NODES)).await.unwrap(), vec!["n1".to_string()]);
    let create = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    for (what, res) in [
        ("create a node", anon.create(&p(&paths::node("evil")), b"{}", &create).await.map(|_| ())),
        ("create under a node", anon.create(&p(&format!("{}/x", paths::node("n1"))), b"{}", &create).await.map(|_| ())),
        ("create a service", anon.create(&p(&paths::service("evil")), b"{}", &create).await.map(|_| ())),
        ("set a node", anon.set_data(&p(&paths::node("n1")), b"{}", None).await.map(|_| ())),
        ("set an instance", anon.set_data(&p(&inst), b"{}", None).await.map(|_| ())),
        ("delete the live znode", anon.delete(&p(&live), None).await),
        ("delete an instance", anon.delete(&p(&inst), None).await),
        ("change an ACL", anon.set_acl(&p(&paths::node("n1")), &zk::Acls::anyone_all(), None).await.map(|_| ())),
    ] {
        assert_eq!(res, Err(zk::Error::NoAuth), "an anonymous client could {what}");
    }
    // The CLI without credentials is refused with a pointer to --auth-file, and changes nothing.
    let out = datom(&zk, &["stopservice", "sleeper", "--node", "n1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--auth-file"), "{}", stderr(&out));
    assert_eq!(c.get::<InstanceRecord>(&inst).await.unwrap().unwrap().value.state, ServiceState::InService);

    // Redundancy commands write ZooKeeper directly: the ACL is their authentication.
    let route_file = spec_dir.path().join("routes.json");
    let create = |auth: Option<&Path>| {
        let mut args = vec![];
        if let Some(a) = auth {
            args.extend(["--auth-file", s(a)]);
        }
        args.extend(["create_node", "-i", "1", "--node", "n1", "--peer", "n2", "-m", "primary", "-n", "10.0.0.1"]);
        args.extend(["-t", "rt-demo", "-r", "10.50.0.0/16", "-d", "file", "--path", s(&route_file)]);
        datom(&zk, &args)
    };
    let out = create(None);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--auth-file"), "{}", stderr(&out));
    assert!(c.exists(&paths::redundancy(1)).await.unwrap().is_none(), "nothing written");
    let out = create(Some(&auth_path));
    assert!(out.status.success(), "{}", stderr(&out));

    // Every znode datom created (init, config service, addnode, agent, CLI) carries the ACL.
    for path in walk(&c, paths::ROOT).await {
        let acl = c.get_acl(&path).await.unwrap();
        assert!(locked(&acl, &auth), "{path} has ACL {acl:?}");
    }

    // Session expiry (agent stopped past its 2 s session): the re-created live znode keeps the ACL.
    agent.signal(Signal::SIGSTOP);
    wait_for("the stopped agent's session to expire", T, || async {
        c.exists(&live).await.ok().and_then(|s| s.is_none().then_some(()))
    })
    .await;
    agent.signal(Signal::SIGCONT);
    let again = wait_for("live re-created by a new session", T, || async {
        let v = c.get::<LiveRecord>(&live).await.ok().flatten()?;
        (v.ephemeral_owner != first.ephemeral_owner).then_some(v)
    })
    .await;
    assert_eq!(again.value.pid, first.value.pid, "the same agent re-created it");
    let acl = c.get_acl(&live).await.unwrap();
    assert!(locked(&acl, &auth), "re-created live znode has ACL {acl:?}");
    assert_eq!(anon.delete(&p(&live), None).await, Err(zk::Error::NoAuth));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t02_rpc_calls_without_or_with_a_wrong_token_are_refused_and_change_nothing() {
    let (zk, dir) = secure_init("sec-rpc").await;
    let auth_path = dir.path().join("auth.toml");
    let auth = AuthFile::load(&auth_path).unwrap();
    let (_cs, addr) = config_service(&zk, "cs-rpc", &["--auth-file", s(&auth_path)]);
    let c = authed_coord(&zk, &auth_path).await;
    datom_tests::wait_active(&c, T).await;
    let client = dial_config_service(&addr, Duration::from_secs(5)).await.unwrap();
    let wrong = Some(AuthFile::generate().token());
    let right = Some(auth.token());
    let req = |name: &str| AddNodeRequest { name: name.into(), hardware: fake_hw("m1"), services: vec![] };

    for token in [None, wrong.clone(), Some("not hex".to_string())] {
        let res = client.add_node(ctx(T), req("n1"), token.clone()).await.unwrap();
        assert!(matches!(res, Err(ConfigError::PermissionDenied(_))), "{token:?}: {res:?}");
    }
    assert!(c.children(paths::NODES).await.unwrap().is_empty(), "nothing registered");
    // A path-escaping name is refused even with the token, and nothing is written.
    let res = client.add_node(ctx(T), req("../evil"), right.clone()).await.unwrap();
    assert!(matches!(res, Err(ConfigError::InvalidName(ref m)) if m.contains("..")), "{res:?}");
    assert!(c.children(paths::NODES).await.unwrap().is_empty());

    let rec = client.add_node(ctx(T), req("n1"), right.clone()).await.unwrap().unwrap();
    let before = c.get::<NodeRecord>(&paths::node("n1")).await.unwrap().unwrap();
    for token in [None, wrong.clone()] {
        let res = client.set_node_services(ctx(T), "n1".into(), vec!["web".into()], token.clone()).await.unwrap();
        assert!(matches!(res, Err(ConfigError::PermissionDenied(_))), "{res:?}");
        let res = client.remove_node(ctx(T), "n1".into(), token.clone()).await.unwrap();
        assert!(matches!(res, Err(ConfigError::PermissionDenied(_))), "{res:?}");
    }
    let after = c.get::<NodeRecord>(&paths::node("n1")).await.unwrap().unwrap();
    assert_eq!((after.value, after.version), (before.value, before.version), "unchanged");
    // Reads need no token; with the token, changes go through.
    assert_eq!(client.get_node(ctx(T), "n1".into()).await.unwrap().unwrap(), rec);
    let changed = client.set_node_services(ctx(T), "n1".into(), vec!["web".into()], right.clone()).await.unwrap();
    assert_eq!(changed.unwrap().services, vec!["web"]);
    client.remove_node(ctx(T), "n1".into(), right).await.unwrap().unwrap();
    assert!(c.exists(&paths::node("n1")).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t03_registered_ephemeral_keeps_the_acl_after_expiry_in_process() {
    let zk = fresh_zk("sec-eph").await;
    let auth = AuthFile::generate();
    let c = Coord::connect(test_config(&zk).with_credentials(&auth)).await.unwrap();
    c.ensure_path("/svc").await.unwrap();
    let h = c.register_ephemeral("/svc/e", b"{\"schema\":1}".to_vec(), Duration::from_secs(5)).await.unwrap();
    let owner = c.exists("/svc/e").await.unwrap().unwrap().ephemeral_owner;
    assert!(locked(&c.get_acl("/svc").await.unwrap(), &auth), "mkdir carries the ACL");
    harness::expire_session(&zk, c.session_info().await.unwrap()).await.unwrap();
    wait_for("re-created in a new session", T, || async {
        let st = c.exists("/svc/e").await.ok().flatten()?;
        (st.ephemeral_owner != owner && st.ephemeral_owner != 0).then_some(())
    })
    .await;
    assert!(locked(&c.get_acl("/svc/e").await.unwrap(), &auth));
    let (anon, chroot) = anonymous(&zk).await;
    assert_eq!(anon.delete(&format!("{chroot}/svc/e"), None).await, Err(zk::Error::NoAuth));
    drop(h);
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t04_bad_input_is_refused_before_any_write() {
    let (zk, dir) = secure_init("sec-input").await;
    let auth_path = dir.path().join("auth.toml");
    let c = authed_coord(&zk, &auth_path).await;

    // A secret file readable by others is refused by every binary, with the fix.
    let loose: PathBuf = dir.path().join("loose.toml");
    std::fs::copy(&auth_path, &loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = datom(&zk, &["--auth-file", s(&loose), "nodes"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
    let (mut cs, _) = config_service(&zk, "cs-loose", &["--auth-file", s(&loose)]);
    assert!(!cs.wait_exit(T).expect("config service exits").success());
    assert!(cs.output().contains("chmod 600"), "{}", cs.output());

    // A `../` name is refused before anything is contacted.
    let root = tempfile::tempdir().unwrap();
    let out = addnode(&zk, root.path(), "../evil", &["--machine-id", "m1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("../evil"), "{}", stderr(&out));
    assert!(!root.path().join("node.json").exists());
    let out = datom(&zk, &["--auth-file", s(&auth_path), "startservice", "../evil", "--node", "n1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("../evil"), "{}", stderr(&out));

    // An oversized spec is refused before it is read or written.
    let big = dir.path().join("big.toml");
    let mut text = String::from("name = \"big\"\ntype = \"process\"\ncommand = \"sleep\"\n");
    text.push_str(&format!("# {}\n", "x".repeat(datom_common::spec::MAX_SPEC_BYTES)));
    std::fs::write(&big, text).unwrap();
    let out = datom(&zk, &["--auth-file", s(&auth_path), "service", "apply", s(&big)]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("limit"), "{}", stderr(&out));
    assert!(c.exists(&paths::service("big")).await.unwrap().is_none());

    // An oversized record is refused by the coordination client before the write.
    let huge = serde_json::json!({ "schema": 1, "blob": "x".repeat(datom_common::coord::MAX_RECORD_BYTES) });
    let err = c.set(paths::ROOT, &huge, None).await.unwrap_err();
    assert!(err.to_string().contains("limit") || err.to_string().contains("bytes"), "{err}");
    assert!(c.get::<serde_json::Value>(paths::ROOT).await.unwrap().unwrap().value.get("blob").is_none());
    let raw = vec![b' '; datom_common::coord::MAX_RECORD_BYTES + 1];
    let err = c.set_raw(paths::ROOT, &raw, None).await.unwrap_err();
    assert!(matches!(err, datom_common::CoordError::TooLarge { .. }), "raw writes are bounded too: {err}");
}

/// A CA and a certificate for 127.0.0.1 signed by it, as PEM files in `dir`: (ca, cert, key).
fn test_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let (ca_p, cert_p, key_p) = (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&ca_p, ca.pem()).unwrap();
    std::fs::write(&cert_p, leaf.pem()).unwrap();
    std::fs::write(&key_p, leaf_key.serialize_pem()).unwrap();
    (ca_p, cert_p, key_p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t05_config_service_rpc_over_tls() {
    let (zk, dir) = secure_init("sec-tls").await;
    let auth_path = dir.path().join("auth.toml");
    let (ca, cert, key) = test_pki(dir.path());
    let (_cs, addr) =
        config_service(&zk, "cs-tls", &["--auth-file", s(&auth_path), "--tls-cert", s(&cert), "--tls-key", s(&key)]);
    let c = authed_coord(&zk, &auth_path).await;
    datom_tests::wait_active(&c, T).await;

    // A plain-TCP client gets no answer from the TLS port; a client trusting another CA is refused.
    let root = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    let out =
        addnode(&zk, root.path(), "n1", &["--machine-id", "m1", "--token-file", s(&token), "--rpc-timeout", "1500"]);
    assert!(!out.status.success(), "plain TCP to a TLS port must fail");
    let other = tempfile::tempdir().unwrap();
    let (other_ca, _, _) = test_pki(other.path());
    let args = ["--machine-id", "m1", "--token-file", s(&token), "--rpc-timeout", "1500", "--tls-ca", s(&other_ca)];
    let out = addnode(&zk, root.path(), "n1", &args);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("TLS handshake"), "{}", stderr(&out));
    assert!(c.exists(&paths::node("n1")).await.unwrap().is_none());

    // With the right CA (and the token) the node joins over TLS.
    let out = addnode(&zk, root.path(), "n1", &["--machine-id", "m1", "--token-file", s(&token), "--tls-ca", s(&ca)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let tls = datom_common::tls::client_config(&ca).unwrap();
    let client = datom_common::tls::dial_config_service(&addr, Duration::from_secs(5), Some(tls)).await.unwrap();
    assert_eq!(client.get_node(ctx(T), "n1".into()).await.unwrap().unwrap().name, "n1");
    let res = client.remove_node(ctx(T), "n1".into(), None).await.unwrap();
    assert!(matches!(res, Err(ConfigError::PermissionDenied(_))), "TLS does not replace the token: {res:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t06_volume_writes_need_the_cluster_token() {
    let (zk, dir) = secure_init("sec-volume").await;
    let auth = dir.path().join("auth.toml");
    let out = datom(&zk, &["--auth-file", s(&auth), "volume", "create", "vol", "--replicas", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let data = dir.path().join("m1");
    let port = harness::free_port();
    let mut cmd = std::process::Command::new(datom_tests::bin("datom-volume-server"));
    cmd.args(["--zk", &zk, "--auth-file", s(&auth), "--session-timeout", "2000", "--member", "m1", "--volume", "vol"])
        .arg("--data-dir")
        .arg(&data)
        .args(["--listen", &format!("127.0.0.1:{port}")]);
    let _server = datom_tests::Proc::spawn("volume-m1", cmd);
    // With --auth-file, the CLI derives and presents the token.
    let out = wait_for("a leader that takes a write", Duration::from_secs(30), || async {
        let o = datom(&zk, &["--auth-file", s(&auth), "volume", "put", "vol", "k", "v1"]);
        o.status.success().then_some(o)
    })
    .await;
    assert!(out.status.success());
    // Without a token, and with a wrong one: PermissionDenied, nothing written.
    let coord = authed_coord(&zk, &auth).await;
    for token in [None, Some("00".repeat(32))] {
        let mut c = datom_volume_server::client::VolumeClient::new(coord.clone(), "vol");
        c.token = token.clone();
        c.retry_for = Duration::from_secs(2);
        let err = c.put("k", "forged").await.unwrap_err();
        assert!(err.to_string().contains("permission denied"), "{token:?}: {err}");
        let err = c.delete("k").await.unwrap_err();
        assert!(err.to_string().contains("permission denied"), "{token:?}: {err}");
    }
    let out = datom(&zk, &["--auth-file", s(&auth), "volume", "get", "vol", "k"]);
    assert!(stdout(&out).contains("v1"), "unchanged: {} {}", stdout(&out), stderr(&out));
}
