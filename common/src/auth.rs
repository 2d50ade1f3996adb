//! Cluster credentials: the 0600 secret file every datom binary reads through `--auth-file`,
//! the ZooKeeper digest identity and ACL derived from it, and the cluster token that joining
//! and mutating RPC calls must present.
//!
//! The secret file is TOML (see `docs/security.md`):
//!
//! ```toml
//! schema = 1
//! # ZooKeeper digest identity, user:password. Full rights on every datom znode.
//! identity = "datom:4f1c..."
//! # Shared secret the cluster token is derived from (HMAC-SHA256), at least 32 characters.
//! cluster_secret = "9a0b..."
//! ```
//!
//! The token is `hex(HMAC-SHA256(cluster_secret, "datom cluster token v1"))`: nodes that only
//! join (`datom addnode --token-file`) get the token, not the ZooKeeper password.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha1::Digest as _;
use zookeeper_client as zk;

/// Version of the secret file format.
pub const AUTH_SCHEMA: u32 = 1;

/// Label the cluster token is derived from; changing it changes every token.
const TOKEN_LABEL: &[u8] = b"datom cluster token v1";

/// Shortest cluster secret accepted.
pub const MIN_SECRET_LEN: usize = 32;

/// Largest secret or token file read (they are a few hundred bytes).
const MAX_FILE_BYTES: u64 = 64 * 1024;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// Why credentials could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is readable or writable by group or others.
    #[error(
        "{path} has mode {mode:o}: a secret file must be readable by its owner only; run `chmod 600 {path}` \
         (or ask the owner of the datom cluster for a fresh copy)"
    )]
    TooOpen {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// The contents are not a valid secret or token file.
    #[error("{path} is not a valid datom {what} file: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// `secret` or `token`.
        what: &'static str,
        /// What is wrong, and how to fix it.
        reason: String,
    },
}

/// The contents of the secret file.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    /// Format version ([`AUTH_SCHEMA`]).
    pub schema: u32,
    /// ZooKeeper digest identity, `user:password`.
    pub identity: String,
    /// The secret the cluster token is derived from.
    pub cluster_secret: String,
}

impl std::fmt::Debug for AuthFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets (they would end up in logs).
        f.debug_struct("AuthFile").field("user", &self.user()).finish_non_exhaustive()
    }
}

impl AuthFile {
    /// Fresh random credentials for user `datom`.
    pub fn generate() -> AuthFile {
        let password = hex::encode(rand::random::<[u8; 24]>());
        let secret = hex::encode(rand::random::<[u8; 32]>());
        AuthFile { schema: AUTH_SCHEMA, identity: format!("datom:{password}"), cluster_secret: secret }
    }

    /// Checks the fields; the error says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.schema != AUTH_SCHEMA {
            return Err(format!("schema is {}, this datom reads schema {AUTH_SCHEMA}", self.schema));
        }
        let Some((user, password)) = self.identity.split_once(':') else {
            return Err("identity must be user:password".into());
        };
        let ok = |s: &str| !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_graphic() && c != ':');
        if !ok(user) || !ok(password) {
            return Err("identity must be user:password, each 1..128 printable ASCII characters without ':'".into());
        }
        if self.cluster_secret.len() < MIN_SECRET_LEN || self.cluster_secret.len() > 1024 {
            return Err(format!("cluster_secret must be {MIN_SECRET_LEN}..1024 characters"));
        }
        Ok(())
    }

    /// The ZooKeeper user name.
    pub fn user(&self) -> &str {
        self.identity.split_once(':').map(|(u, _)| u).unwrap_or("")
    }

    /// The `digest` scheme id ZooKeeper stores in ACLs: `user:base64(sha1(user:password))`.
    pub fn digest_id(&self) -> String {
        digest_id(&self.identity)
    }

    /// The ACL every datom znode carries: all rights for the datom identity, read for anyone.
    pub fn acl(&self) -> Vec<zk::Acl> {
        vec![
            zk::Acl::new(zk::Permission::ALL, zk::AuthId::new("digest", &self.digest_id())),
            zk::Acl::new(zk::Permission::READ, zk::AuthId::anyone()),
        ]
    }

    /// The session authentication to add (`digest`, `user:password`).
    pub fn zk_auth(&self) -> (String, Vec<u8>) {
        ("digest".into(), self.identity.as_bytes().to_vec())
    }

    /// The cluster token derived from the secret.
    pub fn token(&self) -> String {
        derive_token(&self.cluster_secret)
    }

    /// The file as TOML, with comments.
    pub fn to_toml(&self) -> String {
        format!(
            "# datom cluster credentials. Keep this file mode 0600. See docs/security.md.\n\
             schema = {}\n\
             # ZooKeeper digest identity (user:password): full rights on every datom znode.\n\
             identity = {:?}\n\
             # Secret the cluster token (datom addnode --token-file) is derived from.\n\
             cluster_secret = {:?}\n",
            self.schema, self.identity, self.cluster_secret
        )
    }

    /// Reads and checks the secret file at `path` (must be mode 0600 or stricter).
    pub fn load(path: &Path) -> Result<AuthFile, AuthError> {
        let text = read_private(path)?;
        let invalid = |reason: String| AuthError::Invalid { path: path.display().to_string(), what: "secret", reason };
        let file: AuthFile = toml::from_str(&text).map_err(|e| invalid(e.message().to_string()))?;
        file.validate().map_err(invalid)?;
        Ok(file)
    }

    /// Writes the file at `path` with mode 0600 (temp file, fsync, rename). Refuses to replace
    /// an existing file.
    pub fn save_new(&self, path: &Path) -> Result<(), AuthError> {
        if path.exists() {
            return Err(AuthError::Io {
                path: path.into(),
                source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "exists; not overwriting a secret"),
            });
        }
        write_private(path, self.to_toml().as_bytes())
    }
}

