//! The admin token: a random bearer token `tally up` writes to
//! `<data-dir>/admin-token` (0600, in a 0700 data directory) on every start.
//! Every sidecar and the gateway name it as `[admin] token_file`, so changes
//! through their admin APIs (such as `PUT /faults`) need it; reading
//! (`/ready`, `/metrics`) does not.

use super::super::UpError;
use super::super::private_fs::{PRIVATE_FILE_MODE, private_dir};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The token's file name in the data directory (and the key of the
/// Kubernetes Secret in `deploy/k8s/`).
pub const FILE_NAME: &str = "admin-token";
/// Random bytes in a token (written as hex).
const TOKEN_BYTES: usize = 32;

/// `<data-dir>/admin-token`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> UpError {
    move |source| UpError::Io { what, source }
}

/// A fresh random token, as hex.
fn new_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a new token to `<data-dir>/admin-token` (0600, the directory made
/// 0700) and returns the file's path. The file is replaced whole, so a proxy
/// reading it never sees half a token, and it is never readable by others,
/// not even for a moment.
pub fn generate(data_dir: &Path) -> Result<PathBuf, UpError> {
    private_dir(data_dir).map_err(io_err(format!(
        "cannot make {} a private directory",
        data_dir.display()
    )))?;
    let target = path(data_dir);
    let tmp = data_dir.join(format!(".{FILE_NAME}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(PRIVATE_FILE_MODE);
    }
    let what = format!("cannot write {}", target.display());
    let mut file = options.open(&tmp).map_err(io_err(what.clone()))?;
    file.write_all(new_token().as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_err(what.clone()))?;
    drop(file);
    std::fs::rename(&tmp, &target).map_err(io_err(what))?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn a_new_private_token_on_every_start() {
        let tmp = tempfile::tempdir().expect("tmp");
        let data = tmp.path().join("data");
        let first = generate(&data).expect("token");
        assert_eq!(first, data.join("admin-token"));
        let a = std::fs::read_to_string(&first).expect("read");
        assert_eq!(a.len(), 2 * TOKEN_BYTES);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()), "{a}");
        let b = std::fs::read_to_string(generate(&data).expect("again")).expect("read");
        assert_ne!(a, b, "a fresh token each start");
        #[cfg(unix)]
        {
            assert_eq!(mode(&first), 0o600);
            assert_eq!(mode(&data), 0o700);
        }
    }

    #[cfg(unix)]
    #[test]
    fn an_open_data_dir_and_an_old_readable_token_are_closed() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tmp");
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).expect("mkdir");
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::write(path(&data), "old").expect("write");
        std::fs::set_permissions(path(&data), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        let p = generate(&data).expect("token");
        assert_eq!(mode(&p), 0o600);
        assert_eq!(mode(&data), 0o700);
        assert_ne!(std::fs::read_to_string(&p).expect("read"), "old");
    }
}
