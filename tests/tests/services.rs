//! Services as resources (issue 6): specs, startservice/stopservice, supervision, dependencies,
//! health checks, adoption, diagnostics and OCF agents — real ZooKeeper, real agents.

use std::time::Duration;

use datom_common::paths;
use datom_common::records::ServiceState;
use datom_tests::{Cluster, bin, harness, pid_alive, stderr, stdout, wait_for};
use nix::sys::signal::Signal;

const T: Duration = Duration::from_secs(30);

fn process_spec(name: &str, extra_args: &[&str], more: &str) -> String {
    let mut args: Vec<String> = extra_args.iter().map(|a| format!("{a:?}")).collect();
    args.extend(["\"--name\"".to_string(), format!("{name:?}")]);
    format!(
        "name = {name:?}\ntype = \"process\"\ncommand = {:?}\nargs = [{}]\nstop_timeout_ms = 2000\n{more}\n",
        bin("datom-test-service").display().to_string(),
        args.join(", ")
    )
}

#[tokio::test]
async fn t01_startservice_runs_the_process_and_publishes_in_service() {
    let c = Cluster::start("svc-start", &["n1", "n2"]).await;
    let port = harness::free_port();
    let spec = process_spec(
        "web",
        &["--port", &port.to_string()],
        &format!("group = \"frontend\"\n[health]\nkind = \"tcp\"\nport = {port}\nperiod_ms = 100\nthreshold = 2\n"),
    );
    let out = c.apply(&spec);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = c.datom(&["startservice", "web", "--node", "n1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let inst = c.wait_instance("web", "n1", "IN_SERVICE", T, |i| i.state == ServiceState::InService).await;
    assert!(pid_alive(inst.pid));
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(), "its port answers");
    assert_eq!(inst.group.as_deref(), Some("frontend"));
    assert_eq!(serde_json::to_value(inst.role).unwrap(), "active");
    // Output goes to a log under the node root.
    let log = c.roots["n1"].path().join("logs/web.log");
    wait_for("log written", T, || async { std::fs::read_to_string(&log).ok().filter(|t| t.contains("web started")) })
        .await;
    // service show lists the instance.
    let out = c.datom(&["service", "show", "web", "--json"]);
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["instances"]["n1"]["state"], "IN_SERVICE");
}

