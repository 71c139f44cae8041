//! API keys: the secret's format (`tk_<key_id>_<random>`), its hash, and the
//! key's name. The secret is shown once; only its SHA-256 is ever stored.

use super::ValidationError;
use sha2::{Digest, Sha256};

/// Every secret starts with this, so leaked keys are easy to recognise.
pub const PREFIX: &str = "tk_";
/// Random bytes in a key id (hex-encoded, so no `_` inside).
pub const KEY_ID_BYTES: usize = 12;
/// Random bytes in the secret part (hex-encoded).
pub const SECRET_BYTES: usize = 32;
/// Longest key name.
pub const MAX_NAME_CHARS: usize = 100;
/// Name used when none is given.
pub const DEFAULT_NAME: &str = "default";

/// A freshly minted key: its id and the full secret to show once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSecret {
    pub key_id: String,
    pub secret: String,
}

impl NewSecret {
    /// Builds a key from random bytes supplied by the caller.
    pub fn from_random(id: [u8; KEY_ID_BYTES], secret: [u8; SECRET_BYTES]) -> Self {
        let key_id = hex::encode(id);
        let secret = format!("{PREFIX}{key_id}_{}", hex::encode(secret));
        Self { key_id, secret }
    }

    pub fn hash(&self) -> String {
        hash_secret(&self.secret)
    }
}

/// A presented secret split into its key id; `None` when malformed.
pub fn key_id_of(secret: &str) -> Option<&str> {
    let rest = secret.strip_prefix(PREFIX)?;
    let (key_id, random) = rest.split_once('_')?;
    let hex_of = |s: &str, bytes: usize| {
        s.len() == bytes * 2
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if hex_of(key_id, KEY_ID_BYTES) && hex_of(random, SECRET_BYTES) {
        Some(key_id)
    } else {
        None
    }
}

/// Whether a string is shaped like a key id (for RevokeApiKey input).
pub fn is_key_id(s: &str) -> bool {
    s.len() == KEY_ID_BYTES * 2 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Hex SHA-256 of the whole secret: what the store keeps.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Checks a key name; empty becomes [`DEFAULT_NAME`].
pub fn parse_name(raw: &str) -> Result<String, ValidationError> {
    let s = raw.trim();
    if s.is_empty() {
        return Ok(DEFAULT_NAME.to_string());
    }
    if s.chars().count() > MAX_NAME_CHARS {
        return Err(ValidationError::new(
            "name",
            format!("must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(ValidationError::new(
            "name",
            "must not contain control characters",
        ));
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_has_the_documented_format_and_parses_back() {
        let k = NewSecret::from_random([0xab; KEY_ID_BYTES], [0x01; SECRET_BYTES]);
        assert_eq!(k.key_id, "ab".repeat(KEY_ID_BYTES));
        assert!(k.secret.starts_with("tk_abab"));
        assert_eq!(k.secret.len(), 3 + 24 + 1 + 64);
        assert_eq!(key_id_of(&k.secret), Some(k.key_id.as_str()));
        assert!(is_key_id(&k.key_id));
    }

    #[test]
    fn malformed_secrets_are_rejected() {
        let good = NewSecret::from_random([1; KEY_ID_BYTES], [2; SECRET_BYTES]).secret;
        for bad in [
            String::new(),
            "tk_".into(),
            good.replacen("tk_", "tx_", 1),
            good[..good.len() - 1].to_string(),
            format!("{good}0"),
            good.replacen('_', "-", 2),
            good.to_uppercase(),
            format!(" {good}"),
        ] {
            assert_eq!(key_id_of(&bad), None, "{bad}");
        }
        assert!(!is_key_id("xyz"));
        assert!(!is_key_id(""));
    }

    #[test]
    fn hash_is_sha256_hex_and_differs_per_secret() {
        let a = NewSecret::from_random([1; KEY_ID_BYTES], [2; SECRET_BYTES]);
        let b = NewSecret::from_random([1; KEY_ID_BYTES], [3; SECRET_BYTES]);
        assert_eq!(a.hash().len(), 64);
        assert_eq!(a.hash(), hash_secret(&a.secret));
        assert_ne!(a.hash(), b.hash());
        // Known vector: SHA-256("abc").
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn names_are_bounded_and_defaulted() {
        assert_eq!(parse_name("  ").unwrap(), DEFAULT_NAME);
        assert_eq!(parse_name(" ci bot ").unwrap(), "ci bot");
        assert_eq!(parse_name(&"n".repeat(101)).unwrap_err().field, "name");
        assert_eq!(parse_name("a\tb").unwrap_err().field, "name");
    }
}
