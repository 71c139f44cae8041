//! The `tally` command line: global flags, the command tree, and dispatch.
//!
//! Commands talk to the services through the SDK; every failure ends as one
//! line naming the gRPC code and message, and a non-zero exit status.

mod certs;
mod events;
mod keys;
mod output;
mod poll;
mod user;

use clap::{Parser, Subcommand};
use std::time::Duration;
use tally::up;
use tally_sdk::{self as sdk, Client, Credentials};

/// Tally: polls as gRPC microservices.
#[derive(Debug, Parser)]
#[command(name = "tally", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command accepts.
#[derive(Debug, clap::Args)]
pub struct GlobalArgs {
    /// Address of the user service.
    #[arg(
        long,
        global = true,
        env = "TALLY_USER_ADDR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub user_addr: String,
    /// Address of the poll service.
    #[arg(
        long,
        global = true,
        env = "TALLY_POLL_ADDR",
        default_value = "http://127.0.0.1:50052"
    )]
    pub poll_addr: String,
    /// Access token from `tally user login` (sent as `authorization: Bearer`).
    #[arg(long, global = true, env = "TALLY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// API key secret (sent as `x-api-key`); wins over --token when both are set.
    #[arg(long, global = true, env = "TALLY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Deadline for each call, in seconds.
    #[arg(long, global = true, default_value_t = 10.0, value_parser = parse_timeout)]
    pub timeout: f64,
}

fn parse_timeout(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(v > 0.0 && v <= 3600.0) {
        return Err(format!("`{s}` must be between 0 and 3600 seconds"));
    }
    Ok(v)
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole platform on this machine.
    Up(up::UpArgs),
    /// Accounts, logins and API keys.
    #[command(subcommand)]
    User(user::UserCommand),
    /// Polls and votes.
    #[command(subcommand)]
    Poll(poll::PollCommand),
    /// Access-token signing keys (needs the user service's admin token).
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Mesh certificates: root CA, workload certificates, inspection.
    Certs(certs::CertsArgs),
    /// Event consumers: dead letters, replay, lag.
    #[command(flatten)]
    Events(events::EventsCommand),
}

/// A command failure, printed as one line by `main`.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Sdk(#[from] sdk::Error),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Up(#[from] up::UpError),
    #[error("{0:#}")]
    Certs(anyhow::Error),
    #[error("{0:#}")]
    Events(anyhow::Error),
}

impl CliError {
    /// The gRPC code name for service errors, for the error line.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            CliError::Sdk(e) => Some(sdk::code_name(e.code())),
            _ => None,
        }
    }

    /// The message without the code prefix, for `--json` errors.
    pub fn message(&self) -> String {
        match self {
            CliError::Sdk(sdk::Error::Status(s)) => s.message().to_string(),
            other => other.to_string(),
        }
    }
}

impl GlobalArgs {
    fn client(&self) -> Result<Client, CliError> {
        let client = Client::connect_lazy(&self.user_addr, &self.poll_addr)?
            .with_timeout(Duration::from_secs_f64(self.timeout));
        Ok(match (&self.api_key, &self.token) {
            (Some(k), _) => client.with_credentials(Credentials::ApiKey(k.trim().to_string())),
            (None, Some(t)) => client.with_credentials(Credentials::Bearer(t.trim().to_string())),
            (None, None) => client,
        })
    }

    fn require_credentials(&self) -> Result<(), CliError> {
        if self.token.is_none() && self.api_key.is_none() {
            return Err(CliError::Usage(
                "this command needs credentials: pass --token (or set TALLY_TOKEN, e.g. \
                 `export TALLY_TOKEN=$(tally user login --email .. --password .. --token-only)`) \
                 or --api-key"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Up(args) => Ok(up::run(args).await?),
        Command::User(cmd) => user::run(&cli.global, cmd).await,
        Command::Poll(cmd) => poll::run(&cli.global, cmd).await,
        Command::Keys(cmd) => keys::run(&cli.global, cmd).await,
        Command::Certs(args) => certs::run(args).map_err(CliError::Certs),
        Command::Events(cmd) => events::run_command(cmd, cli.global.json)
            .await
            .map_err(CliError::Events),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "tally",
            "poll",
            "get",
            "p1",
            "--json",
            "--poll-addr",
            "127.0.0.1:9",
        ])
        .expect("parses");
        assert!(cli.global.json);
        assert_eq!(cli.global.poll_addr, "127.0.0.1:9");
    }

    #[tokio::test]
    async fn an_api_key_wins_over_a_token() {
        let cli =
            Cli::try_parse_from(["tally", "--token", "a", "--api-key", "b", "user", "profile"])
                .expect("parses");
        let client = cli.global.client().expect("client");
        assert_eq!(client.credentials(), Some(&Credentials::ApiKey("b".into())));
    }

    #[test]
    fn timeout_must_be_positive() {
        assert!(Cli::try_parse_from(["tally", "--timeout", "0", "user", "profile"]).is_err());
        assert!(Cli::try_parse_from(["tally", "--timeout", "x", "user", "profile"]).is_err());
    }
}
