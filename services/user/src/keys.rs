//! Signing-key rotation: makes a new key active in the shared ring with a
//! compare-and-set (so concurrent rotations by replicas do not lose a key),
//! keeps every replica's signer in step with the stored ring, and rotates
//! automatically when `[user] signing_key_rotation_secs` is set.

use crate::adapters::signing::{self, KeyRingSigner};
use crate::app::AppError;
use crate::ports::{ReplaceOutcome, SigningKeyRepository, VersionedRing};
use std::sync::Arc;
use std::time::Duration;

/// How often each instance rereads the ring (rotations by other replicas,
/// automatic rotation).
pub const RING_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// Compare-and-set attempts of one rotation before giving up.
const ROTATE_ATTEMPTS: u32 = 5;

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    pub active_kid: String,
    pub previous_kid: String,
    pub previous_retires_at: i64,
    /// Every published `kid`, the active one first.
    pub published: Vec<String>,
}

/// Rotation and refresh of the signing-key ring.
pub struct KeyRotation {
    repo: Arc<dyn SigningKeyRepository>,
    signer: Arc<KeyRingSigner>,
    overlap: Duration,
    /// Automatic rotation period; `None` rotates on demand only.
    every: Option<Duration>,
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl KeyRotation {
    /// Loads (or creates) the stored ring and a signer for it.
    pub async fn start(
        repo: Arc<dyn SigningKeyRepository>,
        overlap: Duration,
        every: Option<Duration>,
    ) -> Result<Self, AppError> {
        let stored = repo.load_or_insert(signing::generate(now_unix())?).await?;
        let signer = Arc::new(KeyRingSigner::new(&stored.ring)?);
        Ok(Self {
            repo,
            signer,
            overlap,
            every,
        })
    }

    pub fn signer(&self) -> Arc<KeyRingSigner> {
        self.signer.clone()
    }

    /// Makes a new key active; the replaced one stays published for the overlap.
    pub async fn rotate(&self) -> Result<Rotated, AppError> {
        self.rotate_when(|_| true)
            .await?
            .ok_or_else(|| AppError::Internal("an unconditional rotation did not happen".into()))
    }

    /// Rotates if `due` holds for the stored ring, re-checked on the fresh
    /// ring after a conflict, so replicas due at once rotate only once.
    async fn rotate_when(
        &self,
        due: impl Fn(&crate::ports::KeyRing) -> bool,
    ) -> Result<Option<Rotated>, AppError> {
        for _ in 0..ROTATE_ATTEMPTS {
            let current = self.load().await?;
            if !due(&current.ring) {
                self.signer.install(&current.ring)?;
                return Ok(None);
            }
            let now = now_unix();
            let next = current
                .ring
                .rotate(signing::generate(now)?, now, self.overlap.as_secs())
                .map_err(|e| AppError::ResourceExhausted(e.to_string()))?;
            if self.repo.replace_ring(&current, &next).await? == ReplaceOutcome::Replaced {
                self.signer.install(&next)?;
                let previous = next.retiring.last();
                tracing::info!(
                    active_kid = %next.active.kid,
                    previous_kid = %current.ring.active.kid,
                    "access-token signing key rotated"
                );
                return Ok(Some(Rotated {
                    active_kid: next.active.kid.clone(),
                    previous_kid: current.ring.active.kid.clone(),
                    previous_retires_at: previous.map_or(now, |p| p.retire_at),
                    published: next.published(now).iter().map(|k| k.kid.clone()).collect(),
                }));
            }
        }
        Err(AppError::Unavailable(
            "the signing-key ring changed concurrently too often; retry".into(),
        ))
    }

    /// Rereads the stored ring into the signer, and rotates when automatic
    /// rotation is due.
    pub async fn refresh(&self) -> Result<(), AppError> {
        let current = self.load().await?;
        if self.signer.install(&current.ring)? {
            tracing::info!(active_kid = %current.ring.active.kid, "signing-key ring reloaded");
        }
        if let Some(every) = self.every
            && current.ring.rotation_due(now_unix(), every.as_secs())
        {
            self.rotate_when(|ring| ring.rotation_due(now_unix(), every.as_secs()))
                .await?;
        }
        Ok(())
    }

    /// Refreshes every [`RING_REFRESH_INTERVAL`] until the task is aborted.
    pub fn spawn_refresher(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RING_REFRESH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = self.refresh().await {
                    tracing::warn!(error = %e, "signing-key ring refresh failed");
                }
            }
        })
    }

    async fn load(&self) -> Result<VersionedRing, AppError> {
        Ok(self
            .repo
            .load_or_insert(signing::generate(now_unix())?)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::store::StoreRepository;
    use crate::domain::token::AccessClaims;
    use crate::ports::TokenSigner;

    async fn repo() -> (tempfile::TempDir, Arc<StoreRepository>) {
        let dir = tempfile::tempdir().unwrap();
        let store =
            tally_chassis::storage::embedded::EmbeddedStore::open(&dir.path().join("k.redb"))
                .await
                .unwrap();
        (dir, Arc::new(StoreRepository::new(Arc::new(store))))
    }

    #[tokio::test]
    async fn a_rotation_by_one_replica_reaches_the_other_on_refresh() {
        let (_dir, repo) = repo().await;
        let hour = Duration::from_secs(3600);
        let a = KeyRotation::start(repo.clone(), hour, None).await.unwrap();
        let b = KeyRotation::start(repo.clone(), hour, None).await.unwrap();
        assert_eq!(a.signer().active_kid(), b.signer().active_kid());
        let old = a
            .signer()
            .sign(&AccessClaims::new("u", "s", now_unix(), 60))
            .unwrap();
        let r = a.rotate().await.unwrap();
        assert_ne!(r.active_kid, r.previous_kid);
        assert_eq!(r.published, [r.active_kid.clone(), r.previous_kid.clone()]);
        assert_eq!(b.signer().active_kid(), r.previous_kid, "not refreshed yet");
        b.refresh().await.unwrap();
        assert_eq!(b.signer().active_kid(), r.active_kid);
        assert!(b.signer().verify(&old).is_ok());
        // A rotation from a stale view retries on the fresh ring.
        let r2 = b.rotate().await.unwrap();
        assert_eq!(r2.previous_kid, r.active_kid);
        assert_eq!(r2.published.len(), 3);
    }

    #[tokio::test]
    async fn automatic_rotation_happens_on_refresh_when_due() {
        let (_dir, repo) = repo().await;
        // A ring whose active key is ten minutes old.
        let old = signing::generate(now_unix() - 600).unwrap();
        repo.load_or_insert(old.clone()).await.unwrap();
        let every = |s| Some(Duration::from_secs(s));
        let minute = Duration::from_secs(60);
        let not_due = KeyRotation::start(repo.clone(), minute, every(3600))
            .await
            .unwrap();
        not_due.refresh().await.unwrap();
        assert_eq!(not_due.signer().active_kid(), old.kid);
        let due = KeyRotation::start(repo.clone(), minute, every(300))
            .await
            .unwrap();
        due.refresh().await.unwrap();
        assert_ne!(due.signer().active_kid(), old.kid);
        let kids: Vec<String> = due
            .signer()
            .public_keys()
            .into_iter()
            .map(|k| k.kid)
            .collect();
        assert_eq!(kids.len(), 2);
        assert!(kids.contains(&old.kid));
    }

    #[tokio::test]
    async fn replicas_due_at_once_rotate_only_once() {
        let (_dir, repo) = repo().await;
        let old = signing::generate(now_unix() - 600).unwrap();
        repo.load_or_insert(old.clone()).await.unwrap();
        let every = Some(Duration::from_secs(300));
        let minute = Duration::from_secs(60);
        let a = KeyRotation::start(repo.clone(), minute, every)
            .await
            .unwrap();
        let b = KeyRotation::start(repo.clone(), minute, every)
            .await
            .unwrap();
        // Both saw a due ring at start; the second refresh finds it rotated.
        a.refresh().await.unwrap();
        b.refresh().await.unwrap();
        assert_eq!(a.signer().active_kid(), b.signer().active_kid());
        assert_eq!(b.signer().ring().retiring.len(), 1, "one rotation, not two");
    }
}
