//! The deployment files pass their linters: every Kubernetes manifest in
//! `deploy/k8s/` validates with `kubernetes-validate --strict` (offline, against
//! the schemas bundled in the package), and every workflow in
//! `.github/workflows/` passes `actionlint`. Both tools are PyPI packages that
//! `bash scripts/test` installs into `.venv`. Each check also runs on a broken
//! file first, so it cannot pass because the tool checked nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A tool from `<repo>/.venv/bin` (installed by `bash scripts/test`), else from PATH.
fn tool(name: &str) -> PathBuf {
    let venv = tally_testkit::repo_root().join(".venv/bin").join(name);
    if venv.is_file() {
        return venv;
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!("{name} not found in .venv/bin or on PATH; run `bash scripts/test` once (it installs it into .venv)")
        })
}

/// The files in `dir` whose names end with `ext`, sorted.
fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.to_string_lossy().ends_with(ext))
        .collect();
    out.sort();
    out
}

fn run(cmd: &mut Command) -> (bool, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("the tool starts");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    );
    (status.success(), text)
}

fn kubernetes_validate(files: &[PathBuf]) -> (bool, String) {
    run(Command::new(tool("kubernetes-validate"))
        .args(["--strict", "--quiet"])
        .args(files))
}

#[test]
fn every_kubernetes_manifest_passes_kubernetes_validate_strict() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  portz: []\n",
    )
    .expect("write");
    let (ok, out) = kubernetes_validate(std::slice::from_ref(&bad));
    assert!(
        !ok && out.contains("portz"),
        "strict mode refuses unknown fields: {out}"
    );

    let k8s = tally_testkit::repo_root().join("deploy/k8s");
    let manifests: Vec<PathBuf> = files(&k8s, ".yaml")
        .into_iter()
        .filter(|p| !p.ends_with("kustomization.yaml"))
        .collect();
    assert!(manifests.len() >= 10, "{manifests:?}");
    let (ok, out) = kubernetes_validate(&manifests);
    assert!(ok, "kubernetes-validate --strict:\n{out}");
    // A kind without a bundled schema is only a warning: none may be skipped.
    assert!(!out.contains("WARN"), "unchecked resources:\n{out}");
}

#[test]
fn every_container_is_hardened_and_sized_and_every_pod_non_root() {
    let count = |text: &str, needle: &str| text.lines().filter(|l| l.trim() == needle).count();
    let k8s = tally_testkit::repo_root().join("deploy/k8s");
    let mut containers = 0;
    for m in files(&k8s, ".yaml")
        .into_iter()
        .filter(|p| !p.ends_with("kustomization.yaml"))
    {
        let text = std::fs::read_to_string(&m).expect("read");
        let name = m.display();
        let images = text
            .lines()
            .filter(|l| l.trim().starts_with("image: "))
            .count();
        containers += images;
        for needle in [
            "readOnlyRootFilesystem: true",
            "allowPrivilegeEscalation: false",
            r#"drop: ["ALL"]"#,
            "resources:",
            "limits:",
        ] {
            assert_eq!(
                count(&text, needle),
                images,
                "{name}: `{needle}` per container"
            );
        }
        // Top-level documents only (an HPA's scaleTargetRef names a Deployment too).
        let pods = text.lines().filter(|l| *l == "kind: Deployment").count();
        for needle in ["runAsNonRoot: true", "type: RuntimeDefault"] {
            assert_eq!(count(&text, needle), pods, "{name}: `{needle}` per pod");
        }
    }
    assert!(containers >= 20, "{containers} containers");
}

#[test]
fn the_kustomization_applies_every_manifest() {
    let k8s = tally_testkit::repo_root().join("deploy/k8s");
    let kustomization = std::fs::read_to_string(k8s.join("kustomization.yaml")).expect("read");
    for m in files(&k8s, ".yaml") {
        let name = m.file_name().expect("name").to_string_lossy().into_owned();
        if name != "kustomization.yaml" {
            assert!(
                kustomization.contains(&format!("  - {name}\n")),
                "deploy/k8s/kustomization.yaml does not list {name}"
            );
        }
    }
}

#[test]
fn every_workflow_passes_actionlint() {
    let actionlint = tool("actionlint");
    // An expression naming an undefined matrix key must fail.
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yml");
    std::fs::write(
        &bad,
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ matrix.nope }}\n",
    )
    .expect("write");
    let (ok, out) = run(Command::new(&actionlint)
        .args(["-no-color", "-oneline", "-shellcheck=", "-pyflakes="])
        .arg(&bad));
    assert!(
        !ok && out.contains("nope"),
        "actionlint finds errors: {out}"
    );

    let root = tally_testkit::repo_root();
    let workflows: Vec<PathBuf> = [".yml", ".yaml"]
        .iter()
        .flat_map(|ext| files(&root.join(".github/workflows"), ext))
        .collect();
    assert!(workflows.len() >= 9, "{workflows:?}");
    // Run from the repository root, so calls to ./.github/workflows/*.yml are
    // checked against the called workflow's inputs.
    let (ok, out) = run(Command::new(&actionlint)
        .current_dir(&root)
        .args(["-no-color", "-oneline"])
        .args(&workflows));
    assert!(ok, "actionlint:\n{out}");
}
