//! `tally-analytics`: the analytics service binary.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use tally_analytics::config::{Config, ENV_PREFIX};

/// Read models built from polling events (`tally.analytics.v1.AnalyticsService`).
#[derive(Debug, Parser)]
#[command(name = "tally-analytics", version)]
struct Args {
    /// TOML config file; `TALLY_ANALYTICS_*` environment variables override it.
    #[arg(long, env = "TALLY_ANALYTICS_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tally_chassis::bootstrap::run_binary(
        "tally-analytics",
        "analytics",
        args.config.as_deref(),
        ENV_PREFIX,
        |cfg: &Config| &cfg.telemetry,
        |config| tally_analytics::run::run(config, tally_chassis::shutdown::signal()),
    )
    .await
}
