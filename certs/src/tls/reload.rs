//! Hot reload of a workload's TLS material.
//!
//! The three files are read on every poll (they are small) and compared by content hash,
//! so in-place edits within the same second are seen too; a changed set is loaded from
//! exactly the bytes that were hashed. [`Reloader::reload_now`] forces a load (SIGHUP). Good material becomes a new
//! [`TlsConfigs`] published on a `tokio::sync::watch` channel: new connections take the
//! newest configs, existing connections keep the config they were accepted with.
//! Broken or half-written files (or a key that does not fit the certificate yet) leave the
//! previous configs in place and log a warning.

use parking_lot::{Mutex, MutexGuard};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::{ClientConfig, ServerConfig};
use tokio::sync::watch;

use super::{IdentityPaths, Material, client_config, server_config};
use crate::CertError;
use crate::inspect::rfc3339;

/// How often [`Reloader::start`] checks the files by default.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Past this fraction of a certificate's lifetime without renewal, the reloader warns.
const EXPIRY_WARN_FRACTION: f64 = 0.8;

/// One consistent generation of TLS material and the configs built from it.
#[derive(Debug)]
pub struct TlsConfigs {
    /// The loaded material (identity, expiry).
    pub material: Arc<Material>,
    /// Config for accepting mesh connections.
    pub server: Arc<ServerConfig>,
    /// Config for dialing mesh peers.
    pub client: Arc<ClientConfig>,
    /// Starts at 1 and increases with every successful reload.
    pub generation: u64,
}

impl TlsConfigs {
    /// Builds both configs from material.
    pub fn build(material: Material, generation: u64) -> Result<Self, CertError> {
        Ok(Self {
            server: server_config(&material)?,
            client: client_config(&material)?,
            material: Arc::new(material),
            generation,
        })
    }
}

/// Hash of the three files' contents; `None` if one could not be read.
type Fingerprint = Option<u64>;

/// The three files' contents, read once so that hash and load see the same bytes.
struct Snapshot {
    files: Result<[Vec<u8>; 3], CertError>,
    fingerprint: Fingerprint,
}

impl Snapshot {
    fn read(paths: &IdentityPaths) -> Self {
        let files = (|| {
            Ok([
                crate::files::read(&paths.bundle)?,
                crate::files::read(&paths.cert)?,
                crate::files::read(&paths.key)?,
            ])
        })();
        let fingerprint = files.as_ref().ok().map(|f| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            f.hash(&mut h);
            h.finish()
        });
        Self { files, fingerprint }
    }

    fn material(self, paths: &IdentityPaths) -> Result<Material, CertError> {
        let [bundle, cert, key] = self.files?;
        Material::from_pem_named(
            (&paths.bundle.display().to_string(), &bundle),
            (&paths.cert.display().to_string(), &cert),
            (&paths.key.display().to_string(), &key),
        )
    }
}

#[derive(Debug, Default)]
struct PollState {
    /// Fingerprint of the files the current configs came from.
    loaded: Fingerprint,
    /// Fingerprint that last failed to load, and how many times in a row.
    failed: Option<(Fingerprint, u32)>,
    /// Generation for which an expiry warning was already logged.
    expiry_warned: u64,
}

#[derive(Debug)]
struct Inner {
    paths: IdentityPaths,
    tx: watch::Sender<Arc<TlsConfigs>>,
    state: Mutex<PollState>,
}

/// Watches a workload's certificate files and publishes fresh rustls configs.
///
/// Dropping the reloader stops its polling task; receivers keep the last configs.
#[derive(Debug)]
pub struct Reloader {
    inner: Arc<Inner>,
    task: Option<tokio::task::AbortHandle>,
}

impl Reloader {
    /// Loads the files once. Fails if they are not usable now. No polling: call
    /// [`Reloader::reload_now`] or [`Reloader::check`] yourself, or use [`Reloader::start`].
    pub fn new(paths: IdentityPaths) -> Result<Self, CertError> {
        let snapshot = Snapshot::read(&paths);
        let loaded = snapshot.fingerprint;
        let configs = TlsConfigs::build(snapshot.material(&paths)?, 1)?;
        let (tx, _) = watch::channel(Arc::new(configs));
        let state = PollState {
            loaded,
            ..PollState::default()
        };
        Ok(Self {
            inner: Arc::new(Inner {
                paths,
                tx,
                state: Mutex::new(state),
            }),
            task: None,
        })
    }

