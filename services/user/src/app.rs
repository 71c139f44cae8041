//! The use cases of the user service: sign-up, login, sessions, profile and
//! API keys. It composes domain rules with the ports and knows nothing of
//! gRPC; [`crate::grpc`] translates its results into wire messages and
//! [`AppError`] into status codes.

use crate::domain::ValidationError;
use crate::domain::api_key::{self, NewSecret};
use crate::domain::email::Email;
use crate::domain::login_throttle::{LoginThrottle, Outcome, ThrottlePolicy};
use crate::domain::password;
use crate::domain::profile::DisplayName;
use crate::domain::scope::{self, Scope};
use crate::domain::session;
use crate::domain::token::{AccessClaims, PublicJwk};
use crate::domain::user::{ApiKeyRecord, UserRecord};
use crate::ports::{
    ApiKeyRepository, CreateOutcome, PasswordHasher, PortError, RevokeOutcome, TokenSigner,
    UserRepository,
};
use parking_lot::Mutex;
use prost::Message;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tally_api::events::v1::{EventEnvelope, UserRegistered, event_envelope};
use tally_chassis::session::{Session, SessionError, SessionStore};
use tally_chassis::storage::OutboxEvent;

/// The one message for every failed login, so callers cannot tell an unknown
/// email from a wrong password.
pub const LOGIN_FAILED: &str = "email or password is incorrect";
/// Event type of the sign-up event.
pub const USER_REGISTERED: &str = "tally.events.v1.UserRegistered";
/// Producer name on emitted events.
pub const PRODUCER: &str = "user";

/// Why a use case failed; each variant maps to one gRPC status code.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    ResourceExhausted(String),
    /// Too many failed logins: try again after the duration.
    #[error("too many failed logins for this account; try again in {} s", .0.as_secs().max(1))]
    Throttled(Duration),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<PortError> for AppError {
    fn from(e: PortError) -> Self {
        match e {
            PortError::Unavailable(m) => AppError::Unavailable(format!("storage unavailable: {m}")),
            PortError::Internal(m) => AppError::Internal(m),
        }
    }
}

impl From<SessionError> for AppError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Unavailable(m) => {
                AppError::Unavailable(format!("session store unavailable: {m}"))
            }
            SessionError::Corrupt(m) => AppError::Internal(m),
        }
    }
}

/// Lifetimes of what the service issues.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    pub session: Duration,
    pub access_token: Duration,
}

/// A successful login.
#[derive(Debug, Clone)]
pub struct LoginGrant {
    pub session_token: String,
    pub session_expires_at: i64,
    pub access: IssuedToken,
    pub user: UserRecord,
}

/// A signed access token and its expiry.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub expires_at: i64,
}

/// A new API key with the secret to show once.
#[derive(Debug, Clone)]
pub struct CreatedKey {
    pub key: ApiKeyRecord,
    pub secret: String,
}

/// What an API key resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedKey {
    pub user_id: String,
    pub key_id: String,
    pub scopes: Vec<Scope>,
}

/// The user service's application layer.
pub struct UserApp {
    users: Arc<dyn UserRepository>,
    keys: Arc<dyn ApiKeyRepository>,
    sessions: Arc<dyn SessionStore>,
    hasher: Arc<dyn PasswordHasher>,
    signer: Arc<dyn TokenSigner>,
    lifetimes: Lifetimes,
    throttle: Mutex<LoginThrottle>,
}

