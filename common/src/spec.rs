//! Service specs: the TOML format operators write, its validation (errors name the line and the
//! field), dependency graphs (seed 001's `dependson` / `dependents` lists) and cycle detection.
//!
//! The documented format is the contract (docs/services.md): extend it, don't rename it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::names::{self, NameKind};

/// How the agent runs a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceType {
    /// A command line the agent supervises.
    Process,
    /// A Pacemaker OCF resource agent `ocf:<provider>:<agent>`.
    Ocf {
        /// Provider directory under `$OCF_ROOT/resource.d`.
        provider: String,
        /// Agent script name.
        agent: String,
    },
}

impl Serialize for ServiceType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ServiceType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for ServiceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServiceType::Process => f.write_str("process"),
            ServiceType::Ocf { provider, agent } => write!(f, "ocf:{provider}:{agent}"),
        }
    }
}

impl std::str::FromStr for ServiceType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "process" {
            return Ok(ServiceType::Process);
        }
        let parts: Vec<&str> = s.split(':').collect();
        let ok = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        match parts.as_slice() {
            ["ocf", provider, agent] if ok(provider) && ok(agent) => {
                Ok(ServiceType::Ocf { provider: provider.to_string(), agent: agent.to_string() })
            }
            _ => Err(format!("unknown type {s:?}: expected \"process\" or \"ocf:<provider>:<agent>\"")),
        }
    }
}

/// Which nodes may run a service: `"any"` or a list of node names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeSet {
    /// Any node.
    Any,
    /// Only these nodes.
    Only(Vec<String>),
}

impl Serialize for NodeSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            NodeSet::Any => s.serialize_str("any"),
            NodeSet::Only(v) => v.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for NodeSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            L(Vec<String>),
        }
        match Raw::deserialize(d)? {
            Raw::S(s) if s == "any" => Ok(NodeSet::Any),
            Raw::S(s) => Ok(NodeSet::Only(vec![s])),
            Raw::L(l) => Ok(NodeSet::Only(l)),
        }
    }
}

impl NodeSet {
    /// Whether `node` is allowed.
    pub fn allows(&self, node: &str) -> bool {
        match self {
            NodeSet::Any => true,
            NodeSet::Only(v) => v.iter().any(|n| n == node),
        }
    }
}

/// `[placement]`: where a service may run and how many copies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// `"any"` or a list of node names.
    #[serde(default = "any_nodes")]
    pub nodes: NodeSet,
    /// Instances on distinct nodes.
    #[serde(default = "one")]
    pub replicas: u32,
}

fn any_nodes() -> NodeSet {
    NodeSet::Any
}
fn one() -> u32 {
    1
}

impl Default for Placement {
    fn default() -> Self {
        Placement { nodes: NodeSet::Any, replicas: 1 }
    }
}

/// Kind of health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HealthKind {
    /// Connect to a TCP port.
    Tcp,
    /// GET a URL; 2xx and 3xx are healthy.
    Http,
    /// Run a command; exit 0 is healthy.
    Exec,
    /// Run the OCF agent's `monitor` action.
    OcfMonitor,
}

/// `[health]`: seed 000's heartbeat — a check every `period_ms`; `threshold` consecutive
/// failures make the service unhealthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// What to check.
    pub kind: HealthKind,
    /// Port for `tcp` (on `host`, default 127.0.0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Host for `tcp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// URL for `http` (`http://host:port/path`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Command for `exec`: program and arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Interval between checks.
    #[serde(default = "default_period")]
    pub period_ms: u64,
    /// Bound on one check.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Consecutive failures before the service counts as failed.
    #[serde(default = "default_threshold")]
    pub threshold: u32,
}

fn default_period() -> u64 {
    1000
}
fn default_timeout() -> u64 {
    1000
}
fn default_threshold() -> u32 {
    3
}

/// `[restart]`: at most `max_restarts` within `window_s`, with exponential backoff; past the
/// budget the service is FAILED.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Restart {
    /// Restarts allowed within the window.
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    /// The window, in seconds.
    #[serde(default = "default_window")]
    pub window_s: u64,
    /// First backoff before a restart; doubles up to `backoff_max_ms`.
    #[serde(default = "default_backoff")]
    pub backoff_ms: u64,
    /// Largest backoff.
    #[serde(default = "default_backoff_max")]
    pub backoff_max_ms: u64,
}

