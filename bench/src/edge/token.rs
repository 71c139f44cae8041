//! The edge benchmark's credentials: an Ed25519 signing key, the JWKS document the
//! gateway reads from a file (`[gateway.auth] jwks_file`), and one access token the load
//! generator sends on every call, so the gateway verifies a real signature per call.

use crate::error::BenchError;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The gateway's default expected issuer and audience (`[gateway.auth]` defaults).
pub const ISSUER: &str = "tally-user";
/// See [`ISSUER`].
pub const AUDIENCE: &str = "tally";
/// Key id in the token header and the JWKS.
pub const KID: &str = "bench-key";
/// Lifetime of the benchmark's token: longer than any run.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(6 * 3600);

/// A signed access token and the JWKS that verifies it.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// `Bearer <jwt>`.
    pub authorization: String,
    /// The JWKS JSON document (RFC 7517) with the public key.
    pub jwks_json: String,
}

#[derive(serde::Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iss: &'a str,
    aud: &'a str,
    exp: u64,
    iat: u64,
}

/// A fresh key pair, a token for `subject` and its JWKS.
pub fn issue(subject: &str) -> Result<Credentials, BenchError> {
    let fail = |what: &str, e: String| BenchError::Credentials(format!("{what}: {e}"));
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
        .map_err(|e| fail("generating an Ed25519 key", e.to_string()))?;
    let encoding = jsonwebtoken::EncodingKey::from_ed_der(&pair.serialize_der());
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(KID.into());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = Claims {
        sub: subject,
        iss: ISSUER,
        aud: AUDIENCE,
        exp: now + TOKEN_LIFETIME.as_secs(),
        iat: now,
    };
    let jwt = jsonwebtoken::encode(&header, &claims, &encoding)
        .map_err(|e| fail("signing the token", e.to_string()))?;
    Ok(Credentials {
        authorization: format!("Bearer {jwt}"),
        jwks_json: jwks(pair.public_key_raw()),
    })
}

/// The JWKS document for one raw Ed25519 public key.
fn jwks(public_key: &[u8]) -> String {
    serde_json::json!({
        "keys": [{
            "kty": "OKP",
            "crv": "Ed25519",
            "kid": KID,
            "x": URL_SAFE_NO_PAD.encode(public_key),
            "alg": "EdDSA",
            "use": "sig",
        }]
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_verifies_against_its_jwks() {
        let c = issue("bench-user").unwrap();
        let jwt = c.authorization.strip_prefix("Bearer ").unwrap();
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&c.jwks_json).unwrap();
        let jwk = set.find(KID).unwrap();
        let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
        v.set_issuer(&[ISSUER]);
        v.set_audience(&[AUDIENCE]);
        let data = jsonwebtoken::decode::<serde_json::Value>(jwt, &key, &v).unwrap();
        assert_eq!(data.claims["sub"], "bench-user");
        assert_eq!(data.header.kid.as_deref(), Some(KID));
    }
}
