//! Scheduler tests in the style of Pacemaker's: each case is an input state (nodes, load,
//! running services, specs) and a request, with the expected placement or failure.

use std::collections::{BTreeMap, BTreeSet};

use chrono::Utc;

use super::*;
use crate::records::{HardwareReport, NodeLoad, NodeRecord};
use crate::spec::ServiceSpec;

/// A node in a case: name, cpus, memory GiB, live, drained, load (cpu %, mem GiB used), running.
struct N(&'static str, u32, u64, bool, bool, Option<(u32, u64)>, &'static [&'static str]);

/// A spec in a case: name, depends_on, group, placement nodes (empty = any).
struct S(&'static str, &'static [&'static str], Option<&'static str>, &'static [&'static str]);

struct Case {
    name: &'static str,
    nodes: &'static [N],
    specs: &'static [S],
    place: &'static str,
    replicas: u32,
    exclude: &'static [&'static str],
    strategy: &'static str,
    /// Expected nodes, or `Err(substring of the reason)`.
    expect: Result<&'static [&'static str], &'static str>,
}

fn build(case: &Case) -> (ClusterState, Request) {
    let mut specs = BTreeMap::new();
    for S(name, deps, group, nodes) in case.specs {
        let mut toml = format!("name = {name:?}\ntype = \"process\"\ncommand = \"x\"\n");
        if let Some(g) = group {
            toml.push_str(&format!("group = {g:?}\n"));
        }
        if !nodes.is_empty() {
            let list: Vec<String> = nodes.iter().map(|n| format!("{n:?}")).collect();
            toml.push_str(&format!("[placement]\nnodes = [{}]\n", list.join(", ")));
        }
        let mut spec = ServiceSpec::from_toml(&toml).unwrap();
        spec.depends_on = deps.iter().map(|d| d.to_string()).collect();
        specs.insert(name.to_string(), spec);
    }
    let mut nodes = BTreeMap::new();
    for N(name, cpus, mem_gib, live, drained, load, running) in case.nodes {
        let record = NodeRecord {
            schema: 1,
            name: name.to_string(),
            machine_id: format!("m-{name}"),
            hardware: HardwareReport {
                machine_id: format!("m-{name}"),
                hostname: name.to_string(),
                os: "Debian".into(),
                kernel: "6.1".into(),
                cpu_model: "x".into(),
                arch: "x86_64".into(),
                cpus: *cpus,
                memory_bytes: mem_gib << 30,
                disks: vec![],
                nics: vec![],
            },
            services: vec![],
            registered_at: Utc::now(),
            registered_by: "test".into(),
            unschedulable: *drained,
        };
        let load = load.map(|(cpu, mem)| NodeLoad { cpu_percent: cpu, memory_used_bytes: mem << 30, at: Utc::now() });
        nodes.insert(
            name.to_string(),
            NodeView { record, live: *live, load, running: running.iter().map(|s| s.to_string()).collect() },
        );
    }
    let state = ClusterState { nodes, specs };
    let request = Request {
        services: unit_of(&state.specs, case.place),
        replicas: case.replicas,
        exclude: case.exclude.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>(),
    };
    (state, request)
}

const NONE: &[&str] = &[];
const UP: bool = true;
const DOWN: bool = false;
const DRAINED: bool = true;
const OK: bool = false;

