//! Failover and placement (issue 7): a dead node's services move to the best surviving node;
//! drain, move and placement without --node — real ZooKeeper, three real agents.

use std::time::{Duration, Instant};

use datom_common::paths;
use datom_common::records::{DesiredRecord, InstanceRecord, Operation, ServiceState, TransitionRecord};
use datom_tests::{Cluster, bin, pid_alive, stderr, stdout, wait_for};
use nix::sys::signal::Signal;

const T: Duration = Duration::from_secs(30);
const SESSION: Duration = Duration::from_millis(2000);

fn spec(name: &str, more: &str, record: Option<&str>) -> String {
    let mut args = vec!["\"--name\"".to_string(), format!("{name:?}")];
    if let Some(r) = record {
        args.extend(["\"--record\"".to_string(), format!("{r:?}")]);
    }
    format!(
        "name = {name:?}\ntype = \"process\"\ncommand = {:?}\nargs = [{}]\nstop_timeout_ms = 1000\n{more}\n",
        bin("datom-test-service").display().to_string(),
        args.join(", ")
    )
}

/// The node currently running `svc` IN_SERVICE, other than `not`.
async fn running_elsewhere(c: &Cluster, svc: &str, not: &str) -> Option<InstanceRecord> {
    for node in c.coord.children(&paths::service_instances(svc)).await.ok()? {
        if node == not {
            continue;
        }
        let v = c.coord.get::<InstanceRecord>(&paths::service_instance(svc, &node)).await.ok()??;
        if v.value.state == ServiceState::InService {
            return Some(v.value);
        }
    }
    None
}

async fn desired_nodes(c: &Cluster, svc: &str) -> Vec<String> {
    let mut out = vec![];
    for n in c.coord.children(paths::NODES).await.unwrap() {
        if let Some(d) = c.coord.get::<DesiredRecord>(&paths::node_service(&n, svc)).await.unwrap()
            && d.value.op == Operation::InService
        {
            out.push(n);
        }
    }
    out
}

async fn events(c: &Cluster) -> Vec<TransitionRecord> {
    let mut names = c.coord.children(paths::EVENTS).await.unwrap_or_default();
    names.sort();
    let mut out = vec![];
    for n in names {
        if let Some(v) = c.coord.get::<TransitionRecord>(&paths::join(paths::EVENTS, &n)).await.unwrap() {
            out.push(v.value);
        }
    }
    out
}

fn kill_pid(pid: u32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
}

