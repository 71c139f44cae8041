//! The repositories over the chassis [`Store`]: one table per access path,
//! denormalised the way a ScyllaDB schema would be.
//!
//! | table              | partition  | key       | value                 |
//! |--------------------|------------|-----------|-----------------------|
//! | `users`            | user id    | `user`    | [`UserRecord`]        |
//! | `user_emails`      | email      | `user_id` | the user id           |
//! | `api_keys`         | key id     | `key`     | [`ApiKeyRecord`]      |
//! | `api_keys_by_user` | user id    | key id    | [`ApiKeyRecord`]      |
//! | `signing_keys`     | `ring`     | `ed25519` | [`KeyRing`]           |
//! | `signing_keys`     | `active`   | `ed25519` | [`StoredSigningKey`] (written by versions before rotation; read once to seed the ring) |

use crate::domain::user::{ApiKeyRecord, UserRecord};
use crate::ports::{
    ApiKeyRepository, CreateOutcome, KeyRing, PortError, ReplaceOutcome, RevokeOutcome,
    SigningKeyRepository, StoredSigningKey, UserRepository, VersionedRing,
};
use async_trait::async_trait;
use std::sync::Arc;
use tally_chassis::storage::{OutboxEvent, Store, StoreError, WriteBatch, decode, encode};

const USERS: &str = "users";
const USER_KEY: &str = "user";
const EMAILS: &str = "user_emails";
const EMAIL_KEY: &str = "user_id";
const API_KEYS: &str = "api_keys";
const API_KEY_KEY: &str = "key";
const API_KEYS_BY_USER: &str = "api_keys_by_user";
const SIGNING_KEYS: &str = "signing_keys";
const LEGACY_SIGNING_PARTITION: &str = "active";
const RING_PARTITION: &str = "ring";
const SIGNING_KEY: &str = "ed25519";

/// Most API keys listed per user (a scan page; creation is capped to match).
pub const MAX_KEYS_PER_USER: usize = 100;

/// All user-service repositories over one store.
#[derive(Clone)]
pub struct StoreRepository {
    store: Arc<dyn Store>,
}

impl StoreRepository {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }
}

fn port(e: StoreError) -> PortError {
    match e {
        StoreError::Unavailable(m) => PortError::Unavailable(m),
        other => PortError::Internal(other.to_string()),
    }
}

#[async_trait]
impl UserRepository for StoreRepository {
    async fn find_by_id(&self, user_id: &str) -> Result<Option<UserRecord>, PortError> {
        let Some(bytes) = self
            .store
            .get(USERS, user_id, USER_KEY)
            .await
            .map_err(port)?
        else {
            return Ok(None);
        };
        decode(&bytes).map(Some).map_err(port)
    }

    async fn find_by_email(&self, email: &str) -> Result<Option<UserRecord>, PortError> {
        let Some(bytes) = self
            .store
            .get(EMAILS, email, EMAIL_KEY)
            .await
            .map_err(port)?
        else {
            return Ok(None);
        };
        let user_id: String = decode(&bytes).map_err(port)?;
        self.find_by_id(&user_id).await
    }

    async fn create(
        &self,
        user: &UserRecord,
        event: OutboxEvent,
    ) -> Result<CreateOutcome, PortError> {
        let mut batch = WriteBatch::new();
        batch
            .insert_if_absent(
                EMAILS,
                &user.email,
                EMAIL_KEY,
                encode(&user.user_id).map_err(port)?,
            )
            .insert_if_absent(USERS, &user.user_id, USER_KEY, encode(user).map_err(port)?)
            .emit(event);
        match self.store.commit(batch).await {
            Ok(()) => Ok(CreateOutcome::Created),
            Err(StoreError::ConditionFailed { index: 0, .. }) => Ok(CreateOutcome::EmailTaken),
            Err(e) => Err(port(e)),
        }
    }

    async fn update(&self, user: &UserRecord) -> Result<(), PortError> {
        let mut batch = WriteBatch::new();
        batch.put(USERS, &user.user_id, USER_KEY, encode(user).map_err(port)?);
        self.store.commit(batch).await.map_err(port)
    }
}

#[async_trait]
impl ApiKeyRepository for StoreRepository {
    async fn create(&self, key: &ApiKeyRecord) -> Result<(), PortError> {
        let value = encode(key).map_err(port)?;
        let mut batch = WriteBatch::new();
        batch
            .insert_if_absent(API_KEYS, &key.key_id, API_KEY_KEY, value.clone())
            .insert_if_absent(API_KEYS_BY_USER, &key.user_id, &key.key_id, value);
        self.store.commit(batch).await.map_err(port)
    }

