//! API key scopes: the closed set of permissions a key can carry.

use super::ValidationError;

/// One permission an API key grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    PollsRead,
    PollsWrite,
    VotesWrite,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::PollsRead, Scope::PollsWrite, Scope::VotesWrite];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::PollsRead => "polls:read",
            Scope::PollsWrite => "polls:write",
            Scope::VotesWrite => "votes:write",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw.trim())
    }
}

/// Parses requested scopes: at least one, all known; duplicates collapse and
/// the result is sorted so stored keys compare equal regardless of order.
pub fn parse_scopes(raw: &[String]) -> Result<Vec<Scope>, ValidationError> {
    if raw.is_empty() {
        return Err(ValidationError::new(
            "scopes",
            format!("at least one scope is required ({})", known()),
        ));
    }
    let mut out = Vec::with_capacity(raw.len());
    for r in raw {
        match Scope::parse(r) {
            Some(s) => out.push(s),
            None => {
                return Err(ValidationError::new(
                    "scopes",
                    format!("unknown scope `{r}`; known scopes: {}", known()),
                ));
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Scopes as their wire strings.
pub fn to_strings(scopes: &[Scope]) -> Vec<String> {
    scopes.iter().map(|s| s.as_str().to_string()).collect()
}

fn known() -> String {
    Scope::ALL
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_known_scopes_sorted_and_deduplicated() {
        let s = parse_scopes(&v(&["votes:write", "polls:read", "votes:write"])).unwrap();
        assert_eq!(s, vec![Scope::PollsRead, Scope::VotesWrite]);
        assert_eq!(to_strings(&s), v(&["polls:read", "votes:write"]));
        assert_eq!(
            parse_scopes(&v(&["polls:write"])).unwrap(),
            vec![Scope::PollsWrite]
        );
    }

    #[test]
    fn unknown_scope_is_named_in_the_error() {
        let e = parse_scopes(&v(&["polls:read", "admin:all"])).unwrap_err();
        assert_eq!(e.field, "scopes");
        assert!(e.problem.contains("`admin:all`"), "{}", e.problem);
        assert!(parse_scopes(&v(&["POLLS:READ"])).is_err());
        assert!(parse_scopes(&v(&[""])).is_err());
    }

    #[test]
    fn empty_scope_list_is_rejected() {
        assert_eq!(parse_scopes(&[]).unwrap_err().field, "scopes");
    }

    #[test]
    fn every_scope_round_trips() {
        for s in Scope::ALL {
            assert_eq!(Scope::parse(s.as_str()), Some(s));
        }
    }
}
