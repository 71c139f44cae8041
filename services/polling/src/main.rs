//! `tally-polling`: the polling service binary.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// Polls and votes for Tally (`tally.poll.v1.PollService`).
#[derive(Debug, Parser)]
#[command(name = "tally-polling", version)]
struct Args {
    /// TOML config file; `TALLY_POLLING_*` environment variables override it.
    #[arg(long, env = "TALLY_POLLING_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match tally_chassis::bootstrap::start(
        "tally-polling",
        "polling",
        args.config.as_deref(),
        tally_polling::config::ENV_PREFIX,
        |cfg: &tally_polling::config::Config| &cfg.telemetry,
    ) {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tally-polling: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(tally_polling::app::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "tally-polling stopped with an error");
            eprintln!("tally-polling: {e:#}");
            ExitCode::FAILURE
        }
    }
}
