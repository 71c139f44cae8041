//! How command results look: short text for people, JSON (`--json`) for scripts.
//!
//! JSON keys are the proto field names; timestamps are RFC 3339 strings and
//! counts are numbers.

use serde_json::{Value, json};
use tally_api::poll::v1 as poll;
use tally_api::user::v1 as user;

/// Prints either the JSON or the text form of a result.
pub struct Out {
    json: bool,
}

impl Out {
    pub fn new(json: bool) -> Self {
        Self { json }
    }

    /// A closed stdout (e.g. `| head -1`) is not an error worth a panic.
    pub fn print(&self, json: Value, text: String) {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = if self.json {
            writeln!(out, "{json}")
        } else {
            writeln!(out, "{text}")
        };
    }
}

fn ts(t: &Option<prost_types::Timestamp>) -> Value {
    match t {
        Some(t) => Value::String(t.to_string()),
        None => Value::Null,
    }
}

fn ts_text(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .map(|t| t.to_string())
        .unwrap_or_else(|| "-".into())
}

pub fn user_json(u: &user::User) -> Value {
    json!({
        "user_id": u.user_id,
        "email": u.email,
        "display_name": u.display_name,
        "created_at": ts(&u.created_at),
    })
}

pub fn user_text(u: &user::User) -> String {
    format!(
        "user {}\n  email:        {}\n  display name: {}\n  created:      {}",
        u.user_id,
        u.email,
        u.display_name,
        ts_text(&u.created_at)
    )
}

pub fn login_json(l: &user::LoginResponse) -> Value {
    json!({
        "access_token": l.access_token,
        "access_token_expires_at": ts(&l.access_token_expires_at),
        "session_token": l.session_token,
        "session_expires_at": ts(&l.session_expires_at),
        "user": l.user.as_ref().map(user_json),
    })
}

pub fn login_text(l: &user::LoginResponse) -> String {
    let who = l
        .user
        .as_ref()
        .map(|u| format!("{} <{}>", u.display_name, u.email))
        .unwrap_or_default();
    format!(
        "logged in as {who}\naccess token (until {}):\n{}\nsession token (until {}): {}\n\nuse it: export TALLY_TOKEN=<access token>",
        ts_text(&l.access_token_expires_at),
        l.access_token,
        ts_text(&l.session_expires_at),
        l.session_token
    )
}

pub fn api_key_json(k: &user::ApiKey) -> Value {
    json!({
        "key_id": k.key_id,
        "name": k.name,
        "scopes": k.scopes,
        "created_at": ts(&k.created_at),
        "revoked": k.revoked,
    })
}

pub fn api_key_text(k: &user::ApiKey) -> String {
    format!(
        "{}  {}  [{}]{}",
        k.key_id,
        k.name,
        k.scopes.join(", "),
        if k.revoked { "  (revoked)" } else { "" }
    )
}

fn status_name(status: i32) -> &'static str {
    match poll::PollStatus::try_from(status) {
        Ok(poll::PollStatus::Open) => "open",
        Ok(poll::PollStatus::Closed) => "closed",
        _ => "unknown",
    }
}

pub fn poll_json(p: &poll::Poll) -> Value {
    json!({
        "poll_id": p.poll_id,
        "owner_id": p.owner_id,
        "question": p.question,
        "options": p.options.iter().map(|o| json!({"option_id": o.option_id, "text": o.text})).collect::<Vec<_>>(),
        "status": status_name(p.status),
        "created_at": ts(&p.created_at),
        "closes_at": ts(&p.closes_at),
        "closed_at": ts(&p.closed_at),
    })
}

pub fn poll_text(p: &poll::Poll) -> String {
    let mut s = format!(
        "poll {} ({})\n  {}\n",
        p.poll_id,
        status_name(p.status),
        p.question
    );
    for (i, o) in p.options.iter().enumerate() {
        s.push_str(&format!("  {}. {}  [{}]\n", i + 1, o.text, o.option_id));
    }
    s.push_str(&format!("  owner:   {}\n", p.owner_id));
    s.push_str(&format!("  created: {}", ts_text(&p.created_at)));
    if p.closes_at.is_some() {
        s.push_str(&format!("\n  closes:  {}", ts_text(&p.closes_at)));
    }
    if p.closed_at.is_some() {
        s.push_str(&format!("\n  closed:  {}", ts_text(&p.closed_at)));
    }
    s
}

pub fn poll_line(p: &poll::Poll) -> String {
    format!(
        "{}  {:<6}  {}  ({} options)",
        p.poll_id,
        status_name(p.status),
        p.question,
        p.options.len()
    )
}

pub fn vote_json(v: &poll::Vote) -> Value {
    json!({
        "vote_id": v.vote_id,
        "poll_id": v.poll_id,
        "option_id": v.option_id,
        "voter_id": v.voter_id,
        "cast_at": ts(&v.cast_at),
    })
}

pub fn results_json(r: &poll::GetResultsResponse) -> Value {
    json!({
        "poll_id": r.poll_id,
        "status": status_name(r.status),
        "total_votes": r.total_votes,
        "results": r.results.iter().map(|o| json!({"option_id": o.option_id, "text": o.text, "votes": o.votes})).collect::<Vec<_>>(),
    })
}

pub fn results_text(r: &poll::GetResultsResponse) -> String {
    let mut s = format!(
        "poll {} ({}), {} vote{}",
        r.poll_id,
        status_name(r.status),
        r.total_votes,
        if r.total_votes == 1 { "" } else { "s" }
    );
    let width = r
        .results
        .iter()
        .map(|o| o.text.chars().count())
        .max()
        .unwrap_or(0);
    for o in &r.results {
        let pct = if r.total_votes == 0 {
            0.0
        } else {
            o.votes as f64 * 100.0 / r.total_votes as f64
        };
        s.push_str(&format!(
            "\n  {:<width$}  {:>5}  {:>5.1}%",
            o.text, o.votes, pct
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_render_counts_and_shares() {
        let r = poll::GetResultsResponse {
            poll_id: "p1".into(),
            total_votes: 4,
            status: poll::PollStatus::Open as i32,
            results: vec![
                poll::OptionResult {
                    option_id: "a".into(),
                    text: "Tea".into(),
                    votes: 3,
                },
                poll::OptionResult {
                    option_id: "b".into(),
                    text: "Coffee".into(),
                    votes: 1,
                },
            ],
        };
        let text = results_text(&r);
        assert!(text.starts_with("poll p1 (open), 4 votes"), "{text}");
        assert!(text.contains("75.0%") && text.contains("25.0%"), "{text}");
        let j = results_json(&r);
        assert_eq!(j["total_votes"], 4);
        assert_eq!(j["results"][0]["votes"], 3);
        assert_eq!(j["status"], "open");
    }

    #[test]
    fn poll_json_has_rfc3339_times() {
        let p = poll::Poll {
            poll_id: "p".into(),
            created_at: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            ..Default::default()
        };
        let j = poll_json(&p);
        assert_eq!(j["created_at"], "1970-01-01T00:00:00Z");
        assert_eq!(j["closes_at"], Value::Null);
    }
}
