//! Session tokens: 32 random bytes, base64url, handed to the client once.
//! The store only ever sees the token's SHA-256, the session id, so a leaked
//! session table cannot be replayed.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// Random bytes in a session token.
pub const TOKEN_BYTES: usize = 32;
/// Length of the base64url (unpadded) token string.
pub const TOKEN_CHARS: usize = 43;

/// Encodes random bytes as a session token.
pub fn token_from_random(bytes: [u8; TOKEN_BYTES]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The session id for a presented token, or `None` when it is malformed.
pub fn session_id_of(token: &str) -> Option<String> {
    if token.len() != TOKEN_CHARS {
        return None;
    }
    let decoded = URL_SAFE_NO_PAD.decode(token).ok()?;
    if decoded.len() != TOKEN_BYTES {
        return None;
    }
    Some(hex::encode(Sha256::digest(token.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips_to_a_stable_id() {
        let t = token_from_random([7; TOKEN_BYTES]);
        assert_eq!(t.len(), TOKEN_CHARS);
        let id = session_id_of(&t).unwrap();
        assert_eq!(id.len(), 64);
        assert_eq!(session_id_of(&t).unwrap(), id);
        assert_ne!(id, t);
        let other = token_from_random([8; TOKEN_BYTES]);
        assert_ne!(session_id_of(&other).unwrap(), id);
    }

    #[test]
    fn malformed_tokens_have_no_id() {
        let t = token_from_random([7; TOKEN_BYTES]);
        assert_eq!(session_id_of(""), None);
        assert_eq!(session_id_of(&t[..42]), None);
        assert_eq!(session_id_of(&format!("{t}A")), None);
        assert_eq!(
            session_id_of(&t.replace(|c: char| c.is_alphanumeric(), "+")),
            None
        );
    }
}
