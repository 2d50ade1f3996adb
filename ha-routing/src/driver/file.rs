//! The `file` driver: a JSON route table on local disk, for demos and tests. Every write
//! replaces the file atomically (temp file, fsync, rename) under an advisory lock on a sidecar
//! `<path>.lock`, so concurrent writers to different tables in one file lose nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{RouteDriver, RouteRef};

/// One route in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRoute {
    /// Where the route points.
    pub next_hop: String,
    /// When it was last written.
    pub updated_at: DateTime<Utc>,
}

/// The whole file: `{"schema":1,"tables":{"<table>":{"<cidr>":{"next_hop":..,"updated_at":..}}}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RouteFile {
    /// Format version.
    #[serde(default = "one")]
    pub schema: u32,
    /// Route tables by id, each mapping CIDR to route.
    #[serde(default)]
    pub tables: BTreeMap<String, BTreeMap<String, FileRoute>>,
}

fn one() -> u32 {
    1
}

/// The `file` driver.
#[derive(Debug, Clone)]
pub struct FileDriver {
    /// The JSON file.
    pub path: PathBuf,
}

impl FileDriver {
    /// Reads the whole file; a missing file is an empty table set.
    pub fn load(&self) -> Result<RouteFile, String> {
        match std::fs::read(&self.path) {
            Ok(data) => serde_json::from_slice(&data)
                .map_err(|e| format!("{} is not a datom route file: {e}", self.path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RouteFile { schema: 1, tables: BTreeMap::new() }),
            Err(e) => Err(format!("cannot read {}: {e}", self.path.display())),
        }
    }
}

impl RouteDriver for FileDriver {
    fn read(&self, r: &RouteRef) -> Result<Option<String>, String> {
        Ok(self.load()?.tables.get(&r.table).and_then(|t| t.get(&r.route)).map(|e| e.next_hop.clone()))
    }

    fn write(&self, r: &RouteRef, next_hop: &str) -> Result<(), String> {
        let lock_path = self.path.with_file_name(format!(
            "{}.lock",
            self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
        ));
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| format!("cannot open lock file {}: {e}", lock_path.display()))?;
        let _guard = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| format!("cannot lock {}: {e}", lock_path.display()))?;
        let mut file = self.load()?;
        file.schema = 1;
        file.tables
            .entry(r.table.clone())
            .or_default()
            .insert(r.route.clone(), FileRoute { next_hop: next_hop.to_string(), updated_at: Utc::now() });
        let data = serde_json::to_vec_pretty(&file).expect("route file serialises");
        datom_common::fsutil::write_atomic(&self.path, &data)
            .map_err(|e| format!("cannot write {}: {e}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(table: &str) -> RouteRef {
        RouteRef {
            table: table.into(),
            route: "10.1.0.0/16".into(),
            index: 1,
            event: "verify".into(),
            node: "r1".into(),
        }
    }

    #[test]
    fn read_write_roundtrip_and_tables_are_independent() {
        let dir = tempfile::tempdir().unwrap();
        let d = FileDriver { path: dir.path().join("routes.json") };
        assert_eq!(d.read(&route("a")).unwrap(), None, "a missing file has no routes");
        d.write(&route("a"), "10.0.0.1").unwrap();
        d.write(&route("b"), "10.0.0.2").unwrap();
        assert_eq!(d.read(&route("a")).unwrap().as_deref(), Some("10.0.0.1"));
        assert_eq!(d.read(&route("b")).unwrap().as_deref(), Some("10.0.0.2"));
        d.write(&route("a"), "10.0.0.3").unwrap();
        assert_eq!(d.read(&route("a")).unwrap().as_deref(), Some("10.0.0.3"));
        assert_eq!(d.read(&route("b")).unwrap().as_deref(), Some("10.0.0.2"));
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "only the file and its lock: {names:?}");
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("routes.json");
        std::fs::write(&p, "not json").unwrap();
        let err = FileDriver { path: p }.read(&route("a")).unwrap_err();
        assert!(err.contains("is not a datom route file"), "{err}");
    }
}
