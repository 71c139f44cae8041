//! The proto tree is the schema registry: `buf breaking` must refuse an
//! incompatible change to an event. This test copies the tree, makes such a
//! change, and checks that buf (the real binary) catches it while an
//! additive change passes.

use std::path::{Path, PathBuf};
use std::process::Command;

fn buf() -> PathBuf {
    let venv = tally_testkit::repo_root().join(".venv/bin/buf");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("buf")
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Builds a buf image of `dir` into `out`.
fn build_image(dir: &Path, out: &Path) {
    let status = Command::new(buf())
        .arg("build")
        .arg("-o")
        .arg(out)
        .current_dir(dir)
        .status()
        .expect("run buf build (install it with `bash scripts/test`)");
    assert!(status.success(), "buf build failed in {}", dir.display());
}

/// Runs `buf breaking` in `dir` against `image`; returns (success, output).
fn breaking(dir: &Path, image: &Path) -> (bool, String) {
    let out = Command::new(buf())
        .arg("breaking")
        .arg("--against")
        .arg(image)
        .current_dir(dir)
        .output()
        .expect("run buf breaking");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn edit(file: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(file).expect("read proto");
    assert!(
        text.contains(from),
        "{} no longer contains {from:?}",
        file.display()
    );
    std::fs::write(file, text.replacen(from, to, 1)).expect("write proto");
}

#[test]
fn buf_breaking_refuses_an_incompatible_event_change_and_accepts_an_addition() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path().join("base.binpb");
    let tree = tmp.path().join("proto");
    copy_tree(&tally_testkit::repo_root().join("proto"), &tree);
    build_image(&tree, &base);

    // Unchanged tree: compatible with itself.
    let (ok, text) = breaking(&tree, &base);
    assert!(ok, "unchanged tree reported breaking: {text}");

    // Additive change: a new field on an event is fine.
    let events = tree.join("tally/events/v1/events.proto");
    edit(
        &events,
        "  google.protobuf.Timestamp cast_at = 5;\n}",
        "  google.protobuf.Timestamp cast_at = 5;\n  string client_hint = 6;\n}",
    );
    let (ok, text) = breaking(&tree, &base);
    assert!(ok, "an added field must not be breaking: {text}");

    // Incompatible change: PollVoted.option_id changes type.
    edit(
        &events,
        "  string option_id = 3;\n  string voter_id = 4;",
        "  uint64 option_id = 3;\n  string voter_id = 4;",
    );
    let (ok, text) = breaking(&tree, &base);
    assert!(
        !ok,
        "changing a field's type must be breaking, buf said: {text}"
    );
    assert!(
        text.contains("option_id") && text.contains("PollVoted"),
        "buf should name the field it refused: {text}"
    );
}
