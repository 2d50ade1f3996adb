//! `datom completions <shell>` and `datom man`: shell completions and man pages generated from
//! the same clap definitions the binaries parse with, for `datom`, `datom-config-service` and
//! `datom-node-agent`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::CommandFactory;

/// A datom binary to document.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binary {
    /// The `datom` command.
    Datom,
    /// The config service daemon.
    DatomConfigService,
    /// The node agent daemon.
    DatomNodeAgent,
}

impl Binary {
    /// All binaries.
    pub const ALL: [Binary; 3] = [Binary::Datom, Binary::DatomConfigService, Binary::DatomNodeAgent];

    /// The binary's name.
    pub fn name(self) -> &'static str {
        match self {
            Binary::Datom => "datom",
            Binary::DatomConfigService => "datom-config-service",
            Binary::DatomNodeAgent => "datom-node-agent",
        }
    }

    /// The binary's clap command.
    pub fn command(self) -> clap::Command {
        match self {
            Binary::Datom => crate::Cli::command(),
            Binary::DatomConfigService => datom_config_service::Args::command(),
            Binary::DatomNodeAgent => datom_node_agent::Args::command(),
        }
    }
}

/// Flags of `datom completions`.
#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to generate completions for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
    /// The binary to generate them for.
    #[arg(long = "for", value_enum, default_value_t = Binary::Datom)]
    pub binary: Binary,
}

/// Flags of `datom man`.
#[derive(clap::Args, Debug)]
pub struct ManArgs {
    /// Write a page for every binary and subcommand into DIR (default: print datom(1) on stdout).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// Prints completions for `args.shell`.
pub fn completions(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut cmd = args.binary.command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, args.binary.name(), &mut out);
    std::io::stdout().write_all(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// Renders one page.
fn render(cmd: clap::Command) -> anyhow::Result<(String, Vec<u8>)> {
    let man = clap_mangen::Man::new(cmd);
    let mut buf = Vec::new();
    man.render(&mut buf)?;
    Ok((man.get_filename(), buf))
}

/// Every page for `cmd` and its subcommands, as (file name, roff).
pub fn pages(cmd: clap::Command) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    fn walk(cmd: clap::Command, out: &mut Vec<(String, Vec<u8>)>) -> anyhow::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
            walk(sub, out)?;
        }
        out.push(render(cmd)?);
        Ok(())
    }
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut out = Vec::new();
    walk(cmd, &mut out)?;
    Ok(out)
}

fn write_pages(dir: &Path) -> anyhow::Result<usize> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create {}; choose another directory with --out", dir.display()))?;
    let mut n = 0;
    for b in Binary::ALL {
        for (name, roff) in pages(b.command())? {
            let path = dir.join(&name);
            datom_common::fsutil::write_atomic(&path, &roff)
                .with_context(|| format!("cannot write {}", path.display()))?;
            n += 1;
        }
    }
    Ok(n)
}

/// Runs `datom man`.
pub fn man(args: ManArgs) -> anyhow::Result<ExitCode> {
    match args.out {
        Some(dir) => {
            let n = write_pages(&dir)?;
            println!("wrote {n} man pages to {}", dir.display());
        }
        None => {
            let (_, roff) = render(crate::Cli::command())?;
            std::io::stdout().write_all(&roff)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_binary_and_subcommand_gets_a_page() {
        let dir = tempfile::tempdir().unwrap();
        let n = write_pages(dir.path()).unwrap();
        for f in ["datom.1", "datom-status.1", "datom-up.1", "datom-config-service.1", "datom-node-agent.1"] {
            let text = std::fs::read_to_string(dir.path().join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
            assert!(text.starts_with(".ie") || text.contains(".TH"), "{f} is roff: {text}");
        }
        assert!(n >= 10, "{n} pages");
    }

    #[test]
    fn completions_for_every_shell_and_binary() {
        for b in Binary::ALL {
            for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
                let mut out = Vec::new();
                clap_complete::generate(shell, &mut b.command(), b.name(), &mut out);
                let text = String::from_utf8(out).unwrap();
                assert!(text.contains(b.name()), "{shell:?} {b:?}");
            }
        }
    }
}