#[tokio::test]
async fn t02_dependencies_start_first_and_cycles_are_rejected() {
    let c = Cluster::start("svc-deps", &["n1"]).await;
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("order");
    let rec = record.to_str().unwrap();
    let port = harness::free_port();
    let db = process_spec(
        "db",
        &["--record", rec, "--port", &port.to_string()],
        &format!("[health]\nkind = \"tcp\"\nport = {port}\nperiod_ms = 100\n"),
    );
    let web = process_spec("web", &["--record", rec], "depends_on = [\"db\"]");
    let out = c.apply(&web);
    assert!(!out.status.success(), "web depends on an unknown service");
    assert!(stderr(&out).contains("apply \"db\" first"), "{}", stderr(&out));
    assert!(c.apply(&db).status.success());
    assert!(c.apply(&web).status.success());

    // A cycle is rejected with the cycle named, and nothing changes.
    let cyc = process_spec("db", &["--record", rec], "depends_on = [\"web\"]");
    let out = c.apply(&cyc);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("dependency cycle: db → web → db"), "{}", stderr(&out));
    let stored = c.datom(&["service", "show", "db", "--json"]);
    let v: serde_json::Value = serde_json::from_str(stdout(&stored).trim()).unwrap();
    assert!(v["spec"]["depends_on"].is_null(), "db unchanged: {v}");
    assert_eq!(v["dependents"], serde_json::json!(["web"]));

    let out = c.datom(&["startservice", "web", "--node", "n1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("in order: db, web"), "{}", stdout(&out));
    c.wait_instance("web", "n1", "IN_SERVICE", T, |i| i.state == ServiceState::InService).await;
    let order: Vec<String> =
        std::fs::read_to_string(&record).unwrap().lines().map(|l| l.split(' ').next().unwrap().to_string()).collect();
    assert_eq!(order, vec!["db", "web"], "db started before web");

    // Stopping db stops web first.
    let out = c.datom(&["stopservice", "db", "--node", "n1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("in order: web, db"), "{}", stdout(&out));
    wait_for("both stopped", T, || async {
        let a = c.coord.exists(&paths::service_instance("web", "n1")).await.unwrap();
        let b = c.coord.exists(&paths::service_instance("db", "n1")).await.unwrap();
        (a.is_none() && b.is_none()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn t03_stopservice_kills_the_process_and_removes_the_instance() {
    let c = Cluster::start("svc-stop", &["n1"]).await;
    assert!(c.apply(&process_spec("sleeper", &[], "")).status.success());
    assert!(c.datom(&["startservice", "sleeper", "--node", "n1"]).status.success());
    let inst = c.wait_instance("sleeper", "n1", "IN_SERVICE", T, |i| i.state == ServiceState::InService).await;
    let out = c.datom(&["stopservice", "sleeper"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("process gone", T, || async { (!pid_alive(inst.pid)).then_some(()) }).await;
    wait_for("instance removed", T, || async {
        c.coord.exists(&paths::service_instance("sleeper", "n1")).await.unwrap().is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn t04_a_killed_process_is_restarted_and_a_crashing_one_ends_failed() {
    let c = Cluster::start("svc-restart", &["n1"]).await;
    assert!(c.apply(&process_spec("steady", &[], "[restart]\nmax_restarts = 3\nbackoff_ms = 50\n")).status.success());
    assert!(c.datom(&["startservice", "steady", "--node", "n1"]).status.success());
    let first = c.wait_instance("steady", "n1", "IN_SERVICE", T, |i| i.state == ServiceState::InService).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first.pid as i32), Signal::SIGKILL).unwrap();
    let second = c
        .wait_instance("steady", "n1", "restarted", T, |i| i.state == ServiceState::InService && i.pid != first.pid)
        .await;
    assert_eq!(second.restarts, 1);
    assert!(pid_alive(second.pid));

    let crashing = process_spec(
        "crashy",
        &["--exit-after-ms", "100"],
        "[restart]\nmax_restarts = 2\nwindow_s = 60\nbackoff_ms = 50\nbackoff_max_ms = 100\n",
    );
    assert!(c.apply(&crashing).status.success());
    assert!(c.datom(&["startservice", "crashy", "--node", "n1"]).status.success());
    let failed = c.wait_instance("crashy", "n1", "FAILED", T, |i| i.state == ServiceState::Failed).await;
    assert_eq!(failed.restarts, 2);
    assert!(failed.last_error.as_deref().is_some_and(|e| e.contains("exited")), "{failed:?}");
    // mark_oos takes it out of service without action.
    let out = c.datom(&["service", "mark-oos", "crashy", "--node", "n1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("marked oos", T, || async {
        c.coord.exists(&paths::service_instance("crashy", "n1")).await.unwrap().is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn t05_a_restarted_agent_adopts_the_running_service() {
    let mut c = Cluster::start("svc-adopt", &["n1"]).await;
    assert!(c.apply(&process_spec("kept", &[], "")).status.success());
    assert!(c.datom(&["startservice", "kept", "--node", "n1"]).status.success());
    let inst = c.wait_instance("kept", "n1", "IN_SERVICE", T, |i| i.state == ServiceState::InService).await;
    let mut agent = c.agents.remove("n1").unwrap();
    agent.signal(Signal::SIGTERM);
    assert!(agent.wait_exit(T).expect("agent exits").success());
    assert!(pid_alive(inst.pid), "stopping the agent left the service running");
    c.start_agent("n1", &[]).await;
    let adopted = c.wait_instance("kept", "n1", "adopted", T, |i| i.state == ServiceState::InService).await;
    assert_eq!(adopted.pid, inst.pid, "same process, adopted");
    assert!(c.agents["n1"].output().contains("adopted the running process"), "{}", c.agents["n1"].output());

    // With --stop-services-on-exit, stopping the agent stops the service.
    let mut agent = c.agents.remove("n1").unwrap();
    agent.signal(Signal::SIGTERM);
    agent.wait_exit(T).expect("agent exits");
    c.start_agent("n1", &["--stop-services-on-exit"]).await;
    c.wait_instance("kept", "n1", "adopted again", T, |i| i.state == ServiceState::InService).await;
    let mut agent = c.agents.remove("n1").unwrap();
    agent.signal(Signal::SIGTERM);
    assert!(agent.wait_exit(T).expect("agent exits").success());
    wait_for("service stopped with the agent", T, || async { (!pid_alive(inst.pid)).then_some(()) }).await;
}

#[tokio::test]
async fn t06_ocf_dummy_start_monitor_stop() {
    if !std::path::Path::new("/usr/lib/ocf/resource.d/heartbeat/Dummy").exists() {
        panic!("ocf:heartbeat:Dummy missing: run scripts/install-deps (Debian package resource-agents)");
    }
    let c = Cluster::start("svc-ocf", &["n1"]).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("dummy.state");
    let spec = format!(
        "name = \"dummy\"\ntype = \"ocf:heartbeat:Dummy\"\n[params]\nstate = {:?}\n[health]\nkind = \"ocf-monitor\"\nperiod_ms = 200\nthreshold = 1\n",
        state.display().to_string()
    );
    let out = c.apply(&spec);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(c.datom(&["startservice", "dummy", "--node", "n1"]).status.success());
    c.wait_instance("dummy", "n1", "IN_SERVICE", T, |i| i.state == ServiceState::InService).await;
    assert!(state.exists(), "Dummy's start created its state file");
    let out = c.datom(&["diagnose", "dummy", "--node", "n1"]);
    assert!(out.status.success(), "{} {}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("HEALTHY") && stdout(&out).contains("ocf monitor"), "{}", stdout(&out));
    assert!(c.datom(&["stopservice", "dummy", "--node", "n1"]).status.success());
    wait_for("instance removed", T, || async {
        c.coord.exists(&paths::service_instance("dummy", "n1")).await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(!state.exists(), "Dummy's stop removed its state file");
}

#[tokio::test]
async fn t07_diagnose_reports_a_failing_check() {
    let c = Cluster::start("svc-diag", &["n1"]).await;
    let dead_port = harness::free_port();
    let spec = process_spec(
        "lonely",
        &[],
        &format!(
            "[health]\nkind = \"tcp\"\nport = {dead_port}\nperiod_ms = 3600000\ntimeout_ms = 500\nthreshold = 1000\n"
        ),
    );
    assert!(c.apply(&spec).status.success());
    assert!(c.datom(&["startservice", "lonely", "--node", "n1"]).status.success());
    c.wait_instance("lonely", "n1", "published", T, |i| i.state == ServiceState::Starting).await;
    let out = c.datom(&["diagnose", "lonely", "--node", "n1", "--json"]);
    assert_eq!(out.status.code(), Some(2), "{} {}", stdout(&out), stderr(&out));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["healthy"], false);
    assert!(v["detail"].as_str().unwrap().contains("connect failed"), "{v}");
    assert!(v["check"].as_str().unwrap().contains(&dead_port.to_string()), "{v}");
}

#[tokio::test]
async fn t08_bad_specs_name_the_line_and_field_and_change_nothing() {
    let c = Cluster::start("svc-bad", &[]).await;
    let bad = "name = \"web\"\ntype = \"process\"\ncommand = \"/bin/true\"\n\n[health]\nkind = \"tcp\"\nport = 80\nperiod_ms = 0\n";
    let out = c.apply(bad);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("line 8: health.period_ms"), "{}", stderr(&out));
    let out = c.apply("name = \"web\"\ntype = \"process\"\ncommand = [1,\n");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("line 3"), "{}", stderr(&out));
    let out = c.apply("name = \"web\"\ntype = \"process\"\ncommand = \"x\"\nreplicas = 2\n");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("line 4") && stderr(&out).contains("replicas"), "{}", stderr(&out));
    assert!(c.coord.children(paths::SERVICES).await.unwrap().is_empty(), "nothing stored");
    // Starting an unknown service or on an unknown node is refused.
    let out = c.datom(&["startservice", "ghost", "--node", "n1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
}

#[tokio::test]
async fn t09_group_subscribers_hear_of_the_groups_instances() {
    let c = Cluster::start("svc-group-sub", &["n1"]).await;
    let cache = datom_common::cache::ConnectionCache::start(c.coord.clone());
    cache.wait_synced().await;
    let mut sub = cache.subscribe(datom_common::cache::PeerFilter::Group { group: "frontend".into() });
    assert!(c.apply(&process_spec("web", &[], "group = \"frontend\"")).status.success());
    assert!(c.apply(&process_spec("other", &[], "group = \"backend\"")).status.success());
    assert!(c.datom(&["startservice", "other", "--node", "n1"]).status.success());
    assert!(c.datom(&["startservice", "web", "--node", "n1"]).status.success());
    let ev = tokio::time::timeout(T, sub.next()).await.expect("an event").expect("stream open");
    assert_eq!(ev.peer(), &datom_common::cache::Peer::service_instance("web", "n1"), "{ev:?}");
    assert!(c.datom(&["stopservice", "web", "--node", "n1"]).status.success());
    let down = tokio::time::timeout(T, async {
        loop {
            if let Some(e @ datom_common::cache::PeerEvent::Down { .. }) = sub.next().await {
                return e;
            }
        }
    })
    .await
    .expect("a Down event");
    assert_eq!(down.peer(), &datom_common::cache::Peer::service_instance("web", "n1"));
    cache.close();
}
