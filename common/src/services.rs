//! Service specs and desired states in ZooKeeper: applying specs (with dependency checks) and
//! writing the operations `startservice` / `stopservice` / `restartservice` ask for. Every
//! write is version-checked or a multi-op; nothing here does a blind read-modify-write.

use std::collections::BTreeMap;

use chrono::Utc;

use crate::coord::{Coord, CoordError, Mode, Op, encode};
use crate::names::{self, NameKind};
use crate::paths;
use crate::records::{DesiredRecord, InstanceRecord, NodeRecord, Operation, SCHEMA};
use crate::spec::{DependencyGraph, ServiceSpec};

/// Why a service command was refused; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The spec is invalid.
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    /// A name is invalid.
    #[error(transparent)]
    Name(#[from] names::InvalidName),
    /// The service does not exist.
    #[error("service {0:?} does not exist; apply its spec with `datom service apply FILE`")]
    NoSuchService(String),
    /// The node does not exist.
    #[error("node {0:?} is not registered; add it with `datom addnode`")]
    NoSuchNode(String),
    /// A dependency names an unknown service.
    #[error("service {service:?} depends on {missing:?}, which does not exist; apply {missing:?} first")]
    MissingDependency {
        /// The dependent service.
        service: String,
        /// The unknown dependency.
        missing: String,
    },
    /// Applying would create a dependency cycle.
    #[error("dependency cycle: {}; remove one of these depends_on entries", .0.join(" → "))]
    Cycle(Vec<String>),
    /// Anything else that makes the request invalid.
    #[error("{0}")]
    Invalid(String),
    /// ZooKeeper failed.
    #[error(transparent)]
    Coord(#[from] CoordError),
}

/// Every stored spec, by name.
pub async fn load_specs(coord: &Coord) -> Result<BTreeMap<String, ServiceSpec>, ServiceError> {
    let mut out = BTreeMap::new();
    for name in coord.children(paths::SERVICES).await? {
        if let Some(v) = coord.get::<ServiceSpec>(&paths::service(&name)).await? {
            out.insert(name, v.value);
        }
    }
    Ok(out)
}

/// One stored spec.
pub async fn load_spec(coord: &Coord, name: &str) -> Result<ServiceSpec, ServiceError> {
    names::validate(NameKind::Service, name)?;
    coord
        .get::<ServiceSpec>(&paths::service(name))
        .await?
        .map(|v| v.value)
        .ok_or_else(|| ServiceError::NoSuchService(name.to_string()))
}

/// The spec named `name` among `specs` (loaded once by the caller), or NoSuchService.
fn spec_in<'a>(specs: &'a BTreeMap<String, ServiceSpec>, name: &str) -> Result<&'a ServiceSpec, ServiceError> {
    names::validate(NameKind::Service, name)?;
    specs.get(name).ok_or_else(|| ServiceError::NoSuchService(name.to_string()))
}

/// Checks that adding `spec` to `specs` leaves no unknown dependency and no cycle.
pub fn check_graph(specs: &BTreeMap<String, ServiceSpec>, spec: &ServiceSpec) -> Result<(), ServiceError> {
    let mut all = specs.clone();
    all.insert(spec.name.clone(), spec.clone());
    let g = DependencyGraph::new(all.values());
    if let Some((service, missing)) = g.missing().into_iter().find(|(s, _)| *s == spec.name) {
        return Err(ServiceError::MissingDependency { service, missing });
    }
    if let Some(cycle) = g.find_cycle() {
        return Err(ServiceError::Cycle(cycle));
    }
    Ok(())
}

/// Whether `apply` created or replaced the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// New service.
    Created,
    /// Existing spec replaced.
    Updated,
    /// Identical spec already stored.
    Unchanged,
}

