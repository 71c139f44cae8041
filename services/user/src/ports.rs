//! The ports of the user service: what the application needs from the outside
//! world (storage, password hashing, token signing), as traits. Adapters in
//! [`crate::adapters`] implement them; sessions use the chassis
//! [`tally_chassis::session::SessionStore`] port directly.

use crate::domain::token::{AccessClaims, PublicJwk};
use crate::domain::user::{ApiKeyRecord, UserRecord};
use async_trait::async_trait;
use tally_chassis::storage::OutboxEvent;

/// Failures of an outbound port.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// The backend cannot be used right now; the caller may retry.
    #[error("{0}")]
    Unavailable(String),
    /// Something that should not happen (corrupt record, bad key material).
    #[error("{0}")]
    Internal(String),
}

/// Result of [`UserRepository::create`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateOutcome {
    Created,
    /// Another account already holds this email.
    EmailTaken,
}

/// Result of [`ApiKeyRepository::revoke`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeOutcome {
    Revoked,
    /// No such key for this user.
    NotFound,
}

/// Users, with the email index that keeps emails unique.
#[async_trait]
pub trait UserRepository: Send + Sync + 'static {
    async fn find_by_id(&self, user_id: &str) -> Result<Option<UserRecord>, PortError>;
    /// `email` is canonical.
    async fn find_by_email(&self, email: &str) -> Result<Option<UserRecord>, PortError>;
    /// Inserts the user and claims its email atomically, with `event` in the
    /// same commit; exactly one of concurrent creators of an email succeeds.
    async fn create(
        &self,
        user: &UserRecord,
        event: OutboxEvent,
    ) -> Result<CreateOutcome, PortError>;
    /// Replaces the stored profile of an existing user.
    async fn update(&self, user: &UserRecord) -> Result<(), PortError>;
}

/// API keys by id and by owner.
#[async_trait]
pub trait ApiKeyRepository: Send + Sync + 'static {
    async fn create(&self, key: &ApiKeyRecord) -> Result<(), PortError>;
    async fn find(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, PortError>;
    async fn list_for_user(&self, user_id: &str) -> Result<Vec<ApiKeyRecord>, PortError>;
    /// Marks `user_id`'s key revoked (idempotent).
    async fn revoke(&self, user_id: &str, key_id: &str) -> Result<RevokeOutcome, PortError>;
}

/// Stored private signing key material (PKCS#8 DER).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredSigningKey {
    pub kid: String,
    /// base64 (standard) of the PKCS#8 v2 DER document.
    pub pkcs8_der_b64: String,
    pub created_at: i64,
}

/// Where the signing key lives between restarts.
#[async_trait]
pub trait SigningKeyRepository: Send + Sync + 'static {
    /// The stored key; when none exists yet, stores `candidate` and returns it.
    /// With several instances starting at once, all end up with the same key.
    async fn load_or_insert(
        &self,
        candidate: StoredSigningKey,
    ) -> Result<StoredSigningKey, PortError>;
}

/// Password hashing (argon2id in production).
#[async_trait]
pub trait PasswordHasher: Send + Sync + 'static {
    /// A PHC string for `password`.
    async fn hash(&self, password: &str) -> Result<String, PortError>;
    /// Whether `password` matches `phc`.
    async fn verify(&self, password: &str, phc: &str) -> Result<bool, PortError>;
    /// Burns the time of one verification, for unknown accounts.
    async fn verify_dummy(&self, password: &str);
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TokenRejected(pub String);

/// Signs and verifies access tokens; publishes its public keys.
pub trait TokenSigner: Send + Sync + 'static {
    fn sign(&self, claims: &AccessClaims) -> Result<String, PortError>;
    fn verify(&self, token: &str) -> Result<AccessClaims, TokenRejected>;
    fn public_keys(&self) -> Vec<PublicJwk>;
}
