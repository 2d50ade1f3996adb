//! One module per `datom` command.

pub mod ha;
pub mod init;
pub mod inspect;
pub mod up;