/// The monotonic clock the login throttle runs on: tokio's, so paused-time
/// tests drive it; the domain keeps plain `std` instants.
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut b);
    b
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl UserApp {
    pub fn new(
        users: Arc<dyn UserRepository>,
        keys: Arc<dyn ApiKeyRepository>,
        sessions: Arc<dyn SessionStore>,
        hasher: Arc<dyn PasswordHasher>,
        signer: Arc<dyn TokenSigner>,
        lifetimes: Lifetimes,
        throttle: ThrottlePolicy,
    ) -> Self {
        Self {
            users,
            keys,
            sessions,
            hasher,
            signer,
            lifetimes,
            throttle: Mutex::new(LoginThrottle::new(throttle)),
        }
    }

    /// Registers a user and records `UserRegistered` in the same commit.
    pub async fn sign_up(
        &self,
        email: &str,
        password: &str,
        display_name: &str,
        traceparent: &str,
    ) -> Result<UserRecord, AppError> {
        let email = Email::parse(email)?;
        password::check_new_password(password)?;
        let display_name = DisplayName::for_signup(display_name, &email)?;
        // Cheap early answer; the conditional write below is what guarantees uniqueness.
        if self.users.find_by_email(email.as_str()).await?.is_some() {
            return Err(email_taken());
        }
        let user = UserRecord {
            user_id: uuid::Uuid::now_v7().to_string(),
            email: email.as_str().to_string(),
            display_name: display_name.into_string(),
            password_hash: self.hasher.hash(password).await?,
            created_at: now_unix(),
        };
        let event = registered_event(&user, traceparent);
        match self.users.create(&user, event).await? {
            CreateOutcome::Created => {
                tracing::info!(user_id = %user.user_id, "user registered");
                Ok(user)
            }
            CreateOutcome::EmailTaken => Err(email_taken()),
        }
    }

    /// Checks credentials from `client` and opens a session; failed logins
    /// are throttled per account and address (see `domain::login_throttle`).
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        client: IpAddr,
    ) -> Result<LoginGrant, AppError> {
        let email = Email::parse(email).ok();
        // Unparseable emails cannot match an account: nothing to throttle.
        let attempt = match &email {
            Some(e) => Some(
                self.with_throttle(|t| t.begin(e.as_str(), client, now()))
                    .map_err(|t| AppError::Throttled(t.retry_after))?,
            ),
            None => None,
        };
        let checked = self.check_credentials(email.as_ref(), password).await;
        if let Some(attempt) = attempt {
            let outcome = match &checked {
                Ok(_) => Outcome::Succeeded,
                Err(AppError::Unauthenticated(_)) => Outcome::Failed,
                Err(_) => Outcome::NotJudged,
            };
            self.with_throttle(|t| t.finish(attempt, outcome, now()));
        }
        let user = checked?;
        let token = session::token_from_random(random::<{ session::TOKEN_BYTES }>());
        let session_id = session::session_id_of(&token)
            .ok_or_else(|| AppError::Internal("generated session token is malformed".into()))?;
        let now = now_unix();
        let expires_at = now.saturating_add(secs(self.lifetimes.session));
        let record = Session {
            user_id: user.user_id.clone(),
            created_at: now,
            expires_at,
        };
        self.sessions
            .create(&session_id, &record, self.lifetimes.session)
            .await?;
        let access = self.issue(&user.user_id, &session_id, now)?;
        Ok(LoginGrant {
            session_token: token,
            session_expires_at: expires_at,
            access,
            user,
        })
    }

    /// Revokes the session; unknown or already revoked tokens are fine.
    pub async fn logout(&self, session_token: &str) -> Result<(), AppError> {
        let id = session_id(session_token)?;
        self.sessions.revoke(&id).await?;
        Ok(())
    }

    /// A fresh access token for a live session.
    pub async fn refresh(&self, session_token: &str) -> Result<IssuedToken, AppError> {
        let id = session_id(session_token)?;
        let dead =
            || AppError::Unauthenticated("session is expired or revoked; log in again".into());
        let Some(s) = self.sessions.get(&id).await? else {
            return Err(dead());
        };
        let now = now_unix();
        if s.expires_at <= now {
            return Err(dead());
        }
        if self.users.find_by_id(&s.user_id).await?.is_none() {
            return Err(dead());
        }
        // Never outlive the session.
        let mut token = self.issue(&s.user_id, &id, now)?;
        if token.expires_at > s.expires_at {
            let claims = AccessClaims::new(&s.user_id, &id, now, (s.expires_at - now) as u64);
            token = IssuedToken {
                token: self.signer.sign(&claims)?,
                expires_at: claims.exp,
            };
        }
        Ok(token)
    }

    /// The user behind a bearer token.
    ///
    /// Only the signature, issuer, audience and expiry are checked: an access
    /// token stays valid until its `exp` even after its session is logged out,
    /// exactly as it does for services verifying it locally with the JWKS.
    /// Access tokens are short-lived (15 minutes by default) for this reason.
    pub fn authenticate(&self, bearer: &str) -> Result<AccessClaims, AppError> {
        self.signer
            .verify(bearer)
            .map_err(|e| AppError::Unauthenticated(e.0))
    }

    pub async fn profile(&self, caller: &AccessClaims) -> Result<UserRecord, AppError> {
        self.users
            .find_by_id(&caller.sub)
            .await?
            .ok_or_else(|| AppError::Unauthenticated("the token's user no longer exists".into()))
    }

    pub async fn update_profile(
        &self,
        caller: &AccessClaims,
        display_name: &str,
    ) -> Result<UserRecord, AppError> {
        let name = DisplayName::parse(display_name)?;
        let mut user = self.profile(caller).await?;
        user.display_name = name.into_string();
        self.users.update(&user).await?;
        Ok(user)
    }

    pub fn jwks(&self) -> Vec<PublicJwk> {
        self.signer.public_keys()
    }

    pub async fn create_api_key(
        &self,
        caller: &AccessClaims,
        name: &str,
        scopes: &[String],
    ) -> Result<CreatedKey, AppError> {
        let name = api_key::parse_name(name)?;
        let scopes = scope::parse_scopes(scopes)?;
        let user = self.profile(caller).await?;
        let existing = self.keys.list_for_user(&user.user_id).await?;
        if existing.len() >= crate::adapters::store::MAX_KEYS_PER_USER {
            return Err(AppError::ResourceExhausted(format!(
                "at most {} API keys per user; revoked keys count too",
                crate::adapters::store::MAX_KEYS_PER_USER
            )));
        }
        let minted = NewSecret::from_random(random(), random());
        let key = ApiKeyRecord {
            key_id: minted.key_id.clone(),
            user_id: user.user_id,
            name,
            scopes: scope::to_strings(&scopes),
            secret_hash: minted.hash(),
            created_at: now_unix(),
            revoked: false,
        };
        self.keys.create(&key).await?;
        Ok(CreatedKey {
            key,
            secret: minted.secret,
        })
    }

    pub async fn list_api_keys(
        &self,
        caller: &AccessClaims,
    ) -> Result<Vec<ApiKeyRecord>, AppError> {
        let mut keys = self.keys.list_for_user(&caller.sub).await?;
        keys.sort_by(|a, b| (a.created_at, &a.key_id).cmp(&(b.created_at, &b.key_id)));
        Ok(keys)
    }

    pub async fn revoke_api_key(
        &self,
        caller: &AccessClaims,
        key_id: &str,
    ) -> Result<(), AppError> {
        let key_id = key_id.trim();
        if key_id.is_empty() {
            return Err(ValidationError::new("key_id", "is required").into());
        }
        let not_found = || AppError::NotFound(format!("API key `{key_id}` not found"));
        if !api_key::is_key_id(key_id) {
            return Err(not_found());
        }
        match self.keys.revoke(&caller.sub, key_id).await? {
            RevokeOutcome::Revoked => Ok(()),
            RevokeOutcome::NotFound => Err(not_found()),
        }
    }

    pub async fn verify_api_key(&self, secret: &str) -> Result<VerifiedKey, AppError> {
        let rejected = || AppError::Unauthenticated("API key is unknown or revoked".into());
        let Some(key_id) = api_key::key_id_of(secret) else {
            return Err(rejected());
        };
        let Some(key) = self.keys.find(key_id).await? else {
            return Err(rejected());
        };
        let presented = api_key::hash_secret(secret);
        if !crate::domain::constant_time_eq(presented.as_bytes(), key.secret_hash.as_bytes())
            || key.revoked
        {
            return Err(rejected());
        }
        Ok(VerifiedKey {
            scopes: key.scopes(),
            user_id: key.user_id,
            key_id: key.key_id,
        })
    }

    /// The user whose password this is, or the one login-failed error.
    async fn check_credentials(
        &self,
        email: Option<&Email>,
        password: &str,
    ) -> Result<UserRecord, AppError> {
        let failed = || AppError::Unauthenticated(LOGIN_FAILED.into());
        let user = match email {
            Some(e) => self.users.find_by_email(e.as_str()).await?,
            None => None,
        };
        if !password::plausible_login_password(password) {
            return Err(failed());
        }
        let Some(user) = user else {
            // Same work as a real check, so timing does not reveal unknown emails.
            self.hasher.verify_dummy(password).await;
            return Err(failed());
        };
        if !self.hasher.verify(password, &user.password_hash).await? {
            return Err(failed());
        }
        Ok(user)
    }

    fn with_throttle<T>(&self, f: impl FnOnce(&mut LoginThrottle) -> T) -> T {
        f(&mut self.throttle.lock())
    }

    fn issue(&self, user_id: &str, session_id: &str, now: i64) -> Result<IssuedToken, AppError> {
        let ttl = self.lifetimes.access_token.as_secs();
        let claims = AccessClaims::new(user_id, session_id, now, ttl);
        Ok(IssuedToken {
            token: self.signer.sign(&claims)?,
            expires_at: claims.exp,
        })
    }
}

