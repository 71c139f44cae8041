//! Who is calling: the one place Tally verifies credentials, used by the services' chassis
//! and by the proxy's gateway alike.
//!
//! - Access tokens are EdDSA JWTs signed by the user service. [`TokenVerifier`] checks the
//!   signature against the key named by the token's `kid`, then `iss`, `aud`, `exp` and `nbf`
//!   (with [`LEEWAY`] of clock skew). The public keys come from
//!   `tally.user.v1.UserService/GetJwks` ([`UserDirectory`], generated client and types) or a
//!   JWKS file ([`FileJwks`]); [`KeyCache`] keeps them, refetches when a token names an unknown
//!   `kid` (at most once per [`JWKS_MIN_REFETCH`]) and remembers kids a fetch did not know
//!   ([`UNKNOWN_KID_TTL`]), so a caller cannot force a fetch per request.
//! - API keys are resolved with `UserService/VerifyApiKey`; [`ApiKeyVerifier`] keeps short,
//!   bounded positive and negative caches keyed by the secret's SHA-256.
//!
//! Errors are typed ([`AuthnError`]); turning them into a gRPC status or an HTTP answer is the
//! caller's job.

#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod api_keys;
mod error;
mod keys;
mod source;
mod token;
mod verified;

#[cfg(test)]
mod testing;

pub use api_keys::{
    API_KEY_CACHE_CAPACITY, API_KEY_NEGATIVE_TTL, API_KEY_POSITIVE_TTL, ApiKeyOptions,
    ApiKeyVerifier, MAX_API_KEY_BYTES,
};
pub use error::{AuthnError, SourceError};
pub use keys::{JWKS_MIN_REFETCH, KeyCache, MAX_KEYS, MAX_UNKNOWN_KIDS, UNKNOWN_KID_TTL};
pub use source::{
    ApiKeyIdentity, ApiKeyResolver, BoxError, FileJwks, GrpcTransport, JwksSource, MAX_JWKS_BYTES,
    TransportError, UserDirectory, parse_jwks_json,
};
pub use tally_api::user::v1::Jwk;
pub use token::{MAX_TOKEN_BYTES, TokenVerifier, VerifiedToken, VerifierOptions, bearer_token};
pub use verified::VERIFIED_TOKEN_CACHE_CAPACITY;

use std::time::Duration;

/// The `iss` claim of every access token: the user service signs with it, every verifier
/// expects it.
pub const ISSUER: &str = "tally-user";
/// The `aud` claim of every access token.
pub const AUDIENCE: &str = "tally";
/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY: Duration = Duration::from_secs(30);
/// The only JWS algorithm accepted.
pub const ALGORITHM: &str = "EdDSA";
