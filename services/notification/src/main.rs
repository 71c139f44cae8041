//! `tally-notification`: the notification service binary.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// Live poll updates for watchers (`tally.notification.v1.NotificationService`).
#[derive(Debug, Parser)]
#[command(name = "tally-notification", version)]
struct Args {
    /// TOML config file; `TALLY_NOTIFICATION_*` environment variables override it.
    #[arg(long, env = "TALLY_NOTIFICATION_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match tally_chassis::bootstrap::start(
        "tally-notification",
        "notification",
        args.config.as_deref(),
        tally_notification::config::ENV_PREFIX,
        |cfg: &tally_notification::config::Config| &cfg.telemetry,
    ) {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tally-notification: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(tally_notification::app::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "tally-notification stopped with an error");
            eprintln!("tally-notification: {e:#}");
            ExitCode::FAILURE
        }
    }
}
