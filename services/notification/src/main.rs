//! `tally-notification`: the notification service binary.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use tally_notification::config::{Config, ENV_PREFIX};

/// Live poll updates for watchers (`tally.notification.v1.NotificationService`).
#[derive(Debug, Parser)]
#[command(name = "tally-notification", version)]
struct Args {
    /// TOML config file; `TALLY_NOTIFICATION_*` environment variables override it.
    #[arg(long, env = "TALLY_NOTIFICATION_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tally_chassis::bootstrap::run_binary(
        "tally-notification",
        "notification",
        args.config.as_deref(),
        ENV_PREFIX,
        |cfg: &Config| &cfg.telemetry,
        |config| tally_notification::run::run(config, tally_chassis::shutdown::signal()),
    )
    .await
}
