//! One module per `datom` command.

pub mod addnode;
pub mod docs;
pub mod failover;
pub mod ha;
pub mod init;
pub mod inspect;
pub mod nodes;
pub mod service;
pub mod status;
pub mod up;
pub mod volume;
pub mod watch;
