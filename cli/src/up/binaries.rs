//! Finds the service binaries (they sit next to the `tally` executable) and,
//! under `cargo run`, builds them first with the same profile, so
//! `cargo run --release -- up` is the only command a newcomer needs.

use super::{UpError, say};
use std::path::{Path, PathBuf};

/// The directory holding the binaries: `--bin-dir`, else the one holding `tally`.
pub fn dir(explicit: Option<&Path>) -> Result<PathBuf, UpError> {
    if let Some(d) = explicit {
        return Ok(d.to_path_buf());
    }
    let exe = std::env::current_exe().map_err(|source| UpError::Io {
        what: "cannot find the tally executable's path".into(),
        source,
    })?;
    exe.parent().map(Path::to_path_buf).ok_or_else(|| {
        UpError::Usage("the tally executable has no parent directory; pass --bin-dir".into())
    })
}

/// The cargo profile flags matching a `target/<profile>` directory.
pub fn profile_args(bin_dir: &Path) -> Vec<String> {
    match bin_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => vec![],
        Some("release") => vec!["--release".into()],
        Some(other) => vec!["--profile".into(), other.into()],
    }
}

/// Under `cargo run` (cargo sets `CARGO`), builds every workspace binary with
/// the profile of the running `tally`; otherwise does nothing.
pub async fn build_if_under_cargo(bin_dir: &Path) -> Result<(), UpError> {
    let Some(cargo) = std::env::var_os("CARGO") else {
        return Ok(());
    };
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let manifest = manifest_dir.join("Cargo.toml");
    let mut args: Vec<String> = vec![
        "build".into(),
        "--workspace".into(),
        "--bins".into(),
        "--manifest-path".into(),
        manifest.display().to_string(),
    ];
    args.extend(profile_args(bin_dir));
    say(&format!(
        "building the service binaries: cargo {}",
        args.join(" ")
    ));
    let mut cmd = tokio::process::Command::new(&cargo);
    cmd.args(&args).stdin(std::process::Stdio::null());
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(is_run_variable) {
            cmd.env_remove(&name);
        }
    }
    let status = cmd.status().await.map_err(|source| UpError::Io {
        what: format!("cannot run {}", Path::new(&cargo).display()),
        source,
    })?;
    if !status.success() {
        return Err(UpError::Build(format!(
            "`cargo {}` failed ({status}); fix the build errors above",
            args.join(" ")
        )));
    }
    Ok(())
}

/// Variables `cargo run` sets for the program it runs. Build scripts (ring's,
/// for one) ask to rerun when they change, so passing them on to the nested
/// build would rebuild those crates every time; they are dropped.
fn is_run_variable(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || name.starts_with("CARGO_CFG_")
        || matches!(
            name,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_MANIFEST_LINKS"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_RUSTC_CURRENT_DIR"
                | "OUT_DIR"
        )
}

/// The path of `binary` in `dir`, or a message saying how to build it.
pub fn locate(dir: &Path, binary: &str) -> Result<PathBuf, UpError> {
    let path = dir.join(format!("{binary}{}", std::env::consts::EXE_SUFFIX));
    if path.is_file() {
        Ok(path)
    } else {
        Err(UpError::BinaryMissing {
            binary: binary.to_string(),
            dir: dir.to_path_buf(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_follows_the_target_directory() {
        assert!(profile_args(Path::new("/r/target/debug")).is_empty());
        assert_eq!(profile_args(Path::new("/r/target/release")), ["--release"]);
        assert_eq!(
            profile_args(Path::new("/r/target/bench")),
            ["--profile", "bench"]
        );
    }

    #[test]
    fn run_variables_are_not_passed_to_the_nested_build() {
        assert!(is_run_variable("CARGO_PKG_NAME"));
        assert!(is_run_variable("CARGO_MANIFEST_DIR"));
        assert!(is_run_variable("OUT_DIR"));
        assert!(!is_run_variable("CARGO_TARGET_DIR"));
        assert!(!is_run_variable("CARGO_HOME"));
        assert!(!is_run_variable("RUSTFLAGS"));
    }

    #[test]
    fn a_missing_binary_says_how_to_build_it() {
        let err = locate(Path::new("/nonexistent"), "tally-nothing").expect_err("missing");
        let msg = err.to_string();
        assert!(
            msg.contains("tally-nothing") && msg.contains("cargo build --workspace --bins"),
            "{msg}"
        );
    }
}