fn default_max_restarts() -> u32 {
    3
}
fn default_window() -> u64 {
    60
}
fn default_backoff() -> u64 {
    100
}
fn default_backoff_max() -> u64 {
    5000
}

impl Default for Restart {
    fn default() -> Self {
        Restart {
            max_restarts: default_max_restarts(),
            window_s: default_window(),
            backoff_ms: default_backoff(),
            backoff_max_ms: default_backoff_max(),
        }
    }
}

/// A service spec, as written in TOML and stored as JSON at `/datom/services/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// Record schema version (set when stored).
    #[serde(default = "crate::records::schema_version")]
    pub schema: u32,
    /// Service name.
    pub name: String,
    /// `process` or `ocf:<provider>:<agent>`.
    #[serde(rename = "type")]
    pub kind: ServiceType,
    /// Program to run (`process`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Its arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Extra environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory (default: the service's directory under the node root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// OCF parameters, passed as `OCF_RESKEY_<name>`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
    /// Services this one depends on (seed 001's `dependson`): started first, stopped last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// Service group (seed 000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Where it may run.
    #[serde(default)]
    pub placement: Placement,
    /// Move it to another node when its node dies.
    #[serde(default)]
    pub failover: bool,
    /// Move it back when its preferred node returns.
    #[serde(default)]
    pub failback: bool,
    /// Health check (seed 000's heartbeat).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// Restart policy.
    #[serde(default)]
    pub restart: Restart,
    /// Graceful stop budget before SIGKILL.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout_ms: u64,
    /// Time a starting service has to pass its first health check; failed checks during it
    /// do not count (a start grace period).
    #[serde(default = "default_start_timeout")]
    pub start_timeout_ms: u64,
}

fn default_start_timeout() -> u64 {
    30_000
}

fn default_stop_timeout() -> u64 {
    5000
}

/// A spec that failed validation; the message names the line (when known) and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{field}: {message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
pub struct SpecError {
    /// 1-based line in the TOML source, when known.
    pub line: Option<usize>,
    /// The offending field (`health.period_ms`).
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// Largest spec file accepted.
pub const MAX_SPEC_BYTES: usize = 256 * 1024;

/// 1-based line of `key = ...` in `src`, looking inside `[table]` when given.
fn line_of(src: &str, table: Option<&str>, key: &str) -> Option<usize> {
    let mut current: Option<String> = None;
    for (i, raw) in src.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('[') {
            current = Some(line.trim_matches(|c| c == '[' || c == ']').trim().to_string());
            continue;
        }
        let in_table = match (table, &current) {
            (None, None) => true,
            (Some(t), Some(c)) => t == c,
            _ => false,
        };
        if in_table
            && let Some(rest) = line.strip_prefix(key)
            && rest.trim_start().starts_with('=')
        {
            return Some(i + 1);
        }
    }
    None
}

fn byte_to_line(src: &str, offset: usize) -> usize {
    src[..offset.min(src.len())].matches('\n').count() + 1
}

impl ServiceSpec {
    /// Parses and validates a TOML spec.
    pub fn from_toml(src: &str) -> Result<ServiceSpec, SpecError> {
        if src.len() > MAX_SPEC_BYTES {
            return Err(SpecError {
                line: None,
                field: "(file)".into(),
                message: format!("spec is {} bytes; the limit is {MAX_SPEC_BYTES}", src.len()),
            });
        }
        let spec: ServiceSpec = toml::from_str(src).map_err(|e| {
            let line = e.span().map(|s| byte_to_line(src, s.start));
            let msg = e.message().to_string();
            let field = msg
                .split('`')
                .nth(1)
                .filter(|_| msg.contains("field") || msg.contains("variant"))
                .map(str::to_string)
                .unwrap_or_else(|| "(syntax)".into());
            SpecError { line, field, message: msg }
        })?;
        spec.validate_with(|table, key| line_of(src, table, key))?;
        Ok(spec)
    }

    /// Validates a spec (e.g. one read back as JSON), without line numbers.
    pub fn validate(&self) -> Result<(), SpecError> {
        self.validate_with(|_, _| None)
    }

