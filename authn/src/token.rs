//! Access-token verification: EdDSA only, the key chosen by `kid`, then `iss`, `aud`, `exp`
//! and `nbf` with a small leeway, and a non-empty `sub`.

use crate::keys::KeyCache;
use crate::verified::{self, VERIFIED_TOKEN_CACHE_CAPACITY, VerifiedTokens};
use crate::{AUDIENCE, AuthnError, ISSUER, JWKS_MIN_REFETCH, JwksSource, LEEWAY, UNKNOWN_KID_TTL};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// Longest access token looked at.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Tunables of a [`TokenVerifier`]; the defaults are the platform's.
#[derive(Debug, Clone)]
pub struct VerifierOptions {
    /// Expected `iss`.
    pub issuer: String,
    /// Expected `aud`.
    pub audience: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
    /// Least time between two fetches caused by unknown `kid`s.
    pub min_refetch: Duration,
    /// How long a kid a fetch did not know is refused without asking again.
    pub unknown_kid_ttl: Duration,
    /// Most verified tokens remembered so a repeated token skips the signature check
    /// (`verified`); 0 turns the cache off.
    pub verified_cache_capacity: usize,
}

impl Default for VerifierOptions {
    fn default() -> Self {
        Self {
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            leeway: LEEWAY,
            min_refetch: JWKS_MIN_REFETCH,
            unknown_kid_ttl: UNKNOWN_KID_TTL,
            verified_cache_capacity: VERIFIED_TOKEN_CACHE_CAPACITY,
        }
    }
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The user id (`sub`).
    pub subject: String,
    /// The signing key's id.
    pub kid: String,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    /// Required by the validation (which reports it missing); seconds, possibly fractional.
    #[serde(default)]
    exp: Option<f64>,
}

/// Verifies access tokens; cheap to clone, clones share the key cache.
#[derive(Clone)]
pub struct TokenVerifier {
    keys: Arc<KeyCache>,
    validation: Arc<Validation>,
    verified: Arc<VerifiedTokens>,
}

impl TokenVerifier {
    /// A verifier whose keys come from `source`.
    pub fn new(source: Arc<dyn JwksSource>, opts: &VerifierOptions) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[opts.issuer.as_str()]);
        validation.set_audience(&[opts.audience.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = opts.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        Self {
            keys: Arc::new(KeyCache::new(
                source,
                opts.min_refetch,
                opts.unknown_kid_ttl,
            )),
            validation: Arc::new(validation),
            verified: Arc::new(VerifiedTokens::new(
                opts.verified_cache_capacity,
                opts.leeway.as_secs(),
            )),
        }
    }

    /// The key cache (refresh, size, periodic refresh).
    pub fn keys(&self) -> &Arc<KeyCache> {
        &self.keys
    }

    /// The token's subject, once its signature, issuer, audience and times check out.
    pub async fn verify(&self, token: &str) -> Result<VerifiedToken, AuthnError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthnError::Malformed(format!(
                "longer than {MAX_TOKEN_BYTES} bytes"
            )));
        }
        let digest = verified::digest(token);
        let now = unix_now();
        // Read before the key lookup: a refresh in between makes the entry stale, not live.
        let generation = self.keys.generation();
        if let Some(known) = self.verified.get(&digest, now, generation) {
            return Ok(known);
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthnError::Malformed(e.to_string()))?;
        if header.alg != Algorithm::EdDSA {
            return Err(AuthnError::Algorithm(format!("{:?}", header.alg)));
        }
        let kid = header
            .kid
            .filter(|k| !k.is_empty())
            .ok_or(AuthnError::NoKeyId)?;
        let key = self.keys.key(&kid).await?;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &self.validation)
            .map_err(|e| classify(e.kind()))?;
        if data.claims.sub.is_empty() {
            return Err(AuthnError::MissingClaim("sub".into()));
        }
        let verified = VerifiedToken {
            subject: data.claims.sub,
            kid,
        };
        if let Some(exp) = data.claims.exp {
            self.verified
                .put(digest, verified.clone(), exp, now, generation);
        }
        Ok(verified)
    }
}

