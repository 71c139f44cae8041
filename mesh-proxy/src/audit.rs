//! The proxy's audit trail ([`tally_audit`]): authorization denials and a
//! sample of allows, admin changes (and refused attempts), certificate
//! reloads. Process-wide like the log subscriber, so a layer records without
//! new plumbing; nothing is written until [`init`] runs with
//! `admin.audit_file`.

use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
pub use tally_audit::Event;

/// One allowed inbound call in this many is recorded.
pub const ALLOW_SAMPLE_EVERY: u64 = 100;

static LOG: OnceLock<tally_audit::AuditLog> = OnceLock::new();
static ALLOWS: AtomicU64 = AtomicU64::new(0);

/// Opens the audit log at `path`; later calls keep the first log.
pub fn init(path: &Path) -> Result<(), tally_audit::AuditError> {
    let log = tally_audit::AuditLog::open(path)?;
    let _ = LOG.set(log);
    Ok(())
}

/// Records `event` when a log is open (a write failure is logged).
pub fn record(event: Event) {
    if let Some(log) = LOG.get() {
        log.record(event);
    }
}

/// Whether this allowed call is one of the sampled ones.
pub fn sample_allow() -> bool {
    LOG.get().is_some()
        && ALLOWS
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(ALLOW_SAMPLE_EVERY)
}
