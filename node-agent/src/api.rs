//! The agent's own tarpc API: health, info and properties.

use std::collections::BTreeMap;

use datom_common::records::datom_version;
use datom_common::rpc::{AgentHealth, AgentInfo, DiagnoseReport, NodeAgent};
use tarpc::context::Context;

use crate::Agent;

/// The RPC server; cheap to clone per connection.
#[derive(Clone)]
pub struct AgentServer {
    /// The running agent.
    pub agent: Agent,
}

impl NodeAgent for AgentServer {
    async fn diagnose(self, _: Context, service: String) -> Result<DiagnoseReport, String> {
        self.agent.supervisor.diagnose(&service).await
    }

    async fn health(self, _: Context) -> AgentHealth {
        let s = self.agent.coord.status();
        AgentHealth {
            node: self.agent.node.name.clone(),
            session: serde_json::to_value(s.state).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
            uptime_s: self.agent.started.elapsed().as_secs(),
        }
    }

    async fn info(self, _: Context) -> AgentInfo {
        AgentInfo {
            node: self.agent.node.clone(),
            address: self.agent.address.clone(),
            pid: std::process::id(),
            version: datom_version(),
            args: self.agent.args.clone(),
        }
    }

    async fn properties(self, _: Context) -> BTreeMap<String, serde_json::Value> {
        self.agent.properties.snapshot()
    }
}
