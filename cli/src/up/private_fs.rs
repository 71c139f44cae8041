//! Files and directories only this user may read: the data directory's
//! subdirectories (0700) and the configs (0600) `tally up` writes, since they
//! sit next to stores holding password hashes and signing keys.

use std::io::Write;
use std::path::Path;

/// Mode of the data directory and everything `tally up` creates in it:
/// stores, keys and configs are for this user only.
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of the config files `tally up` writes.
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Creates `dir` and missing parents with mode 0700; leaves an existing one as it is.
pub fn new_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, PRIVATE_DIR_MODE);
    builder.create(dir)
}

/// Creates `dir` and makes it 0700, also when it existed before.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    new_private_dir(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(PRIVATE_DIR_MODE))?;
    }
    Ok(())
}

/// Writes `contents` to `path` with mode 0600, also when it existed before.
pub fn private_file(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, PRIVATE_FILE_MODE);
    let mut file = options.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(PRIVATE_FILE_MODE))?;
    }
    file.write_all(contents.as_bytes())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn owned_dirs_and_files_become_private_even_when_they_existed() {
        let root = tempfile::tempdir().unwrap();
        let fresh = root.path().join("a/b");
        new_private_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        let old = root.path().join("old");
        std::fs::create_dir(&old).unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).unwrap();
        new_private_dir(&old).unwrap();
        assert_eq!(mode(&old), 0o755, "an existing directory is left as it is");
        private_dir(&old).unwrap();
        assert_eq!(mode(&old), 0o700);
        let file = old.join("c.toml");
        std::fs::write(&file, "x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        private_file(&file, "new").unwrap();
        assert_eq!(mode(&file), 0o600);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "new");
    }
}
