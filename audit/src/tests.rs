//! Tamper detection of the chain: a modified, removed or reordered entry
//! breaks verification; a reopened log continues the chain.

use super::*;

fn three(path: &Path) {
    let log = AuditLog::open(path).expect("open");
    for i in 0..3 {
        log.append(Event::new(
            "spiffe://tally.local/ns/tally/sa/polling",
            "authz.deny",
            format!("tally.user.v1.UserAdminService/RotateKeys#{i}"),
            "denied",
        ))
        .expect("append");
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .expect("read")
        .lines()
        .map(str::to_string)
        .collect()
}

fn write(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").expect("write");
}

#[test]
fn an_untouched_log_verifies_and_reopening_continues_the_chain() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("audit.log");
    three(&path);
    assert_eq!(verify(&path).expect("valid").map(|e| e.seq), Some(3));
    three(&path);
    assert_eq!(verify(&path).expect("valid").map(|e| e.seq), Some(6));
    assert_eq!(entries_after(&path, 4).expect("entries").len(), 2);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}

#[test]
fn a_modified_entry_is_found() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("audit.log");
    three(&path);
    let mut l = lines(&path);
    l[1] = l[1].replace("denied", "ok");
    write(&path, &l);
    let err = verify(&path).expect_err("modified");
    assert!(err.to_string().contains("line 2"), "{err}");
    assert!(err.to_string().contains("modified"), "{err}");
}

#[test]
fn a_removed_entry_is_found() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("audit.log");
    three(&path);
    let mut l = lines(&path);
    l.remove(1);
    write(&path, &l);
    let err = verify(&path).expect_err("removed");
    assert!(err.to_string().contains("removed"), "{err}");
}

#[test]
fn a_removed_entry_with_renumbered_successors_is_found() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("audit.log");
    three(&path);
    let mut l = lines(&path);
    l.remove(1);
    l[1] = l[1].replace("\"seq\":3", "\"seq\":2");
    write(&path, &l);
    assert!(verify(&path).is_err());
    assert!(
        AuditLog::open(&path).is_err(),
        "a broken log is not extended"
    );
}

#[test]
fn long_fields_are_cut_to_the_bound() {
    let dir = tempfile::tempdir().expect("tmp");
    let log = AuditLog::open(&dir.path().join("a.log")).expect("open");
    let e = log
        .append(Event::new("a", "b", "c", "d").with_detail("é".repeat(MAX_FIELD_LEN)))
        .expect("append");
    assert!(e.event.detail.len() <= MAX_FIELD_LEN);
    assert!(verify(log.path()).is_ok());
}

#[test]
fn entries_cut_off_the_end_are_found() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("audit.log");
    three(&path);
    let mut l = lines(&path);
    l.pop();
    write(&path, &l);
    let err = verify(&path).expect_err("truncated");
    assert!(err.to_string().contains("removed from the end"), "{err}");
    std::fs::write(&path, "").expect("empty");
    let err = verify(&path).expect_err("emptied");
    assert!(err.to_string().contains("removed from the end"), "{err}");
    assert!(AuditLog::open(&path).is_err(), "a cut log is not extended");
}

#[test]
fn a_replaced_end_is_found() {
    let dir = tempfile::tempdir().expect("tmp");
    let a = dir.path().join("a.log");
    let b = dir.path().join("b.log");
    three(&a);
    let log = AuditLog::open(&b).expect("open");
    for i in 0..3 {
        log.append(Event::new("x", "y", format!("z{i}"), "ok"))
            .expect("append");
    }
    // Another valid chain of the same length under a's head.
    std::fs::copy(&b, &a).expect("copy");
    let err = verify(&a).expect_err("replaced");
    assert!(err.to_string().contains("replaced"), "{err}");
}

#[test]
fn a_head_one_entry_behind_is_a_stop_between_two_writes_and_is_repaired() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("audit.log");
    three(&path);
    let second: Entry = serde_json::from_str(&lines(&path)[1]).expect("entry");
    head::write(
        &path,
        &head::Head {
            seq: 2,
            hash: second.hash,
        },
    )
    .expect("head");
    assert_eq!(verify(&path).expect("valid").map(|e| e.seq), Some(3));
    drop(AuditLog::open(&path).expect("open"));
    let h = head::read(&path).expect("read").expect("head");
    assert_eq!(h.seq, 3);
}

#[test]
fn a_log_without_a_head_verifies_and_gets_one_with_mode_0600() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("audit.log");
    three(&path);
    std::fs::remove_file(head::path_of(&path)).expect("remove head");
    assert_eq!(verify(&path).expect("valid").map(|e| e.seq), Some(3));
    drop(AuditLog::open(&path).expect("open"));
    assert_eq!(head::read(&path).expect("read").map(|h| h.seq), Some(3));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(head::path_of(&path)).expect("meta");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
}

#[test]
fn a_log_read_while_it_grows_past_its_head_verifies() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("audit.log");
    three(&path);
    let first: Entry = serde_json::from_str(&lines(&path)[0]).expect("entry");
    // The head as a reader saw it before two more entries arrived.
    head::write(
        &path,
        &head::Head {
            seq: 1,
            hash: first.hash,
        },
    )
    .expect("head");
    assert_eq!(verify(&path).expect("valid").map(|e| e.seq), Some(3));
}
