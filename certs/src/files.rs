//! Atomic file writes: a watcher polling a certificate file must never see half of it.

use std::io::Write;
use std::path::Path;

use crate::CertError;

/// File mode for private keys.
pub(crate) const KEY_MODE: u32 = 0o600;
/// File mode for certificates and bundles.
pub(crate) const CERT_MODE: u32 = 0o644;

/// Writes `contents` to `path` by writing a temporary file in the same directory,
/// syncing it, setting `mode`, and renaming it over `path`.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // tempfile creates the file with mode 0600, so a key is never readable by others.
    let mut tmp = tempfile::Builder::new()
        .prefix(".tally-certs-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| CertError::io(dir, e))?;
    tmp.write_all(contents)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| CertError::io(tmp.path(), e))?;
    set_mode(tmp.path(), mode)?;
    tmp.persist(path)
        .map_err(|e| CertError::io(path, e.error))?;
    Ok(())
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<(), CertError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| CertError::io(path, e))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> Result<(), CertError> {
    Ok(())
}

/// Reads a whole file, naming it in the error.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|e| CertError::io(path, e))
}
