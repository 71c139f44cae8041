//! `tally poll ...`: create, read, list, close, vote and count.

use super::CliError;
use super::connect::{self, CredentialArgs, Deadline, PollAddr, UserAddr};
use super::output::{self, Out};
use clap::{Args, Subcommand};
use std::time::{Duration, SystemTime};
use tally_api::poll::v1 as pb;
use tally_sdk::{Client, ListFilter};

/// `tally poll`: every subcommand calls the poll service with credentials.
#[derive(Debug, Args)]
pub struct PollArgs {
    #[command(flatten)]
    pub poll: PollAddr,
    #[command(flatten)]
    pub deadline: Deadline,
    #[command(flatten)]
    pub credentials: CredentialArgs,
    #[command(subcommand)]
    pub command: PollCommand,
}

#[derive(Debug, Subcommand)]
pub enum PollCommand {
    /// Create a poll you own.
    Create {
        /// The question, 1 to 500 characters.
        #[arg(long)]
        question: String,
        /// An answer option; repeat 2 to 20 times.
        #[arg(long = "option", required = true)]
        options: Vec<String>,
        /// Close automatically after this long, e.g. `90s`, `30m`, `2h`, `7d`.
        #[arg(long, value_parser = parse_span, conflicts_with = "closes_at")]
        closes_in: Option<Duration>,
        /// Close automatically at this RFC 3339 time, e.g. `2030-01-01T00:00:00Z`.
        #[arg(long, value_parser = parse_time)]
        closes_at: Option<prost_types::Timestamp>,
    },
    /// Show one poll.
    Get { poll_id: String },
    /// List open polls, or the polls of one owner.
    List {
        /// Only polls owned by this user id.
        #[arg(long, conflicts_with = "mine")]
        owner: Option<String>,
        /// Only your own polls.
        #[arg(long)]
        mine: bool,
        #[arg(long, default_value_t = 20)]
        page_size: u32,
        /// Token printed by the previous page.
        #[arg(long, default_value = "")]
        page_token: String,
        /// `--mine` asks the user service who you are.
        #[command(flatten)]
        user: UserAddr,
    },
    /// Close a poll you own.
    Close { poll_id: String },
    /// Vote: OPTION is an option id, its 1-based number, or its exact text.
    Vote {
        poll_id: String,
        option: String,
        /// Retrying with the same key returns the first vote instead of failing.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Show vote counts.
    Results { poll_id: String },
}

/// Parses `90s`, `30m`, `2h`, `7d` (a bare number is seconds).
pub fn parse_span(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 90s, 30m, 2h or 7d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        "d" => n.saturating_mul(86_400),
        _ => return Err(format!("`{s}`: unknown unit `{unit}`; use s, m, h or d")),
    };
    if secs == 0 {
        return Err("the duration must be more than zero".into());
    }
    Ok(Duration::from_secs(secs))
}

fn parse_time(s: &str) -> Result<prost_types::Timestamp, String> {
    s.parse::<prost_types::Timestamp>()
        .map_err(|_| format!("`{s}` is not an RFC 3339 time like 2030-01-01T00:00:00Z"))
}

/// Finds the option `wanted` names: its id, its 1-based number, or its text.
pub fn resolve_option(poll: &pb::Poll, wanted: &str) -> Option<String> {
    if let Some(o) = poll.options.iter().find(|o| o.option_id == wanted) {
        return Some(o.option_id.clone());
    }
    if let Ok(n) = wanted.parse::<usize>()
        && n >= 1
        && let Some(o) = poll.options.get(n - 1)
    {
        return Some(o.option_id.clone());
    }
    poll.options
        .iter()
        .find(|o| o.text.eq_ignore_ascii_case(wanted))
        .map(|o| o.option_id.clone())
}

async fn option_id(client: &Client, poll_id: &str, wanted: &str) -> Result<String, CliError> {
    match client.get_poll(poll_id).await {
        Ok(poll) => resolve_option(&poll, wanted).ok_or_else(|| {
            let known: Vec<String> = poll
                .options
                .iter()
                .enumerate()
                .map(|(i, o)| format!("{}. {} ({})", i + 1, o.text, o.option_id))
                .collect();
            CliError::Usage(format!(
                "poll {poll_id} has no option `{wanted}`; options: {}",
                known.join(", ")
            ))
        }),
        // A key that may vote but not read polls: send the option as given.
        Err(e) if e.code() == tonic::Code::PermissionDenied => Ok(wanted.to_string()),
        Err(e) => Err(e.into()),
    }
}

