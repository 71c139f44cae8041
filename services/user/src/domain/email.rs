//! Email addresses: a pragmatic syntax check and one canonical form, so the
//! same mailbox cannot register twice by changing case or adding spaces.

use super::ValidationError;

/// Longest address accepted (RFC 5321 path limit minus the brackets).
pub const MAX_LEN: usize = 254;
const MAX_LOCAL_LEN: usize = 64;
const MAX_LABEL_LEN: usize = 63;

/// A syntactically valid email address in canonical (trimmed, lower-case) form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    /// Validates `raw` and returns its canonical form.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let err = |p: &str| ValidationError::new("email", p.to_string());
        let s = raw.trim().to_lowercase();
        if s.is_empty() {
            return Err(err("is required"));
        }
        if s.chars().count() > MAX_LEN {
            return Err(err(&format!("is longer than {MAX_LEN} characters")));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err("must not contain spaces or control characters"));
        }
        let Some((local, domain)) = s.split_once('@') else {
            return Err(err("must look like name@example.com (no `@` found)"));
        };
        if domain.contains('@') {
            return Err(err("must contain exactly one `@`"));
        }
        if local.is_empty() {
            return Err(err("has nothing before the `@`"));
        }
        if local.chars().count() > MAX_LOCAL_LEN {
            return Err(err(&format!(
                "part before the `@` is longer than {MAX_LOCAL_LEN} characters"
            )));
        }
        if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
            return Err(err("part before the `@` has a misplaced `.`"));
        }
        if local.chars().any(|c| "\"(),:;<>[\\]".contains(c)) {
            return Err(err(
                "part before the `@` contains a character that is not allowed",
            ));
        }
        check_domain(domain).map_err(|p| err(&p))?;
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before the `@`.
    pub fn local_part(&self) -> &str {
        self.0.split_once('@').map(|(l, _)| l).unwrap_or(&self.0)
    }
}

fn check_domain(domain: &str) -> Result<(), String> {
    if domain.is_empty() {
        return Err("has no domain after the `@`".into());
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return Err("domain must contain a `.`, e.g. example.com".into());
    }
    for label in &labels {
        if label.is_empty() {
            return Err("domain has an empty part (`..` or a leading/trailing `.`)".into());
        }
        if label.chars().count() > MAX_LABEL_LEN {
            return Err(format!(
                "domain part `{label}` is longer than {MAX_LABEL_LEN} characters"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("domain part `{label}` starts or ends with `-`"));
        }
        if !label.chars().all(|c| c.is_alphanumeric() || c == '-') {
            return Err(format!(
                "domain part `{label}` contains a character that is not allowed"
            ));
        }
    }
    let tld = labels.last().copied().unwrap_or_default();
    if tld.chars().all(|c| c.is_ascii_digit()) {
        return Err("domain must end in a name, not a number".into());
    }
    Ok(())
}

impl std::fmt::Display for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_addresses_and_canonicalises() {
        let e = Email::parse("  Alice.Smith+polls@Example.COM ").unwrap();
        assert_eq!(e.as_str(), "alice.smith+polls@example.com");
        assert_eq!(e.local_part(), "alice.smith+polls");
        assert!(Email::parse("a@b.co").is_ok());
        assert!(Email::parse("x@sub-domain.example.org").is_ok());
    }

    #[test]
    fn rejects_malformed_addresses_naming_the_field() {
        for bad in [
            "",
            "   ",
            "plainaddress",
            "@example.com",
            "alice@",
            "alice@example",
            "alice@@example.com",
            "a@b@example.com",
            "alice smith@example.com",
            "alice@exa mple.com",
            ".alice@example.com",
            "alice.@example.com",
            "al..ice@example.com",
            "alice@example..com",
            "alice@.example.com",
            "alice@example.com.",
            "alice@-example.com",
            "alice@example-.com",
            "alice@exa_mple.com",
            "alice@127.0.0.1",
            "ali<ce@example.com",
            "ali\u{7}ce@example.com",
        ] {
            let e = Email::parse(bad).expect_err(bad);
            assert_eq!(e.field, "email", "{bad}");
        }
        // Surrounding whitespace, including a pasted newline, is trimmed.
        assert!(Email::parse("alice@example.com\n").is_ok());
    }

    #[test]
    fn enforces_length_limits() {
        let local = "a".repeat(65);
        assert!(Email::parse(&format!("{local}@example.com")).is_err());
        let ok_local = "a".repeat(64);
        assert!(Email::parse(&format!("{ok_local}@example.com")).is_ok());
        let label = "b".repeat(64);
        assert!(Email::parse(&format!("a@{label}.com")).is_err());
        let long = format!("a@{}.com", vec!["c".repeat(60); 5].join("."));
        assert!(long.len() > MAX_LEN);
        assert!(Email::parse(&long).is_err());
    }
}
