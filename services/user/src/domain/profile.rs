//! Display names: what other users see instead of an email address.

use super::ValidationError;
use super::email::Email;

/// Longest display name, in characters.
pub const MAX_CHARS: usize = 100;

/// A trimmed display name of 1 to 100 printable characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let s = raw.trim();
        let err = |p: String| ValidationError::new("display_name", p);
        if s.is_empty() {
            return Err(err("is required (1 to 100 characters)".into()));
        }
        let n = s.chars().count();
        if n > MAX_CHARS {
            return Err(err(format!(
                "must be at most {MAX_CHARS} characters (got {n})"
            )));
        }
        if s.chars().any(char::is_control) {
            return Err(err("must not contain control characters".into()));
        }
        Ok(Self(s.to_string()))
    }

    /// The name to use at sign-up: the given one, or when it is left empty,
    /// the part of the email before the `@`.
    pub fn for_signup(raw: &str, email: &Email) -> Result<Self, ValidationError> {
        if raw.trim().is_empty() {
            let fallback: String = email.local_part().chars().take(MAX_CHARS).collect();
            return Self::parse(&fallback);
        }
        Self::parse(raw)
    }

    #[cfg(test)]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_and_accepts_one_to_hundred_characters() {
        assert_eq!(DisplayName::parse("  Ada  ").unwrap().as_str(), "Ada");
        assert!(DisplayName::parse("A").is_ok());
        assert!(DisplayName::parse(&"n".repeat(100)).is_ok());
        assert!(DisplayName::parse("Zoë Ñandú 🗳").is_ok());
    }

    #[test]
    fn rejects_empty_long_and_control_characters() {
        for bad in ["", "   ", "a\u{0}b", "line\nbreak"] {
            assert_eq!(
                DisplayName::parse(bad).unwrap_err().field,
                "display_name",
                "{bad:?}"
            );
        }
        let e = DisplayName::parse(&"n".repeat(101)).unwrap_err();
        assert_eq!(e.field, "display_name");
    }

    #[test]
    fn signup_defaults_to_the_email_local_part() {
        let email = Email::parse("grace@example.com").unwrap();
        assert_eq!(
            DisplayName::for_signup("", &email).unwrap().as_str(),
            "grace"
        );
        assert_eq!(
            DisplayName::for_signup(" Grace H ", &email)
                .unwrap()
                .as_str(),
            "Grace H"
        );
        assert!(DisplayName::for_signup(&"x".repeat(101), &email).is_err());
    }
}
