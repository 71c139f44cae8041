//! Ed25519 access-token signing with jsonwebtoken (RustCrypto backend).
//!
//! Key pairs are generated with rcgen (ring) and kept in the store as PKCS#8
//! DER in a [`KeyRing`], so tokens stay valid across restarts and every
//! replica signs with the same key. [`KeyRingSigner`] signs with the ring's
//! active key and verifies and publishes (as JWKs) every key the ring still
//! publishes, selected by `kid`; [`KeyRingSigner::install`] swaps in a
//! rotated ring while calls go on.

use crate::domain::token::{ALG, AUDIENCE, AccessClaims, ISSUER, PublicJwk, kid_for};
use crate::ports::{KeyRing, PortError, StoredSigningKey, TokenRejected, TokenSigner};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Allowed clock difference when checking `exp` and `iat`, in seconds.
const LEEWAY_SECS: u64 = 30;

/// The service's signing key and its verifier.
pub struct Ed25519Signer {
    kid: String,
    public_key: Vec<u8>,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Ed25519Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ed25519Signer")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Generates a new key pair, ready to store.
pub fn generate(now: i64) -> Result<StoredSigningKey, PortError> {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
        .map_err(|e| PortError::Internal(format!("cannot generate Ed25519 key: {e}")))?;
    Ok(StoredSigningKey {
        kid: kid_for(pair.public_key_raw()),
        pkcs8_der_b64: STANDARD.encode(pair.serialize_der()),
        created_at: now,
    })
}

impl Ed25519Signer {
    /// Loads a stored key.
    pub fn from_stored(stored: &StoredSigningKey) -> Result<Self, PortError> {
        let bad = |m: String| PortError::Internal(format!("stored signing key: {m}"));
        let der = STANDARD
            .decode(&stored.pkcs8_der_b64)
            .map_err(|e| bad(e.to_string()))?;
        let pair = rcgen::KeyPair::try_from(der.as_slice()).map_err(|e| bad(e.to_string()))?;
        if pair.algorithm() != &rcgen::PKCS_ED25519 {
            return Err(bad("is not an Ed25519 key".into()));
        }
        let public_key = pair.public_key_raw().to_vec();
        if public_key.len() != 32 {
            return Err(bad("public key is not 32 bytes".into()));
        }
        let kid = kid_for(&public_key);
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iat", "sub", "iss", "aud"]);
        validation.leeway = LEEWAY_SECS;
        Ok(Self {
            kid,
            encoding: EncodingKey::from_ed_der(&der),
            decoding: DecodingKey::from_ed_der(&public_key),
            public_key,
            validation,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }
}

impl TokenSigner for Ed25519Signer {
    fn sign(&self, claims: &AccessClaims) -> Result<String, PortError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| PortError::Internal(format!("cannot sign access token: {e}")))
    }

    fn verify(&self, token: &str) -> Result<AccessClaims, TokenRejected> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| TokenRejected("access token is malformed".into()))?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenRejected(format!("access token must use {ALG}")));
        }
        if header.kid.as_deref() != Some(self.kid.as_str()) {
            return Err(TokenRejected(
                "access token was signed by an unknown key".into(),
            ));
        }
        jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    TokenRejected("access token has expired; refresh it".into())
                }
                _ => TokenRejected("access token is invalid".into()),
            })
    }

    fn public_keys(&self) -> Vec<PublicJwk> {
        vec![PublicJwk::ed25519(&self.public_key)]
    }
}

/// Signs with a ring's active key; verifies with any key it publishes.
pub struct KeyRingSigner {
    current: RwLock<Arc<Loaded>>,
}

/// A ring with its keys parsed.
struct Loaded {
    ring: KeyRing,
    active: Arc<Ed25519Signer>,
    by_kid: HashMap<String, Arc<Ed25519Signer>>,
}

impl std::fmt::Debug for KeyRingSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRingSigner")
            .field("active", &self.active_kid())
            .finish_non_exhaustive()
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn load(ring: &KeyRing) -> Result<Loaded, PortError> {
    let active = Arc::new(Ed25519Signer::from_stored(&ring.active)?);
    let mut by_kid = HashMap::new();
    by_kid.insert(active.kid().to_string(), active.clone());
    for r in &ring.retiring {
        let s = Arc::new(Ed25519Signer::from_stored(&r.key)?);
        by_kid.insert(s.kid().to_string(), s);
    }
    Ok(Loaded {
        ring: ring.clone(),
        active,
        by_kid,
    })
}

impl KeyRingSigner {
    pub fn new(ring: &KeyRing) -> Result<Self, PortError> {
        Ok(Self {
            current: RwLock::new(Arc::new(load(ring)?)),
        })
    }

    /// Switches to `ring` (a rotation here or by another replica). Returns
    /// whether it differed from the one in use.
    pub fn install(&self, ring: &KeyRing) -> Result<bool, PortError> {
        if self.loaded().ring == *ring {
            return Ok(false);
        }
        let next = Arc::new(load(ring)?);
        match self.current.write() {
            Ok(mut g) => *g = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        Ok(true)
    }

    /// The ring in use.
    #[cfg(test)]
    pub fn ring(&self) -> KeyRing {
        self.loaded().ring.clone()
    }

    pub fn active_kid(&self) -> String {
        self.loaded().active.kid().to_string()
    }

    fn loaded(&self) -> Arc<Loaded> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl TokenSigner for KeyRingSigner {
    fn sign(&self, claims: &AccessClaims) -> Result<String, PortError> {
        self.loaded().active.sign(claims)
    }

    fn verify(&self, token: &str) -> Result<AccessClaims, TokenRejected> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| TokenRejected("access token is malformed".into()))?;
        let loaded = self.loaded();
        let published = loaded.ring.published(now_unix());
        let key = header
            .kid
            .as_deref()
            .filter(|kid| published.iter().any(|k| k.kid == *kid))
            .and_then(|kid| loaded.by_kid.get(kid))
            .ok_or_else(|| TokenRejected("access token was signed by an unknown key".into()))?;
        key.verify(token)
    }

