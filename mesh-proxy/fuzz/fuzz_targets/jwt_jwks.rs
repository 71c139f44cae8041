//! Access tokens and JWKS documents (`tally-authn`), the gateway's first look at a browser's
//! credentials. The first byte picks what the rest is:
//! - even: a JWKS document. Loading it never panics, and a token for a kid it holds is still
//!   refused (nobody here has a private key);
//! - odd: an access token, checked against a fixed Ed25519 key. Never panics, never accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, LazyLock};
use tally_authn::{Jwk, JwksSource, SourceError, TokenVerifier, VerifierOptions, parse_jwks_json};

/// The public half of an Ed25519 key (RFC 8037 test vector A.1); its private half is not used.
const PUBLIC_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

struct Fixed(Vec<Jwk>);

#[async_trait::async_trait]
impl JwksSource for Fixed {
    async fn fetch_jwks(&self) -> Result<Vec<Jwk>, SourceError> {
        Ok(self.0.clone())
    }
}

fn jwk(kid: &str) -> Jwk {
    Jwk {
        kty: "OKP".into(),
        crv: "Ed25519".into(),
        x: PUBLIC_X.into(),
        kid: kid.into(),
        alg: "EdDSA".into(),
        r#use: "sig".into(),
    }
}

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
});

static FIXED_KEY: LazyLock<TokenVerifier> = LazyLock::new(|| {
    TokenVerifier::new(Arc::new(Fixed(vec![jwk("k1")])), &VerifierOptions::default())
});

/// A token with a well-formed EdDSA header naming `kid` and a signature that cannot be valid.
fn forged_token(kid: &str) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": kid});
    let claims = serde_json::json!({"sub": "u", "iss": tally_authn::ISSUER, "aud": tally_authn::AUDIENCE, "exp": u32::MAX});
    format!(
        "{}.{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string()),
        b64.encode([7u8; 64])
    )
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    RUNTIME.block_on(async {
        if mode % 2 == 0 {
            let Ok(keys) = parse_jwks_json(rest) else {
                return;
            };
            let kids: Vec<String> = keys.iter().map(|k| k.kid.clone()).take(4).collect();
            let verifier = TokenVerifier::new(Arc::new(Fixed(keys)), &VerifierOptions::default());
            let _ = verifier.keys().refresh().await;
            for kid in kids {
                assert!(verifier.verify(&forged_token(&kid)).await.is_err());
            }
        } else if let Ok(token) = std::str::from_utf8(rest) {
            assert!(
                FIXED_KEY.verify(token).await.is_err(),
                "a token without the key's signature was accepted: {token:?}"
            );
        }
    });
});