fn email_taken() -> AppError {
    AppError::AlreadyExists("an account with this email already exists".into())
}

fn session_id(token: &str) -> Result<String, AppError> {
    if token.trim().is_empty() {
        return Err(ValidationError::new("session_token", "is required").into());
    }
    session::session_id_of(token.trim())
        .ok_or_else(|| AppError::Unauthenticated("session token is malformed".into()))
}

fn registered_event(user: &UserRecord, traceparent: &str) -> OutboxEvent {
    let envelope = EventEnvelope {
        event_id: uuid::Uuid::now_v7().to_string(),
        event_type: USER_REGISTERED.into(),
        aggregate_id: user.user_id.clone(),
        sequence: 1,
        occurred_at: Some(prost_types::Timestamp {
            seconds: user.created_at,
            nanos: 0,
        }),
        schema_version: 1,
        traceparent: traceparent.to_string(),
        producer: PRODUCER.into(),
        payload: Some(event_envelope::Payload::UserRegistered(UserRegistered {
            user_id: user.user_id.clone(),
            email: user.email.clone(),
            display_name: user.display_name.clone(),
        })),
    };
    OutboxEvent {
        aggregate_id: user.user_id.clone(),
        event_type: USER_REGISTERED.into(),
        payload: envelope.encode_to_vec(),
    }
}