/// Validates `spec` against the stored ones and writes it (version-checked).
pub async fn apply(coord: &Coord, spec: &ServiceSpec) -> Result<Applied, ServiceError> {
    spec.validate()?;
    let path = paths::service(&spec.name);
    for _ in 0..8 {
        let specs = load_specs(coord).await?;
        check_graph(&specs, spec)?;
        let data = encode(&path, spec)?;
        let res = match coord.get::<ServiceSpec>(&path).await? {
            Some(cur) if cur.value == *spec => return Ok(Applied::Unchanged),
            Some(cur) => coord.set_raw(&path, &data, Some(cur.version)).await.map(|_| Applied::Updated),
            None => coord
                .multi(&[
                    Op::Create { path: path.clone(), data, mode: Mode::Persistent },
                    Op::Create {
                        path: paths::service_instances(&spec.name),
                        data: b"{}".to_vec(),
                        mode: Mode::Persistent,
                    },
                ])
                .await
                .map(|_| Applied::Created),
        };
        match res {
            Ok(a) => return Ok(a),
            Err(CoordError::Conflict { .. } | CoordError::NodeExists { .. } | CoordError::NoNode { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ServiceError::Invalid(format!("{path} kept changing while applying; retry")))
}

/// Deletes a service spec; refused while other services depend on it or it is desired anywhere.
pub async fn delete(coord: &Coord, name: &str) -> Result<(), ServiceError> {
    let specs = load_specs(coord).await?;
    let spec = spec_in(&specs, name)?;
    let dependents = DependencyGraph::new(specs.values()).dependents(&spec.name);
    if !dependents.is_empty() {
        return Err(ServiceError::Invalid(format!(
            "services {dependents:?} depend on {name:?}; delete or change them first"
        )));
    }
    let mut stale = Vec::new();
    for node in coord.children(paths::NODES).await? {
        let path = paths::node_service(&node, name);
        match coord.get::<DesiredRecord>(&path).await? {
            Some(d) if d.value.op == Operation::InService => {
                return Err(ServiceError::Invalid(format!(
                    "{name:?} is started on node {node:?}; stop it first with `datom stopservice {name} --node {node}`"
                )));
            }
            Some(_) => stale.push(path),
            None => {}
        }
    }
    for path in stale {
        coord.delete_if_exists(&path).await?;
    }
    coord.delete_recursive(&paths::service(name)).await?;
    Ok(())
}

/// Reads a node record, or says it is not registered.
pub async fn require_node(coord: &Coord, node: &str) -> Result<NodeRecord, ServiceError> {
    names::validate(NameKind::Node, node)?;
    coord
        .get::<NodeRecord>(&paths::node(node))
        .await?
        .map(|v| v.value)
        .ok_or_else(|| ServiceError::NoSuchNode(node.to_string()))
}

/// Writes `op` for each of `services` on `node` in one transaction (creating the node's
/// `services` container when missing). `bump_restart` also increments the restart generation.
pub async fn write_desired(
    coord: &Coord,
    node: &str,
    services: &[String],
    op: Operation,
    bump_restart: bool,
    reason: &str,
) -> Result<(), ServiceError> {
    // Defence in depth: callers validate too, but no path is built from an unchecked name.
    names::validate(NameKind::Node, node)?;
    for s in services {
        names::validate(NameKind::Service, s)?;
    }
    let container = paths::node_services(node);
    if coord.exists(&container).await?.is_none() {
        match coord.create_raw(&container, b"{}", Mode::Persistent).await {
            Ok(_) | Err(CoordError::NodeExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    for _ in 0..8 {
        let mut ops = Vec::new();
        for svc in services {
            let path = paths::node_service(node, svc);
            let current = coord.get::<DesiredRecord>(&path).await?;
            let generation = current.as_ref().map(|c| c.value.restart_generation).unwrap_or(0);
            let record = DesiredRecord {
                schema: SCHEMA,
                service: svc.clone(),
                op,
                restart_generation: if bump_restart { generation + 1 } else { generation },
                requested_at: Utc::now(),
                reason: reason.to_string(),
            };
            let data = encode(&path, &record)?;
            ops.push(match current {
                Some(c) => Op::Set { path, data, version: Some(c.version) },
                None => Op::Create { path, data, mode: Mode::Persistent },
            });
        }
        match coord.multi(&ops).await {
            Ok(()) => return Ok(()),
            Err(CoordError::Conflict { .. } | CoordError::NodeExists { .. } | CoordError::NoNode { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(ServiceError::Invalid(format!("desired states on node {node:?} kept changing; retry")))
}

/// `startservice`: `svc` and its dependencies (dependencies first) go in service on `node`.
/// Returns the services written, in start order.
pub async fn start(coord: &Coord, svc: &str, node: &str, reason: &str) -> Result<Vec<String>, ServiceError> {
    let specs = load_specs(coord).await?;
    let spec = spec_in(&specs, svc)?;
    require_node(coord, node).await?;
    let order = DependencyGraph::new(specs.values()).with_dependencies(&spec.name);
    for s in &order {
        let sp =
            specs.get(s).ok_or_else(|| ServiceError::MissingDependency { service: svc.into(), missing: s.clone() })?;
        if !sp.placement.nodes.allows(node) {
            return Err(ServiceError::Invalid(format!(
                "service {s:?} may not run on node {node:?}: its placement.nodes does not include it"
            )));
        }
    }
    write_desired(coord, node, &order, Operation::InService, false, reason).await?;
    Ok(order)
}

/// `stopservice`: `svc` and everything on `node` that depends on it (dependents first) go out
/// of service. Returns the services written, in stop order.
pub async fn stop(
    coord: &Coord,
    svc: &str,
    node: &str,
    force: bool,
    reason: &str,
) -> Result<Vec<String>, ServiceError> {
    let specs = load_specs(coord).await?;
    spec_in(&specs, svc)?;
    require_node(coord, node).await?;
    let mut order = Vec::new();
    for s in DependencyGraph::new(specs.values()).with_dependents(svc) {
        let desired = coord.get::<DesiredRecord>(&paths::node_service(node, &s)).await?;
        if s == svc || desired.is_some_and(|d| d.value.op == Operation::InService) {
            order.push(s);
        }
    }
    let op = if force { Operation::ForceOos } else { Operation::OoService };
    write_desired(coord, node, &order, op, false, reason).await?;
    Ok(order)
}

/// `restartservice`: asks the agent to restart `svc` on `node` (it must be started there).
pub async fn restart(coord: &Coord, svc: &str, node: &str) -> Result<(), ServiceError> {
    load_spec(coord, svc).await?;
    require_node(coord, node).await?;
    match coord.get::<DesiredRecord>(&paths::node_service(node, svc)).await? {
        Some(d) if d.value.op == Operation::InService => {
            write_desired(coord, node, &[svc.to_string()], Operation::InService, true, "operator restart").await
        }
        _ => Err(ServiceError::Invalid(format!("{svc:?} is not started on node {node:?}; start it first"))),
    }
}

/// Nodes where `svc` is desired in service.
pub async fn nodes_running(coord: &Coord, svc: &str) -> Result<Vec<String>, ServiceError> {
    let mut out = Vec::new();
    for node in coord.children(paths::NODES).await? {
        if let Some(d) = coord.get::<DesiredRecord>(&paths::node_service(&node, svc)).await?
            && d.value.op == Operation::InService
        {
            out.push(node);
        }
    }
    Ok(out)
}

/// The published instances of `svc`, by node.
pub async fn instances(coord: &Coord, svc: &str) -> Result<BTreeMap<String, InstanceRecord>, ServiceError> {
    let mut out = BTreeMap::new();
    let children = match coord.children(&paths::service_instances(svc)).await {
        Ok(c) => c,
        Err(CoordError::NoNode { .. }) => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    for node in children {
        if let Some(v) = coord.get::<InstanceRecord>(&paths::service_instance(svc, &node)).await? {
            out.insert(node, v.value);
        }
    }
    Ok(out)
}
