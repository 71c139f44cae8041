//! `tally-user`: the user service binary.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use tally_user::config::{Config, ENV_PREFIX};

/// The Tally user service: accounts, sessions, access tokens and API keys.
#[derive(Debug, Parser)]
#[command(name = "tally-user", version)]
struct Args {
    /// TOML config file; `TALLY_USER_*` environment variables override it.
    /// Without it, defaults apply (127.0.0.1:50051, `.tally/user/user.redb`).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tally_chassis::bootstrap::run_binary(
        "tally-user",
        "tally-user",
        args.config.as_deref(),
        ENV_PREFIX,
        |cfg: &Config| &cfg.telemetry,
        |config| tally_user::run::run(config, tally_chassis::shutdown::signal()),
    )
    .await
}
