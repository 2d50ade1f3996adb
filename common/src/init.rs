//! `datom init`: creates the cluster tree in one transaction, or reports it already exists.

use chrono::Utc;

use crate::coord::{Coord, CoordError, Mode, Op, encode};
use crate::names::{self, NameKind};
use crate::paths;
use crate::records::{ClusterRecord, ConfigServiceRecord, SCHEMA, datom_version};

/// What [`init_tree`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitOutcome {
    /// The tree was created with this record.
    Created(ClusterRecord),
    /// The tree already existed; nothing was changed.
    AlreadyInitialized(ClusterRecord),
}

/// Why init failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The cluster name broke a naming rule.
    #[error(transparent)]
    InvalidName(#[from] names::InvalidName),
    /// `/datom` exists but is not a datom tree.
    #[error("{path} exists but is not a datom tree ({reason}); remove it, or point --zk at another chroot")]
    Foreign {
        /// The offending path.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// ZooKeeper failed.
    #[error(transparent)]
    Coord(#[from] CoordError),
}

/// Creates `/datom` and its containers atomically. Idempotent: if the tree exists, returns
/// [`InitOutcome::AlreadyInitialized`] and writes nothing.
pub async fn init_tree(coord: &Coord, cluster: &str) -> Result<InitOutcome, InitError> {
    names::validate(NameKind::Cluster, cluster)?;
    if let Some(existing) = existing_tree(coord).await? {
        return Ok(InitOutcome::AlreadyInitialized(existing));
    }
    let now = Utc::now();
    let record = ClusterRecord {
        schema: SCHEMA,
        name: cluster.to_string(),
        created_at: now,
        created_by: datom_version(),
        placement_strategy: None,
        min_move_interval_s: None,
    };
    let mut ops =
        vec![Op::Create { path: paths::ROOT.into(), data: encode(paths::ROOT, &record)?, mode: Mode::Persistent }];
    for c in paths::CONTAINERS {
        let data = if c == paths::CONFIG_SERVICE {
            encode(c, &ConfigServiceRecord { schema: SCHEMA, created_at: now })?
        } else {
            b"{}".to_vec()
        };
        ops.push(Op::Create { path: c.into(), data, mode: Mode::Persistent });
    }
    match coord.multi(&ops).await {
        Ok(()) => Ok(InitOutcome::Created(record)),
        // Lost a race with a concurrent init: report what won.
        Err(CoordError::NodeExists { .. }) => match existing_tree(coord).await? {
            Some(r) => Ok(InitOutcome::AlreadyInitialized(r)),
            None => Err(InitError::Foreign {
                path: paths::ROOT.into(),
                reason: "created concurrently but incomplete".into(),
            }),
        },
        Err(e) => Err(e.into()),
    }
}

/// The cluster record if the tree is initialised, `None` if `/datom` is absent.
pub async fn existing_tree(coord: &Coord) -> Result<Option<ClusterRecord>, InitError> {
    let root = match coord.get::<ClusterRecord>(paths::ROOT).await {
        Ok(Some(r)) => r.value,
        Ok(None) => return Ok(None),
        Err(CoordError::Decode { source, .. }) => {
            return Err(InitError::Foreign {
                path: paths::ROOT.into(),
                reason: format!("its data is not a cluster record: {source}"),
            });
        }
        Err(e) => return Err(e.into()),
    };
    if coord.exists(paths::CONFIG_SERVICE).await?.is_none() {
        return Err(InitError::Foreign {
            path: paths::ROOT.into(),
            reason: format!("{} is missing", paths::CONFIG_SERVICE),
        });
    }
    Ok(Some(root))
}