    async fn find(&self, key_id: &str) -> Result<Option<ApiKeyRecord>, PortError> {
        let Some(bytes) = self
            .store
            .get(API_KEYS, key_id, API_KEY_KEY)
            .await
            .map_err(port)?
        else {
            return Ok(None);
        };
        decode(&bytes).map(Some).map_err(port)
    }

    async fn list_for_user(&self, user_id: &str) -> Result<Vec<ApiKeyRecord>, PortError> {
        let rows = self
            .store
            .scan(API_KEYS_BY_USER, user_id, None, MAX_KEYS_PER_USER)
            .await
            .map_err(port)?;
        rows.iter()
            .map(|r| decode(&r.value).map_err(port))
            .collect()
    }

    async fn revoke(&self, user_id: &str, key_id: &str) -> Result<RevokeOutcome, PortError> {
        // Optimistic: guard on the value read, retry if it changed meanwhile.
        for _ in 0..5 {
            let Some(current) = self
                .store
                .get(API_KEYS, key_id, API_KEY_KEY)
                .await
                .map_err(port)?
            else {
                return Ok(RevokeOutcome::NotFound);
            };
            let mut key: ApiKeyRecord = decode(&current).map_err(port)?;
            if key.user_id != user_id {
                return Ok(RevokeOutcome::NotFound);
            }
            if key.revoked {
                return Ok(RevokeOutcome::Revoked);
            }
            key.revoked = true;
            let value = encode(&key).map_err(port)?;
            let mut batch = WriteBatch::new();
            batch
                .expect(API_KEYS, key_id, API_KEY_KEY, Some(current))
                .put(API_KEYS, key_id, API_KEY_KEY, value.clone())
                .put(API_KEYS_BY_USER, user_id, key_id, value);
            match self.store.commit(batch).await {
                Ok(()) => return Ok(RevokeOutcome::Revoked),
                Err(StoreError::ConditionFailed { .. }) => continue,
                Err(e) => return Err(port(e)),
            }
        }
        Err(PortError::Unavailable(
            "API key changed concurrently too often; retry".into(),
        ))
    }
}

impl StoreRepository {
    async fn read_ring(&self) -> Result<Option<VersionedRing>, PortError> {
        let Some(version) = self
            .store
            .get(SIGNING_KEYS, RING_PARTITION, SIGNING_KEY)
            .await
            .map_err(port)?
        else {
            return Ok(None);
        };
        let ring = decode::<KeyRing>(&version).map_err(port)?;
        Ok(Some(VersionedRing { ring, version }))
    }
}

#[async_trait]
impl SigningKeyRepository for StoreRepository {
    async fn load_or_insert(
        &self,
        candidate: StoredSigningKey,
    ) -> Result<VersionedRing, PortError> {
        if let Some(ring) = self.read_ring().await? {
            return Ok(ring);
        }
        // Keep the key an older version stored, so its tokens stay valid.
        let active = match self
            .store
            .get(SIGNING_KEYS, LEGACY_SIGNING_PARTITION, SIGNING_KEY)
            .await
            .map_err(port)?
        {
            Some(bytes) => decode::<StoredSigningKey>(&bytes).map_err(port)?,
            None => candidate,
        };
        let version = encode(&KeyRing::new(active)).map_err(port)?;
        let mut batch = WriteBatch::new();
        batch.insert_if_absent(SIGNING_KEYS, RING_PARTITION, SIGNING_KEY, version);
        match self.store.commit(batch).await {
            // Another instance stored its ring first: use that one.
            Ok(()) | Err(StoreError::ConditionFailed { .. }) => self
                .read_ring()
                .await?
                .ok_or_else(|| PortError::Internal("signing-key ring vanished".into())),
            Err(e) => Err(port(e)),
        }
    }

    async fn replace_ring(
        &self,
        current: &VersionedRing,
        next: &KeyRing,
    ) -> Result<ReplaceOutcome, PortError> {
        let mut batch = WriteBatch::new();
        batch
            .expect(
                SIGNING_KEYS,
                RING_PARTITION,
                SIGNING_KEY,
                Some(current.version.clone()),
            )
            .put(
                SIGNING_KEYS,
                RING_PARTITION,
                SIGNING_KEY,
                encode(next).map_err(port)?,
            );
        match self.store.commit(batch).await {
            Ok(()) => Ok(ReplaceOutcome::Replaced),
            Err(StoreError::ConditionFailed { .. }) => Ok(ReplaceOutcome::Conflict),
            Err(e) => Err(port(e)),
        }
    }
}
