//! The head file beside a log (`<log>.head`, mode 0600): the sequence number
//! and hash of the last entry, replaced (a temporary file renamed over it)
//! after each append. [`crate::verify`] compares it with the end of the log, so
//! entries cut off the end are found, which the chain alone cannot show. It
//! holds no secret: whoever can rewrite both the log and its head can still
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

/// Whether a log whose last two entries are `last` and `before` (seq, hash)
/// agrees with `head`; the problem when it does not. The head may lag by one
/// entry: a process that stopped between writing a line and its head.
pub(crate) fn check(head: &Head, last: (u64, &str), before: (u64, &str)) -> Result<(), String> {
    let (seq, hash) = if last.0 == head.seq {
        last
    } else if last.0 == head.seq + 1 {
        before
    } else if last.0 < head.seq {
        return Err(format!(
            "the log ends at entry {} but its head file records entry {} (entries were removed from the end)",
            last.0, head.seq
        ));
    } else {
        return Err(format!(
            "the log goes on to entry {} but its head file records entry {} (the head file is stale or was replaced)",
            last.0, head.seq
        ));
    };
    if hash != head.hash {
        return Err(format!(
            "entry {seq} does not have the hash its head file records (the end of the log was replaced)"
        ));
    }
    Ok(())
}
