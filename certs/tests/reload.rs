//! Hot reload: new files become new configs for new connections; existing connections
//! keep theirs; broken files keep the old configs.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use tally_certs::tls::{Reloader, TlsConfigs, client_config, server_name_for};
use tally_certs::{CertAuthority, write_workload};
use tokio::sync::watch;

/// Waits (generously) until the published generation reaches `generation`.
async fn wait_for_generation(rx: &mut watch::Receiver<Arc<TlsConfigs>>, generation: u64) {
    tokio::time::timeout(LIMIT, rx.wait_for(|c| c.generation >= generation))
        .await
        .unwrap_or_else(|_| panic!("generation {generation} was never published"))
        .expect("reloader dropped");
}

#[tokio::test]
async fn polling_reloader_publishes_rewritten_certificates() {
    install_provider();
    let dir = tempfile::tempdir().unwrap();
    let ca = CertAuthority::init(dir.path(), "tally.local", false).unwrap();
    let first = ca.issue(&id("polling"), Duration::from_secs(3600)).unwrap();
    let paths = write_workload(dir.path(), &id("polling"), &first).unwrap();

    let reloader = Reloader::start(paths.clone(), Duration::from_millis(50)).unwrap();
    let mut rx = reloader.subscribe();
    assert_eq!(rx.borrow().generation, 1);
    assert_eq!(rx.borrow().material.not_after(), first.not_after);
    assert_eq!(rx.borrow().material.identity(), &id("polling"));

    let second = ca.issue(&id("polling"), Duration::from_secs(7200)).unwrap();
    write_workload(dir.path(), &id("polling"), &second).unwrap();
    wait_for_generation(&mut rx, 2).await;
    assert_eq!(rx.borrow().material.not_after(), second.not_after);
    assert_eq!(reloader.current().generation, 2);
}

#[tokio::test]
async fn broken_files_keep_the_previous_configs() {
    install_provider();
    let dir = tempfile::tempdir().unwrap();
    let ca = CertAuthority::init(dir.path(), "tally.local", false).unwrap();
    let good = ca.issue(&id("user"), Duration::from_secs(3600)).unwrap();
    let paths = write_workload(dir.path(), &id("user"), &good).unwrap();
    // No polling task: every check is explicit, so nothing races the assertions.
    let reloader = Reloader::new(paths.clone()).unwrap();
    assert_eq!(reloader.current().generation, 1);
    assert!(!reloader.check().unwrap(), "nothing changed yet");

    // Half of a new certificate written in place (what a non-atomic writer leaves behind).
    let next = ca.issue(&id("user"), Duration::from_secs(7200)).unwrap();
    std::fs::write(&paths.cert, &next.cert_pem[..next.cert_pem.len() / 2]).unwrap();
    assert!(reloader.check().is_err());
    assert!(reloader.reload_now().is_err());
    assert_eq!(reloader.current().generation, 1);
    assert_eq!(reloader.current().material.not_after(), good.not_after);

    // The whole new certificate, but the old key: a mismatch, still refused.
    std::fs::write(&paths.cert, &next.cert_pem).unwrap();
    let err = reloader.reload_now().unwrap_err();
    assert!(err.to_string().contains("does not fit"), "{err}");
    assert_eq!(reloader.current().generation, 1);

    // The key arrives: now the pair loads.
    std::fs::write(&paths.key, &next.key_pem).unwrap();
    assert!(reloader.check().unwrap());
    assert_eq!(reloader.current().generation, 2);
    assert_eq!(reloader.current().material.not_after(), next.not_after);

    // A bundle that no longer holds the issuing root is refused too.
    let other = CertAuthority::generate("tally.local").unwrap();
    std::fs::write(&paths.bundle, other.cert_pem()).unwrap();
    let err = reloader.reload_now().unwrap_err();
    assert!(err.to_string().contains("does not chain"), "{err}");
    assert_eq!(reloader.current().generation, 2);

    // Missing files at start are an error, not a panic.
    std::fs::remove_file(&paths.key).unwrap();
    assert!(Reloader::new(paths).is_err());
}

#[tokio::test]
async fn new_connections_use_the_new_certificate_and_existing_ones_keep_working() {
    install_provider();
    let dir = tempfile::tempdir().unwrap();
    let ca = CertAuthority::init(dir.path(), "tally.local", false).unwrap();
    let first = ca.issue(&id("polling"), Duration::from_secs(3600)).unwrap();
    let paths = write_workload(dir.path(), &id("polling"), &first).unwrap();
    let reloader = Reloader::start(paths, Duration::from_millis(50)).unwrap();
    let mut rx = reloader.subscribe();

    // The server takes the newest config for each accepted connection.
    let server_rx = reloader.subscribe();
    let (addr, _accepted) = spawn_server_with(move || server_rx.borrow().server.clone()).await;
    let client = material(&ca, ca.cert_pem(), "user");
    let client_cfg = client_config(&client).unwrap();

    let mut old_conn = connect(client_cfg.clone(), addr, server_name_for(&id("polling")))
        .await
        .unwrap();
    let old_cert = old_conn.server_certs()[0].clone();
    assert_eq!(old_conn.echo("before").await.unwrap(), "before");

    let second = ca.issue(&id("polling"), Duration::from_secs(7200)).unwrap();
    write_workload(dir.path(), &id("polling"), &second).unwrap();
    wait_for_generation(&mut rx, 2).await;

    let mut new_conn = connect(client_cfg, addr, server_name_for(&id("polling")))
        .await
        .unwrap();
    let new_cert = new_conn.server_certs()[0].clone();
    assert_ne!(
        new_cert, old_cert,
        "new connection still got the old certificate"
    );
    let summary = tally_certs::CertSummary::from_der(&new_cert).unwrap();
    assert_eq!(summary.not_after, second.not_after);

    // Both connections work; the old one was not torn down by the reload.
    assert_eq!(old_conn.echo("after").await.unwrap(), "after");
    assert_eq!(new_conn.echo("fresh").await.unwrap(), "fresh");
    assert_eq!(old_conn.server_certs()[0], old_cert);
}

#[tokio::test]
async fn reload_now_picks_up_changes_without_polling() {
    install_provider();
    let dir = tempfile::tempdir().unwrap();
    let ca = CertAuthority::init(dir.path(), "tally.local", false).unwrap();
    let first = ca.issue(&id("user"), Duration::from_secs(3600)).unwrap();
    let paths = write_workload(dir.path(), &id("user"), &first).unwrap();
    let reloader = Reloader::new(paths).unwrap();
    let rx = reloader.subscribe();

    let second = ca.issue(&id("user"), Duration::from_secs(7200)).unwrap();
    write_workload(dir.path(), &id("user"), &second).unwrap();
    assert_eq!(
        rx.borrow().generation,
        1,
        "nothing reloads without a trigger"
    );
    let configs = reloader.reload_now().unwrap();
    assert_eq!(configs.generation, 2);
    assert_eq!(rx.borrow().generation, 2);
    assert_eq!(rx.borrow().material.not_after(), second.not_after);
    // reload_now reloads even if nothing changed.
    assert_eq!(reloader.reload_now().unwrap().generation, 3);
}
