//! `tally-billing`: the billing service binary.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tally_api::billing::v1::billing_service_server::BillingServiceServer;
use tally_billing::api::BillingApi;
use tally_billing::config::{BillingConfig, ENV_PREFIX};
use tally_billing::orchestrator::{Orchestrator, Tuning};
use tally_billing::payment::GrpcPayment;
use tally_billing::records::Records;
use tally_chassis::auth::{AuthOptions, Authenticator};
use tally_chassis::{bootstrap, health::HealthHub, outbound, server, shutdown, storage};

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
    let cfg = match bootstrap::start(
        "tally-billing",
        "billing",
        args.config.as_deref(),
        ENV_PREFIX,
        |cfg: &BillingConfig| &cfg.telemetry,
    ) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match run(cfg).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("tally-billing: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cfg: BillingConfig) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(point) = &cfg.crash_after {
        tracing::warn!(
            point,
            "crash_after is set: the process will abort there (testing only)"
        );
    }
    let store = storage::open(&cfg.storage).await?;
    let records = Records::new(store.clone());
    // Billing's outbox, served as its event feed for consumers (user, polling).
    let feed = tally_chassis::events::feed::Feed::new(store);
    let payment_channel = outbound::channel(&cfg.outbound, "payment")?;
    let user_channel = outbound::channel(&cfg.outbound, "user")?;
    let payment = GrpcPayment::new(
        payment_channel.clone(),
        Duration::from_millis(cfg.saga.payment_timeout_ms),
    );
    let orchestrator = Orchestrator::new(
        records.clone(),
        Arc::new(payment),
        Tuning {
            payment_attempts: cfg.saga.payment_attempts,
            retry_backoff: Duration::from_millis(cfg.saga.retry_backoff_ms),
            start_wait: Duration::from_millis(cfg.saga.start_wait_ms),
            crash_after: cfg.crash_after.clone(),
        },
    );
    let auth = Authenticator::new(user_channel, AuthOptions::default());

    let (hub, health_server) = HealthHub::new(&["tally.billing.v1.BillingService"]);
    let probe = records.clone();
    hub.watch("storage", Duration::from_secs(5), move || {
        let probe = probe.clone();
        async move { probe.ping().await }
    });
    let health_channel = payment_channel;
    hub.watch("payment", Duration::from_secs(2), move || {
        let mut client = tonic_health::pb::health_client::HealthClient::new(health_channel.clone());
        async move {
            let mut req = tonic::Request::new(tonic_health::pb::HealthCheckRequest {
                service: "tally.payment.v1.PaymentService".into(),
            });
            req.set_timeout(Duration::from_secs(2));
            matches!(
                client.check(req).await.map(|r| r.into_inner().status),
                Ok(s) if s == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            )
        }
    });

    // Resume every unfinished saga now, then sweep periodically for sagas
    // whose step had to wait (e.g. a refund while payment was down).
    let resumed = orchestrator.resume_all().await?;
    tracing::info!(resumed, "unfinished sagas resumed");
    let sweeper = orchestrator.clone();
    let interval = Duration::from_secs(cfg.saga.resume_interval_secs);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            if let Err(e) = sweeper.resume_all().await {
                tracing::warn!(error = %e, "resume sweep failed");
            }
        }
    });

    let mut routes = tally_chassis::server::Routes::new();
    routes.add(BillingServiceServer::new(BillingApi::new(
        orchestrator,
        auth,
    )));
    routes.add(feed.server());
    server::serve(&cfg.server, hub, health_server, routes, shutdown::signal()).await?;
    Ok(())
}