pub async fn run(json: bool, args: PollArgs) -> Result<(), CliError> {
    let credentials = args.credentials.required()?;
    let user = match &args.command {
        PollCommand::List { user, .. } => Some(user),
        _ => None,
    };
    let client = connect::client(user, Some(&args.poll), &args.deadline, Some(credentials))?;
    let out = Out::new(json);
    match args.command {
        PollCommand::Create {
            question,
            options,
            closes_in,
            closes_at,
        } => {
            let closes_at = closes_at
                .or_else(|| closes_in.map(|d| prost_types::Timestamp::from(SystemTime::now() + d)));
            let poll = client.create_poll(&question, options, closes_at).await?;
            out.print(output::poll_json(&poll), output::poll_text(&poll));
        }
        PollCommand::Get { poll_id } => {
            let poll = client.get_poll(&poll_id).await?;
            out.print(output::poll_json(&poll), output::poll_text(&poll));
        }
        PollCommand::List {
            owner,
            mine,
            page_size,
            page_token,
            user: _,
        } => {
            let filter = match (owner, mine) {
                (Some(o), _) => ListFilter::Owner(o),
                (None, true) => ListFilter::Owner(client.profile().await?.user_id),
                (None, false) => ListFilter::OpenOnly,
            };
            let page = client.list_polls(filter, page_size, &page_token).await?;
            let mut text: Vec<String> = page.polls.iter().map(output::poll_line).collect();
            if text.is_empty() {
                text.push("no polls".into());
            }
            if !page.next_page_token.is_empty() {
                text.push(format!("more: --page-token {}", page.next_page_token));
            }
            out.print(
                serde_json::json!({
                    "polls": page.polls.iter().map(output::poll_json).collect::<Vec<_>>(),
                    "next_page_token": page.next_page_token,
                }),
                text.join("\n"),
            );
        }
        PollCommand::Close { poll_id } => {
            let poll = client.close_poll(&poll_id).await?;
            out.print(output::poll_json(&poll), output::poll_text(&poll));
        }
        PollCommand::Vote {
            poll_id,
            option,
            idempotency_key,
        } => {
            let option_id = option_id(&client, &poll_id, &option).await?;
            let key = idempotency_key.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            let res = client.cast_vote(&poll_id, &option_id, &key).await?;
            let vote = res.vote.unwrap_or_default();
            out.print(
                serde_json::json!({"vote": output::vote_json(&vote), "replayed": res.replayed}),
                format!(
                    "{} vote {} for option {} on poll {}",
                    if res.replayed { "replayed" } else { "cast" },
                    vote.vote_id,
                    vote.option_id,
                    vote.poll_id
                ),
            );
        }
        PollCommand::Results { poll_id } => {
            let res = client.get_results(&poll_id).await?;
            out.print(output::results_json(&res), output::results_text(&res));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll() -> pb::Poll {
        pb::Poll {
            poll_id: "p1".into(),
            options: vec![
                pb::PollOption {
                    option_id: "o-a".into(),
                    text: "Tea".into(),
                },
                pb::PollOption {
                    option_id: "o-b".into(),
                    text: "Coffee".into(),
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn options_resolve_by_id_number_or_text() {
        let p = poll();
        assert_eq!(resolve_option(&p, "o-b").as_deref(), Some("o-b"));
        assert_eq!(resolve_option(&p, "1").as_deref(), Some("o-a"));
        assert_eq!(resolve_option(&p, "coffee").as_deref(), Some("o-b"));
        assert_eq!(resolve_option(&p, "3"), None);
        assert_eq!(resolve_option(&p, "0"), None);
        assert_eq!(resolve_option(&p, "juice"), None);
    }

    #[test]
    fn spans_parse() {
        assert_eq!(parse_span("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_span("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_span("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_span("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_span("15"), Ok(Duration::from_secs(15)));
        assert!(parse_span("0s").is_err());
        assert!(parse_span("5y").is_err());
        assert!(parse_span("m").is_err());
    }

    #[test]
    fn times_parse_rfc3339() {
        assert!(parse_time("2030-01-01T00:00:00Z").is_ok());
        assert!(parse_time("tomorrow").is_err());
    }
}
