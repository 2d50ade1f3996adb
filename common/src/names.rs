//! Name rules: the one place that decides what a cluster, node, service or group may be called.
//!
//! A name becomes a single znode path segment, so it must never contain `/`, never be `.` or
//! `..`, and stays short enough to read in a table. The character set is deliberately small:
//! ASCII letters, digits, `-` and `_`, starting with a letter or digit. Rules are checked in a
//! fixed order and the error names the first rule broken, so an operator knows what to change.

use std::fmt;

/// Longest accepted name, in bytes.
pub const MAX_NAME_LEN: usize = 63;

/// What kind of thing a name names; used in error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NameKind {
    /// A datom cluster.
    Cluster,
    /// A machine registered with `datom addnode`.
    Node,
    /// A service spec.
    Service,
    /// A service group or replication group.
    Group,
    /// A replicated volume.
    Volume,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::Cluster => "cluster",
            NameKind::Node => "node",
            NameKind::Service => "service",
            NameKind::Group => "group",
            NameKind::Volume => "volume",
        })
    }
}

/// The rule a rejected name broke.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NameRule {
    /// The name is the empty string.
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`] bytes.
    TooLong {
        /// Length of the rejected name, in bytes.
        len: usize,
    },
    /// The name is `.` or `..`.
    DotSegment,
    /// The name contains `/`.
    Slash,
    /// The name contains a character outside `[A-Za-z0-9_-]`.
    BadChar {
        /// The first offending character.
        ch: char,
    },
    /// The name starts with `-` or `_`.
    BadStart,
}

impl fmt::Display for NameRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameRule::Empty => write!(f, "must not be empty"),
            NameRule::TooLong { len } => {
                write!(f, "is {len} bytes long; the limit is {MAX_NAME_LEN}")
            }
            NameRule::DotSegment => write!(f, "must not be '.' or '..'"),
            NameRule::Slash => write!(f, "must not contain '/'"),
            NameRule::BadChar { ch } => {
                write!(f, "contains {ch:?}; allowed characters are ASCII letters, digits, '-' and '_'")
            }
            NameRule::BadStart => write!(f, "must start with an ASCII letter or digit"),
        }
    }
}

/// A name that broke one of the rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("invalid {kind} name {name:?}: it {rule}")]
pub struct InvalidName {
    /// What the name was for.
    pub kind: NameKind,
    /// The rejected name (truncated to 80 characters for display safety).
    pub name: String,
    /// The first rule it broke.
    pub rule: NameRule,
}

/// Checks `name` against the rules, returning the first rule it breaks.
pub fn validate(kind: NameKind, name: &str) -> Result<(), InvalidName> {
    let fail = |rule| Err(InvalidName { kind, name: name.chars().take(80).collect(), rule });
    if name.is_empty() {
        return fail(NameRule::Empty);
    }
    if name == "." || name == ".." {
        return fail(NameRule::DotSegment);
    }
    if name.contains('/') {
        return fail(NameRule::Slash);
    }
    if name.len() > MAX_NAME_LEN {
        return fail(NameRule::TooLong { len: name.len() });
    }
    if let Some(ch) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
        return fail(NameRule::BadChar { ch });
    }
    if name.starts_with(['-', '_']) {
        return fail(NameRule::BadStart);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_documented_charset() {
        for ok in ["a", "node-1", "web_2", "A9", "0abc", &"x".repeat(MAX_NAME_LEN)] {
            validate(NameKind::Node, ok).unwrap();
        }
    }

    #[test]
    fn each_rule_is_named() {
        let cases: &[(&str, NameRule)] = &[
            ("", NameRule::Empty),
            (".", NameRule::DotSegment),
            ("..", NameRule::DotSegment),
            ("a/b", NameRule::Slash),
            ("../etc", NameRule::Slash),
            ("a.b", NameRule::BadChar { ch: '.' }),
            ("a b", NameRule::BadChar { ch: ' ' }),
            ("é", NameRule::BadChar { ch: 'é' }),
            ("-x", NameRule::BadStart),
            ("_x", NameRule::BadStart),
        ];
        for (name, rule) in cases {
            let err = validate(NameKind::Service, name).unwrap_err();
            assert_eq!(&err.rule, rule, "{name:?}");
        }
        let long = "y".repeat(MAX_NAME_LEN + 1);
        assert_eq!(validate(NameKind::Group, &long).unwrap_err().rule, NameRule::TooLong { len: MAX_NAME_LEN + 1 });
    }

    #[test]
    fn message_says_which_rule() {
        let err = validate(NameKind::Node, "a/b").unwrap_err();
        assert_eq!(err.to_string(), "invalid node name \"a/b\": it must not contain '/'");
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_accepted_names_are_safe_segments(s in "\\PC{0,80}") {
            if validate(NameKind::Node, &s).is_ok() {
                proptest::prop_assert!(!s.contains('/'));
                proptest::prop_assert!(s != "." && s != "..");
                proptest::prop_assert!(s.len() <= MAX_NAME_LEN);
            }
        }
    }
}