/// The wall clock in Unix seconds, as `exp` counts.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn classify(kind: &ErrorKind) -> AuthnError {
    match kind {
        ErrorKind::ExpiredSignature => AuthnError::Expired,
        ErrorKind::ImmatureSignature => AuthnError::NotYetValid,
        ErrorKind::InvalidSignature => AuthnError::BadSignature,
        ErrorKind::InvalidAudience => AuthnError::WrongAudience,
        ErrorKind::InvalidIssuer => AuthnError::WrongIssuer,
        ErrorKind::InvalidAlgorithm => AuthnError::Algorithm("mismatch".into()),
        ErrorKind::MissingRequiredClaim(c) => AuthnError::MissingClaim(c.clone()),
        other => AuthnError::Invalid(format!("{other:?}")),
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive).
pub fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FakeJwks, TestKey, claims, now};
    use base64::Engine as _;

    fn verifier(jwks: &Arc<FakeJwks>) -> TokenVerifier {
        TokenVerifier::new(jwks.clone(), &VerifierOptions::default())
    }

    #[tokio::test]
    async fn valid_token_gives_its_subject_and_keys_are_cached() {
        let key = TestKey::new("k1");
        let jwks = FakeJwks::with(&[&key]);
        let v = verifier(&jwks);
        let ok = v.verify(&key.sign(&claims("u-1"))).await.expect("valid");
        assert_eq!(ok.subject, "u-1");
        assert_eq!(ok.kid, "k1");
        v.verify(&key.sign(&claims("u-2"))).await.expect("valid");
        assert_eq!(jwks.fetches(), 1);
    }

    #[tokio::test]
    async fn expired_token_is_refused_beyond_the_leeway_only() {
        let key = TestKey::new("k1");
        let v = verifier(&FakeJwks::with(&[&key]));
        let mut c = claims("u");
        c["exp"] = (now() - 3600).into();
        assert_eq!(v.verify(&key.sign(&c)).await, Err(AuthnError::Expired));
        // Within the leeway: still accepted.
        c["exp"] = (now() - LEEWAY.as_secs() / 2).into();
        v.verify(&key.sign(&c)).await.expect("within leeway");
    }

    #[tokio::test]
    async fn not_yet_valid_token_is_refused() {
        let key = TestKey::new("k1");
        let v = verifier(&FakeJwks::with(&[&key]));
        let mut c = claims("u");
        c["nbf"] = (now() + 600).into();
        assert_eq!(v.verify(&key.sign(&c)).await, Err(AuthnError::NotYetValid));
        c["nbf"] = (now() + LEEWAY.as_secs() / 2).into();
        v.verify(&key.sign(&c)).await.expect("within leeway");
        c["nbf"] = (now() - 10).into();
        v.verify(&key.sign(&c)).await.expect("already valid");
    }

    #[tokio::test]
    async fn wrong_issuer_or_audience_or_missing_claims_are_refused() {
        let key = TestKey::new("k1");
        let v = verifier(&FakeJwks::with(&[&key]));
        let mut c = claims("u");
        c["iss"] = "evil".into();
        assert_eq!(v.verify(&key.sign(&c)).await, Err(AuthnError::WrongIssuer));
        let mut c = claims("u");
        c["aud"] = "someone-else".into();
        assert_eq!(
            v.verify(&key.sign(&c)).await,
            Err(AuthnError::WrongAudience)
        );
        let mut c = claims("u");
        c.as_object_mut().expect("object").remove("exp");
        assert!(matches!(
            v.verify(&key.sign(&c)).await,
            Err(AuthnError::MissingClaim(_))
        ));
        let c = claims("");
        assert!(matches!(
            v.verify(&key.sign(&c)).await,
            Err(AuthnError::MissingClaim(_))
        ));
    }

    #[tokio::test]
    async fn bad_signatures_are_refused() {
        let key = TestKey::new("k1");
        let v = verifier(&FakeJwks::with(&[&key]));
        // Claims swapped under a valid signature.
        let token = key.sign(&claims("u-1"));
        let parts: Vec<&str> = token.split('.').collect();
        let forged =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims("u-admin").to_string());
        let forged = format!("{}.{forged}.{}", parts[0], parts[2]);
        assert_eq!(v.verify(&forged).await, Err(AuthnError::BadSignature));
        // Signed by another key that claims the published kid.
        let impostor = TestKey::new("k1");
        assert_eq!(
            v.verify(&impostor.sign(&claims("u"))).await,
            Err(AuthnError::BadSignature)
        );
    }

    #[tokio::test]
    async fn unknown_kid_triggers_one_refresh() {
        let old = TestKey::new("k-old");
        let new = TestKey::new("k-new");
        let jwks = FakeJwks::with(&[&old]);
        let opts = VerifierOptions {
            min_refetch: Duration::ZERO,
            ..VerifierOptions::default()
        };
        let v = TokenVerifier::new(jwks.clone(), &opts);
        v.verify(&old.sign(&claims("u"))).await.expect("old");
        jwks.set(&[&old, &new]);
        v.verify(&new.sign(&claims("u")))
            .await
            .expect("new after one refetch");
        v.verify(&new.sign(&claims("u"))).await.expect("cached");
        assert_eq!(jwks.fetches(), 2);
        // A kid the fresh set does not have: one fetch, then refused from memory.
        let stranger = TestKey::new("k-stranger");
        for _ in 0..5 {
            assert_eq!(
                v.verify(&stranger.sign(&claims("u"))).await,
                Err(AuthnError::UnknownKey("k-stranger".into()))
            );
        }
        assert_eq!(jwks.fetches(), 3);
    }

    #[tokio::test]
    async fn a_repeated_token_skips_the_check_until_its_key_leaves_the_key_set() {
        let key = TestKey::new("k1");
        let jwks = FakeJwks::with(&[&key]);
        let opts = VerifierOptions {
            min_refetch: Duration::ZERO,
            ..VerifierOptions::default()
        };
        let v = TokenVerifier::new(jwks.clone(), &opts);
        let token = key.sign(&claims("u-1"));
        // The first check fetched the keys, so its entry is already stale; the second keeps it.
        v.verify(&token).await.expect("valid");
        v.verify(&token).await.expect("valid");
        assert_eq!(v.verified.len(), 1, "kept");
        v.verify(&token).await.expect("from the cache");
        // The key is withdrawn: the next key set refuses the kept token.
        jwks.set(&[]);
        v.keys().refresh().await.expect("refresh");
        assert_eq!(
            v.verify(&token).await,
            Err(AuthnError::UnknownKey("k1".into()))
        );
        // Refusals are not kept; a new verifier with the cache off never keeps anything.
        assert_eq!(v.verified.len(), 0);
        let off = TokenVerifier::new(
            FakeJwks::with(&[&key]),
            &VerifierOptions {
                verified_cache_capacity: 0,
                ..VerifierOptions::default()
            },
        );
        off.verify(&token).await.expect("valid");
        off.verify(&token).await.expect("valid");
        assert_eq!(off.verified.len(), 0);
    }

    #[tokio::test]
    async fn other_algorithms_and_garbage_are_refused() {
        let v = verifier(&FakeJwks::with(&[]));
        let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        let hs = jsonwebtoken::encode(
            &header,
            &claims("u"),
            &jsonwebtoken::EncodingKey::from_secret(b"secret"),
        )
        .expect("sign");
        assert!(matches!(v.verify(&hs).await, Err(AuthnError::Algorithm(_))));
        for garbage in ["", "abc", "a.b.c", "....", "\u{7f}"] {
            assert!(v.verify(garbage).await.is_err(), "{garbage:?}");
        }
        let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert!(matches!(
            v.verify(&huge).await,
            Err(AuthnError::Malformed(_))
        ));
        // No kid.
        let key = TestKey::new("k1");
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::EdDSA),
            &claims("u"),
            &key.encoding,
        )
        .expect("sign");
        assert_eq!(v.verify(&token).await, Err(AuthnError::NoKeyId));
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer "), None);
    }
}
