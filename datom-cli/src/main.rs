//! `datom`: the operator's command. Parsing lives in the library; this only runs it.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = datom_cli::Cli::parse();
    datom_cli::main(cli)
}
