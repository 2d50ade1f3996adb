//! The tarpc `ConfigService` implementation: reads from ZooKeeper, writes through the
//! leadership's fenced multi-ops.

use chrono::Utc;
use datom_common::auth::TokenVerifier;
use datom_common::coord::{CoordError, Mode, Op, SessionState, encode};
use datom_common::names::{self, NameKind};
use datom_common::records::{NodeRecord, TransitionRecord};
use datom_common::rpc::{AddNodeRequest, ConfigError, ConfigService};
use datom_common::{Coord, paths};
use tarpc::context::Context;

use crate::active::{Fenced, Leadership, Role};
use crate::registry::{self, AddDecision};

/// The RPC server; cheap to clone per connection.
#[derive(Clone)]
pub struct ConfigServer {
    /// Coordination client.
    pub coord: Coord,
    /// This instance's activity.
    pub leadership: Leadership,
    /// The transition master (acts while this instance is active).
    pub master: crate::transitions::Master,
    /// Checks the cluster token of mutating calls; `None` on an open cluster.
    pub token: Option<TokenVerifier>,
}

impl ConfigServer {
    /// Refuses a mutating call whose token is missing or wrong, before anything is read or
    /// written. Every mutating RPC method calls this first.
    pub fn authorize(&self, token: &Option<String>, call: &str) -> Result<(), ConfigError> {
        let Some(v) = &self.token else { return Ok(()) };
        v.verify(token.as_deref()).map_err(|reason| {
            tracing::warn!(call, %reason, "refused a call without a valid cluster token");
            ConfigError::PermissionDenied(reason)
        })
    }

    async fn require_active(&self) -> Result<(), ConfigError> {
        if self.leadership.role() == Role::Active { Ok(()) } else { Err(self.leadership.not_active().await) }
    }

    async fn read_node(&self, name: &str) -> Result<Option<(NodeRecord, i32)>, ConfigError> {
        match self.coord.get::<NodeRecord>(&paths::node(name)).await {
            Ok(v) => Ok(v.map(|v| (v.value, v.version))),
            // An expired or broken session means this instance lost (or may have lost) its lock,
            // whatever its role says yet.
            Err(e) if matches!(e, CoordError::SessionExpired { .. }) || self.leadership.role() != Role::Active => {
                Err(self.leadership.not_active().await)
            }
            Err(e) if e.is_transient() || self.coord.status().state != SessionState::Connected => {
                Err(self.leadership.not_active().await)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn add(&self, req: AddNodeRequest) -> Result<NodeRecord, ConfigError> {
        registry::validate(&req)?;
        self.require_active().await?;
        let path = paths::node(&req.name);
        for _ in 0..8 {
            let existing = self.read_node(&req.name).await?;
            let decision = registry::decide(existing.as_ref().map(|(r, _)| r), &req, Utc::now(), self.id())?;
            let record = match decision {
                AddDecision::Existing(r) => return Ok(r),
                AddDecision::Create(r) => r,
            };
            let data = encode(&path, &record)?;
            match self
                .leadership
                .fenced_multi(vec![Op::Create { path: path.clone(), data, mode: Mode::Persistent }])
                .await
            {
                Ok(()) => {
                    tracing::info!(node = %record.name, machine = %record.machine_id, "registered node");
                    return Ok(record);
                }
                // Raced with another registration of the same name: decide again.
                Err(Fenced::Coord(CoordError::NodeExists { .. })) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ConfigError::CoordinationUnavailable(format!("{path} kept changing; retry")))
    }

    fn id(&self) -> &str {
        self.leadership.id()
    }
}

impl ConfigService for ConfigServer {
    async fn place_service(
        self,
        _: Context,
        service: String,
        token: Option<String>,
    ) -> Result<TransitionRecord, ConfigError> {
        self.authorize(&token, "place_service")?;
        self.master.place_service(&service).await
    }

    async fn move_service(
        self,
        _: Context,
        service: String,
        to: String,
        token: Option<String>,
    ) -> Result<TransitionRecord, ConfigError> {
        self.authorize(&token, "move_service")?;
        self.master.move_service(&service, &to).await
    }

    async fn drain_node(
        self,
        _: Context,
        node: String,
        token: Option<String>,
    ) -> Result<TransitionRecord, ConfigError> {
        self.authorize(&token, "drain_node")?;
        self.master.drain(&node).await
    }

    async fn undrain_node(self, _: Context, node: String, token: Option<String>) -> Result<NodeRecord, ConfigError> {
        self.authorize(&token, "undrain_node")?;
        self.master.set_schedulable(&node, true).await
    }

    async fn add_node(self, _: Context, req: AddNodeRequest, token: Option<String>) -> Result<NodeRecord, ConfigError> {
        self.authorize(&token, "add_node")?;
        self.add(req).await
    }

    async fn get_node(self, _: Context, name: String) -> Result<NodeRecord, ConfigError> {
        names::validate(NameKind::Node, &name).map_err(|e| ConfigError::InvalidName(e.to_string()))?;
        self.read_node(&name).await?.map(|(r, _)| r).ok_or(ConfigError::NoSuchNode(name))
    }

    async fn list_nodes(self, _: Context) -> Result<Vec<NodeRecord>, ConfigError> {
        let mut out = Vec::new();
        for name in self.coord.children(paths::NODES).await? {
            if let Some((r, _)) = self.read_node(&name).await? {
                out.push(r);
            }
        }
        Ok(out)
    }

    async fn remove_node(self, _: Context, name: String, token: Option<String>) -> Result<(), ConfigError> {
        self.authorize(&token, "remove_node")?;
        names::validate(NameKind::Node, &name).map_err(|e| ConfigError::InvalidName(e.to_string()))?;
        self.require_active().await?;
        let Some((_, version)) = self.read_node(&name).await? else { return Err(ConfigError::NoSuchNode(name)) };
        if self.coord.exists(&paths::node_live(&name)).await?.is_some() {
            return Err(ConfigError::InvalidArgument(format!(
                "node {name:?} is live (its agent is running); stop the agent first"
            )));
        }
        let path = paths::node(&name);
        match self.leadership.fenced_multi(vec![Op::Delete { path, version: Some(version) }]).await {
            Ok(()) => Ok(()),
            Err(Fenced::Coord(CoordError::NotEmpty { .. })) => {
                Err(ConfigError::InvalidArgument(format!("node {name:?} has state below it (is its agent running?)")))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn set_node_services(
        self,
        _: Context,
        name: String,
        services: Vec<String>,
        token: Option<String>,
    ) -> Result<NodeRecord, ConfigError> {
        self.authorize(&token, "set_node_services")?;
        names::validate(NameKind::Node, &name).map_err(|e| ConfigError::InvalidName(e.to_string()))?;
        registry::validate_services(&services)?;
        self.require_active().await?;
        let path = paths::node(&name);
        for _ in 0..8 {
            let Some((mut rec, version)) = self.read_node(&name).await? else {
                return Err(ConfigError::NoSuchNode(name));
            };
            rec.services = services.clone();
            let data = encode(&path, &rec)?;
            match self.leadership.fenced_multi(vec![Op::Set { path: path.clone(), data, version: Some(version) }]).await
            {
                Ok(()) => return Ok(rec),
                Err(Fenced::Coord(CoordError::Conflict { .. })) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ConfigError::CoordinationUnavailable(format!("{path} kept changing; retry")))
    }
}
