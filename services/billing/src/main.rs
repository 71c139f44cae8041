//! `tally-billing`: the billing service binary.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use tally_billing::config::{BillingConfig, ENV_PREFIX};

/// The Tally billing service (plans, subscriptions, the subscription saga).
#[derive(Parser)]
#[command(name = "tally-billing", version)]
struct Args {
    /// TOML config file; `TALLY_BILLING_*` environment variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tally_chassis::bootstrap::run_binary(
        "tally-billing",
        "billing",
        args.config.as_deref(),
        ENV_PREFIX,
        |cfg: &BillingConfig| &cfg.telemetry,
        |config| tally_billing::run::run(config, tally_chassis::shutdown::signal()),
    )
    .await
}
