//! The `tally` command line: the one flag every command reads (`--json`),
//! the command tree, and dispatch. Connection and credential flags belong to
//! the commands that read them ([`connect`]).
//!
//! Commands talk to the services through the SDK; every failure ends as one
//! line naming the gRPC code and message, and a non-zero exit status.

mod audit;
mod certs;
mod connect;
mod events;
mod keys;
mod output;
mod poll;
mod traces;
mod user;

use clap::{Parser, Subcommand};
use tally::up;
use tally_sdk as sdk;

/// Tally: polls as gRPC microservices.
#[derive(Debug, Parser)]
#[command(name = "tally", version, about, propagate_version = true)]
pub struct Cli {
    /// Print machine-readable JSON instead of text (results and errors).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole platform on this machine.
    Up(up::UpArgs),
    /// Accounts, logins and API keys.
    User(user::UserArgs),
    /// Polls and votes.
    Poll(poll::PollArgs),
    /// Access-token signing keys (needs the user service's admin token).
    Keys(keys::KeysArgs),
    /// Mesh certificates: root CA, workload certificates, inspection.
    Certs(certs::CertsArgs),
    /// Audit logs: verify their hash chains, follow them.
    Audit(audit::AuditArgs),
    /// Recent traces kept by `tally up`'s embedded OTLP receiver.
    Traces(traces::TracesArgs),
    /// One trace as an indented tree with durations.
    Trace(traces::TraceArgs),
    /// Event consumers: dead letters, replay, lag.
    #[command(flatten)]
    Events(events::EventsCommand),
    /// Canary rollouts under `tally up --canary`: shift traffic in steps, roll back on a breach.
    Rollout(tally::rollout::RolloutArgs),
    /// Chaos experiments against a running `tally up`: load, faults, kills, verdicts.
    Chaos(tally::chaos::ChaosArgs),
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
    #[error("{0}")]
    Rollout(#[from] tally::rollout::RolloutError),
    #[error("{0:#}")]
    Audit(anyhow::Error),
    #[error("{0}")]
    Chaos(#[from] tally::chaos::ChaosError),
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

/// Runs the parsed command.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    match cli.command {
        Command::Up(args) => Ok(up::run(args).await?),
        Command::User(args) => user::run(cli.json, args).await,
        Command::Poll(args) => poll::run(cli.json, args).await,
        Command::Keys(cmd) => keys::run(cli.json, cmd).await,
        Command::Certs(args) => certs::run(args).map_err(CliError::Certs),
        Command::Audit(args) => audit::run(cli.json, args).await.map_err(CliError::Audit),
        Command::Traces(args) => traces::list(cli.json, args).await,
        Command::Trace(args) => traces::show(cli.json, args).await,
        Command::Events(cmd) => events::run_command(cmd, cli.json)
            .await
            .map_err(CliError::Events),
        Command::Rollout(args) => Ok(tally::rollout::run(cli.json, args).await?),
        Command::Chaos(args) => Ok(tally::chaos::run(args).await?),
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
    fn connection_flags_work_before_and_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "tally",
            "poll",
            "--poll-addr",
            "127.0.0.1:8",
            "get",
            "p1",
            "--json",
            "--timeout",
            "3",
        ])
        .expect("parses");
        assert!(cli.json);
        let Command::Poll(args) = cli.command else {
            panic!("poll")
        };
        assert_eq!(args.poll.poll_addr, "127.0.0.1:8");
        assert_eq!(args.deadline.timeout, 3.0);
        let cli = Cli::try_parse_from(["tally", "poll", "get", "p1", "--poll-addr", "127.0.0.1:9"])
            .expect("parses");
        let Command::Poll(args) = cli.command else {
            panic!("poll")
        };
        assert_eq!(args.poll.poll_addr, "127.0.0.1:9");
    }

    #[test]
    fn commands_refuse_flags_they_do_not_read() {
        for args in [
            &["tally", "certs", "inspect", "f.pem", "--token", "t"][..],
            &[
                "tally",
                "user",
                "login",
                "--email",
                "a",
                "--password",
                "p",
                "--api-key",
                "k",
            ],
            &["tally", "poll", "get", "p1", "--user-addr", "x"],
            &[
                "tally",
                "consumers",
                "--service",
                "billing",
                "--timeout",
                "3",
            ],
            &["tally", "--user-addr", "x", "user", "profile"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
        assert!(
            Cli::try_parse_from(["tally", "poll", "list", "--mine", "--user-addr", "x"]).is_ok(),
            "poll list --mine looks the caller up in the user service"
        );
    }

    #[test]
    fn timeout_must_be_positive() {
        assert!(Cli::try_parse_from(["tally", "user", "--timeout", "0", "profile"]).is_err());
        assert!(Cli::try_parse_from(["tally", "user", "profile", "--timeout", "x"]).is_err());
    }
}