    fn validate_with(&self, line: impl Fn(Option<&str>, &str) -> Option<usize>) -> Result<(), SpecError> {
        let err = |table: Option<&str>, key: &str, message: String| SpecError {
            line: line(table, key),
            field: table.map(|t| format!("{t}.{key}")).unwrap_or_else(|| key.to_string()),
            message,
        };
        names::validate(NameKind::Service, &self.name).map_err(|e| err(None, "name", e.to_string()))?;
        match &self.kind {
            ServiceType::Process => {
                let Some(cmd) = &self.command else {
                    return Err(err(None, "type", "a process service needs `command`".into()));
                };
                if cmd.trim().is_empty() {
                    return Err(err(None, "command", "must not be empty".into()));
                }
                if !self.params.is_empty() {
                    return Err(err(None, "params", "only OCF services take `params`; use `env` or `args`".into()));
                }
            }
            ServiceType::Ocf { .. } => {
                if self.command.is_some() {
                    return Err(err(None, "command", "an OCF service is run by its agent; remove `command`".into()));
                }
                for k in self.params.keys() {
                    if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        return Err(err(None, "params", format!("parameter name {k:?} must be letters, digits, '_'")));
                    }
                }
            }
        }
        for k in self.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(err(None, "env", format!("invalid environment variable name {k:?}")));
            }
        }
        let mut seen = BTreeSet::new();
        for d in &self.depends_on {
            names::validate(NameKind::Service, d).map_err(|e| err(None, "depends_on", e.to_string()))?;
            if d == &self.name {
                return Err(err(None, "depends_on", format!("service {:?} cannot depend on itself", self.name)));
            }
            if !seen.insert(d) {
                return Err(err(None, "depends_on", format!("{d:?} is listed twice")));
            }
        }
        if let Some(g) = &self.group {
            names::validate(NameKind::Group, g).map_err(|e| err(None, "group", e.to_string()))?;
        }
        if let NodeSet::Only(nodes) = &self.placement.nodes {
            if nodes.is_empty() {
                return Err(err(Some("placement"), "nodes", "give node names or \"any\"".into()));
            }
            for n in nodes {
                names::validate(NameKind::Node, n).map_err(|e| err(Some("placement"), "nodes", e.to_string()))?;
            }
        }
        if self.placement.replicas == 0 || self.placement.replicas > 64 {
            return Err(err(Some("placement"), "replicas", "must be 1..64".into()));
        }
        if let NodeSet::Only(nodes) = &self.placement.nodes
            && (self.placement.replicas as usize) > nodes.len()
        {
            return Err(err(
                Some("placement"),
                "replicas",
                format!("{} replicas need at least that many nodes in placement.nodes", self.placement.replicas),
            ));
        }
        if let Some(h) = &self.health {
            let t = Some("health");
            if h.period_ms < 10 || h.period_ms > 3_600_000 {
                return Err(err(t, "period_ms", "must be 10..3600000".into()));
            }
            if h.timeout_ms == 0 || h.timeout_ms > 600_000 {
                return Err(err(t, "timeout_ms", "must be 1..600000".into()));
            }
            if h.threshold == 0 || h.threshold > 1000 {
                return Err(err(t, "threshold", "must be 1..1000".into()));
            }
            match h.kind {
                HealthKind::Tcp if h.port.is_none() => {
                    return Err(err(t, "kind", "a tcp check needs `port`".into()));
                }
                HealthKind::Http => match &h.url {
                    None => return Err(err(t, "kind", "an http check needs `url`".into())),
                    Some(u) if !u.starts_with("http://") => {
                        return Err(err(t, "url", "only http:// URLs are supported".into()));
                    }
                    _ => {}
                },
                HealthKind::Exec if h.command.is_empty() => {
                    return Err(err(t, "kind", "an exec check needs `command` (program and arguments)".into()));
                }
                HealthKind::OcfMonitor if self.kind == ServiceType::Process => {
                    return Err(err(t, "kind", "ocf-monitor checks need an ocf:<provider>:<agent> service".into()));
                }
                _ => {}
            }
        }
        let r = &self.restart;
        if r.window_s == 0 {
            return Err(err(Some("restart"), "window_s", "must be at least 1".into()));
        }
        if r.backoff_ms > r.backoff_max_ms {
            return Err(err(Some("restart"), "backoff_ms", "must not exceed backoff_max_ms".into()));
        }
        if self.start_timeout_ms == 0 || self.start_timeout_ms > 3_600_000 {
            return Err(err(None, "start_timeout_ms", "must be 1..3600000".into()));
        }
        if self.stop_timeout_ms > 3_600_000 {
            return Err(err(None, "stop_timeout_ms", "must be at most 3600000".into()));
        }
        Ok(())
    }

    /// The effective health check: the spec's, or `ocf-monitor` every 2 s for OCF services.
    pub fn effective_health(&self) -> Option<Health> {
        self.health.clone().or_else(|| match self.kind {
            ServiceType::Ocf { .. } => Some(Health {
                kind: HealthKind::OcfMonitor,
                port: None,
                host: None,
                url: None,
                command: vec![],
                period_ms: 2000,
                timeout_ms: 20_000,
                threshold: 1,
            }),
            ServiceType::Process => None,
        })
    }
}

