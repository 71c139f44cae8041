//! `tally-analytics`: the analytics service binary.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// Read models built from polling events (`tally.analytics.v1.AnalyticsService`).
#[derive(Debug, Parser)]
#[command(name = "tally-analytics", version)]
struct Args {
    /// TOML config file; `TALLY_ANALYTICS_*` environment variables override it.
    #[arg(long, env = "TALLY_ANALYTICS_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match tally_chassis::bootstrap::start(
        "tally-analytics",
        "analytics",
        args.config.as_deref(),
        tally_analytics::config::ENV_PREFIX,
        |cfg: &tally_analytics::config::Config| &cfg.telemetry,
    ) {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tally-analytics: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(tally_analytics::app::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "tally-analytics stopped with an error");
            eprintln!("tally-analytics: {e:#}");
            ExitCode::FAILURE
        }
    }
}
