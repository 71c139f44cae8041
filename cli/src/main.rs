//! The `tally` executable: parses the command line and runs the command.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod commands;

use clap::Parser;
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Usage errors print clap's message and exit 2; --help/--version exit 0.
    let cli = commands::Cli::parse();
    let json = cli.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut err = std::io::stderr().lock();
            if json {
                let body = serde_json::json!({
                    "error": {"code": e.code(), "message": e.message()}
                });
                let _ = writeln!(err, "{body}");
            } else {
                let _ = writeln!(err, "error: {e}");
            }
            ExitCode::FAILURE
        }
    }
}
