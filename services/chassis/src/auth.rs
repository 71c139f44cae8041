//! Who is calling a service: reads the credentials from a request's metadata, has
//! `tally-authn` verify them, and answers with a [`Caller`] (user id, scopes) or the gRPC
//! status a handler returns as it is.
//!
//! Access tokens (`authorization: Bearer <jwt>`) are checked locally against the user
//! service's public keys (`iss`, `aud`, `exp` and `nbf`); API keys (`x-api-key: <secret>`) are
//! resolved with `UserService.VerifyApiKey`, briefly cached. The verification itself, its
//! caches and the key fetch live in `tally-authn`, shared with the proxy's gateway.
//!
//! Missing or bad credentials give UNAUTHENTICATED; a missing scope gives PERMISSION_DENIED;
//! an unreachable user service gives UNAVAILABLE.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tally_authn::{ApiKeyOptions, ApiKeyVerifier, AuthnError, TokenVerifier, VerifierOptions};
use tonic::Status;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;

pub use tally_authn::{
    ApiKeyIdentity, ApiKeyResolver, JwksSource, SourceError, UserDirectory as GrpcUserDirectory,
    bearer_token,
};

/// Read polls and results.
pub const SCOPE_POLLS_READ: &str = "polls:read";
/// Create and close polls.
pub const SCOPE_POLLS_WRITE: &str = "polls:write";
/// Cast votes.
pub const SCOPE_VOTES_WRITE: &str = "votes:write";

/// Metadata key for access tokens.
pub const AUTHORIZATION: &str = "authorization";
/// Metadata key for API key secrets.
pub const API_KEY: &str = "x-api-key";

/// Deadline of each call to the user service.
pub const USER_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What a caller may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scopes {
    /// Every scope of the user (access tokens carry the user's full rights).
    All,
    /// Only these scopes (API keys).
    Only(BTreeSet<String>),
}

impl Scopes {
    /// True when `scope` is granted.
    pub fn contains(&self, scope: &str) -> bool {
        match self {
            Scopes::All => true,
            Scopes::Only(set) => set.contains(scope),
        }
    }
}

/// How the caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A signed access token from a login.
    Jwt,
    /// An API key the user service vouched for.
    ApiKey,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The user the credential belongs to.
    pub user_id: String,
    /// What the credential allows.
    pub scopes: Scopes,
    /// Which kind of credential it was.
    pub via: Via,
}

impl Caller {
    /// PERMISSION_DENIED naming `scope` unless the caller holds it.
    pub fn require(&self, scope: &str) -> Result<(), Status> {
        if self.scopes.contains(scope) {
            return Ok(());
        }
        let held = match &self.scopes {
            Scopes::All => "all scopes".to_string(),
            Scopes::Only(set) if set.is_empty() => "no scopes".to_string(),
            Scopes::Only(set) => set.iter().cloned().collect::<Vec<_>>().join(", "),
        };
        Err(Status::permission_denied(format!(
            "missing scope `{scope}` (the credentials grant: {held})"
        )))
    }
}

/// Tunables of the verifier.
#[derive(Debug, Clone)]
pub struct AuthOptions {
    /// Expected `iss` claim.
    pub issuer: String,
    /// Expected `aud` claim.
    pub audience: String,
    /// Minimum time between two JWKS fetches triggered by unknown `kid`s.
    pub jwks_refetch_interval: Duration,
    /// How long a successful API key lookup is reused (zero: not cached).
    pub api_key_cache_ttl: Duration,
    /// How long an unknown or revoked API key is refused without asking again.
    pub api_key_negative_ttl: Duration,
    /// Most API keys kept in each cache.
    pub api_key_cache_capacity: usize,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// Deadline of each call to the user service.
    pub call_timeout: Duration,
}

impl Default for AuthOptions {
    fn default() -> Self {
        Self {
            issuer: tally_authn::ISSUER.into(),
            audience: tally_authn::AUDIENCE.into(),
            jwks_refetch_interval: tally_authn::JWKS_MIN_REFETCH,
            api_key_cache_ttl: tally_authn::API_KEY_POSITIVE_TTL,
            api_key_negative_ttl: tally_authn::API_KEY_NEGATIVE_TTL,
            api_key_cache_capacity: tally_authn::API_KEY_CACHE_CAPACITY,
            leeway_secs: tally_authn::LEEWAY.as_secs(),
            call_timeout: USER_CALL_TIMEOUT,
        }
    }
}

