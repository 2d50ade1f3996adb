//! Failpoints for fault tests: `--failpoint NAME[:N]` (or `DATOM_FAILPOINT`) kills the process
//! at a chosen point on its N-th pass (default 1).
//!
//! - `crash-before-apply`: abort after committed entries were journaled (fsync'd) and before the
//!   db applies them — the crash between journal write and db apply of seed 003.

/// A parsed failpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failpoint {
    /// Which point.
    pub name: String,
    /// Fire on this pass.
    pub nth: u64,
}

/// Failpoint names this build knows.
pub const KNOWN: &[&str] = &["crash-before-apply"];

impl std::str::FromStr for Failpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, nth) = match s.split_once(':') {
            Some((n, c)) => (n, c.parse::<u64>().map_err(|_| format!("failpoint count {c:?} is not a number"))?),
            None => (s, 1),
        };
        if !KNOWN.contains(&name) {
            return Err(format!("unknown failpoint {name:?}; known: {}", KNOWN.join(", ")));
        }
        Ok(Failpoint { name: name.to_string(), nth: nth.max(1) })
    }
}
