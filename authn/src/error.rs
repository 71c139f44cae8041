//! The typed reasons a credential is refused, and why a key or API-key source failed.

use std::time::Duration;

/// Why a credential was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    #[error("malformed access token: {0}")]
    Malformed(String),
    #[error("access token algorithm {0} is not accepted; only EdDSA")]
    Algorithm(String),
    #[error("access token has no `kid` header")]
    NoKeyId,
    #[error("access token signed by unknown key `{0}`")]
    UnknownKey(String),
    #[error("access token signature is invalid")]
    BadSignature,
    #[error("access token expired")]
    Expired,
    #[error("access token is not valid yet")]
    NotYetValid,
    #[error("access token issuer is not accepted")]
    WrongIssuer,
    #[error("access token audience is not accepted")]
    WrongAudience,
    #[error("access token lacks the `{0}` claim")]
    MissingClaim(String),
    #[error("invalid access token: {0}")]
    Invalid(String),
    #[error("cannot fetch signing keys from the user service: {0}")]
    KeysUnavailable(String),
    #[error("malformed API key")]
    MalformedApiKey,
    #[error("unknown or revoked API key")]
    UnknownApiKey,
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
    #[error("the call to the user service timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    File(String),
}
