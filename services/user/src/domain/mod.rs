//! The user service's rules, free of I/O: what a valid email, password,
//! display name, scope, API key or access token looks like, when logins are
//! throttled, and how the signing-key ring rotates.
//!
//! Everything here is deterministic given its inputs (randomness and the
//! clock are passed in), so every rule is unit-tested directly.

pub mod api_key;
pub mod client_ip;
pub mod email;
pub mod key_ring;
pub mod login_throttle;
pub mod password;
pub mod profile;
pub mod scope;
pub mod session;
pub mod token;
pub mod user;

/// A rule an input broke; `field` names the request field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ValidationError {
    pub field: &'static str,
    pub problem: String,
}

impl ValidationError {
    pub fn new(field: &'static str, problem: impl Into<String>) -> Self {
        Self {
            field,
            problem: problem.into(),
        }
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_matches_plain_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn validation_error_names_the_field() {
        let e = ValidationError::new("email", "is empty");
        assert_eq!(e.to_string(), "email: is empty");
    }
}
