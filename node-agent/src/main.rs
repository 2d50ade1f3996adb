//! `datom-node-agent`: parses the seed's bootup flags and runs the agent until SIGINT/SIGTERM.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = datom_node_agent::Args::parse();
    args.log.init("info");
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let res = rt.block_on(async move {
        let config = args.into_config()?;
        datom_node_agent::run(config, datom_node_agent::shutdown_signal()).await
    });
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
