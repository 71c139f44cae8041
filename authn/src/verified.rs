//! Tokens already verified, so a client sending the same access token on every call pays the
//! EdDSA signature check once, not per call (Envoy's `jwt_authn` keeps the same kind of cache,
//! `jwt_cache_config`). A token is kept by the SHA-256 of its bytes with its subject, key id
//! and `exp`; a hit is used only while `exp` (plus the leeway) has not passed and the key set
//! is the one it was verified under, so a key removed from the JWKS stops its tokens at the
//! next refresh. Refusals are never kept. At most `capacity` entries: expired ones make room
//! first, then the cache starts over (the cost is more checks, never a wrong answer).

use crate::VerifiedToken;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// Most verified tokens kept by default.
pub const VERIFIED_TOKEN_CACHE_CAPACITY: usize = 4096;

type Digest32 = [u8; 32];

struct Entry {
    token: VerifiedToken,
    /// `exp` in Unix seconds.
    exp: f64,
    /// The key-set generation it was verified under.
    generation: u64,
}

/// A bounded map from token digest to its verified claims.
pub(crate) struct VerifiedTokens {
    entries: Mutex<HashMap<Digest32, Entry>>,
    capacity: usize,
    leeway_s: f64,
}

/// The digest a token is kept under.
pub(crate) fn digest(token: &str) -> Digest32 {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether a token with this `exp` is still accepted at `now` (both Unix seconds), with the
/// same rule as the full check: refused once `exp` is more than the leeway in the past.
fn live(exp: f64, now: f64, leeway_s: f64) -> bool {
    exp + leeway_s >= now
}

impl VerifiedTokens {
    pub(crate) fn new(capacity: usize, leeway_s: u64) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity,
            leeway_s: leeway_s as f64,
        }
    }

    /// The verified claims of the token with `digest`, if kept, still live at `now` and
    /// verified under key-set `generation`.
    pub(crate) fn get(
        &self,
        digest: &Digest32,
        now: f64,
        generation: u64,
    ) -> Option<VerifiedToken> {
        if self.capacity == 0 {
            return None;
        }
        let mut entries = self.entries.lock();
        let e = entries.get(digest)?;
        if e.generation == generation && live(e.exp, now, self.leeway_s) {
            return Some(e.token.clone());
        }
        entries.remove(digest);
        None
    }

    /// Keeps a token that passed the full check.
    pub(crate) fn put(
        &self,
        digest: Digest32,
        token: VerifiedToken,
        exp: f64,
        now: f64,
        generation: u64,
    ) {
        if self.capacity == 0 {
            return;
        }
        let mut entries = self.entries.lock();
        if entries.len() >= self.capacity {
            let leeway_s = self.leeway_s;
            entries.retain(|_, e| e.generation == generation && live(e.exp, now, leeway_s));
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(
            digest,
            Entry {
                token,
                exp,
                generation,
            },
        );
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(sub: &str) -> VerifiedToken {
        VerifiedToken {
            subject: sub.into(),
            kid: "k1".into(),
        }
    }

    #[test]
    fn a_kept_token_is_used_until_its_exp_plus_the_leeway() {
        let c = VerifiedTokens::new(8, 30);
        let d = digest("t");
        c.put(d, token("u"), 1000.0, 900.0, 1);
        assert_eq!(c.get(&d, 1000.0, 1), Some(token("u")));
        assert_eq!(c.get(&d, 1030.0, 1), Some(token("u")), "within the leeway");
        assert_eq!(c.get(&d, 1030.5, 1), None, "past exp + leeway");
        assert_eq!(c.len(), 0, "an expired entry is dropped when seen");
    }

    #[test]
    fn a_new_key_set_makes_kept_tokens_go_through_the_full_check_again() {
        let c = VerifiedTokens::new(8, 30);
        let d = digest("t");
        c.put(d, token("u"), 1000.0, 900.0, 1);
        assert_eq!(c.get(&d, 900.0, 2), None);
        assert_eq!(c.get(&d, 900.0, 1), None, "the stale entry is gone");
    }

    #[test]
    fn the_cache_stays_within_its_capacity() {
        let c = VerifiedTokens::new(4, 0);
        for i in 0..4 {
            c.put(digest(&format!("t{i}")), token("u"), 1000.0, 900.0, 1);
        }
        assert_eq!(c.len(), 4);
        // Full of live entries: starts over.
        c.put(digest("t4"), token("u"), 1000.0, 900.0, 1);
        assert_eq!(c.len(), 1);
        assert!(c.get(&digest("t4"), 900.0, 1).is_some());
        // Full with expired entries: those make room, live ones stay.
        let c = VerifiedTokens::new(2, 0);
        c.put(digest("old"), token("u"), 950.0, 900.0, 1);
        c.put(digest("live"), token("u"), 2000.0, 900.0, 1);
        c.put(digest("new"), token("u"), 2000.0, 1000.0, 1);
        assert!(c.get(&digest("live"), 1000.0, 1).is_some());
        assert!(c.get(&digest("new"), 1000.0, 1).is_some());
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn a_zero_capacity_keeps_nothing() {
        let c = VerifiedTokens::new(0, 30);
        let d = digest("t");
        c.put(d, token("u"), 1000.0, 900.0, 1);
        assert_eq!(c.get(&d, 900.0, 1), None);
    }
}
