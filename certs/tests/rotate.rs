//! Renewal at 70% of a certificate's lifetime, end to end with the reloader.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use tally_certs::rotate::renewal_time;
use tally_certs::tls::{Material, Reloader};
use tally_certs::{CertAuthority, Rotator};

#[test]
fn rotator_issues_when_missing_and_renews_after_seventy_percent() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let work_dir = dir.path().join("polling");
    let ca = Arc::new(CertAuthority::init(&ca_dir, "tally.local", false).unwrap());
    let rotator = Rotator::new(
        ca.clone(),
        &work_dir,
        id("polling"),
        Duration::from_secs(3600),
    );
    let paths = rotator.paths();
    let now = std::time::SystemTime::now();

    // Nothing on disk: issue, and write the bundle next to it.
    let first = rotator.rotate_if_due(now).unwrap();
    assert!(first.renewed);
    assert_eq!(
        std::fs::read_to_string(&paths.bundle).unwrap(),
        ca.cert_pem()
    );
    let m = Material::load(&paths).unwrap();
    assert_eq!(m.identity(), &id("polling"));
    assert_eq!(m.not_after(), first.not_after);
    assert_eq!(first.renew_at, renewal_time(m.not_before(), m.not_after()));
    let lifetime = m.not_after().duration_since(m.not_before()).unwrap();
    assert_eq!(
        first.renew_at.duration_since(m.not_before()).unwrap(),
        lifetime.mul_f64(0.7)
    );

    // Before the renewal point nothing changes on disk.
    let cert_before = std::fs::read(&paths.cert).unwrap();
    let early = rotator
        .rotate_if_due(first.renew_at - Duration::from_secs(1))
        .unwrap();
    assert!(!early.renewed);
    assert_eq!(early.not_after, first.not_after);
    assert_eq!(std::fs::read(&paths.cert).unwrap(), cert_before);

    // At the renewal point a new certificate (new key) replaces it.
    let key_before = std::fs::read(&paths.key).unwrap();
    let due = rotator.rotate_if_due(first.renew_at).unwrap();
    assert!(due.renewed);
    assert_ne!(std::fs::read(&paths.cert).unwrap(), cert_before);
    assert_ne!(std::fs::read(&paths.key).unwrap(), key_before);
    Material::load(&paths).unwrap();

    // A certificate for someone else in its place is replaced at once.
    let stranger = ca.issue(&id("billing"), Duration::from_secs(3600)).unwrap();
    std::fs::write(&paths.cert, &stranger.cert_pem).unwrap();
    assert!(rotator.rotate_if_due(now).unwrap().renewed);
    assert_eq!(Material::load(&paths).unwrap().identity(), &id("polling"));
}

#[tokio::test]
async fn rotated_certificate_reaches_a_running_reloader() {
    install_provider();
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(CertAuthority::init(dir.path(), "tally.local", false).unwrap());
    let rotator = Rotator::new(ca, dir.path(), id("user"), Duration::from_secs(600));
    let first = rotator.rotate_if_due(std::time::SystemTime::now()).unwrap();
    let reloader = Reloader::start(rotator.paths(), Duration::from_millis(50)).unwrap();
    let mut rx = reloader.subscribe();
    assert_eq!(rx.borrow().material.not_after(), first.not_after);

    let second = rotator.rotate_if_due(first.renew_at).unwrap();
    assert!(second.renewed);
    tokio::time::timeout(LIMIT, rx.wait_for(|c| c.generation >= 2))
        .await
        .expect("reloader never saw the renewed certificate")
        .unwrap();
    assert_eq!(reloader.current().material.identity(), &id("user"));
}

#[tokio::test]
async fn run_issues_a_missing_certificate_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(CertAuthority::init(&dir.path().join("ca"), "tally.local", false).unwrap());
    let rotator = Rotator::new(
        ca,
        dir.path().join("svc"),
        id("billing"),
        Duration::from_secs(3600),
    );
    let paths = rotator.paths();
    let task = tokio::spawn(rotator.run());
    let loaded = tokio::time::timeout(LIMIT, async {
        loop {
            if let Ok(m) = Material::load(&paths) {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the rotator never wrote a certificate");
    assert_eq!(loaded.identity(), &id("billing"));
    task.abort();
}

#[test]
fn reloader_start_outside_a_runtime_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(CertAuthority::init(dir.path(), "tally.local", false).unwrap());
    let rotator = Rotator::new(ca, dir.path(), id("user"), Duration::from_secs(3600));
    rotator.rotate_if_due(std::time::SystemTime::now()).unwrap();
    let err = Reloader::start(rotator.paths(), Duration::from_millis(50)).unwrap_err();
    assert!(err.to_string().contains("tokio runtime"), "{err}");
}