    /// Loads the files and spawns a task on the current tokio runtime that checks them
    /// every `poll` (see [`DEFAULT_POLL_INTERVAL`]).
    ///
    /// Must be called from within a tokio runtime (otherwise [`CertError::Runtime`]).
    pub fn start(paths: IdentityPaths, poll: Duration) -> Result<Self, CertError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            CertError::Runtime(format!("Reloader::start needs a tokio runtime: {e}"))
        })?;
        let mut reloader = Self::new(paths)?;
        let inner = reloader.inner.clone();
        let poll = poll.max(Duration::from_millis(10));
        let handle = runtime.spawn(async move {
            let mut tick = tokio::time::interval(poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // Errors were logged inside; the previous configs stay in place.
                let _ = inner.check();
                inner.warn_if_expiring(SystemTime::now());
            }
        });
        reloader.task = Some(handle.abort_handle());
        Ok(reloader)
    }

    /// A receiver that always holds the newest configs.
    pub fn subscribe(&self) -> watch::Receiver<Arc<TlsConfigs>> {
        self.inner.tx.subscribe()
    }

    /// The newest configs.
    pub fn current(&self) -> Arc<TlsConfigs> {
        self.inner.tx.borrow().clone()
    }

    /// The files being watched.
    pub fn paths(&self) -> &IdentityPaths {
        &self.inner.paths
    }

    /// Re-reads the files now, changed or not (for SIGHUP). On failure the previous
    /// configs stay in place and the error is returned (and logged).
    pub fn reload_now(&self) -> Result<Arc<TlsConfigs>, CertError> {
        let mut state = self.inner.lock();
        let snapshot = Snapshot::read(&self.inner.paths);
        self.inner.load(&mut state, snapshot)
    }

    /// Reloads if any of the files changed since the last load. Returns whether new
    /// configs were published. On failure the previous configs stay in place.
    pub fn check(&self) -> Result<bool, CertError> {
        self.inner.check()
    }
}

impl Drop for Reloader {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, PollState> {
        self.state.lock()
    }

    fn check(&self) -> Result<bool, CertError> {
        let mut state = self.lock();
        let snapshot = Snapshot::read(&self.paths);
        if snapshot.fingerprint.is_some() && state.loaded == snapshot.fingerprint {
            return Ok(false);
        }
        self.load(&mut state, snapshot).map(|_| true)
    }

    fn load(
        &self,
        state: &mut PollState,
        snapshot: Snapshot,
    ) -> Result<Arc<TlsConfigs>, CertError> {
        let generation = self.tx.borrow().generation + 1;
        let stamp = snapshot.fingerprint;
        match snapshot
            .material(&self.paths)
            .and_then(|m| TlsConfigs::build(m, generation))
        {
            Ok(configs) => {
                let configs = Arc::new(configs);
                tracing::info!(
                    identity = %configs.material.identity(),
                    not_after = %rfc3339(configs.material.not_after()),
                    generation,
                    "loaded mesh TLS certificate"
                );
                self.tx.send_replace(configs.clone());
                state.loaded = stamp;
                state.failed = None;
                Ok(configs)
            }
            Err(e) => {
                // Certificate and key are replaced one after the other, so one failure
                // right after a change is expected; warn when the same files fail again.
                let count = match &state.failed {
                    Some((failed, n)) if *failed == stamp => n + 1,
                    _ => 1,
                };
                if count == 2 {
                    tracing::warn!(
                        error = %e,
                        cert = %self.paths.cert.display(),
                        "mesh TLS files are unusable; keeping the previous certificate"
                    );
                } else {
                    tracing::debug!(error = %e, "mesh TLS files not loadable yet");
                }
                state.failed = Some((stamp, count));
                Err(e)
            }
        }
    }

    fn warn_if_expiring(&self, now: SystemTime) {
        let current = self.tx.borrow().clone();
        let m = &current.material;
        let lifetime = m
            .not_after()
            .duration_since(m.not_before())
            .unwrap_or_default();
        let remaining = m.remaining(now);
        if remaining.as_secs_f64() > lifetime.as_secs_f64() * (1.0 - EXPIRY_WARN_FRACTION) {
            return;
        }
        let mut state = self.lock();
        if state.expiry_warned == current.generation {
            return;
        }
        state.expiry_warned = current.generation;
        if remaining.is_zero() {
            tracing::error!(
                identity = %m.identity(),
                not_after = %rfc3339(m.not_after()),
                "mesh TLS certificate has EXPIRED and was not renewed; peers will refuse connections"
            );
        } else {
            tracing::warn!(
                identity = %m.identity(),
                not_after = %rfc3339(m.not_after()),
                remaining_secs = remaining.as_secs(),
                "mesh TLS certificate expires soon and has not been renewed"
            );
        }
    }
}