/// Origin of calls to the user service (the outbound channel routes by it).
const USER_ORIGIN: &str = "http://user";

/// The verifier; cheap to clone, shares its caches.
#[derive(Clone)]
pub struct Authenticator {
    tokens: TokenVerifier,
    api_keys: ApiKeyVerifier,
}

fn unauthenticated(msg: impl Into<String>) -> Status {
    Status::unauthenticated(msg.into())
}

/// The status a handler answers for a refused credential.
fn status(e: AuthnError) -> Status {
    if e.is_unavailable() {
        Status::unavailable(e.to_string())
    } else {
        unauthenticated(e.to_string())
    }
}

impl Authenticator {
    /// A verifier asking the user service behind `user_channel`.
    pub fn new(user_channel: Channel, opts: AuthOptions) -> Self {
        let directory = Arc::new(GrpcUserDirectory::over(
            crate::trace::client::transport(user_channel),
            http::Uri::from_static(USER_ORIGIN),
            opts.call_timeout,
        ));
        Self::with_ports(directory.clone(), directory, opts)
    }

    /// A verifier over explicit ports (tests, other transports).
    pub fn with_ports(
        jwks: Arc<dyn JwksSource>,
        api_keys: Arc<dyn ApiKeyResolver>,
        opts: AuthOptions,
    ) -> Self {
        let token_opts = VerifierOptions {
            issuer: opts.issuer,
            audience: opts.audience,
            leeway: Duration::from_secs(opts.leeway_secs),
            min_refetch: opts.jwks_refetch_interval,
            ..VerifierOptions::default()
        };
        let key_opts = ApiKeyOptions {
            positive_ttl: opts.api_key_cache_ttl,
            negative_ttl: opts.api_key_negative_ttl,
            capacity: opts.api_key_cache_capacity,
        };
        Self {
            tokens: TokenVerifier::new(jwks, &token_opts),
            api_keys: ApiKeyVerifier::new(api_keys, key_opts),
        }
    }

    /// The caller behind the request's metadata.
    ///
    /// A bearer token wins over an API key when both are sent.
    pub async fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Status> {
        if let Some(value) = metadata.get(AUTHORIZATION) {
            let text = value
                .to_str()
                .map_err(|_| unauthenticated("`authorization` metadata is not valid text"))?;
            let token = bearer_token(text).ok_or_else(|| {
                unauthenticated("`authorization` must be `Bearer <access token>`")
            })?;
            return self.verify_jwt(token).await;
        }
        if let Some(value) = metadata.get(API_KEY) {
            let secret = value
                .to_str()
                .map_err(|_| unauthenticated("`x-api-key` metadata is not valid text"))?;
            return self.verify_api_key(secret).await;
        }
        Err(unauthenticated(
            "missing credentials: send `authorization: Bearer <access token>` or `x-api-key: <secret>`",
        ))
    }

    /// Verifies an access token and returns its caller (all scopes).
    pub async fn verify_jwt(&self, token: &str) -> Result<Caller, Status> {
        let verified = self.tokens.verify(token).await.map_err(status)?;
        Ok(Caller {
            user_id: verified.subject,
            scopes: Scopes::All,
            via: Via::Jwt,
        })
    }

    /// Resolves an API key secret (cached briefly, known and unknown keys alike).
    pub async fn verify_api_key(&self, secret: &str) -> Result<Caller, Status> {
        let identity = self.api_keys.verify(secret).await.map_err(status)?;
        Ok(Caller {
            user_id: identity.user_id,
            scopes: Scopes::Only(identity.scopes.into_iter().collect()),
            via: Via::ApiKey,
        })
    }

    /// Fetches the key set now, whatever the rate limit says; returns how
    /// many usable keys it holds. Health probes use it.
    pub async fn refresh_jwks(&self) -> Result<usize, Status> {
        self.tokens.keys().refresh().await.map_err(status)
    }

    /// Number of keys currently cached.
    pub fn cached_key_count(&self) -> usize {
        self.tokens.keys().len()
    }
}

#[cfg(test)]
mod tests;
