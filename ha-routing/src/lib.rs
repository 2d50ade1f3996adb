//! HA routing (issue 9, seed 002): a pair of routers keeps a route pointing at whichever one is
//! alive. This crate holds the redundancy node database in ZooKeeper ([`db`], the seed's
//! "Redundancy node manager"), the pure decisions ([`decide`]), the event manager process
//! ([`manager`], the seed's "Event manager"), the event handler process ([`handler`]), the
//! route-table drivers ([`driver`]), route-table locks ([`lock`]) and server control
//! ([`control`], `ha_api -c start|stop|ping`).
//!
//! The `datom` CLI's `create_node`, `set_params`, `clear_params`, `delete_node`, `node_event`
//! and `ha_api` call into this library; the `datom-ha` binary runs the event manager and the
//! event handler. See `docs/ha-routing.md`.

pub mod control;
pub mod db;
pub mod decide;
pub mod driver;
pub mod error;
pub mod handler;
pub mod lock;
pub mod manager;
pub mod params;
pub mod record;
pub mod standin;

pub use error::{HaError, HaResult};
pub use manager::{ManagerConfig, run};
