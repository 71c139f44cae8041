//! `tally-polling`: the polling service binary.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use tally_polling::config::{Config, ENV_PREFIX};

/// Polls and votes for Tally (`tally.poll.v1.PollService`).
#[derive(Debug, Parser)]
#[command(name = "tally-polling", version)]
struct Args {
    /// TOML config file; `TALLY_POLLING_*` environment variables override it.
    #[arg(long, env = "TALLY_POLLING_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tally_chassis::bootstrap::run_binary(
        "tally-polling",
        "polling",
        args.config.as_deref(),
        ENV_PREFIX,
        |cfg: &Config| &cfg.telemetry,
        |config| tally_polling::run::run(config, tally_chassis::shutdown::signal()),
    )
    .await
}
