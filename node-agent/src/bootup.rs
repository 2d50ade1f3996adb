//! Bootup checks: the node record stamped on disk by `datom addnode`, and its registration in
//! ZooKeeper. Each failure tells the operator what to run.

use std::path::Path;

use datom_common::records::NodeRecord;
use datom_common::{Coord, paths};

/// Name of the stamped node record inside the root.
pub const NODE_JSON: &str = "node.json";

/// Reads and validates `<root>/node.json`.
pub fn read_node_json(root: &Path) -> anyhow::Result<NodeRecord> {
    let path = root.join(NODE_JSON);
    let hint = format!("run `datom addnode --root {}` on this machine first", root.display());
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!("{} is missing: this node has not been added; {hint}", path.display())
        }
        Err(e) => anyhow::bail!("cannot read {}: {e}; {hint}", path.display()),
    };
    let rec: NodeRecord = serde_json::from_slice(&text)
        .map_err(|e| anyhow::anyhow!("{} is corrupt ({e}); {hint} again to re-stamp it", path.display()))?;
    datom_common::names::validate(datom_common::names::NameKind::Node, &rec.name)
        .map_err(|e| anyhow::anyhow!("{} is corrupt ({e}); {hint} again to re-stamp it", path.display()))?;
    Ok(rec)
}

/// Checks that the node is registered in this cluster, by the same machine.
pub async fn check_registered(coord: &Coord, node: &NodeRecord) -> anyhow::Result<()> {
    let path = paths::node(&node.name);
    match coord.get::<NodeRecord>(&path).await? {
        None => anyhow::bail!(
            "node {:?} is not registered in this cluster ({path} is missing): was it removed, or is --zk pointing \
             at another cluster? Run `datom addnode` again",
            node.name
        ),
        Some(v) if v.value.machine_id != node.machine_id => anyhow::bail!(
            "node {:?} in this cluster belongs to machine {}, but node.json says {}: run `datom addnode` with \
             another --name",
            node.name,
            v.value.machine_id,
            node.machine_id
        ),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_corrupt_node_json_say_run_addnode() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_node_json(dir.path()).unwrap_err().to_string();
        assert!(err.contains("is missing") && err.contains("datom addnode"), "{err}");
        std::fs::write(dir.path().join(NODE_JSON), b"{not json").unwrap();
        let err = read_node_json(dir.path()).unwrap_err().to_string();
        assert!(err.contains("is corrupt") && err.contains("datom addnode"), "{err}");
    }
}
