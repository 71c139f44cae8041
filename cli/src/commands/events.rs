//! `tally dlq list|show|redrive`, `tally replay` and `tally consumers`: operate
//! the event consumers of a service through its `tally.events.v1.ConsumerAdminService`.
//!
//! The service is picked by `--service` (its default local port) or by `--addr`.
//! The command tree flattens [`EventsCommand`] into top-level `dlq`, `replay`
//! and `consumers`, and calls [`run_command`].

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use std::time::Duration;
use tally_api::events::v1::consumer_admin_service_client::ConsumerAdminServiceClient;
use tally_api::events::v1::{
    ConsumerStatus, DeadLetter, EventEnvelope, GetDeadLetterRequest, ListConsumersRequest,
    ListDeadLettersRequest, RedriveDeadLetterRequest, ReplayRequest,
};
use tonic::transport::{Channel, Endpoint};

/// Redrives retry with backoff on the server, so calls get a generous deadline.
const DEADLINE: Duration = Duration::from_secs(120);

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Dead-lettered events of a service's consumers.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Rewind a consumer to an offset (`--from start --rebuild` rebuilds its read model).
    Replay(ReplayArgs),
    /// A service's consumers with their offsets, lag and dead letters.
    Consumers(Target),
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters (of one consumer, or of all with no --consumer).
    List {
        #[command(flatten)]
        target: Target,
        /// Only this consumer.
        #[arg(long)]
        consumer: Option<String>,
    },
    /// Show one dead letter with its error, attempts and event.
    Show {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        consumer: String,
        /// The event id.
        event_id: String,
    },
    /// Process dead letters again; each success leaves the queue.
    Redrive {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        consumer: String,
        /// The event id to redrive.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        event_id: Option<String>,
        /// Redrive every dead letter of the consumer.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub target: Target,
    /// The consumer to rewind.
    pub consumer: String,
    /// `start`, or the offset after which events are delivered again.
    #[arg(long, value_parser = parse_from)]
    pub from: u64,
    /// Clear the consumer's read model first (requires `--from start`).
    #[arg(long)]
    pub rebuild: bool,
}

/// Which service to talk to.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// The consuming service: analytics (50054), notification (50053) or billing (50055).
    #[arg(long, required_unless_present = "addr")]
    pub service: Option<String>,
    /// The service's address, overriding --service's default port.
    #[arg(long)]
    pub addr: Option<String>,
}

fn parse_from(s: &str) -> Result<u64, String> {
    match s {
        "start" | "beginning" | "0" => Ok(0),
        n => n
            .parse()
            .map_err(|_| format!("`{n}` is neither `start` nor an offset")),
    }
}

/// The default local address of a consuming service.
pub fn default_addr(service: &str) -> Option<&'static str> {
    match service {
        "notification" => Some("http://127.0.0.1:50053"),
        "analytics" => Some("http://127.0.0.1:50054"),
        "billing" => Some("http://127.0.0.1:50055"),
        _ => None,
    }
}

impl Target {
    fn address(&self) -> anyhow::Result<String> {
        if let Some(addr) = &self.addr {
            return Ok(if addr.contains("://") {
                addr.clone()
            } else {
                format!("http://{addr}")
            });
        }
        let service = self.service.as_deref().unwrap_or_default();
        default_addr(service)
            .map(str::to_string)
            .with_context(|| {
                format!("no default address for service `{service}`: use analytics, notification or billing, or pass --addr")
            })
    }

    async fn client(&self) -> anyhow::Result<ConsumerAdminServiceClient<Channel>> {
        let addr = self.address()?;
        let endpoint = Endpoint::from_shared(addr.clone())
            .with_context(|| format!("`{addr}` is not a valid address"))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(DEADLINE);
        Ok(ConsumerAdminServiceClient::new(endpoint.connect_lazy()))
    }
}

fn failed(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(
        "{}: {}",
        tally_sdk::code_name(status.code()),
        status.message()
    )
}