/// The `digest` scheme id for `user:password`, as ZooKeeper's DigestAuthenticationProvider
/// computes it.
pub fn digest_id(identity: &str) -> String {
    let user = identity.split_once(':').map(|(u, _)| u).unwrap_or(identity);
    let hash = sha1::Sha1::digest(identity.as_bytes());
    format!("{user}:{}", base64::engine::general_purpose::STANDARD.encode(hash))
}

/// `hex(HMAC-SHA256(secret, label))`.
pub fn derive_token(secret: &str) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(TOKEN_LABEL);
    hex::encode(mac.finalize().into_bytes())
}

/// What the config service checks presented tokens against.
#[derive(Clone)]
pub struct TokenVerifier {
    secret: String,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenVerifier(..)")
    }
}

impl TokenVerifier {
    /// A verifier for tokens derived from `auth`'s cluster secret.
    pub fn new(auth: &AuthFile) -> TokenVerifier {
        TokenVerifier { secret: auth.cluster_secret.clone() }
    }

    /// The cluster token this verifier accepts, for a process that both checks and presents it
    /// (a volume server dialing its replication peers).
    pub fn token(&self) -> String {
        derive_token(&self.secret)
    }

    /// Whether `presented` is the cluster token (constant-time comparison).
    pub fn verify(&self, presented: Option<&str>) -> Result<(), String> {
        let Some(t) = presented else {
            return Err("this cluster is secure and the call carries no cluster token; pass --token-file \
                        (or --auth-file) to the command"
                .into());
        };
        let bytes = hex::decode(t.trim()).map_err(|_| "the cluster token is not valid hex".to_string())?;
        let mut mac = HmacSha256::new_from_slice(self.secret.as_bytes()).expect("HMAC takes any key length");
        mac.update(TOKEN_LABEL);
        mac.verify_slice(&bytes).map_err(|_| {
            "the cluster token is wrong (it was not derived from this cluster's secret); get the token of this \
             cluster with `datom token --auth-file FILE`"
                .to_string()
        })
    }
}

/// Reads a token file (the hex token on one line; mode 0600 or stricter).
pub fn load_token(path: &Path) -> Result<String, AuthError> {
    let text = read_private(path)?;
    let token = text.trim();
    if token.len() != 64 || hex::decode(token).is_err() {
        return Err(AuthError::Invalid {
            path: path.display().to_string(),
            what: "token",
            reason: "expected 64 hex characters (write it with `datom token --auth-file FILE --out TOKEN_FILE`)".into(),
        });
    }
    Ok(token.to_string())
}

/// Writes a token file with mode 0600.
pub fn save_token(path: &Path, token: &str) -> Result<(), AuthError> {
    write_private(path, format!("{token}\n").as_bytes())
}

fn read_private(path: &Path) -> Result<String, AuthError> {
    let io = |source| AuthError::Io { path: path.into(), source };
    let meta = std::fs::metadata(path).map_err(io)?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(AuthError::TooOpen { path: path.display().to_string(), mode });
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(AuthError::Invalid {
            path: path.display().to_string(),
            what: "secret",
            reason: format!("it is {} bytes; a secret file is well under {MAX_FILE_BYTES}", meta.len()),
        });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    String::from_utf8(bytes).map_err(|_| AuthError::Invalid {
        path: path.display().to_string(),
        what: "secret",
        reason: "it is not UTF-8 text".into(),
    })
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), AuthError> {
    let io = |source| AuthError::Io { path: path.into(), source };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| io(std::io::Error::other("path has no file name")))?;
    let tmp = dir.join(format!(".{}.tmp.{}", name.to_string_lossy(), std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_matches_zookeeper() {
        // DigestAuthenticationProvider.generateDigest("super:test") from ZooKeeper's docs.
        assert_eq!(digest_id("super:test"), "super:D/InIHSb7yEEbrWz8b9l71RjZJU=");
    }

    #[test]
    fn round_trip_and_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("auth.toml");
        let a = AuthFile::generate();
        a.save_new(&p).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(AuthFile::load(&p).unwrap(), a);
        assert!(a.save_new(&p).is_err(), "never overwrites a secret");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = AuthFile::load(&p).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn tokens_verify_only_for_their_secret() {
        let a = AuthFile::generate();
        let b = AuthFile::generate();
        let v = TokenVerifier::new(&a);
        assert!(v.verify(Some(&a.token())).is_ok());
        assert_eq!(v.token(), a.token());
        assert!(v.verify(Some(&b.token())).unwrap_err().contains("wrong"));
        assert!(v.verify(None).unwrap_err().contains("no cluster token"));
        assert!(v.verify(Some("zz")).is_err());
        assert_eq!(a.token(), derive_token(&a.cluster_secret));
    }

    #[test]
    fn bad_files_are_refused_with_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("auth.toml");
        for (text, want) in [
            ("not toml = = ", "not a valid"),
            (
                "schema = 1\nidentity = \"nocolon\"\ncluster_secret = \"0123456789abcdef0123456789abcdef\"",
                "user:password",
            ),
            ("schema = 1\nidentity = \"a:b\"\ncluster_secret = \"short\"", "cluster_secret"),
            ("schema = 2\nidentity = \"a:b\"\ncluster_secret = \"0123456789abcdef0123456789abcdef\"", "schema"),
        ] {
            write_private(&p, text.as_bytes()).unwrap();
            let err = AuthFile::load(&p).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
            std::fs::remove_file(&p).unwrap();
        }
        assert!(!format!("{:?}", AuthFile::generate()).contains("cluster_secret"), "Debug hides secrets");
    }
}
