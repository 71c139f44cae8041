//! The proxy's audit trail ([`tally_audit`]): authorization denials and a
//! sample of allows, admin changes (and refused attempts), certificate
//! reloads, and the gateway's authentication refusals, capped per second so a
//! flood of bad credentials cannot grow the log without bound (the rest are
//! counted and written as one "suppressed" entry per window). Process-wide
//! like the log subscriber, so a layer records without new plumbing; nothing
//! is written until [`init`] runs with `admin.audit_file`.

use parking_lot::Mutex;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, OnceLock};
use std::time::Duration;
pub use tally_audit::Event;
use tokio::time::Instant;

/// One allowed inbound call in this many is recorded.
pub const ALLOW_SAMPLE_EVERY: u64 = 100;
/// Most gateway authentication refusals written per [`REFUSAL_WINDOW`].
pub const MAX_REFUSALS_PER_WINDOW: u32 = 20;
/// The window of that cap; a count of the refusals it suppressed is written
/// once it has passed (by the next refusal or by [`flush_refusals`]).
pub const REFUSAL_WINDOW: Duration = Duration::from_secs(1);
/// The action of an authentication refusal entry.
pub const REFUSED: &str = "gateway.authn";
/// The action of the entry counting refusals not written.
pub const SUPPRESSED: &str = "gateway.authn.suppressed";

static LOG: OnceLock<tally_audit::AuditLog> = OnceLock::new();
static ALLOWS: AtomicU64 = AtomicU64::new(0);
static REFUSALS: LazyLock<Capped> =
    LazyLock::new(|| Capped::new(MAX_REFUSALS_PER_WINDOW, REFUSAL_WINDOW));

/// Opens the audit log at `path`; later calls keep the first log.
pub fn init(path: &Path) -> Result<(), tally_audit::AuditError> {
    let log = tally_audit::AuditLog::open(path)?;
    let _ = LOG.set(log);
    Ok(())
}

/// Whether a log is open.
pub fn enabled() -> bool {
    LOG.get().is_some()
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

/// Records an authentication refusal, within the cap; `event` is only built
/// when it is written.
pub fn record_refusal(event: impl FnOnce() -> Event) {
    if !enabled() {
        return;
    }
    let (suppressed, write) = REFUSALS.admit(Instant::now());
    if let Some(n) = suppressed {
        record(suppressed_entry(n));
    }
    if write {
        record(event());
    }
}

/// Writes the count of refusals suppressed in a window that has passed.
pub fn flush_refusals() {
    if let Some(n) = REFUSALS.take_suppressed(Instant::now()) {
        record(suppressed_entry(n));
    }
}

/// Starts (once, when a log is open) the task that writes suppressed counts every
/// [`REFUSAL_WINDOW`], so a flood that stops is still accounted for; call inside the runtime.
pub fn spawn_refusal_flusher() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    if !enabled() {
        return;
    }
    STARTED.call_once(|| {
        tokio::spawn(async {
            let mut tick = tokio::time::interval(REFUSAL_WINDOW);
            loop {
                tick.tick().await;
                flush_refusals();
            }
        });
    });
}

fn suppressed_entry(n: u64) -> Event {
    Event::new("gateway", SUPPRESSED, "*", "suppressed").with_detail(format!(
        "{n} authentication refusals not written (over {MAX_REFUSALS_PER_WINDOW} per {REFUSAL_WINDOW:?})"
    ))
}

/// A per-window cap on written entries, counting what it refuses.
struct Capped {
    cap: u32,
    window: Duration,
    state: Mutex<Window>,
}

struct Window {
    start: Option<Instant>,
    written: u32,
    suppressed: u64,
}

impl Capped {
    fn new(cap: u32, window: Duration) -> Self {
        Self {
            cap,
            window,
            state: Mutex::new(Window {
                start: None,
                written: 0,
                suppressed: 0,
            }),
        }
    }

    /// Starts a new window when the last one has passed, returning what it suppressed.
    fn roll(&self, w: &mut Window, now: Instant) -> Option<u64> {
        let passed = w.start.is_none_or(|s| now.duration_since(s) >= self.window);
        if !passed {
            return None;
        }
        w.start = Some(now);
        w.written = 0;
        let n = std::mem::take(&mut w.suppressed);
        (n > 0).then_some(n)
    }

    /// For one entry: the suppressed count of a window that just closed (write it first),
    /// and whether this entry may be written.
    fn admit(&self, now: Instant) -> (Option<u64>, bool) {
        let mut w = self.state.lock();
        let closed = self.roll(&mut w, now);
        if w.written < self.cap {
            w.written += 1;
            (closed, true)
        } else {
            w.suppressed += 1;
            (closed, false)
        }
    }

    /// The suppressed count of a window that has passed, if any.
    fn take_suppressed(&self, now: Instant) -> Option<u64> {
        let mut w = self.state.lock();
        if w.suppressed == 0 {
            return None;
        }
        self.roll(&mut w, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_flood_is_capped_per_window_and_the_rest_counted_once() {
        let c = Capped::new(3, Duration::from_secs(1));
        let now = Instant::now();
        let written = (0..10).filter(|_| c.admit(now).1).count();
        assert_eq!(written, 3);
        // Within the window nothing is flushed yet.
        assert_eq!(c.take_suppressed(now + Duration::from_millis(999)), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(c.take_suppressed(Instant::now()), Some(7));
        assert_eq!(c.take_suppressed(Instant::now()), None, "counted once");
        // A new window writes again.
        assert_eq!(c.admit(Instant::now()), (None, true));
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_refusal_after_the_window_reports_what_was_suppressed() {
        let c = Capped::new(1, Duration::from_secs(1));
        assert_eq!(c.admit(Instant::now()), (None, true));
        assert_eq!(c.admit(Instant::now()), (None, false));
        assert_eq!(c.admit(Instant::now()), (None, false));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(c.admit(Instant::now()), (Some(2), true));
    }
}
