//! The service's audit trail ([`tally_audit`]): operator actions such as
//! dead-letter redrives, replays and signing-key rotations, with who asked
//! and the outcome. Process-wide like the log subscriber; nothing is written
//! until [`init`] runs with `[telemetry] audit_file`.

use std::path::Path;
use std::sync::OnceLock;
pub use tally_audit::Event;

/// Header the mesh sidecar sets to the caller's SPIFFE ID.
pub const PEER_HEADER: &str = "x-tally-peer-spiffe-id";

static LOG: OnceLock<tally_audit::AuditLog> = OnceLock::new();

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

/// Who made a call: the caller's mesh identity when a sidecar vouched for
/// it, else `direct` (a call straight to the service's port).
pub fn actor<T>(req: &tonic::Request<T>) -> String {
    req.metadata()
        .get(PEER_HEADER)
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| "direct".to_string(), str::to_string)
}

/// `ok`, or `failed: <message>`, for a handler's result.
pub fn outcome<T>(result: &Result<T, tonic::Status>) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(s) => format!("failed: {:?}", s.code()),
    }
}
