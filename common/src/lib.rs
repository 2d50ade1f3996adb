//! datom's shared library: the coordination client ([`coord`]), the znode layout ([`paths`]),
//! the records stored there ([`records`]), name rules ([`names`]), common flags ([`flags`])
//! and crash-safe local files ([`fsutil`]).
//!
//! Start reading at [`coord::Coord`]: every datom process holds one, and everything it knows
//! about the cluster comes through it.

pub mod coord;
pub mod error;
pub mod flags;
pub mod fsutil;
pub mod hardware;
pub mod init;
pub mod metrics;
pub mod names;
pub mod paths;
pub mod placement;
pub mod records;
pub mod rpc;
pub mod services;
pub mod spec;

pub mod cache;
pub mod status;

pub mod auth;
pub mod tls;

pub use coord::{Coord, CoordConfig, CoordError, CoordResult};