/// Dependency graph over a set of specs.
pub struct DependencyGraph<'a> {
    specs: BTreeMap<&'a str, &'a ServiceSpec>,
}

impl<'a> DependencyGraph<'a> {
    /// Builds the graph.
    pub fn new(specs: impl IntoIterator<Item = &'a ServiceSpec>) -> Self {
        DependencyGraph { specs: specs.into_iter().map(|s| (s.name.as_str(), s)).collect() }
    }

    /// Seed 001's `dependson_list`: services `svc` depends on directly.
    pub fn depends_on(&self, svc: &str) -> Vec<String> {
        self.specs.get(svc).map(|s| s.depends_on.clone()).unwrap_or_default()
    }

    /// Seed 001's `dependents_list`: services that depend on `svc` directly.
    pub fn dependents(&self, svc: &str) -> Vec<String> {
        self.specs.values().filter(|s| s.depends_on.iter().any(|d| d == svc)).map(|s| s.name.clone()).collect()
    }

    /// `svc` and everything it depends on, transitively, dependencies first.
    pub fn with_dependencies(&self, svc: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        fn visit(g: &DependencyGraph<'_>, s: &str, seen: &mut BTreeSet<String>, out: &mut Vec<String>) {
            if !seen.insert(s.to_string()) {
                return;
            }
            for d in g.depends_on(s) {
                visit(g, &d, seen, out);
            }
            out.push(s.to_string());
        }
        visit(self, svc, &mut seen, &mut out);
        out
    }

    /// `svc` and everything that depends on it, transitively, dependents first.
    pub fn with_dependents(&self, svc: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        fn visit(g: &DependencyGraph<'_>, s: &str, seen: &mut BTreeSet<String>, out: &mut Vec<String>) {
            if !seen.insert(s.to_string()) {
                return;
            }
            for d in g.dependents(s) {
                visit(g, &d, seen, out);
            }
            out.push(s.to_string());
        }
        visit(self, svc, &mut seen, &mut out);
        out
    }

    /// Dependencies that name no known service.
    pub fn missing(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for s in self.specs.values() {
            for d in &s.depends_on {
                if !self.specs.contains_key(d.as_str()) {
                    out.push((s.name.clone(), d.clone()));
                }
            }
        }
        out
    }

