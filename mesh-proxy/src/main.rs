//! `tally-proxy --config FILE`: the sidecar binary.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use tally_proxy::config::Config;

#[derive(Parser)]
#[command(name = "tally-proxy", about = "Tally's mesh sidecar proxy")]
struct Args {
    /// TOML configuration file (schema in mesh-proxy/README.md).
    #[arg(long, env = "TALLY_PROXY_CONFIG")]
    config: PathBuf,
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = std::env::var("TALLY_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The variable tokio reads for its worker count; read here too, to pick the runtime.
const WORKER_THREADS_ENV: &str = "TOKIO_WORKER_THREADS";

/// One worker requested: a current-thread runtime, where every task of a call (connection,
/// stream, upstream connection) runs on the thread that owns the sockets, with no
/// cross-thread queue or wake-up between them (as a one-worker Envoy runs one event loop).
/// Otherwise tokio's multi-thread runtime with its worker count (default: one per core).
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let workers = std::env::var(WORKER_THREADS_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok());
    if workers == Some(1) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Runtime::new()
    }
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    init_tracing();
    let cfg = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tally-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tally-proxy: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(tally_proxy::run::run(cfg, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tally-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}
