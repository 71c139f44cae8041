//! The flags of the commands that call the user and poll services: each
//! service's address, the per-call deadline and the credentials, as small
//! groups that each command flattens only when it reads them (so its `--help`
//! lists what it uses), and the SDK client built from them.

use super::CliError;
use clap::Args;
use std::time::Duration;
use tally_sdk::{Client, Credentials};

/// Where the user service listens unless told otherwise (`tally up`'s default).
pub const DEFAULT_USER_ADDR: &str = "http://127.0.0.1:50051";
/// Where the poll service listens unless told otherwise (`tally up`'s default).
pub const DEFAULT_POLL_ADDR: &str = "http://127.0.0.1:50052";
/// Default deadline of each call, in seconds.
pub const DEFAULT_TIMEOUT_SECS: f64 = 10.0;
/// Longest deadline `--timeout` accepts, in seconds.
const MAX_TIMEOUT_SECS: f64 = 3600.0;

/// `--user-addr`.
#[derive(Debug, Clone, Args)]
pub struct UserAddr {
    /// Address of the user service.
    #[arg(long, global = true, env = "TALLY_USER_ADDR", default_value = DEFAULT_USER_ADDR)]
    pub user_addr: String,
}

/// `--poll-addr`.
#[derive(Debug, Clone, Args)]
pub struct PollAddr {
    /// Address of the poll service.
    #[arg(long, global = true, env = "TALLY_POLL_ADDR", default_value = DEFAULT_POLL_ADDR)]
    pub poll_addr: String,
}

/// `--timeout`.
#[derive(Debug, Clone, Args)]
pub struct Deadline {
    /// Deadline for each call, in seconds.
    #[arg(long, global = true, default_value_t = DEFAULT_TIMEOUT_SECS, value_parser = parse_timeout)]
    pub timeout: f64,
}

/// `--token` and `--api-key`.
#[derive(Debug, Clone, Args)]
pub struct CredentialArgs {
    /// Access token from `tally user login` (sent as `authorization: Bearer`).
    #[arg(long, global = true, env = "TALLY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// API key secret (sent as `x-api-key`); wins over --token when both are set.
    #[arg(long, global = true, env = "TALLY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

fn parse_timeout(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(v > 0.0 && v <= MAX_TIMEOUT_SECS) {
        return Err(format!(
            "`{s}` must be between 0 and {MAX_TIMEOUT_SECS} seconds"
        ));
    }
    Ok(v)
}

impl CredentialArgs {
    /// The credentials to send: the API key when given, else the token.
    pub fn credentials(&self) -> Option<Credentials> {
        match (&self.api_key, &self.token) {
            (Some(k), _) => Some(Credentials::ApiKey(k.trim().to_string())),
            (None, Some(t)) => Some(Credentials::Bearer(t.trim().to_string())),
            (None, None) => None,
        }
    }

    /// The credentials, or a usage error saying how to get some.
    pub fn required(&self) -> Result<Credentials, CliError> {
        self.credentials().ok_or_else(|| {
            CliError::Usage(
                "this command needs credentials: pass --token (or set TALLY_TOKEN, e.g. \
                 `export TALLY_TOKEN=$(tally user login --email .. --password .. --token-only)`) \
                 or --api-key"
                    .into(),
            )
        })
    }
}

/// A client for the given services with the given deadline and credentials.
/// The SDK's client holds a channel to each service; a command that calls
/// only one of them passes `None` for the other, whose channel then points
/// at the same address and, being lazy, is never opened.
pub fn client(
    user: Option<&UserAddr>,
    poll: Option<&PollAddr>,
    deadline: &Deadline,
    credentials: Option<Credentials>,
) -> Result<Client, CliError> {
    let (user_addr, poll_addr) = match (user, poll) {
        (Some(u), Some(p)) => (u.user_addr.as_str(), p.poll_addr.as_str()),
        (Some(u), None) => (u.user_addr.as_str(), u.user_addr.as_str()),
        (None, Some(p)) => (p.poll_addr.as_str(), p.poll_addr.as_str()),
        (None, None) => (DEFAULT_USER_ADDR, DEFAULT_POLL_ADDR),
    };
    let client = Client::connect_lazy(user_addr, poll_addr)?
        .with_timeout(Duration::from_secs_f64(deadline.timeout));
    Ok(match credentials {
        Some(c) => client.with_credentials(c),
        None => client,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_key_wins_over_a_token() {
        let both = CredentialArgs {
            token: Some("a".into()),
            api_key: Some(" b ".into()),
        };
        assert_eq!(both.credentials(), Some(Credentials::ApiKey("b".into())));
        let none = CredentialArgs {
            token: None,
            api_key: None,
        };
        let err = none.required().expect_err("no credentials");
        assert!(err.to_string().contains("TALLY_TOKEN"), "{err}");
    }

    #[test]
    fn timeouts_are_positive_and_bounded() {
        assert_eq!(parse_timeout("2.5"), Ok(2.5));
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("x").is_err());
        assert!(parse_timeout("3601").is_err());
    }
}