#[tokio::test]
async fn f01_sigkilled_agent_fails_over_within_session_timeout_plus_2s() {
    let mut c = Cluster::start("fo-kill", &["n1", "n2", "n3"]).await;
    assert!(c.apply(&spec("web", "failover = true", None)).status.success());
    let out = c.datom(&["startservice", "web", "--node", "n1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let old = c.wait_instance("web", "n1", "IN_SERVICE", T, |i| i.state == ServiceState::InService).await;

    let agent = c.agents.remove("n1").unwrap();
    let t = Instant::now();
    agent.signal(Signal::SIGKILL);
    let moved = wait_for("web in service elsewhere", T, || running_elsewhere(&c, "web", "n1")).await;
    let took = t.elapsed();
    assert!(took <= SESSION + Duration::from_secs(2), "failover took {took:?}");
    assert_ne!(moved.node, "n1");
    assert_eq!(desired_nodes(&c, "web").await, vec![moved.node.clone()]);
    let ev = events(&c).await;
    let died = ev
        .iter()
        .find(|e| matches!(&e.trigger, datom_common::records::Trigger::NodeDied { node } if node == "n1"))
        .expect("transition recorded");
    assert_eq!(died.decisions[0].to, moved.node);
    assert_eq!(died.decisions[0].from.as_deref(), Some("n1"));
    // `datom events` shows it.
    let out = c.datom(&["events"]);
    assert!(stdout(&out).contains("NodeDied"), "{}", stdout(&out));
    // The crashed agent's copy is still running on n1 (only the agent died). When n1's agent
    // comes back it stops that orphan: the service is no longer wanted there.
    assert!(pid_alive(old.pid));
    c.start_agent("n1", &[]).await;
    wait_for("orphan stopped by the restarted agent", T, || async { (!pid_alive(old.pid)).then_some(()) }).await;
    assert_eq!(desired_nodes(&c, "web").await, vec![moved.node.clone()]);
}

#[tokio::test]
async fn f02_a_group_of_dependent_services_moves_in_order_to_one_node() {
    let mut c = Cluster::start("fo-group", &["n1", "n2", "n3"]).await;
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("order");
    let r = rec.to_str().unwrap();
    // Health checks on their ports: IN_SERVICE then means "initialised", so the recorded
    // order is the start order.
    let (pd, pw) = (datom_tests::harness::free_port(), datom_tests::harness::free_port());
    let health = |p: u16| format!("[health]\nkind = \"tcp\"\nport = {p}\nperiod_ms = 50\n");
    let db = spec("db", &format!("failover = true\ngroup = \"app\"\n{}", health(pd)), Some(r))
        .replace("args = [", &format!("args = [\"--port\", \"{pd}\", "));
    let web = spec("web", &format!("failover = true\ngroup = \"app\"\ndepends_on = [\"db\"]\n{}", health(pw)), Some(r))
        .replace("args = [", &format!("args = [\"--port\", \"{pw}\", "));
    assert!(c.apply(&db).status.success(), "{db}");
    assert!(c.apply(&web).status.success(), "{web}");
    assert!(c.datom(&["startservice", "web", "--node", "n1"]).status.success());
    let old_web = c.wait_instance("web", "n1", "IN_SERVICE", T, |i| i.state == ServiceState::InService).await;
    let old_db = c.wait_instance("db", "n1", "IN_SERVICE", T, |i| i.state == ServiceState::InService).await;

    // The node dies: its agent and its services (a real dead node takes them all).
    c.agents.remove("n1").unwrap().signal(Signal::SIGKILL);
    kill_pid(old_web.pid);
    kill_pid(old_db.pid);
    let web = wait_for("web moved", T, || running_elsewhere(&c, "web", "n1")).await;
    let db = wait_for("db moved", T, || running_elsewhere(&c, "db", "n1")).await;
    assert_eq!(web.node, db.node, "the group moved to one node");
    let lines: Vec<String> =
        std::fs::read_to_string(&rec).unwrap().lines().map(|l| l.split(' ').next().unwrap().to_string()).collect();
    assert_eq!(lines, vec!["db", "web", "db", "web"], "dependency order on both nodes");
}

#[tokio::test]
async fn f03_failover_false_is_not_moved() {
    let mut c = Cluster::start("fo-false", &["n1", "n2"]).await;
    assert!(c.apply(&spec("mover", "failover = true", None)).status.success());
    assert!(c.apply(&spec("stayer", "failover = false", None)).status.success());
    assert!(c.datom(&["startservice", "mover", "--node", "n1"]).status.success());
    assert!(c.datom(&["startservice", "stayer", "--node", "n1"]).status.success());
    let a = c.wait_instance("mover", "n1", "up", T, |i| i.state == ServiceState::InService).await;
    let b = c.wait_instance("stayer", "n1", "up", T, |i| i.state == ServiceState::InService).await;
    c.agents.remove("n1").unwrap().signal(Signal::SIGKILL);
    wait_for("mover moved", T, || running_elsewhere(&c, "mover", "n1")).await;
    // The same transition decided about n1's services: stayer is still only wanted on n1.
    assert_eq!(desired_nodes(&c, "stayer").await, vec!["n1"]);
    assert!(running_elsewhere(&c, "stayer", "n1").await.is_none());
    kill_pid(a.pid);
    kill_pid(b.pid);
}

#[tokio::test]
async fn f04_drain_moves_everything_and_undrain_allows_placement_again() {
    let c = Cluster::start("fo-drain", &["n1", "n2", "n3"]).await;
    assert!(c.apply(&spec("a", "failover = false", None)).status.success());
    assert!(c.apply(&spec("b", "failover = true", None)).status.success());
    assert!(c.datom(&["startservice", "a", "--node", "n1"]).status.success());
    assert!(c.datom(&["startservice", "b", "--node", "n1"]).status.success());
    let a = c.wait_instance("a", "n1", "up", T, |i| i.state == ServiceState::InService).await;
    let out = c.datom(&["node", "drain", "n1"]);
    assert!(out.status.success(), "{} {}", stdout(&out), stderr(&out));
    for svc in ["a", "b"] {
        wait_for(&format!("{svc} moved off n1"), T, || running_elsewhere(&c, svc, "n1")).await;
        wait_for(&format!("{svc} gone from n1"), T, || async {
            c.coord.exists(&paths::service_instance(svc, "n1")).await.unwrap().is_none().then_some(())
        })
        .await;
    }
    assert!(!pid_alive(a.pid), "stopped gracefully on the drained node");
    // A drained node takes no new placements.
    assert!(c.apply(&spec("fresh", "", None)).status.success());
    let out = c.datom(&["startservice", "fresh"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let placed = desired_nodes(&c, "fresh").await;
    assert_eq!(placed.len(), 1);
    assert_ne!(placed[0], "n1");
    // Undrain: n1 (now the emptiest) is chosen again.
    assert!(c.datom(&["node", "undrain", "n1"]).status.success());
    assert!(c.apply(&spec("later", "", None)).status.success());
    assert!(c.datom(&["startservice", "later"]).status.success());
    assert_eq!(desired_nodes(&c, "later").await, vec!["n1"]);
}

#[tokio::test]
async fn f05_paused_agent_self_fences_and_the_service_never_runs_twice_for_long() {
    let c = Cluster::start("fo-pause", &["n1", "n2"]).await;
    assert!(c.apply(&spec("web", "failover = true", None)).status.success());
    assert!(c.datom(&["startservice", "web", "--node", "n1"]).status.success());
    let old = c.wait_instance("web", "n1", "up", T, |i| i.state == ServiceState::InService).await;
    let agent = &c.agents["n1"];
    agent.signal(Signal::SIGSTOP);
    let moved = wait_for("web started elsewhere", T, || running_elsewhere(&c, "web", "n1")).await;
    assert_eq!(moved.node, "n2");
    agent.signal(Signal::SIGCONT);
    let resumed = Instant::now();
    // Documented bound: a resumed agent stops its copy within one fence tick plus the stop.
    wait_for("old copy stopped after resume", Duration::from_secs(5), || async { (!pid_alive(old.pid)).then_some(()) })
        .await;
    assert!(resumed.elapsed() < Duration::from_secs(3), "took {:?}", resumed.elapsed());
    assert!(agent.output().contains("self-fencing"), "{}", agent.output());
    // And it does not come back on n1: the desired state moved.
    wait_for("n1 agent live again", T, || async { c.coord.exists(&paths::node_live("n1")).await.unwrap().map(|_| ()) })
        .await;
    assert_eq!(desired_nodes(&c, "web").await, vec!["n2"]);
}

#[tokio::test]
async fn f06_startservice_without_node_picks_the_cheapest_node() {
    let c = Cluster::start("fo-place", &["n1", "n2", "n3"]).await;
    for s in ["x1", "x2", "x3", "pick"] {
        assert!(c.apply(&spec(s, "", None)).status.success());
    }
    for (s, n) in [("x1", "n1"), ("x2", "n1"), ("x3", "n2")] {
        assert!(c.datom(&["startservice", s, "--node", n]).status.success());
    }
    let out = c.datom(&["startservice", "pick"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("on n3"), "{}", stdout(&out));
    assert_eq!(desired_nodes(&c, "pick").await, vec!["n3"]);
    c.wait_instance("pick", "n3", "up", T, |i| i.state == ServiceState::InService).await;
    let ev = events(&c).await;
    assert!(ev.iter().any(
        |e| matches!(&e.trigger, datom_common::records::Trigger::StartRequested { service } if service == "pick")
    ));
    // Operator move.
    let out = c.datom(&["move", "pick", "--to", "n2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    c.wait_instance("pick", "n2", "moved", T, |i| i.state == ServiceState::InService).await;
    assert_eq!(desired_nodes(&c, "pick").await, vec!["n2"]);
    let bad = c.datom(&["move", "pick", "--to", "nope"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("not registered"), "{}", stderr(&bad));
}
