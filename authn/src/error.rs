//! The typed reasons a credential is refused, and why a key or API-key source failed.

use std::time::Duration;

/// Why a credential was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    /// The token is not three base64url parts of JSON.
    #[error("malformed access token: {0}")]
    Malformed(String),
    /// The header names an algorithm other than EdDSA.
    #[error("access token algorithm {0} is not accepted; only EdDSA")]
    Algorithm(String),
    /// The header names no signing key.
    #[error("access token has no `kid` header")]
    NoKeyId,
    /// No key of the current set has this id, even after a refresh.
    #[error("access token signed by unknown key `{0}`")]
    UnknownKey(String),
    /// The signature does not match the token.
    #[error("access token signature is invalid")]
    BadSignature,
    /// `exp` has passed.
    #[error("access token expired")]
    Expired,
    /// `nbf` has not come yet.
    #[error("access token is not valid yet")]
    NotYetValid,
    /// `iss` is not the expected issuer.
    #[error("access token issuer is not accepted")]
    WrongIssuer,
    /// `aud` is not the expected audience.
    #[error("access token audience is not accepted")]
    WrongAudience,
    /// A claim the platform requires is absent.
    #[error("access token lacks the `{0}` claim")]
    MissingClaim(String),
    /// Any other reason the token library refused the token.
    #[error("invalid access token: {0}")]
    Invalid(String),
    /// The signing keys could not be fetched, so nothing can be checked.
    #[error("cannot fetch signing keys from the user service: {0}")]
    KeysUnavailable(String),
    /// The secret does not have the shape of a Tally API key.
    #[error("malformed API key")]
    MalformedApiKey,
    /// The user service does not know the key, or it was revoked.
    #[error("unknown or revoked API key")]
    UnknownApiKey,
    /// The user service could not be asked about the key.
    #[error("cannot verify the API key with the user service: {0}")]
    ApiKeysUnavailable(String),
}

impl AuthnError {
    /// True when the credential may be fine but could not be checked (the user service is
    /// unreachable): callers answer UNAVAILABLE, not UNAUTHENTICATED.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            AuthnError::KeysUnavailable(_) | AuthnError::ApiKeysUnavailable(_)
        )
    }

    /// A short, fixed label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthnError::Malformed(_) => "malformed-token",
            AuthnError::Algorithm(_) => "algorithm",
            AuthnError::NoKeyId => "no-kid",
            AuthnError::UnknownKey(_) => "unknown-key",
            AuthnError::BadSignature => "bad-signature",
            AuthnError::Expired => "expired",
            AuthnError::NotYetValid => "not-yet-valid",
            AuthnError::WrongIssuer => "wrong-issuer",
            AuthnError::WrongAudience => "wrong-audience",
            AuthnError::MissingClaim(_) => "missing-claim",
            AuthnError::Invalid(_) => "invalid",
            AuthnError::KeysUnavailable(_) => "keys-unavailable",
            AuthnError::MalformedApiKey => "malformed-api-key",
            AuthnError::UnknownApiKey => "unknown-api-key",
            AuthnError::ApiKeysUnavailable(_) => "api-keys-unavailable",
        }
    }
}

/// Why a key set or an API-key answer could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The gRPC call failed; the status is the client's, kept as it came.
    #[error("the user service answered {}: {}", .0.code(), .0.message())]
    Rpc(#[from] tonic::Status),
    /// The call did not answer in time.
    #[error("the call to the user service timed out after {0:?}")]
    Timeout(Duration),
    /// A local key file could not be read or parsed.
    #[error("{0}")]
    File(String),
}
