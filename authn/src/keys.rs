//! The public-key cache: which Ed25519 key each `kid` names, when to ask the source again,
//! and which kids a fresh fetch did not know (so a caller cannot force a fetch per request).
//!
//! A lookup of a known kid never waits. An unknown kid triggers one fetch (single flight),
//! unless a fetch was attempted within the refetch interval or the same kid was missing from a
//! fetch within the unknown-kid TTL. The JWKS may hold several keys (old and new during a
//! signing-key rotation); each is selected by its `kid`.

use crate::{AuthnError, JwksSource};
use base64::Engine as _;
use jsonwebtoken::DecodingKey;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tally_api::user::v1::Jwk;
use tokio::time::Instant;

/// Least time between two fetches triggered by unknown `kid`s.
pub const JWKS_MIN_REFETCH: Duration = Duration::from_secs(5);
/// How long a kid that a fetch did not know is refused without asking again.
pub const UNKNOWN_KID_TTL: Duration = Duration::from_secs(60);
/// Most keys taken from one key set (a rotation needs two or three).
pub const MAX_KEYS: usize = 16;
/// Most unknown kids remembered.
pub const MAX_UNKNOWN_KIDS: usize = 1024;
/// Longest `kid` looked up; longer ones are refused before any fetch.
pub const MAX_KID_BYTES: usize = 256;

#[derive(Default)]
struct State {
    keys: HashMap<String, DecodingKey>,
    last_attempt: Option<Instant>,
    last_error: Option<String>,
    /// Kids missing from the key set, with the time of the fetch that showed it.
    unknown: HashMap<String, Instant>,
}

/// Cached verification keys; share it behind an `Arc`.
pub struct KeyCache {
    source: Arc<dyn JwksSource>,
    min_refetch: Duration,
    unknown_ttl: Duration,
    state: Mutex<State>,
    fetch_lock: tokio::sync::Mutex<()>,
    /// Bumped each time a fetched key set is installed (`generation`).
    generation: AtomicU64,
}

impl KeyCache {
    /// An empty cache over `source`; the first lookup fetches.
    pub fn new(source: Arc<dyn JwksSource>, min_refetch: Duration, unknown_ttl: Duration) -> Self {
        Self {
            source,
            min_refetch,
            unknown_ttl,
            state: Mutex::new(State::default()),
            fetch_lock: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
        }
    }

    /// The key named `kid`, fetching the key set when the rules above allow it.
    pub async fn key(&self, kid: &str) -> Result<DecodingKey, AuthnError> {
        if kid.len() > MAX_KID_BYTES {
            return Err(AuthnError::Malformed("`kid` is too long".into()));
        }
        if let Some(found) = self.cached(kid) {
            return found;
        }
        let _guard = self.fetch_lock.lock().await;
        // Another call may have fetched while this one waited.
        if let Some(found) = self.cached(kid) {
            return found;
        }
        {
            let state = self.state.lock();
            let recent = state
                .last_attempt
                .is_some_and(|at| at.elapsed() < self.min_refetch);
            if recent {
                return Err(match &state.last_error {
                    Some(e) => AuthnError::KeysUnavailable(e.clone()),
                    None => AuthnError::UnknownKey(kid.to_string()),
                });
            }
        }
        self.fetch_locked().await?;
        let mut state = self.state.lock();
        if let Some(key) = state.keys.get(kid) {
            return Ok(key.clone());
        }
        remember_unknown(&mut state.unknown, kid, self.unknown_ttl);
        Err(AuthnError::UnknownKey(kid.to_string()))
    }

    /// A cached answer: the key, or a refusal for a kid known to be unknown.
    fn cached(&self, kid: &str) -> Option<Result<DecodingKey, AuthnError>> {
        let state = self.state.lock();
        if let Some(key) = state.keys.get(kid) {
            return Some(Ok(key.clone()));
        }
        state
            .unknown
            .get(kid)
            .filter(|at| at.elapsed() < self.unknown_ttl)
            .map(|_| Err(AuthnError::UnknownKey(kid.to_string())))
    }

