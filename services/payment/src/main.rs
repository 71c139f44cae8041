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
    let config = match tally_chassis::bootstrap::start(
        "tally-payment",
        "payment",
        args.config.as_deref(),
        ENV_PREFIX,
        |cfg: &PaymentConfig| &cfg.telemetry,
    ) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match tally_payment::run::run(config, tally_chassis::shutdown::signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "tally-payment stopped");
            eprintln!("tally-payment: {e}");
            ExitCode::FAILURE
        }
    }
}