/// Runs one command; `json` selects JSON output.
pub async fn run_command(command: EventsCommand, json: bool) -> anyhow::Result<()> {
    match command {
        EventsCommand::Consumers(target) => {
            let consumers = target
                .client()
                .await?
                .list_consumers(ListConsumersRequest {})
                .await
                .map_err(failed)?
                .into_inner()
                .consumers;
            if json {
                print(
                    &json!({ "consumers": consumers.iter().map(status_json).collect::<Vec<_>>() })
                        .to_string(),
                );
            } else if consumers.is_empty() {
                print("no consumers");
            } else {
                let lines: Vec<String> = consumers.iter().map(status_text).collect();
                print(&lines.join("\n"));
            }
        }
        EventsCommand::Dlq(DlqCommand::List { target, consumer }) => {
            let letters = target
                .client()
                .await?
                .list_dead_letters(ListDeadLettersRequest {
                    consumer: consumer.unwrap_or_default(),
                })
                .await
                .map_err(failed)?
                .into_inner()
                .dead_letters;
            if json {
                print(&json!({ "dead_letters": letters.iter().map(dead_letter_json).collect::<Vec<_>>() }).to_string());
            } else if letters.is_empty() {
                print("no dead letters");
            } else {
                let lines: Vec<String> = letters.iter().map(dead_letter_line).collect();
                print(&lines.join("\n"));
            }
        }
        EventsCommand::Dlq(DlqCommand::Show {
            target,
            consumer,
            event_id,
        }) => {
            let letter = target
                .client()
                .await?
                .get_dead_letter(GetDeadLetterRequest { consumer, event_id })
                .await
                .map_err(failed)?
                .into_inner()
                .dead_letter
                .context("the service returned no dead letter")?;
            if json {
                print(&dead_letter_json(&letter).to_string());
            } else {
                print(&dead_letter_text(&letter));
            }
        }
        EventsCommand::Dlq(DlqCommand::Redrive {
            target,
            consumer,
            event_id,
            all,
        }) => {
            if all == event_id.is_some() {
                bail!("pass either an event id or --all");
            }
            let result = target
                .client()
                .await?
                .redrive_dead_letter(RedriveDeadLetterRequest {
                    consumer: consumer.clone(),
                    event_id: event_id.unwrap_or_default(),
                })
                .await
                .map_err(failed)?
                .into_inner();
            if json {
                print(&json!({ "consumer": consumer, "redriven": result.redriven, "still_failing": result.still_failing }).to_string());
            } else {
                print(&format!(
                    "{consumer}: redriven {}, still failing {}",
                    result.redriven, result.still_failing
                ));
            }
        }
        EventsCommand::Replay(args) => {
            if args.rebuild && args.from != 0 {
                bail!("--rebuild replays from the start: use --from start");
            }
            let result = args
                .target
                .client()
                .await?
                .replay(ReplayRequest {
                    consumer: args.consumer.clone(),
                    from_offset: args.from,
                    rebuild: args.rebuild,
                })
                .await
                .map_err(failed)?
                .into_inner();
            if json {
                print(&json!({ "consumer": args.consumer, "from_offset": result.from_offset, "rebuild": args.rebuild }).to_string());
            } else {
                let what = if args.rebuild {
                    "read model cleared; rebuilding from the start".to_string()
                } else {
                    format!(
                        "events after offset {} are delivered again",
                        result.from_offset
                    )
                };
                print(&format!("{}: rewound; {what}", args.consumer));
            }
        }
    }
    Ok(())
}

