//! The head file beside a log (`<log>.head`, mode 0600): the sequence number
//! and hash of the last entry, replaced (a temporary file renamed over it)
//! after each append. [`crate::verify`] reads it before the log and checks
//! that the log still reaches that entry with that hash, so entries cut off
//! the end are found, which the chain alone cannot show. It holds no secret: whoever can rewrite both the log and its head can still
//! hide a cut, so ship logs elsewhere when that matters.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What the head file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// Sequence number of the last entry written (0: none yet).
    pub seq: u64,
    /// Its hash ([`crate::GENESIS`] when there is none).
    pub hash: String,
}

/// Where the head of the log at `log` lives.
pub fn path_of(log: &Path) -> PathBuf {
    let mut p = log.as_os_str().to_owned();
    p.push(".head");
    PathBuf::from(p)
}

/// Replaces the head of `log` with `head`.
pub(crate) fn write(log: &Path, head: &Head) -> std::io::Result<()> {
    let path = path_of(log);
    let mut tmp = path.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).write(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = opts.open(&tmp)?;
    let text = serde_json::to_string(head).map_err(|e| std::io::Error::other(e.to_string()))?;
    file.write_all(text.as_bytes())?;
    drop(file);
    std::fs::rename(&tmp, &path)
}

/// The head of `log`; `None` when it has none (a log written before heads existed).
pub(crate) fn read(log: &Path) -> std::io::Result<Option<Head>> {
    match std::fs::read_to_string(path_of(log)) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether a log that ends at entry `last` agrees with `head`, read before
/// the log; `at_head` is the hash of the log's entry numbered `head.seq`. A log
/// that goes on past the head is fine: entries appended while it was read, or
/// a process that stopped between writing a line and its head (the chain
/// vouches for every entry).
pub(crate) fn check(head: &Head, last: u64, at_head: Option<&str>) -> Result<(), String> {
    if last < head.seq {
        return Err(format!(
            "the log ends at entry {last} but its head file records entry {} (entries were removed from the end)",
            head.seq
        ));
    }
    let hash = if head.seq == 0 {
        Some(crate::GENESIS)
    } else {
        at_head
    };
    if hash != Some(head.hash.as_str()) {
        return Err(format!(
            "entry {} does not have the hash its head file records (the end of the log was replaced)",
            head.seq
        ));
    }
    Ok(())
}