fn one(name: &'static str) -> &'static [S] {
    Box::leak(Box::new([S(name, NONE, None, NONE)]))
}

#[test]
fn scheduler_cases() {
    let cases: Vec<Case> = vec![
        Case {
            name: "single node",
            nodes: &[N("n1", 4, 8, UP, OK, None, NONE)],
            specs: one("web"),
            place: "web",
            replicas: 1,
            exclude: NONE,
            strategy: "cost",
            expect: Ok(&["n1"]),
        },
        Case {
            name: "tie broken by name",
            nodes: &[
                N("n2", 4, 8, UP, OK, None, NONE),
                N("n1", 4, 8, UP, OK, None, NONE),
                N("n3", 4, 8, UP, OK, None, NONE),
            ],
            specs: one("web"),
            place: "web",
            replicas: 1,
            exclude: NONE,
            strategy: "cost",
            expect: Ok(&["n1"]),
        },
        Case {
            name: "fewer services wins",
            nodes: &[
                N("n1", 4, 8, UP, OK, None, &["a", "b"]),
                N("n2", 4, 8, UP, OK, None, &["a"]),
                N("n3", 4, 8, UP, OK, None, &["a", "b", "c"]),
            ],
            specs: Box::leak(Box::new([
                S("a", NONE, None, NONE),
                S("b", NONE, None, NONE),
                S("c", NONE, None, NONE),
                S("web", NONE, None, NONE),
            ])),
            place: "web",
            replicas: 1,
            exclude: NONE,
            strategy: "cost",
            expect: Ok(&["n2"]),
        },
        Case {
            name: "more cpus absorb more services",
            nodes: &[N("n1", 2, 8, UP, OK, None, &["a"]), N("n2", 16, 8, UP, OK, None, &["a", "b"])],
            specs: Box::leak(Box::new([
                S("a", NONE, None, NONE),
                S("b", NONE, None, NONE),
                S("web", NONE, None, NONE),
            ])),
            place: "web",
            replicas: 1,
            exclude: NONE,
            strategy: "cost",
            expect: Ok(&["n2"]),
        },
        Case {
            name: "cpu load counts",
            nodes: &[N("n1", 4, 8, UP, OK, Some((90, 1)), NONE), N("n2", 4, 8, UP, OK, Some((10, 1)), NONE)],
            specs: one("web"),
            place: "web",
            replicas: 1,
            exclude: NONE,
            strategy: "cost",
            expect: Ok(&["n2"]),
        },
        Case {
            name: "memory pressure counts",
            nodes: &[N("n1", 4, 8, UP, OK, Some((10, 7)), NONE), N("n2", 4, 8, UP, OK, Some((10, 1)), NONE)],
            specs: one("web"),
            place: "web",
            replicas: 1,
            exclude: NONE,
            strategy: "cost",
            expect: Ok(&["n2"]),
        },
        Case {
            name: "dead node is infinite",
            nodes: &[N("n1", 4, 8, DOWN, OK, None, NONE), N("n2", 4, 8, UP, OK, None, &["a"])],
            specs: Box::leak(Box::new([S("a", NONE, None, NONE), S("web", NONE, None, NONE)])),
            place: "web",
            replicas: 1,
            exclude: NONE,
            strategy: "cost",
            expect: Ok(&["n2"]),
        },
        Case {
            name: "drained node is infinite",
            nodes: &[N("n1", 4, 8, UP, DRAINED, None, NONE), N("n2", 4, 8, UP, OK, None, &["a"])],
            specs: Box::leak(Box::new([S("a", NONE, None, NONE), S("web", NONE, None, NONE)])),
            place: "web",
            replicas: 1,
            exclude: NONE,
            strategy: "cost",
            expect: Ok(&["n2"]),
        },
        Case {
            name: "excluded node (the one that failed it)",
            nodes: &[N("n1", 4, 8, UP, OK, None, NONE), N("n2", 4, 8, UP, OK, None, &["a"])],
            specs: Box::leak(Box::new([S("a", NONE, None, NONE), S("web", NONE, None, NONE)])),
            place: "web",
            replicas: 1,
            exclude: &["n1"],
            strategy: "cost",
            expect: Ok(&["n2"]),
        },
        Case {
            name: "placement constraint",
            nodes: &[N("n1", 4, 8, UP, OK, None, NONE), N("n2", 4, 8, UP, OK, None, &["a", "b"])],
            specs: Box::leak(Box::new([
                S("a", NONE, None, NONE),
                S("b", NONE, None, NONE),
                S("web", NONE, None, &["n2", "n3"]),
            ])),
            place: "web",
            replicas: 1,
            exclude: NONE,
            strategy: "cost",
            expect: Ok(&["n2"]),
        },
        Case {
            name: "no capable node",
            nodes: &[N("n1", 4, 8, DOWN, OK, None, NONE), N("n2", 4, 8, UP, DRAINED, None, NONE)],
            specs: one("web"),
            place: "web",
            replicas: 1,
            exclude: NONE,
            strategy: "cost",
            expect: Err("0 capable node(s)"),
        },
        Case {
            name: "no nodes at all",
            nodes: &[],
            specs: one("web"),
            place: "web",
            replicas: 1,
            exclude: NONE,
            strategy: "cost",
            expect: Err("no nodes"),
        },
        Case {
            name: "placement names only dead nodes",
            nodes: &[N("n1", 4, 8, DOWN, OK, None, NONE), N("n2", 4, 8, UP, OK, None, NONE)],
            specs: Box::leak(Box::new([S("web", NONE, None, &["n1"])])),
            place: "web",
            replicas: 1,
            exclude: NONE,
            strategy: "cost",
            expect: Err("placement.nodes excludes it"),
        },
        Case {
            name: "dependency chain moves together",
            nodes: &[N("n1", 4, 8, UP, OK, None, NONE), N("n2", 4, 8, UP, OK, None, NONE)],
            specs: Box::leak(Box::new([
                S("db", NONE, None, NONE),
                S("cache", &["db"], None, NONE),
                S("web", &["cache"], None, NONE),
            ])),
            place: "web",
            replicas: 1,
            exclude: NONE,
            strategy: "cost",
            expect: Ok(&["n1"]),
        },
        Case {
            name: "dependency that cannot run there makes it infinite",
            nodes: &[N("n1", 4, 8, UP, OK, None, NONE), N("n2", 4, 8, UP, OK, None, &["x"])],
            specs: Box::leak(Box::new([
                S("x", NONE, None, NONE),
                S("db", NONE, None, &["n2"]),
                S("web", &["db"], None, NONE),
            ])),
            place: "web",
            replicas: 1,
            exclude: NONE,
            strategy: "cost",
            expect: Ok(&["n2"]),
        },
        Case {
            name: "dependency chain with nowhere to go",
            nodes: &[N("n1", 4, 8, UP, OK, None, NONE), N("n2", 4, 8, UP, OK, None, NONE)],
            specs: Box::leak(Box::new([S("db", NONE, None, &["n3"]), S("web", &["db"], None, NONE)])),
            place: "web",
            replicas: 1,
            exclude: NONE,
            strategy: "cost",
            expect: Err("db: placement.nodes excludes it"),
        },
        Case {
            name: "group placed together where all members can run",
            nodes: &[N("n1", 4, 8, UP, OK, None, NONE), N("n2", 4, 8, UP, OK, None, &["x"])],
            specs: Box::leak(Box::new([
                S("x", NONE, None, NONE),
                S("api", NONE, Some("g"), NONE),
                S("worker", NONE, Some("g"), &["n2"]),
            ])),
            place: "api",
            replicas: 1,
            exclude: NONE,
            strategy: "cost",
            expect: Ok(&["n2"]),
        },
        Case {
            name: "group with a member that fits nowhere",
            nodes: &[N("n1", 4, 8, UP, OK, None, NONE)],
            specs: Box::leak(Box::new([S("api", NONE, Some("g"), NONE), S("worker", NONE, Some("g"), &["n9"])])),
            place: "api",
            replicas: 1,
            exclude: NONE,
            strategy: "cost",
            expect: Err("worker: placement.nodes excludes it"),
        },
        Case {
            name: "bigger group weighs more on small nodes",
            nodes: &[N("n1", 1, 8, UP, OK, None, NONE), N("n2", 2, 8, UP, OK, None, &["x"])],
            specs: Box::leak(Box::new([
                S("x", NONE, None, NONE),
                S("a", NONE, Some("g"), NONE),
                S("b", NONE, Some("g"), NONE),
                S("c", NONE, Some("g"), NONE),
            ])),
            place: "a",
            replicas: 1,
            exclude: NONE,
            strategy: "cost",
            expect: Ok(&["n2"]),
        },
        Case {
            name: "replicas on distinct nodes, cheapest first",
            nodes: &[
                N("n1", 4, 8, UP, OK, None, &["x", "y"]),
                N("n2", 4, 8, UP, OK, None, NONE),
                N("n3", 4, 8, UP, OK, None, &["x"]),
            ],
            specs: Box::leak(Box::new([
                S("x", NONE, None, NONE),
                S("y", NONE, None, NONE),
                S("web", NONE, None, NONE),
            ])),
            place: "web",
            replicas: 2,
            exclude: NONE,
            strategy: "cost",
            expect: Ok(&["n2", "n3"]),
        },
        Case {
            name: "replica already running on a node excludes it",
            nodes: &[
                N("n1", 4, 8, UP, OK, None, &["web"]),
                N("n2", 4, 8, UP, OK, None, &["a", "b"]),
                N("n3", 4, 8, UP, OK, None, &["a"]),
            ],
            specs: Box::leak(Box::new([
                S("a", NONE, None, NONE),
                S("b", NONE, None, NONE),
                S("web", NONE, None, NONE),
            ])),
            place: "web",
            replicas: 1,
            exclude: NONE,
            strategy: "cost",
            expect: Ok(&["n3"]),
        },
        Case {
            name: "not enough nodes for the replicas",
            nodes: &[N("n1", 4, 8, UP, OK, None, NONE), N("n2", 4, 8, DOWN, OK, None, NONE)],
            specs: one("web"),
            place: "web",
            replicas: 2,
            exclude: NONE,
            strategy: "cost",
            expect: Err("1 capable node(s) for 2 replica(s)"),
        },
        Case {
            name: "three replicas, all nodes",
            nodes: &[
                N("n1", 4, 8, UP, OK, None, NONE),
                N("n2", 4, 8, UP, OK, None, NONE),
                N("n3", 4, 8, UP, OK, None, NONE),
            ],
            specs: one("web"),
            place: "web",
            replicas: 3,
            exclude: NONE,
            strategy: "cost",
            expect: Ok(&["n1", "n2", "n3"]),
        },
        Case {
            name: "failover target skips the dead node and the excluded one",
            nodes: &[
                N("n1", 4, 8, DOWN, OK, None, &["web"]),
                N("n2", 4, 8, UP, OK, None, NONE),
                N("n3", 4, 8, UP, OK, None, NONE),
            ],
            specs: one("web"),
            place: "web",
            replicas: 1,
            exclude: &["n1"],
            strategy: "cost",
            expect: Ok(&["n2"]),
        },
        Case {
            name: "load beats name order",
            nodes: &[N("a-node", 4, 8, UP, OK, Some((95, 7)), NONE), N("z-node", 4, 8, UP, OK, Some((5, 1)), NONE)],
            specs: one("web"),
            place: "web",
            replicas: 1,
            exclude: NONE,
            strategy: "cost",
            expect: Ok(&["z-node"]),
        },
        Case {
            name: "services beat a little load",
            nodes: &[N("n1", 2, 8, UP, OK, Some((30, 1)), NONE), N("n2", 2, 8, UP, OK, Some((0, 0)), &["a", "b"])],
            specs: Box::leak(Box::new([
                S("a", NONE, None, NONE),
                S("b", NONE, None, NONE),
                S("web", NONE, None, NONE),
            ])),
            place: "web",
            replicas: 1,
            exclude: NONE,
            strategy: "cost",
            expect: Ok(&["n1"]),
        },
        Case {
            name: "unknown load is treated as idle",
            nodes: &[N("n1", 4, 8, UP, OK, Some((50, 4)), NONE), N("n2", 4, 8, UP, OK, None, NONE)],
            specs: one("web"),
            place: "web",
            replicas: 1,
            exclude: NONE,
            strategy: "cost",
            expect: Ok(&["n2"]),
        },
        Case {
            name: "first-fit takes the lowest capable name",
            nodes: &[
                N("n1", 4, 8, DOWN, OK, None, NONE),
                N("n2", 4, 8, UP, OK, Some((99, 7)), &["a", "b"]),
                N("n3", 4, 8, UP, OK, None, NONE),
            ],
            specs: Box::leak(Box::new([
                S("a", NONE, None, NONE),
                S("b", NONE, None, NONE),
                S("web", NONE, None, NONE),
            ])),
            place: "web",
            replicas: 1,
            exclude: NONE,
            strategy: "first-fit",
            expect: Ok(&["n2"]),
        },
        Case {
            name: "first-fit replicas",
            nodes: &[
                N("n1", 4, 8, UP, OK, None, NONE),
                N("n2", 4, 8, UP, OK, None, NONE),
                N("n3", 4, 8, UP, OK, None, NONE),
            ],
            specs: one("web"),
            place: "web",
            replicas: 2,
            exclude: NONE,
            strategy: "first-fit",
            expect: Ok(&["n1", "n2"]),
        },
        Case {
            name: "first-fit still honours constraints",
            nodes: &[N("n1", 4, 8, UP, OK, None, NONE), N("n2", 4, 8, UP, OK, None, NONE)],
            specs: Box::leak(Box::new([S("web", NONE, None, &["n2"])])),
            place: "web",
            replicas: 1,
            exclude: NONE,
            strategy: "first-fit",
            expect: Ok(&["n2"]),
        },
        Case {
            name: "unknown strategy name falls back to cost",
            nodes: &[N("n1", 4, 8, UP, OK, None, &["a"]), N("n2", 4, 8, UP, OK, None, NONE)],
            specs: Box::leak(Box::new([S("a", NONE, None, NONE), S("web", NONE, None, NONE)])),
            place: "web",
            replicas: 1,
            exclude: NONE,
            strategy: "bogus",
            expect: Ok(&["n2"]),
        },
        Case {
            name: "diamond dependencies",
            nodes: &[N("n1", 4, 8, UP, OK, None, NONE), N("n2", 4, 8, UP, OK, None, NONE)],
            specs: Box::leak(Box::new([
                S("base", NONE, None, &["n2"]),
                S("left", &["base"], None, NONE),
                S("right", &["base"], None, NONE),
                S("top", &["left", "right"], None, NONE),
            ])),
            place: "top",
            replicas: 1,
            exclude: NONE,
            strategy: "cost",
            expect: Ok(&["n2"]),
        },
    ];
    assert!(cases.len() >= 30, "keep the table broad: {} cases", cases.len());
    for case in &cases {
        let (state, request) = build(case);
        let got = strategy(Some(case.strategy)).place(&state, &request);
        match (&case.expect, got) {
            (Ok(want), Ok(got)) => assert_eq!(&got, want, "case {:?}", case.name),
            (Err(sub), Err(e)) => {
                assert!(e.reason.contains(sub), "case {:?}: reason {:?} lacks {sub:?}", case.name, e.reason)
            }
            (want, got) => panic!("case {:?}: expected {want:?}, got {got:?}", case.name),
        }
    }
}

#[test]
fn unit_lists_dependencies_first_and_whole_groups() {
    let c = Case {
        name: "unit",
        nodes: &[],
        specs: Box::leak(Box::new([
            S("db", NONE, Some("app"), NONE),
            S("web", &["db"], Some("app"), NONE),
            S("log", NONE, None, NONE),
            S("api", &["log"], Some("app"), NONE),
        ])),
        place: "web",
        replicas: 1,
        exclude: NONE,
        strategy: "cost",
        expect: Ok(NONE),
    };
    let (state, _) = build(&c);
    assert_eq!(unit_of(&state.specs, "web"), vec!["db", "web", "log", "api"]);
    assert_eq!(unit_of(&state.specs, "log"), vec!["log"]);
}

#[test]
fn costs_are_deterministic() {
    let c = Case {
        name: "determinism",
        nodes: &[N("n1", 4, 8, UP, OK, Some((33, 3)), &["a"]), N("n2", 4, 8, UP, OK, Some((33, 3)), &["a"])],
        specs: Box::leak(Box::new([S("a", NONE, None, NONE), S("web", NONE, None, NONE)])),
        place: "web",
        replicas: 1,
        exclude: NONE,
        strategy: "cost",
        expect: Ok(&["n1"]),
    };
    let (state, req) = build(&c);
    let first = CostStrategy.place(&state, &req).unwrap();
    for _ in 0..50 {
        assert_eq!(CostStrategy.place(&state, &req).unwrap(), first);
    }
}
