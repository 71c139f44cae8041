//! The audit log: an append-only file of JSON lines, one per security-
//! relevant event (an authorization denial or a sampled allow, an admin
//! change, a key or certificate rotation, a dead-letter redrive or replay):
//! who, what, when, outcome.
//!
//! Each entry carries its sequence number, the previous entry's hash and its
//! own hash (SHA-256 over the previous hash and the entry's fields), so
//! [`verify`] finds an entry that was modified, removed or reordered: every
//! later link breaks. Cutting entries off the end leaves a valid shorter
//! chain, so a head file beside the log ([`head`]) records the last entry and
//! [`verify`] checks the log still reaches it. Written by hand: the format is
//! a dozen lines, and a dependency would not make it clearer.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

pub mod head;

/// The `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Longest field value kept; longer values are cut (an entry stays one line).
pub const MAX_FIELD_LEN: usize = 1024;

/// What happened, before it is chained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Who: a SPIFFE ID, `admin-token`, a user id.
    pub actor: String,
    /// What kind: `authz.deny`, `authz.allow`, `admin.faults`, `keys.rotate`, `dlq.redrive`, ...
    pub action: String,
    /// On what: a route and method, a consumer, a key id.
    pub target: String,
    /// `ok`, `denied`, `failed`, ...
    pub outcome: String,
    /// Anything else worth keeping, free text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl Event {
    pub fn new(
        actor: impl Into<String>,
        action: impl Into<String>,
        target: impl Into<String>,
        outcome: impl Into<String>,
    ) -> Self {
        Self {
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            outcome: outcome.into(),
            detail: String::new(),
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }

    fn bounded(mut self) -> Self {
        for f in [
            &mut self.actor,
            &mut self.action,
            &mut self.target,
            &mut self.outcome,
            &mut self.detail,
        ] {
            if f.len() > MAX_FIELD_LEN {
                let mut cut = MAX_FIELD_LEN;
                while !f.is_char_boundary(cut) {
                    cut -= 1;
                }
                f.truncate(cut);
            }
        }
        self
    }
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub ts_ms: u64,
    #[serde(flatten)]
    pub event: Event,
    pub prev: String,
    pub hash: String,
}

impl Entry {
    fn digest(seq: u64, ts_ms: u64, event: &Event, prev: &str) -> String {
        let mut h = Sha256::new();
        for part in [
            prev,
            &seq.to_string(),
            &ts_ms.to_string(),
            &event.actor,
            &event.action,
            &event.target,
            &event.outcome,
            &event.detail,
        ] {
            // Length-prefixed, so no two field splits hash alike.
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        hex::encode(h.finalize())
    }
}

/// Why the log could not be opened, written or verified.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("audit log {path}, line {line}: {problem}")]
    Broken {
        path: PathBuf,
        line: usize,
        problem: String,
    },
}

struct Head {
    file: std::fs::File,
    seq: u64,
    hash: String,
}

/// An open log, appended to from any task.
pub struct AuditLog {
    path: PathBuf,
    head: Mutex<Head>,
}

