//! `datom init [--cluster NAME] [--secure]`: create the datom tree, or say it already exists;
//! and `datom token`, which prints or writes the cluster token of a secure cluster.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use datom_common::auth::{self, AuthFile};
use datom_common::flags::ZkArgs;
use datom_common::init::{InitOutcome, init_tree};
use datom_common::{Coord, paths};

/// Flags of `datom init`.
#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// Cluster name (letters, digits, '-', '_'; at most 63 bytes).
    #[arg(long, default_value = "datom")]
    pub cluster: String,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
    /// Create the tree with digest ACLs: full rights for the identity in --auth-file, read-only
    /// for everyone else. Generates the secret file (mode 0600) if it does not exist yet.
    #[arg(long)]
    pub secure: bool,
    /// With --secure: also write the cluster token (for `datom addnode --token-file`) here.
    #[arg(long, value_name = "FILE", requires = "secure")]
    pub token_out: Option<PathBuf>,
}

/// Runs `datom init`.
pub async fn run(zk: &ZkArgs, args: InitArgs) -> anyhow::Result<ExitCode> {
    // Validate before touching the network: bad input changes nothing.
    datom_common::names::validate(datom_common::names::NameKind::Cluster, &args.cluster)?;
    if args.secure {
        let Some(path) = &zk.auth_file else {
            bail!(
                "--secure needs --auth-file FILE (or DATOM_AUTH_FILE): the secret file to create, or to use \
                 if it exists"
            );
        };
        if !path.exists() {
            AuthFile::generate().save_new(path).with_context(|| "cannot write the secret file")?;
            eprintln!("wrote new cluster credentials to {} (mode 0600); keep it secret", path.display());
        }
    }
    let auth = zk.auth()?;
    if let (Some(a), Some(out)) = (&auth, &args.token_out) {
        auth::save_token(out, &a.token())?;
    }
    let coord = zk.connect().await?;
    let outcome = init_tree(&coord, &args.cluster).await;
    let open = match &outcome {
        Ok(_) => coord.get_acl(paths::ROOT).await.map(|acl| Coord::acl_is_open(&acl)).unwrap_or(true),
        Err(_) => true,
    };
    coord.close().await;
    let (created, record) = match outcome? {
        InitOutcome::Created(r) => (true, r),
        InitOutcome::AlreadyInitialized(r) => (false, r),
    };
    if args.secure && open {
        bail!(
            "cluster {:?} already exists with an open ACL on {} (it was initialized without --secure); --secure \
             does not rewrite existing ACLs: initialize a fresh tree (another chroot) with --secure",
            record.name,
            paths::ROOT
        );
    }
    if args.json {
        let v = serde_json::json!({ "created": created, "cluster": record, "secure": !open });
        println!("{v}");
    } else if created {
        let how = if open { "" } else { " (secure: ACLs locked to the identity in --auth-file)" };
        println!("initialized datom cluster {:?} at {}{how}", record.name, zk.zk);
    } else {
        println!(
            "already initialized: cluster {:?}, created {} — nothing changed",
            record.name,
            record.created_at.to_rfc3339()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Flags of `datom token`.
#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    /// Write the token to this file (mode 0600) instead of printing it.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// Runs `datom token`: the cluster token derived from --auth-file.
pub fn token(zk: &ZkArgs, args: TokenArgs) -> anyhow::Result<ExitCode> {
    let Some(a) = zk.auth()? else {
        bail!("datom token needs --auth-file FILE (or DATOM_AUTH_FILE): the token is derived from its secret");
    };
    match &args.out {
        Some(p) => {
            auth::save_token(p, &a.token())?;
            eprintln!("wrote the cluster token to {} (mode 0600)", p.display());
        }
        None => println!("{}", a.token()),
    }
    Ok(ExitCode::SUCCESS)
}
