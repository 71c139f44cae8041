//! API-key verification with short, bounded caches: a known key is reused for the positive
//! TTL, an unknown one refused for the negative TTL, so neither a busy client nor a stream of
//! made-up keys costs a call to the user service per request. Keys are cached by the SHA-256
//! of the secret, never the secret itself.

use crate::{ApiKeyIdentity, ApiKeyResolver, AuthnError};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long a verified key is reused (also how late a revocation may take effect).
pub const API_KEY_POSITIVE_TTL: Duration = Duration::from_secs(30);
/// How long an unknown or revoked key is refused without asking again.
pub const API_KEY_NEGATIVE_TTL: Duration = Duration::from_secs(10);
/// Most entries in each of the two caches.
pub const API_KEY_CACHE_CAPACITY: usize = 10_000;
/// Longest API-key secret looked at.
pub const MAX_API_KEY_BYTES: usize = 512;

/// Tunables of an [`ApiKeyVerifier`]. A zero TTL turns that cache off.
#[derive(Debug, Clone)]
pub struct ApiKeyOptions {
    /// How long a verified key is trusted without asking the user service again.
    pub positive_ttl: Duration,
    /// How long an unknown or revoked key is refused without asking again.
    pub negative_ttl: Duration,
    /// Most keys each cache holds; the oldest entries make room.
    pub capacity: usize,
}

impl Default for ApiKeyOptions {
    fn default() -> Self {
        Self {
            positive_ttl: API_KEY_POSITIVE_TTL,
            negative_ttl: API_KEY_NEGATIVE_TTL,
            capacity: API_KEY_CACHE_CAPACITY,
        }
    }
}

type Digest32 = [u8; 32];

#[derive(Default)]
struct Caches {
    known: HashMap<Digest32, (ApiKeyIdentity, Instant)>,
    unknown: HashMap<Digest32, Instant>,
}

/// Resolves API keys; cheap to clone, clones share the caches.
#[derive(Clone)]
pub struct ApiKeyVerifier {
    resolver: Arc<dyn ApiKeyResolver>,
    opts: ApiKeyOptions,
    caches: Arc<Mutex<Caches>>,
}

impl ApiKeyVerifier {
    /// A verifier asking `resolver` about keys it has not cached.
    pub fn new(resolver: Arc<dyn ApiKeyResolver>, opts: ApiKeyOptions) -> Self {
        Self {
            resolver,
            opts,
            caches: Arc::new(Mutex::new(Caches::default())),
        }
    }

    /// The key's owner, id and scopes; `UnknownApiKey` for unknown or revoked keys.
    pub async fn verify(&self, secret: &str) -> Result<ApiKeyIdentity, AuthnError> {
        let secret = secret.trim();
        if secret.is_empty()
            || secret.len() > MAX_API_KEY_BYTES
            || !secret.chars().all(|c| c.is_ascii_graphic())
        {
            return Err(AuthnError::MalformedApiKey);
        }
        let digest: Digest32 = Sha256::digest(secret.as_bytes()).into();
        {
            let caches = self.caches.lock();
            if let Some((id, _)) = caches
                .known
                .get(&digest)
                .filter(|(_, at)| at.elapsed() < self.opts.positive_ttl)
            {
                return Ok(id.clone());
            }
            if caches
                .unknown
                .get(&digest)
                .is_some_and(|at| at.elapsed() < self.opts.negative_ttl)
            {
                return Err(AuthnError::UnknownApiKey);
            }
        }
        let answer = self
            .resolver
            .verify_api_key(secret)
            .await
            .map_err(|e| AuthnError::ApiKeysUnavailable(e.to_string()))?;
        let mut caches = self.caches.lock();
        match answer {
            Some(id) if !id.user_id.is_empty() => {
                caches.unknown.remove(&digest);
                if !self.opts.positive_ttl.is_zero() {
                    let ttl = self.opts.positive_ttl;
                    insert_bounded(
                        &mut caches.known,
                        digest,
                        (id.clone(), Instant::now()),
                        |(_, at)| at.elapsed() < ttl,
                        self.opts.capacity,
                    );
                }
                Ok(id)
            }
            _ => {
                caches.known.remove(&digest);
                if !self.opts.negative_ttl.is_zero() {
                    let ttl = self.opts.negative_ttl;
                    insert_bounded(
                        &mut caches.unknown,
                        digest,
                        Instant::now(),
                        |at| at.elapsed() < ttl,
                        self.opts.capacity,
                    );
                }
                Err(AuthnError::UnknownApiKey)
            }
        }
    }
}

