//! Test support: real Ed25519 keys, signed tokens and a counting in-memory key source.

use crate::{JwksSource, SourceError};
use async_trait::async_trait;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tally_api::user::v1::Jwk;

/// A freshly generated Ed25519 signing key and its JWK.
pub struct TestKey {
    pub kid: String,
    pub encoding: EncodingKey,
    pub jwk: Jwk,
}

impl TestKey {
    pub fn new(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519 key");
        Self {
            kid: kid.into(),
            encoding: EncodingKey::from_ed_der(&pair.serialize_der()),
            jwk: Jwk {
                kty: "OKP".into(),
                crv: "Ed25519".into(),
                kid: kid.into(),
                x: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key_raw()),
                alg: "EdDSA".into(),
                r#use: "sig".into(),
            },
        }
    }

    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign")
    }
}

pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Claims the platform's verifier accepts.
pub fn claims(sub: &str) -> serde_json::Value {
    serde_json::json!({
        "sub": sub, "iss": crate::ISSUER, "aud": crate::AUDIENCE,
        "iat": now(), "exp": now() + 900, "sid": "s1",
    })
}

/// A key source serving a settable key set and counting fetches.
#[derive(Default)]
pub struct FakeJwks {
    keys: Mutex<Vec<Jwk>>,
    fail: AtomicBool,
    fetches: AtomicUsize,
}

impl FakeJwks {
    pub fn with(keys: &[&TestKey]) -> Arc<Self> {
        let f = Arc::new(Self::default());
        f.set(keys);
        f
    }
    pub fn set(&self, keys: &[&TestKey]) {
        self.set_raw(keys.iter().map(|k| k.jwk.clone()).collect());
    }
    pub fn set_raw(&self, keys: Vec<Jwk>) {
        *self.keys.lock() = keys;
    }
    pub fn fail(&self, fail: bool) {
        self.fail.store(fail, Ordering::SeqCst);
    }
    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl JwksSource for FakeJwks {
    async fn fetch_jwks(&self) -> Result<Vec<Jwk>, SourceError> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        if self.fail.load(Ordering::SeqCst) {
            return Err(SourceError::Rpc(tonic::Status::unavailable(
                "connection refused",
            )));
        }
        Ok(self.keys.lock().clone())
    }
}
