//! `tally-payment`: the payment provider binary.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use tally_payment::config::{ENV_PREFIX, PaymentConfig};

/// The Tally payment provider (idempotent charges and refunds, with faults for tests).
#[derive(Parser)]
#[command(name = "tally-payment", version)]
struct Args {
    /// TOML config file; `TALLY_PAYMENT_*` environment variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tally_chassis::bootstrap::run_binary(
        "tally-payment",
        "payment",
        args.config.as_deref(),
        ENV_PREFIX,
        |cfg: &PaymentConfig| &cfg.telemetry,
        |config| tally_payment::run::run(config, tally_chassis::shutdown::signal()),
    )
    .await
}
