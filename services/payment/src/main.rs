//! `tally-payment`: the payment provider binary.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tally_api::payment::v1::payment_service_server::PaymentServiceServer;
use tally_chassis::{bootstrap, health::HealthHub, server, shutdown, storage};
use tally_payment::config::{ENV_PREFIX, PaymentConfig};
use tally_payment::ledger::Ledger;
use tally_payment::service::PaymentApi;

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
    let cfg = match bootstrap::start(
        "tally-payment",
        "payment",
        args.config.as_deref(),
        ENV_PREFIX,
        |cfg: &PaymentConfig| &cfg.telemetry,
    ) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match run(cfg).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("tally-payment: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cfg: PaymentConfig) -> Result<(), Box<dyn std::error::Error>> {
    let store = storage::open(&cfg.storage).await?;
    let ledger = Ledger::new(store);
    if cfg.payment.outage || cfg.payment.decline_rate > 0.0 || cfg.payment.allow_fault_headers {
        tracing::warn!(faults = ?cfg.payment, "fault injection is on");
    }
    let (hub, health_server) = HealthHub::new(&["tally.payment.v1.PaymentService"]);
    let probe = ledger.clone();
    hub.watch("storage", Duration::from_secs(5), move || {
        let probe = probe.clone();
        async move { probe.ping().await }
    });
    let mut routes = tally_chassis::server::Routes::new();
    routes.add(PaymentServiceServer::new(PaymentApi::new(
        ledger,
        cfg.payment.clone(),
    )));
    server::serve(&cfg.server, hub, health_server, routes, shutdown::signal()).await?;
    Ok(())
}