    fn public_keys(&self) -> Vec<PublicJwk> {
        let loaded = self.loaded();
        loaded
            .ring
            .published(now_unix())
            .iter()
            .filter_map(|k| loaded.by_kid.get(&k.kid))
            .flat_map(|s| s.public_keys())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    #[test]
    fn signs_and_verifies_round_trip_and_survives_reload() {
        let stored = generate(now()).unwrap();
        let s = Ed25519Signer::from_stored(&stored).unwrap();
        let claims = AccessClaims::new("user-1", "sid-1", now(), 900);
        let token = s.sign(&claims).unwrap();
        assert_eq!(s.verify(&token).unwrap(), claims);
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some(stored.kid.as_str()));
        // Reloading the stored key verifies tokens signed before.
        let again = Ed25519Signer::from_stored(&stored).unwrap();
        assert_eq!(again.kid(), s.kid());
        assert_eq!(again.verify(&token).unwrap(), claims);
    }

    #[test]
    fn jwk_verifies_tokens_independently() {
        let s = Ed25519Signer::from_stored(&generate(now()).unwrap()).unwrap();
        let token = s.sign(&AccessClaims::new("u", "s", now(), 60)).unwrap();
        let jwk = &s.public_keys()[0];
        let key = DecodingKey::from_ed_components(&jwk.x).unwrap();
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_audience(&["tally"]);
        let data = jsonwebtoken::decode::<AccessClaims>(&token, &key, &v).unwrap();
        assert_eq!(data.claims.sub, "u");
    }

    #[test]
    fn rejects_expired_foreign_and_tampered_tokens() {
        let s = Ed25519Signer::from_stored(&generate(now()).unwrap()).unwrap();
        let other = Ed25519Signer::from_stored(&generate(now()).unwrap()).unwrap();
        let expired = s
            .sign(&AccessClaims::new("u", "s", now() - 10_000, 60))
            .unwrap();
        assert!(s.verify(&expired).unwrap_err().0.contains("expired"));
        let foreign = other.sign(&AccessClaims::new("u", "s", now(), 60)).unwrap();
        assert!(s.verify(&foreign).is_err());
        let good = s.sign(&AccessClaims::new("u", "s", now(), 60)).unwrap();
        let mut parts: Vec<String> = good.split('.').map(String::from).collect();
        parts[1] = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"sub":"admin","iss":"tally-user","aud":"tally","iat":1,"exp":9999999999,"sid":"s"}"#);
        assert!(s.verify(&parts.join(".")).is_err());
        assert!(s.verify("not-a-jwt").is_err());
        assert!(s.verify("").is_err());
        let mut wrong_aud = AccessClaims::new("u", "s", now(), 60);
        wrong_aud.aud = "other".into();
        assert!(s.verify(&s.sign(&wrong_aud).unwrap()).is_err());
    }

    #[test]
    fn corrupt_stored_key_is_an_error_not_a_panic() {
        let mut k = generate(now()).unwrap();
        k.pkcs8_der_b64 = "AAAA".into();
        assert!(Ed25519Signer::from_stored(&k).is_err());
        k.pkcs8_der_b64 = "***".into();
        assert!(Ed25519Signer::from_stored(&k).is_err());
    }

    #[test]
    fn ring_signs_with_the_new_key_and_verifies_old_tokens_until_retired() {
        let first = generate(now()).unwrap();
        let signer = KeyRingSigner::new(&KeyRing::new(first.clone())).unwrap();
        let old = signer
            .sign(&AccessClaims::new("u", "s", now(), 60))
            .unwrap();
        let rotated = KeyRing::new(first.clone())
            .rotate(generate(now()).unwrap(), now(), 3600)
            .unwrap();
        assert!(signer.install(&rotated).unwrap());
        assert!(!signer.install(&rotated).unwrap(), "same ring: no change");
        let new = signer
            .sign(&AccessClaims::new("u", "s", now(), 60))
            .unwrap();
        let kid = |t: &str| jsonwebtoken::decode_header(t).unwrap().kid.unwrap();
        assert_eq!(kid(&old), first.kid);
        assert_eq!(kid(&new), rotated.active.kid);
        assert!(signer.verify(&old).is_ok());
        assert!(signer.verify(&new).is_ok());
        let kids: Vec<String> = signer.public_keys().into_iter().map(|k| k.kid).collect();
        assert_eq!(kids, [rotated.active.kid.clone(), first.kid.clone()]);
        // Past the overlap the old key is neither published nor accepted.
        let mut retired = rotated.clone();
        retired.retiring[0].retire_at = now() - 1;
        signer.install(&retired).unwrap();
        assert_eq!(signer.public_keys().len(), 1);
        assert!(signer.verify(&old).unwrap_err().0.contains("unknown key"));
        assert!(signer.verify(&new).is_ok());
    }
}
