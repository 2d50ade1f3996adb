//! Properties: the node's (`/datom/properties/nodes/<node>`) and its services'
//! (`/datom/properties/services/<svc>`) JSON objects, watched and live-reloaded. The agent API
//! serves the latest values.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use datom_common::records::NodeRecord;
use datom_common::{Coord, paths};

/// The live property map: key `node` for the node's properties, `service/<svc>` for each
/// service's. A missing znode is absent from the map.
#[derive(Clone, Default)]
pub struct Properties {
    map: Arc<RwLock<BTreeMap<String, serde_json::Value>>>,
}

impl Properties {
    /// Starts watching the node's and its services' property znodes.
    pub fn start(coord: &Coord, node: &NodeRecord) -> Properties {
        let props = Properties::default();
        let mut sources = vec![("node".to_string(), paths::node_properties(&node.name))];
        for s in &node.services {
            sources.push((format!("service/{s}"), paths::service_properties(s)));
        }
        for (key, path) in sources {
            let map = props.map.clone();
            let coord = coord.clone();
            tokio::spawn(async move {
                let mut rx = coord.watch_data(&path).await;
                loop {
                    let value = rx.borrow_and_update().clone();
                    {
                        let mut m = map.write().unwrap();
                        match value.and_then(|(d, _)| serde_json::from_slice::<serde_json::Value>(&d).ok()) {
                            Some(v) => {
                                tracing::info!(key, "properties loaded");
                                m.insert(key.clone(), v);
                            }
                            None => {
                                m.remove(&key);
                            }
                        }
                    }
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            });
        }
        props
    }

    /// The current properties.
    pub fn snapshot(&self) -> BTreeMap<String, serde_json::Value> {
        self.map.read().unwrap().clone()
    }
}
