//! The text of each instance's config file (a header saying who wrote it and
//! how to override it, then the TOML) and the directories `tally up` writes.

use super::super::UpError;
use std::path::{Path, PathBuf};

/// The config file's TOML text, or an error naming the instance.
pub(super) fn render(name: &str, table: Result<toml::Table, String>) -> Result<String, UpError> {
    let table =
        table.map_err(|e| UpError::Platform(format!("cannot write the config of {name}: {e}")))?;
    toml::to_string_pretty(&table)
        .map_err(|e| UpError::Platform(format!("config for {name} does not serialise: {e}")))
}

/// `--config <path>`: how Tally's binaries are told their config file.
pub(super) fn config_args(path: &Path) -> Vec<std::ffi::OsString> {
    vec!["--config".into(), path.as_os_str().to_owned()]
}

/// The first lines of a service's config file.
pub(super) fn header(name: &str, binary: &str, env_prefix: &str) -> String {
    format!(
        "# Written by `tally up` for {name} ({binary}); regenerated on every start.\n\
         # Environment variables {env_prefix}<SECTION>__<KEY> override values here.\n\n"
    )
}

/// The first lines of a sidecar's config file.
pub(super) fn sidecar_header(name: &str, binary: &str, env_prefix: &str) -> String {
    format!(
        "# Written by `tally up` for {name} ({binary}); regenerated on every start.\n\
         # Schema: mesh-proxy/README.md; {env_prefix}* variables override the listen addresses.\n\n"
    )
}

/// The directories the plan writes into.
pub fn directories(data_dir: &Path) -> [PathBuf; 5] {
    ["config", "logs", "run", "data", AUDIT_DIR].map(|d| data_dir.join(d))
}

/// Directory of every instance's audit log.
pub const AUDIT_DIR: &str = "audit";

/// The audit log of `instance` (a service or a proxy): `tally audit verify`
/// checks every log in [`AUDIT_DIR`].
pub fn audit_file(data_dir: &Path, instance: &str) -> PathBuf {
    data_dir.join(AUDIT_DIR).join(format!("{instance}.log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_that_cannot_be_written_names_the_instance() {
        let err = render("gateway", Err("no `admin` port".into())).expect_err("error");
        let msg = err.to_string();
        assert!(msg.contains("gateway") && msg.contains("admin"), "{msg}");
        let ok = render("user", Ok(toml::Table::new())).expect("empty table");
        assert!(ok.is_empty());
        assert!(header("user", "tally-user", "TALLY_USER_").contains("TALLY_USER_<SECTION>"));
    }
}
