//! `datom-config-service`: parses flags and runs the service until SIGINT/SIGTERM.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = datom_config_service::Args::parse();
    args.log.init("info");
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let res = rt.block_on(async move {
        let config = args.into_config()?;
        datom_config_service::run(config, datom_config_service::shutdown_signal()).await
    });
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