impl AuditLog {
    /// Opens (or creates, mode 0600) the log at `path` and continues its
    /// chain; refuses a log whose chain is already broken.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let io = |source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let file = opts.open(path).map_err(io)?;
        let last = verify(path)?;
        let (seq, hash) = match last {
            Some(e) => (e.seq, e.hash),
            None => (0, GENESIS.to_string()),
        };
        // A log from before head files, or whose head lags one entry, gets one now.
        head::write(
            path,
            &head::Head {
                seq,
                hash: hash.clone(),
            },
        )
        .map_err(io)?;
        Ok(Self {
            path: path.to_path_buf(),
            head: Mutex::new(Head { file, seq, hash }),
        })
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `event` and returns its entry. A failed write is logged and
    /// returned; the chain head only moves once the line is written.
    pub fn append(&self, event: Event) -> Result<Entry, AuditError> {
        let event = event.bounded();
        let ts_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let mut head = match self.head.lock() {
            Ok(h) => h,
            Err(poisoned) => poisoned.into_inner(),
        };
        let seq = head.seq + 1;
        let hash = Entry::digest(seq, ts_ms, &event, &head.hash);
        let entry = Entry {
            seq,
            ts_ms,
            event,
            prev: head.hash.clone(),
            hash,
        };
        let io = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        let mut line =
            serde_json::to_string(&entry).map_err(|e| io(std::io::Error::other(e.to_string())))?;
        line.push('\n');
        if let Err(e) = head.file.write_all(line.as_bytes()) {
            tracing::error!(path = %self.path.display(), error = %e, "cannot write the audit log");
            return Err(io(e));
        }
        head.seq = seq;
        head.hash = entry.hash.clone();
        let written = head::Head {
            seq,
            hash: entry.hash.clone(),
        };
        if let Err(e) = head::write(&self.path, &written) {
            // The entry is in the log; `verify` accepts a head one entry behind, and
            // the next append writes it again.
            tracing::error!(path = %self.path.display(), error = %e, "cannot write the audit log's head file");
        }
        Ok(entry)
    }

    /// Appends `event`, logging (not returning) a failure: for call sites
    /// where the audited action goes ahead either way.
    pub fn record(&self, event: Event) {
        let _ = self.append(event);
    }
}

/// Reads the log at `path` and checks every link, and that the log reaches
/// the entry its head file records; the last entry, if any. A missing file is
/// an empty log; a log without a head file is checked link by link only.
pub fn verify(path: &Path) -> Result<Option<Entry>, AuditError> {
    // The head first: it is written after its line, so the log read next
    // reaches at least the entry it names, even while entries are appended.
    let recorded = head::read(path).map_err(|source| AuditError::Io {
        path: head::path_of(path),
        source,
    })?;
    let mut last: Option<Entry> = None;
    let mut at_head: Option<String> = None;
    let mut lines = 0;
    for_each_line(path, |line_no, line| {
        lines = line_no;
        let broken = |problem: String| AuditError::Broken {
            path: path.to_path_buf(),
            line: line_no,
            problem,
        };
        let entry: Entry =
            serde_json::from_str(line).map_err(|e| broken(format!("not an audit entry: {e}")))?;
        let (want_seq, want_prev) = match &last {
            Some(p) => (p.seq + 1, p.hash.clone()),
            None => (1, GENESIS.to_string()),
        };
        if entry.seq != want_seq {
            return Err(broken(format!(
                "sequence {} where {want_seq} was expected (an entry was removed or reordered)",
                entry.seq
            )));
        }
        if entry.prev != want_prev {
            return Err(broken(
                "its `prev` is not the previous entry's hash (an entry was removed or changed)"
                    .into(),
            ));
        }
        if Entry::digest(entry.seq, entry.ts_ms, &entry.event, &entry.prev) != entry.hash {
            return Err(broken(
                "its hash does not match its content (it was modified)".into(),
            ));
        }
        if recorded.as_ref().is_some_and(|h| h.seq == entry.seq) {
            at_head = Some(entry.hash.clone());
        }
        last = Some(entry);
        Ok(())
    })?;
    if let Some(h) = recorded {
        let end = last.as_ref().map_or(0, |e| e.seq);
        head::check(&h, end, at_head.as_deref()).map_err(|problem| AuditError::Broken {
            path: path.to_path_buf(),
            line: lines + 1,
            problem,
        })?;
    }
    Ok(last)
}

/// Every entry of the log at `path` with a sequence number above `after`,
/// after checking the whole chain.
pub fn entries_after(path: &Path, after: u64) -> Result<Vec<Entry>, AuditError> {
    verify(path)?;
    let mut out = Vec::new();
    for_each_line(path, |_, line| {
        if let Ok(e) = serde_json::from_str::<Entry>(line)
            && e.seq > after
        {
            out.push(e);
        }
        Ok(())
    })?;
    Ok(out)
}

fn for_each_line(
    path: &Path,
    mut f: impl FnMut(usize, &str) -> Result<(), AuditError>,
) -> Result<(), AuditError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(AuditError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        f(i + 1, &line)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