/// Inserts into a map of at most `capacity` entries: expired ones go first; when every entry
/// is live the map starts over (the cost is extra lookups, never a wrong answer).
fn insert_bounded<V>(
    map: &mut HashMap<Digest32, V>,
    key: Digest32,
    value: V,
    live: impl Fn(&V) -> bool,
    capacity: usize,
) {
    if map.len() >= capacity {
        map.retain(|_, v| live(v));
        if map.len() >= capacity {
            map.clear();
        }
    }
    if capacity > 0 {
        map.insert(key, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SourceError;
    use async_trait::async_trait;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Knows `good`; says `down` is unreachable; counts calls.
    #[derive(Default)]
    struct Directory {
        calls: AtomicUsize,
    }

    #[async_trait]
    impl ApiKeyResolver for Directory {
        async fn verify_api_key(
            &self,
            secret: &str,
        ) -> Result<Option<ApiKeyIdentity>, SourceError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            match secret {
                "tk_good" => Ok(Some(ApiKeyIdentity {
                    user_id: "u-7".into(),
                    key_id: "k-1".into(),
                    scopes: vec!["polls:read".into()],
                })),
                "tk_down" => Err(SourceError::Rpc(tonic::Status::unavailable("down"))),
                _ => Ok(None),
            }
        }
    }

    fn verifier(opts: ApiKeyOptions) -> (ApiKeyVerifier, Arc<Directory>) {
        let dir = Arc::new(Directory::default());
        (ApiKeyVerifier::new(dir.clone(), opts), dir)
    }

    #[tokio::test(start_paused = true)]
    async fn known_keys_are_cached_for_the_positive_ttl() {
        let (v, dir) = verifier(ApiKeyOptions::default());
        for _ in 0..5 {
            let id = v.verify("tk_good").await.expect("good");
            assert_eq!((id.user_id.as_str(), id.key_id.as_str()), ("u-7", "k-1"));
        }
        assert_eq!(dir.calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(API_KEY_POSITIVE_TTL).await;
        v.verify("tk_good").await.expect("good");
        assert_eq!(dir.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_keys_are_cached_for_the_negative_ttl() {
        let (v, dir) = verifier(ApiKeyOptions::default());
        for _ in 0..5 {
            assert_eq!(v.verify("tk_made_up").await, Err(AuthnError::UnknownApiKey));
        }
        assert_eq!(dir.calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(API_KEY_NEGATIVE_TTL).await;
        assert_eq!(v.verify("tk_made_up").await, Err(AuthnError::UnknownApiKey));
        assert_eq!(dir.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn unreachable_directory_is_unavailable_and_not_cached() {
        let (v, dir) = verifier(ApiKeyOptions::default());
        for _ in 0..2 {
            let e = v.verify("tk_down").await.expect_err("down");
            assert!(e.is_unavailable(), "{e}");
        }
        assert_eq!(dir.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_ttls_turn_caching_off_and_malformed_keys_cost_nothing() {
        let (v, dir) = verifier(ApiKeyOptions {
            positive_ttl: Duration::ZERO,
            negative_ttl: Duration::ZERO,
            ..ApiKeyOptions::default()
        });
        v.verify("tk_good").await.expect("good");
        v.verify("tk_good").await.expect("good");
        v.verify("tk_nope").await.expect_err("unknown");
        v.verify("tk_nope").await.expect_err("unknown");
        assert_eq!(dir.calls.load(Ordering::SeqCst), 4);
        let long = "k".repeat(MAX_API_KEY_BYTES + 1);
        for bad in ["", " ", "has space", "caf\u{e9}", long.as_str()] {
            assert_eq!(
                v.verify(bad).await,
                Err(AuthnError::MalformedApiKey),
                "{bad:?}"
            );
        }
        assert_eq!(dir.calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn made_up_keys_cannot_grow_the_cache_or_evict_known_keys() {
        let (v, dir) = verifier(ApiKeyOptions {
            capacity: 8,
            ..ApiKeyOptions::default()
        });
        v.verify("tk_good").await.expect("good");
        for i in 0..100 {
            v.verify(&format!("tk_junk_{i}"))
                .await
                .expect_err("unknown");
            assert!(v.caches.lock().unknown.len() <= 8);
        }
        let before = dir.calls.load(Ordering::SeqCst);
        v.verify("tk_good").await.expect("good");
        assert_eq!(
            dir.calls.load(Ordering::SeqCst),
            before,
            "known key still cached"
        );
    }
}
