//! One module per `datom` command.

pub mod addnode;
pub mod ha;
pub mod init;
pub mod inspect;
pub mod nodes;
pub mod service;
pub mod up;
pub mod watch;
