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

pub use crate::domain::key_ring::{KeyRing, StoredSigningKey};

/// A key ring as read from storage, with what a conditional replace needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionedRing {
    pub ring: KeyRing,
    /// The stored bytes the ring was read from (the compare-and-set guard).
    pub version: Vec<u8>,
}

/// Result of [`SigningKeyRepository::replace_ring`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplaceOutcome {
    Replaced,
    /// Another instance changed the ring since it was read.
    Conflict,
}

/// Where the signing-key ring lives between restarts, shared by replicas.
#[async_trait]
pub trait SigningKeyRepository: Send + Sync + 'static {
    /// The stored ring; when none exists yet, stores one whose active key is
    /// `candidate` (or the key an older version stored alone) and returns it.
    /// With several instances starting at once, all end up with the same ring.
    async fn load_or_insert(&self, candidate: StoredSigningKey)
    -> Result<VersionedRing, PortError>;
    /// Replaces `current` by `next` unless the stored ring changed meanwhile.
    async fn replace_ring(
        &self,
        current: &VersionedRing,
        next: &KeyRing,
    ) -> Result<ReplaceOutcome, PortError>;
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
