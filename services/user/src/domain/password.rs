//! Password rules. Hashing itself is an adapter (argon2id); this module only
//! decides what an acceptable password is.

use super::ValidationError;

/// Fewest characters a password may have.
pub const MIN_CHARS: usize = 10;
/// Most characters a password may have (bounds the hashing work per request).
pub const MAX_CHARS: usize = 1024;

/// Checks a new password against the rules.
pub fn check_new_password(password: &str) -> Result<(), ValidationError> {
    let n = password.chars().count();
    if n < MIN_CHARS {
        return Err(ValidationError::new(
            "password",
            format!("must be at least {MIN_CHARS} characters (got {n})"),
        ));
    }
    if n > MAX_CHARS {
        return Err(ValidationError::new(
            "password",
            format!("must be at most {MAX_CHARS} characters"),
        ));
    }
    if password.trim().is_empty() {
        return Err(ValidationError::new("password", "must not be only spaces"));
    }
    Ok(())
}

/// Whether a login attempt's password is even worth hashing. Over-long input
/// is refused without hashing; the caller still reports a generic failure.
pub fn plausible_login_password(password: &str) -> bool {
    !password.is_empty() && password.chars().count() <= MAX_CHARS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimum_length_is_ten_characters() {
        assert!(check_new_password("123456789").is_err());
        assert!(check_new_password("1234567890").is_ok());
        // Characters, not bytes: nine two-byte characters are still too short.
        assert!(check_new_password("ééééééééé").is_err());
        assert!(check_new_password("éééééééééé").is_ok());
    }

    #[test]
    fn maximum_length_is_bounded() {
        assert!(check_new_password(&"x".repeat(MAX_CHARS)).is_ok());
        let e = check_new_password(&"x".repeat(MAX_CHARS + 1)).unwrap_err();
        assert_eq!(e.field, "password");
    }

    #[test]
    fn blank_passwords_are_rejected() {
        let e = check_new_password("            ").unwrap_err();
        assert_eq!(e.field, "password");
        assert!(check_new_password("").is_err());
    }

    #[test]
    fn login_passwords_outside_bounds_are_not_hashed() {
        assert!(!plausible_login_password(""));
        assert!(!plausible_login_password(&"x".repeat(MAX_CHARS + 1)));
        assert!(plausible_login_password("short"));
    }
}
