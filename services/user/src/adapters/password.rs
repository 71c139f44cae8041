//! argon2id password hashing on the blocking pool, with a cap on how many
//! hashes run at once (each takes ~19 MiB), so a burst of logins cannot
//! exhaust memory or starve the runtime.

use crate::ports::{PasswordHasher, PortError};
use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use async_trait::async_trait;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// argon2id with the crate's default (OWASP-recommended) parameters.
pub struct Argon2Hasher {
    permits: Arc<Semaphore>,
    /// A real hash of a random password, verified against for unknown emails.
    dummy: String,
}

impl Argon2Hasher {
    /// `concurrency` hashes may run at once.
    pub async fn new(concurrency: usize) -> Result<Self, PortError> {
        let permits = Arc::new(Semaphore::new(concurrency.max(1)));
        let mut seed = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut seed);
        let dummy = hash_blocking(hex::encode(seed)).await?;
        Ok(Self { permits, dummy })
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PortError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| PortError::Unavailable("password hasher is shut down".into()))?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| PortError::Internal(format!("password hashing task failed: {e}")))
    }
}

async fn hash_blocking(password: String) -> Result<String, PortError> {
    tokio::task::spawn_blocking(move || hash_now(&password))
        .await
        .map_err(|e| PortError::Internal(format!("password hashing task failed: {e}")))?
}

fn hash_now(password: &str) -> Result<String, PortError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| PortError::Internal(format!("password hashing failed: {e}")))
}

fn verify_now(password: &str, phc: &str) -> Result<bool, PortError> {
    let parsed = PasswordHash::new(phc)
        .map_err(|e| PortError::Internal(format!("stored password hash is malformed: {e}")))?;
    Ok(Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok())
}

#[async_trait]
impl PasswordHasher for Argon2Hasher {
    async fn hash(&self, password: &str) -> Result<String, PortError> {
        let pw = password.to_string();
        self.run(move || hash_now(&pw)).await?
    }

    async fn verify(&self, password: &str, phc: &str) -> Result<bool, PortError> {
        let (pw, phc) = (password.to_string(), phc.to_string());
        self.run(move || verify_now(&pw, &phc)).await?
    }

    async fn verify_dummy(&self, password: &str) {
        let (pw, phc) = (password.to_string(), self.dummy.clone());
        let _ = self.run(move || verify_now(&pw, &phc)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_salted_and_verify() {
        let h = Argon2Hasher::new(2).await.unwrap();
        let a = h.hash("correct horse battery").await.unwrap();
        let b = h.hash("correct horse battery").await.unwrap();
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert_ne!(a, b, "each hash has its own salt");
        assert!(h.verify("correct horse battery", &a).await.unwrap());
        assert!(!h.verify("correct horse batterY", &a).await.unwrap());
        assert!(h.verify("x", "not a phc string").await.is_err());
        h.verify_dummy("anything").await;
    }
}