fn print(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

fn ts(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .map(|t| t.to_string())
        .unwrap_or_else(|| "-".into())
}

fn status_json(s: &ConsumerStatus) -> Value {
    json!({
        "consumer": s.consumer,
        "source": s.source,
        "offset": s.offset,
        "head_offset": s.head_offset,
        "lag": s.lag,
        "dead_letters": s.dead_letters,
    })
}

fn status_text(s: &ConsumerStatus) -> String {
    format!(
        "{}  source {}  offset {}  head {}  lag {}  dead letters {}",
        s.consumer, s.source, s.offset, s.head_offset, s.lag, s.dead_letters
    )
}

fn envelope_json(e: &EventEnvelope) -> Value {
    json!({
        "event_id": e.event_id,
        "event_type": e.event_type,
        "aggregate_id": e.aggregate_id,
        "sequence": e.sequence,
        "occurred_at": e.occurred_at.as_ref().map(|t| t.to_string()),
        "schema_version": e.schema_version,
        "producer": e.producer,
        "payload": e.payload.as_ref().map(|p| format!("{p:?}")),
    })
}

fn dead_letter_json(d: &DeadLetter) -> Value {
    json!({
        "consumer": d.consumer,
        "event_id": d.event_id,
        "offset": d.offset,
        "event_type": d.event_type,
        "error": d.error,
        "attempts": d.attempts,
        "failed_at": d.failed_at.as_ref().map(|t| t.to_string()),
        "event": d.event.as_ref().map(envelope_json),
    })
}

fn dead_letter_line(d: &DeadLetter) -> String {
    format!(
        "{}  {}  offset {}  {}  attempts {}  failed {}  {}",
        d.consumer,
        d.event_id,
        d.offset,
        d.event_type,
        d.attempts,
        ts(&d.failed_at),
        d.error
    )
}

fn dead_letter_text(d: &DeadLetter) -> String {
    let mut out = format!(
        "dead letter {}\n  consumer:   {}\n  offset:     {}\n  type:       {}\n  attempts:   {}\n  failed at:  {}\n  error:      {}",
        d.event_id,
        d.consumer,
        d.offset,
        d.event_type,
        d.attempts,
        ts(&d.failed_at),
        d.error
    );
    if let Some(e) = &d.event {
        out.push_str(&format!(
            "\n  aggregate:  {} (sequence {})\n  producer:   {}\n  occurred:   {}\n  schema:     v{}\n  payload:    {}",
            e.aggregate_id,
            e.sequence,
            e.producer,
            ts(&e.occurred_at),
            e.schema_version,
            e.payload
                .as_ref()
                .map(|p| format!("{p:?}"))
                .unwrap_or_else(|| "(unknown to this build)".into())
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: EventsCommand,
    }

    #[test]
    fn command_tree_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn replay_parses_start_and_offsets() {
        let cli = Cli::try_parse_from([
            "tally",
            "replay",
            "poll-results",
            "--service",
            "analytics",
            "--from",
            "start",
            "--rebuild",
        ])
        .expect("parses");
        match cli.command {
            EventsCommand::Replay(r) => {
                assert_eq!((r.from, r.rebuild), (0, true));
                assert_eq!(r.target.address().expect("addr"), "http://127.0.0.1:50054");
            }
            other => panic!("unexpected {other:?}"),
        }
        let cli = Cli::try_parse_from([
            "tally",
            "replay",
            "c",
            "--addr",
            "127.0.0.1:9",
            "--from",
            "42",
        ])
        .expect("parses");
        match cli.command {
            EventsCommand::Replay(r) => {
                assert_eq!(r.from, 42);
                assert_eq!(r.target.address().expect("addr"), "http://127.0.0.1:9");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            Cli::try_parse_from([
                "tally",
                "replay",
                "c",
                "--service",
                "analytics",
                "--from",
                "soon"
            ])
            .is_err()
        );
    }

    #[test]
    fn dlq_needs_a_target_and_redrive_a_choice() {
        assert!(Cli::try_parse_from(["tally", "dlq", "list"]).is_err());
        assert!(Cli::try_parse_from(["tally", "dlq", "list", "--service", "billing"]).is_ok());
        assert!(
            Cli::try_parse_from([
                "tally",
                "dlq",
                "redrive",
                "--service",
                "billing",
                "--consumer",
                "c"
            ])
            .is_err()
        );
        assert!(
            Cli::try_parse_from([
                "tally",
                "dlq",
                "redrive",
                "--service",
                "billing",
                "--consumer",
                "c",
                "--all"
            ])
            .is_ok()
        );
        let unknown = Target {
            service: Some("polling".into()),
            addr: None,
        };
        assert!(unknown.address().is_err());
    }
}
