//! Access-token claims and key ids, as fixed by the cross-service contract:
//! EdDSA JWTs with `sub`, `iss = "tally-user"`, `aud = "tally"`, `iat`, `exp`
//! and `sid`, and JWKs whose `kid` is a short hash of the public key.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `iss` and `aud` claims of every access token, defined once in `tally-authn` where
/// every verifier reads them.
pub use tally_authn::{AUDIENCE, ISSUER};
/// JWS algorithm name.
pub const ALG: &str = "EdDSA";

/// Claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub sub: String,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
    pub sid: String,
}

impl AccessClaims {
    /// Claims for `user_id` in session `session_id`, issued at `now` (Unix seconds).
    pub fn new(user_id: &str, session_id: &str, now: i64, ttl_secs: u64) -> Self {
        let ttl = i64::try_from(ttl_secs).unwrap_or(i64::MAX);
        Self {
            sub: user_id.to_string(),
            iss: ISSUER.to_string(),
            aud: AUDIENCE.to_string(),
            iat: now,
            exp: now.saturating_add(ttl),
            sid: session_id.to_string(),
        }
    }
}

/// Key id for an Ed25519 public key: the first 8 bytes of its SHA-256, hex.
pub fn kid_for(public_key: &[u8]) -> String {
    hex::encode(&Sha256::digest(public_key)[..8])
}

/// A public JWK (RFC 8037 OKP / Ed25519).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicJwk {
    pub kty: String,
    pub crv: String,
    pub kid: String,
    pub x: String,
    pub alg: String,
    #[serde(rename = "use")]
    pub use_: String,
}

impl PublicJwk {
    pub fn ed25519(public_key: &[u8]) -> Self {
        Self {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            kid: kid_for(public_key),
            x: URL_SAFE_NO_PAD.encode(public_key),
            alg: ALG.into(),
            use_: "sig".into(),
        }
    }
}

/// The JWK set document, `{"keys":[...]}`.
pub fn jwks_json(keys: &[PublicJwk]) -> String {
    #[derive(Serialize)]
    struct Set<'a> {
        keys: &'a [PublicJwk],
    }
    // Serialising plain strings cannot fail.
    serde_json::to_string(&Set { keys }).unwrap_or_else(|_| "{\"keys\":[]}".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_follow_the_contract() {
        let c = AccessClaims::new("u1", "s1", 1_000, 900);
        assert_eq!(c.iss, "tally-user");
        assert_eq!(c.aud, "tally");
        assert_eq!((c.iat, c.exp), (1_000, 1_900));
        assert_eq!((c.sub.as_str(), c.sid.as_str()), ("u1", "s1"));
        let json = serde_json::to_value(&c).unwrap();
        for k in ["sub", "iss", "aud", "iat", "exp", "sid"] {
            assert!(json.get(k).is_some(), "{k}");
        }
        assert_eq!(
            AccessClaims::new("u", "s", i64::MAX - 1, u64::MAX).exp,
            i64::MAX
        );
    }

    #[test]
    fn kid_is_short_and_stable() {
        let pk = [9u8; 32];
        assert_eq!(kid_for(&pk).len(), 16);
        assert_eq!(kid_for(&pk), kid_for(&pk));
        assert_ne!(kid_for(&pk), kid_for(&[8u8; 32]));
    }

    #[test]
    fn jwk_is_okp_ed25519_with_raw_x() {
        let pk = [1u8; 32];
        let jwk = PublicJwk::ed25519(&pk);
        assert_eq!((jwk.kty.as_str(), jwk.crv.as_str()), ("OKP", "Ed25519"));
        assert_eq!(URL_SAFE_NO_PAD.decode(&jwk.x).unwrap(), pk);
        let doc: serde_json::Value =
            serde_json::from_str(&jwks_json(std::slice::from_ref(&jwk))).unwrap();
        assert_eq!(doc["keys"][0]["use"], "sig");
        assert_eq!(doc["keys"][0]["alg"], "EdDSA");
        assert_eq!(doc["keys"][0]["kid"], jwk.kid);
    }
}
