//! Where the built binaries and test tools are.

use std::path::{Path, PathBuf};

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .expect("tests/testkit sits two levels below the repository root")
}

/// `target/<profile>/<name>`, found from the running test executable
/// (`target/<profile>/deps/<test>-<hash>`).
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe
        .parent()
        .expect("test executable has a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "binary `{name}` not found at {}; run `cargo build --workspace --bins` first \
         (bash scripts/test does this)",
        path.display()
    );
    path
}

/// The `grpcurl` to use: `<repo>/.venv/bin/grpcurl` (installed by
/// `bash scripts/test`), else the first on PATH.
pub fn grpcurl() -> PathBuf {
    let venv = repo_root().join(".venv/bin/grpcurl");
    if venv.is_file() {
        return venv;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("grpcurl");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "grpcurl not found in {} or on PATH; run `bash scripts/test` once (it installs it into .venv)",
        repo_root().join(".venv/bin").display()
    );
}