    /// A dependency cycle, as the list of services around it (first repeated at the end).
    pub fn find_cycle(&self) -> Option<Vec<String>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            Visiting,
            Done,
        }
        let mut marks: BTreeMap<&str, Mark> = BTreeMap::new();
        let mut stack: Vec<&str> = Vec::new();
        fn dfs<'b>(
            g: &'b DependencyGraph<'_>,
            n: &'b str,
            marks: &mut BTreeMap<&'b str, Mark>,
            stack: &mut Vec<&'b str>,
        ) -> Option<Vec<String>> {
            match marks.get(n) {
                Some(Mark::Done) => return None,
                Some(Mark::Visiting) => {
                    let start = stack.iter().position(|s| *s == n).unwrap_or(0);
                    let mut cycle: Vec<String> = stack[start..].iter().map(|s| s.to_string()).collect();
                    cycle.push(n.to_string());
                    return Some(cycle);
                }
                None => {}
            }
            marks.insert(n, Mark::Visiting);
            stack.push(n);
            if let Some(spec) = g.specs.get(n) {
                for d in &spec.depends_on {
                    if let Some((k, _)) = g.specs.get_key_value(d.as_str())
                        && let Some(c) = dfs(g, k, marks, stack)
                    {
                        return Some(c);
                    }
                }
            }
            stack.pop();
            marks.insert(n, Mark::Done);
            None
        }
        for name in self.specs.keys() {
            if let Some(c) = dfs(self, name, &mut marks, &mut stack) {
                return Some(c);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = r#"
name = "web"
type = "process"
command = "/usr/bin/web"
args = ["--port", "8080"]
depends_on = ["db"]
group = "frontend"
failover = true

[placement]
nodes = "any"
replicas = 2

[health]
kind = "tcp"
port = 8080
period_ms = 500
threshold = 3

[restart]
max_restarts = 5
window_s = 30
"#;

    fn spec(name: &str, deps: &[&str]) -> ServiceSpec {
        let mut s =
            ServiceSpec::from_toml(&format!("name = \"{name}\"\ntype = \"process\"\ncommand = \"x\"\n")).unwrap();
        s.depends_on = deps.iter().map(|d| d.to_string()).collect();
        s
    }

    #[test]
    fn parses_the_documented_format() {
        let s = ServiceSpec::from_toml(WEB).unwrap();
        assert_eq!(s.name, "web");
        assert_eq!(s.kind, ServiceType::Process);
        assert_eq!(s.placement, Placement { nodes: NodeSet::Any, replicas: 2 });
        assert_eq!(s.health.as_ref().unwrap().kind, HealthKind::Tcp);
        assert_eq!(s.restart.max_restarts, 5);
        assert_eq!(s.stop_timeout_ms, 5000);
        // JSON round trip (what is stored in ZooKeeper).
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<ServiceSpec>(&json).unwrap(), s);
        let ocf =
            ServiceSpec::from_toml("name = \"d\"\ntype = \"ocf:heartbeat:Dummy\"\n[params]\nstate = \"/tmp/s\"\n")
                .unwrap();
        assert_eq!(ocf.kind, ServiceType::Ocf { provider: "heartbeat".into(), agent: "Dummy".into() });
        assert_eq!(ocf.effective_health().unwrap().kind, HealthKind::OcfMonitor);
    }

    #[test]
    fn errors_name_line_and_field() {
        let bad = WEB.replace("period_ms = 500", "period_ms = 0");
        let e = ServiceSpec::from_toml(&bad).unwrap_err();
        assert_eq!(e.field, "health.period_ms");
        assert_eq!(e.line, Some(17));
        assert!(e.to_string().starts_with("line 17: health.period_ms:"), "{e}");

        let e = ServiceSpec::from_toml("name = \"x\"\ntype = \"process\"\ncommand = \"c\"\nbogus = 1\n").unwrap_err();
        assert_eq!(e.line, Some(4));
        assert!(e.to_string().contains("bogus"), "{e}");

        let e = ServiceSpec::from_toml("name = \"x\"\ntype = \"process\"\ncommand = \n").unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");

        let e = ServiceSpec::from_toml("name = \"x\"\ntype = \"systemd\"\n").unwrap_err();
        assert!(e.to_string().contains("expected \"process\" or \"ocf:"), "{e}");

        let e = ServiceSpec::from_toml("name = \"a/b\"\ntype = \"process\"\ncommand = \"c\"\n").unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (Some(1), "name"));

        let e = ServiceSpec::from_toml("name = \"x\"\ntype = \"process\"\n").unwrap_err();
        assert!(e.message.contains("needs `command`"), "{e}");
    }

    #[test]
    fn dependency_lists_and_order() {
        let specs = [spec("db", &[]), spec("cache", &["db"]), spec("web", &["cache", "db"])];
        let g = DependencyGraph::new(&specs);
        assert_eq!(g.depends_on("web"), vec!["cache", "db"]);
        assert_eq!(g.dependents("db"), vec!["cache", "web"]);
        assert_eq!(g.with_dependencies("web"), vec!["db", "cache", "web"]);
        assert_eq!(g.with_dependents("db"), vec!["web", "cache", "db"]);
        assert!(g.find_cycle().is_none());
        assert!(g.missing().is_empty());
    }

    #[test]
    fn cycles_are_named() {
        let specs = [spec("a", &["b"]), spec("b", &["c"]), spec("c", &["a"]), spec("d", &[])];
        let cycle = DependencyGraph::new(&specs).find_cycle().unwrap();
        assert_eq!(cycle, vec!["a", "b", "c", "a"]);
    }

    proptest::proptest! {
        #[test]
        fn parser_never_panics(src in "\\PC{0,400}") {
            let _ = ServiceSpec::from_toml(&src);
        }
    }
}
