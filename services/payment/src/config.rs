//! The payment binary's configuration: the chassis sections plus `[payment]`
//! fault settings. Every field has a default, so the binary runs with no file.

use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use tally_chassis::config::{Issue, ServerSettings, StorageSettings, TelemetrySettings, Validate};

/// Environment prefix for overrides, e.g. `TALLY_PAYMENT_PAYMENT__OUTAGE=true`.
pub const ENV_PREFIX: &str = "TALLY_PAYMENT_";

/// Default listen address.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 50056);
/// Default embedded store file.
pub const DEFAULT_STORE_PATH: &str = ".tally/payment/payment.redb";

/// The payment binary's configuration file, section by section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentConfig {
    /// `[server]`: where gRPC is served and how it shuts down.
    #[serde(default = "default_server")]
    pub server: ServerSettings,
    /// `[storage]`: the embedded file or the Scylla cluster holding charges.
    #[serde(default = "default_storage")]
    pub storage: StorageSettings,
    /// `[telemetry]`: log format and filter, metrics address.
    #[serde(default)]
    pub telemetry: TelemetrySettings,
    /// `[payment]`: the injected faults of the fake provider.
    #[serde(default)]
    pub payment: FaultSettings,
}

/// How the provider misbehaves, for exercising callers' failure handling.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FaultSettings {
    /// Share of charges declined at random, 0.0..=1.0.
    #[serde(default)]
    pub decline_rate: f64,
    /// Seed for the decline draw; unset draws from the OS.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Delay added to every call.
    #[serde(default)]
    pub latency_ms: u64,
    /// When true charges and refunds fail with UNAVAILABLE (reads still answer).
    #[serde(default)]
    pub outage: bool,
    /// Honour `x-payment-fault: decline|outage` metadata (tests only).
    #[serde(default)]
    pub allow_fault_headers: bool,
}

impl Default for FaultSettings {
    fn default() -> Self {
        Self {
            decline_rate: 0.0,
            seed: None,
            latency_ms: 0,
            outage: false,
            allow_fault_headers: false,
        }
    }
}

fn default_server() -> ServerSettings {
    ServerSettings::on(DEFAULT_LISTEN)
}

fn default_storage() -> StorageSettings {
    StorageSettings::Embedded {
        path: PathBuf::from(DEFAULT_STORE_PATH),
    }
}

impl Validate for PaymentConfig {
    fn validate(&self) -> Vec<Issue> {
        let mut out = self.storage.issues("storage");
        let rate = self.payment.decline_rate;
        if !(0.0..=1.0).contains(&rate) || rate.is_nan() {
            out.push(Issue::new(
                "payment.decline_rate",
                format!("{rate} is outside 0..1"),
                "use a share such as 0.0 (never) or 0.25",
            ));
        }
        if self.payment.latency_ms > 60_000 {
            out.push(Issue::new(
                "payment.latency_ms",
                format!("{} ms is more than a minute", self.payment.latency_ms),
                "use at most 60000",
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_chassis::config::load_from;

    #[test]
    fn runs_with_no_file() {
        let cfg: PaymentConfig = load_from(None, ENV_PREFIX, &[]).expect("defaults");
        assert_eq!(cfg.server.listen_addr, DEFAULT_LISTEN);
        assert_eq!(cfg.payment, FaultSettings::default());
    }

    #[test]
    fn env_sets_faults_and_rate_is_checked() {
        let vars = vec![
            (
                "TALLY_PAYMENT_PAYMENT__OUTAGE".to_string(),
                "true".to_string(),
            ),
            (
                "TALLY_PAYMENT_PAYMENT__DECLINE_RATE".to_string(),
                "0.5".to_string(),
            ),
        ];
        let cfg: PaymentConfig = load_from(None, ENV_PREFIX, &vars).expect("env");
        assert!(cfg.payment.outage);
        assert_eq!(cfg.payment.decline_rate, 0.5);
        let bad = vec![(
            "TALLY_PAYMENT_PAYMENT__DECLINE_RATE".to_string(),
            "1.5".to_string(),
        )];
        let err = load_from::<PaymentConfig>(None, ENV_PREFIX, &bad).expect_err("out of range");
        assert!(err.to_string().contains("payment.decline_rate"), "{err}");
    }
}
