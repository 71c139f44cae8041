//! The signing-key ring: one active key that signs new access tokens, and
//! the keys it replaced, still published in the JWKS until every token they
//! signed has expired.
//!
//! Rotation makes a new key active at once (verifiers refetch the JWKS when a
//! token names a `kid` they do not know) and keeps the old one published for
//! an overlap of at least the access-token lifetime plus the verifiers' clock
//! leeway; after that it is dropped. Times are Unix seconds, passed in.

use serde::{Deserialize, Serialize};

/// Most keys the ring publishes at once (the active one included): rotating
/// faster than tokens expire is refused rather than growing the JWKS.
pub const MAX_PUBLISHED_KEYS: usize = 4;

/// Private signing key material, as stored (PKCS#8 DER, base64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSigningKey {
    pub kid: String,
    /// base64 (standard) of the PKCS#8 v2 DER document.
    pub pkcs8_der_b64: String,
    pub created_at: i64,
}

/// A replaced key, published until `retire_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiringKey {
    pub key: StoredSigningKey,
    pub retire_at: i64,
}

/// The active key and the replaced keys still in their overlap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRing {
    pub active: StoredSigningKey,
    #[serde(default)]
    pub retiring: Vec<RetiringKey>,
}

/// Why a rotation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RotationRefused {
    #[error(
        "{published} signing keys are still published (the most is {MAX_PUBLISHED_KEYS}); \
         wait until the oldest retires at {oldest_retires_at} (Unix time)"
    )]
    TooManyKeys {
        published: usize,
        oldest_retires_at: i64,
    },
    #[error("the new key has the active key's kid `{0}`")]
    SameKid(String),
}

impl KeyRing {
    pub fn new(active: StoredSigningKey) -> Self {
        Self {
            active,
            retiring: Vec::new(),
        }
    }

    /// The ring after making `next` active at `now`: the current active key
    /// is published until `now + overlap_secs`; retired keys are dropped.
    pub fn rotate(
        &self,
        next: StoredSigningKey,
        now: i64,
        overlap_secs: u64,
    ) -> Result<KeyRing, RotationRefused> {
        if next.kid == self.active.kid {
            return Err(RotationRefused::SameKid(next.kid));
        }
        let mut retiring: Vec<RetiringKey> = self
            .retiring
            .iter()
            .filter(|k| k.retire_at > now)
            .cloned()
            .collect();
        if retiring.len() + 2 > MAX_PUBLISHED_KEYS {
            return Err(RotationRefused::TooManyKeys {
                published: retiring.len() + 1,
                oldest_retires_at: retiring.iter().map(|k| k.retire_at).min().unwrap_or(now),
            });
        }
        let overlap = i64::try_from(overlap_secs).unwrap_or(i64::MAX);
        retiring.push(RetiringKey {
            key: self.active.clone(),
            retire_at: now.saturating_add(overlap),
        });
        Ok(KeyRing {
            active: next,
            retiring,
        })
    }

    /// The keys whose public halves are published at `now`: active first.
    pub fn published(&self, now: i64) -> Vec<&StoredSigningKey> {
        std::iter::once(&self.active)
            .chain(
                self.retiring
                    .iter()
                    .filter(|k| k.retire_at > now)
                    .map(|k| &k.key),
            )
            .collect()
    }

    /// Whether automatic rotation every `interval_secs` is due at `now`.
    pub fn rotation_due(&self, now: i64, interval_secs: u64) -> bool {
        let interval = i64::try_from(interval_secs).unwrap_or(i64::MAX);
        interval_secs > 0 && now.saturating_sub(self.active.created_at) >= interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kid: &str, created_at: i64) -> StoredSigningKey {
        StoredSigningKey {
            kid: kid.into(),
            pkcs8_der_b64: format!("der-{kid}"),
            created_at,
        }
    }

    fn kids(ring: &KeyRing, now: i64) -> Vec<&str> {
        ring.published(now).iter().map(|k| k.kid.as_str()).collect()
    }

    #[test]
    fn rotation_publishes_old_and_new_during_the_overlap_only() {
        let ring = KeyRing::new(key("a", 0));
        let ring = ring.rotate(key("b", 100), 100, 60).unwrap();
        assert_eq!(ring.active.kid, "b");
        assert_eq!(kids(&ring, 100), ["b", "a"]);
        assert_eq!(kids(&ring, 159), ["b", "a"]);
        assert_eq!(kids(&ring, 160), ["b"]);
        // The next rotation drops what has retired.
        let ring = ring.rotate(key("c", 200), 200, 60).unwrap();
        assert_eq!(ring.retiring.len(), 1);
        assert_eq!(kids(&ring, 200), ["c", "b"]);
    }

    #[test]
    fn rotating_faster_than_tokens_expire_is_bounded() {
        let mut ring = KeyRing::new(key("k0", 0));
        for i in 1..MAX_PUBLISHED_KEYS {
            ring = ring.rotate(key(&format!("k{i}"), 10), 10, 600).unwrap();
        }
        assert_eq!(ring.published(10).len(), MAX_PUBLISHED_KEYS);
        let e = ring.rotate(key("late", 11), 11, 600).unwrap_err();
        assert!(
            matches!(
                e,
                RotationRefused::TooManyKeys {
                    oldest_retires_at: 610,
                    ..
                }
            ),
            "{e}"
        );
        // Once the overlap is over there is room again.
        assert!(ring.rotate(key("late", 611), 611, 600).is_ok());
        assert!(matches!(
            ring.rotate(ring.active.clone(), 611, 600),
            Err(RotationRefused::SameKid(_))
        ));
    }

    #[test]
    fn automatic_rotation_is_due_after_the_interval_and_off_at_zero() {
        let ring = KeyRing::new(key("a", 1000));
        assert!(!ring.rotation_due(1000 + 59, 60));
        assert!(ring.rotation_due(1000 + 60, 60));
        assert!(!ring.rotation_due(i64::MAX, 0));
    }

    #[test]
    fn a_ring_without_retiring_keys_reads_from_older_json() {
        let json = r#"{"active":{"kid":"a","pkcs8_der_b64":"x","created_at":1}}"#;
        let ring: KeyRing = serde_json::from_str(json).unwrap();
        assert_eq!(kids(&ring, 0), ["a"]);
    }
}