    /// Fetches the key set now, whatever the refetch interval says; returns how many usable
    /// keys it holds.
    pub async fn refresh(&self) -> Result<usize, AuthnError> {
        let _guard = self.fetch_lock.lock().await;
        self.fetch_locked().await
    }

    /// Changes whenever a fetched key set is installed: what was verified under another
    /// generation may have used a key that is gone.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Number of keys cached.
    pub fn len(&self) -> usize {
        self.state.lock().keys.len()
    }

    /// True when no key is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fetches and installs the key set; the caller holds `fetch_lock`.
    async fn fetch_locked(&self) -> Result<usize, AuthnError> {
        let result = self.source.fetch_jwks().await;
        let mut state = self.state.lock();
        state.last_attempt = Some(Instant::now());
        match result {
            Ok(jwks) => {
                let mut usable: HashMap<String, DecodingKey> = HashMap::new();
                for (kid, key) in jwks.iter().filter_map(decoding_key) {
                    if usable.len() < MAX_KEYS {
                        usable.insert(kid, key);
                    }
                }
                if usable.len() < jwks.len() {
                    tracing::warn!(
                        fetched = jwks.len(),
                        usable = usable.len(),
                        "ignored JWKs that are not Ed25519 signing keys (or beyond {MAX_KEYS})"
                    );
                }
                state.keys = usable;
                self.generation.fetch_add(1, Ordering::AcqRel);
                state.last_error = None;
                let State { keys, unknown, .. } = &mut *state;
                unknown.retain(|kid, _| !keys.contains_key(kid));
                Ok(state.keys.len())
            }
            Err(e) => {
                let e = e.to_string();
                state.last_error = Some(e.clone());
                Err(AuthnError::KeysUnavailable(e))
            }
        }
    }

    /// Refreshes the key set every `every` (the first at once) until the cache is dropped.
    pub fn spawn_refresh(self: &Arc<Self>, every: Option<Duration>) {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(cache) = weak.upgrade() else { return };
                if let Err(e) = cache.refresh().await {
                    tracing::warn!(error = %e, "JWKS refresh failed");
                }
                drop(cache);
                match every {
                    Some(d) => tokio::time::sleep(d).await,
                    None => return,
                }
            }
        });
    }
}

/// Records `kid` as unknown, keeping the map bounded (expired entries go first; when all are
/// live the map starts over, which only costs extra fetches, still rate-limited).
fn remember_unknown(unknown: &mut HashMap<String, Instant>, kid: &str, ttl: Duration) {
    if unknown.len() >= MAX_UNKNOWN_KIDS {
        unknown.retain(|_, at| at.elapsed() < ttl);
        if unknown.len() >= MAX_UNKNOWN_KIDS {
            unknown.clear();
        }
    }
    unknown.insert(kid.to_string(), Instant::now());
}

