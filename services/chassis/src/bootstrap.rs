//! The start-up prologue every service binary runs before its own work:
//! install the TLS crypto provider, load and validate the typed config, and
//! start logging; then, for [`run_binary`], run the service until a
//! shutdown signal. Kept in one place so every binary fails the same way on a
//! bad config (the error on stderr, exit code 2) or a failed run (exit 1).

use crate::config::{self, TelemetrySettings, Validate};
use serde::de::DeserializeOwned;
use std::fmt::Display;
use std::path::Path;
use std::process::ExitCode;

/// Exit code of a binary whose configuration does not load or validate.
pub const CONFIG_ERROR_EXIT: u8 = 2;
/// Exit code of a binary whose metrics endpoint cannot start (address in use).
pub const METRICS_ERROR_EXIT: u8 = 1;

/// Installs the crypto provider, loads `C` from `file` and the `env_prefix`
/// environment overrides, then initialises telemetry as `service` with the
/// settings `telemetry` picks from the config, and serves `/metrics` when
/// `metrics_addr` is set.
///
/// On a config error it prints `<binary>: <error>` to stderr and returns the
/// exit code the binary should end with (2).
pub fn start<C>(
    binary: &str,
    service: &str,
    file: Option<&Path>,
    env_prefix: &str,
    telemetry: impl FnOnce(&C) -> &TelemetrySettings,
) -> Result<C, ExitCode>
where
    C: DeserializeOwned + Validate,
{
    crate::server::install_crypto_provider();
    let cfg: C = match config::load(file, env_prefix) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("{binary}: {e}");
            return Err(ExitCode::from(CONFIG_ERROR_EXIT));
        }
    };
    let settings = telemetry(&cfg);
    let traces = match crate::trace::provider(service, &settings.trace()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{binary}: {e}");
            return Err(ExitCode::from(CONFIG_ERROR_EXIT));
        }
    };
    crate::telemetry::init_with_traces(
        service,
        settings.log_format,
        settings.log_level.as_deref(),
        traces,
    );
    if let Some(path) = &settings.audit_file
        && let Err(e) = crate::audit::init(path)
    {
        eprintln!("{binary}: {e} (check `[telemetry] audit_file`)");
        return Err(ExitCode::from(CONFIG_ERROR_EXIT));
    }
    if let Some(addr) = settings.metrics_addr {
        match crate::metrics::serve(addr) {
            Ok(bound) => tracing::info!(%bound, "metrics served at http://{bound}/metrics"),
            Err(e) => {
                eprintln!("{binary}: {e} (check `[telemetry] metrics_addr`)");
                return Err(ExitCode::from(METRICS_ERROR_EXIT));
            }
        }
    }
    Ok(cfg)
}

/// The whole `main` of a service binary: [`start`], then `run` with the
/// loaded config until it returns. A failed run is logged and printed as
/// `<binary>: <error>`, and the binary exits with 1.
pub async fn run_binary<C, E, Fut>(
    binary: &str,
    service: &str,
    file: Option<&Path>,
    env_prefix: &str,
    telemetry: impl FnOnce(&C) -> &TelemetrySettings,
    run: impl FnOnce(C) -> Fut,
) -> ExitCode
where
    C: DeserializeOwned + Validate,
    E: Display,
    Fut: Future<Output = Result<(), E>>,
{
    let config = match start(binary, service, file, env_prefix, telemetry) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "{binary} stopped");
            eprintln!("{binary}: {e}");
            ExitCode::FAILURE
        }
    }
}
