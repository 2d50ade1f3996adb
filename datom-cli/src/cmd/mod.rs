//! One module per `datom` command.

pub mod init;
pub mod inspect;
pub mod up;
pub mod volume;