/// A verification key from one JWK, if it is a usable Ed25519 signing key.
pub(crate) fn decoding_key(jwk: &Jwk) -> Option<(String, DecodingKey)> {
    if jwk.kid.is_empty() || jwk.kid.len() > MAX_KID_BYTES {
        return None;
    }
    if jwk.kty != "OKP" || jwk.crv != "Ed25519" {
        return None;
    }
    if !jwk.alg.is_empty() && jwk.alg != crate::ALGORITHM {
        return None;
    }
    if !jwk.r#use.is_empty() && jwk.r#use != "sig" {
        return None;
    }
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(jwk.x.trim_end_matches('='))
        .ok()?;
    // The verifier takes the raw 32-byte public key; anything else must stop here.
    if raw.len() != 32 {
        return None;
    }
    Some((jwk.kid.clone(), DecodingKey::from_ed_der(&raw)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FakeJwks, TestKey};

    fn cache(jwks: &Arc<FakeJwks>) -> KeyCache {
        KeyCache::new(jwks.clone(), JWKS_MIN_REFETCH, UNKNOWN_KID_TTL)
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_kid_triggers_one_refresh_that_finds_a_rotated_key() {
        let old = TestKey::new("k-old");
        let new = TestKey::new("k-new");
        let jwks = FakeJwks::with(&[&old]);
        let keys = cache(&jwks);
        keys.key("k-old").await.expect("old key");
        assert_eq!(jwks.fetches(), 1);
        // Rotation: the key set now serves both; once the refetch interval has passed, the
        // new kid costs exactly one fetch, and the old key stays usable.
        jwks.set(&[&old, &new]);
        tokio::time::advance(JWKS_MIN_REFETCH).await;
        keys.key("k-new").await.expect("new key after refetch");
        keys.key("k-new").await.expect("cached");
        keys.key("k-old").await.expect("old key still served");
        assert_eq!(jwks.fetches(), 2);
        assert_eq!(keys.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_kids_are_remembered_and_refetches_rate_limited() {
        let known = TestKey::new("k1");
        let jwks = FakeJwks::with(&[&known]);
        let keys = cache(&jwks);
        keys.key("k1").await.expect("known");
        tokio::time::advance(JWKS_MIN_REFETCH).await;
        // One fetch for the stranger, then it is refused from memory...
        let e = keys.key("stranger").await.expect_err("unknown");
        assert_eq!(e, AuthnError::UnknownKey("stranger".into()));
        assert_eq!(jwks.fetches(), 2);
        for _ in 0..3 {
            tokio::time::advance(JWKS_MIN_REFETCH).await;
            keys.key("stranger").await.expect_err("still unknown");
        }
        assert_eq!(jwks.fetches(), 2, "negative cache holds for the same kid");
        // ...and fresh made-up kids within the interval cost no fetch either.
        for i in 0..100 {
            keys.key(&format!("made-up-{i}"))
                .await
                .expect_err("unknown");
        }
        assert_eq!(jwks.fetches(), 3, "one fetch per interval at most");
        // After the TTL the kid is asked about again.
        tokio::time::advance(UNKNOWN_KID_TTL).await;
        keys.key("stranger").await.expect_err("unknown");
        assert_eq!(jwks.fetches(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn fetch_failure_is_unavailable_then_rate_limited_then_recovers() {
        let key = TestKey::new("k1");
        let jwks = FakeJwks::with(&[]);
        jwks.fail(true);
        let keys = cache(&jwks);
        assert!(keys.key("k1").await.expect_err("down").is_unavailable());
        assert!(keys.key("k1").await.expect_err("down").is_unavailable());
        assert_eq!(jwks.fetches(), 1);
        jwks.fail(false);
        jwks.set(&[&key]);
        assert_eq!(keys.refresh().await.expect("refresh"), 1);
        keys.key("k1").await.expect("found");
    }

    #[tokio::test]
    async fn malformed_and_foreign_keys_are_skipped_not_panicked() {
        let key = TestKey::new("k1");
        let mut short = key.jwk.clone();
        short.kid = "short".into();
        short.x = "AAAA".into();
        let mut rsa = key.jwk.clone();
        rsa.kid = "rsa".into();
        rsa.kty = "RSA".into();
        let mut enc = key.jwk.clone();
        enc.kid = "enc".into();
        enc.r#use = "enc".into();
        let jwks = FakeJwks::with(&[]);
        jwks.set_raw(vec![short, rsa, enc, key.jwk.clone()]);
        let keys = cache(&jwks);
        assert_eq!(keys.refresh().await.expect("refresh"), 1);
        assert!(keys.key("short").await.is_err());
        let long = "k".repeat(MAX_KID_BYTES + 1);
        assert!(matches!(
            keys.key(&long).await,
            Err(AuthnError::Malformed(_))
        ));
    }

    #[test]
    fn unknown_kid_memory_is_bounded() {
        let mut unknown = HashMap::new();
        for i in 0..(MAX_UNKNOWN_KIDS * 3) {
            remember_unknown(&mut unknown, &format!("k{i}"), UNKNOWN_KID_TTL);
            assert!(unknown.len() <= MAX_UNKNOWN_KIDS);
        }
    }
}
