//! Mutual TLS over real TCP sockets: the configs from `tally_certs::tls` accept the
//! right peers and refuse the wrong ones.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::*;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tally_certs::tls::{
    IdentityMismatch, Material, client_config, peer_spiffe_id, server_config, server_name_for,
};
use tally_certs::{CertAuthority, join_bundle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn ca() -> CertAuthority {
    CertAuthority::generate("tally.local").unwrap()
}

#[tokio::test]
async fn mutual_tls_succeeds_and_server_reads_client_spiffe_id() {
    install_provider();
    let ca = ca();
    let server = material(&ca, ca.cert_pem(), "polling");
    let client = material(&ca, ca.cert_pem(), "user");
    let (addr, mut accepted) = spawn_server(server_config(&server).unwrap()).await;

    let mut conn = connect(
        client_config(&client).unwrap(),
        addr,
        server_name_for(&id("polling")),
    )
    .await
    .expect("mTLS handshake");

    assert_eq!(
        conn.greeting,
        "hello spiffe://tally.local/ns/default/sa/user"
    );
    match next_accept(&mut accepted).await {
        Accepted::Ok { peer, alpn } => {
            assert_eq!(peer, Some(id("user")));
            assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
        }
        Accepted::Failed(e) => panic!("server refused: {e}"),
    }
    // The client sees the server's identity too, and h2 was negotiated.
    assert_eq!(peer_spiffe_id(&conn.server_certs()), Some(id("polling")));
    assert_eq!(conn.alpn().as_deref(), Some(&b"h2"[..]));
    assert_eq!(conn.echo("ping").await.unwrap(), "ping");
    assert_eq!(
        conn.stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

#[tokio::test]
async fn plaintext_bytes_to_tls_server_fail_cleanly() {
    install_provider();
    let ca = ca();
    let server = material(&ca, ca.cert_pem(), "polling");
    let (addr, mut accepted) = spawn_server(server_config(&server).unwrap()).await;

    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    match next_accept(&mut accepted).await {
        Accepted::Failed(e) => assert!(!e.is_empty()),
        Accepted::Ok { .. } => panic!("plaintext was accepted"),
    }
    // The server closes the connection: at most an alert record, then EOF.
    let mut buf = Vec::new();
    let read = tokio::time::timeout(LIMIT, tcp.read_to_end(&mut buf))
        .await
        .expect("server did not close the plaintext connection");
    if read.is_ok() {
        assert!(buf.len() <= 7, "unexpected reply to plaintext: {buf:?}");
        if !buf.is_empty() {
            assert_eq!(buf[0], 0x15, "expected a TLS alert record, got {buf:?}");
        }
    }

    // The server still serves proper clients afterwards.
    let client = material(&ca, ca.cert_pem(), "user");
    connect(
        client_config(&client).unwrap(),
        addr,
        server_name_for(&id("polling")),
    )
    .await
    .expect("server still works after plaintext garbage");
}

#[tokio::test]
async fn client_cert_from_another_ca_is_refused() {
    install_provider();
    let ca = ca();
    let other_ca = ca_other();
    let server = material(&ca, ca.cert_pem(), "polling");
    let (addr, mut accepted) = spawn_server(server_config(&server).unwrap()).await;

    // An intruder who trusts our root (so it gets past the server certificate) but holds a
    // certificate from its own CA claiming the identity "user".
    let forged = other_ca
        .issue(&id("user"), Duration::from_secs(3600))
        .unwrap();
    // Our own loader refuses such material outright.
    let err = Material::from_pem(
        ca.cert_pem().as_bytes(),
        forged.cert_pem.as_bytes(),
        forged.key_pem.as_bytes(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("does not chain"), "{err}");

    let cfg = plain_client(
        &ca,
        &forged.cert_pem,
        &forged.key_pem,
        &[&rustls::version::TLS13],
    );
    let res = connect(cfg, addr, ServerName::try_from("localhost").unwrap()).await;
    assert!(res.is_err(), "client from another CA was accepted");
    match next_accept(&mut accepted).await {
        // Same CA name, different key: BadSignature; different name: UnknownIssuer.
        Accepted::Failed(e) => assert!(
            e.contains("UnknownIssuer") || e.contains("BadSignature"),
            "{e}"
        ),
        Accepted::Ok { .. } => panic!("server accepted a foreign client certificate"),
    }
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    install_provider();
    let ca = ca();
    let server = material(&ca, ca.cert_pem(), "polling");
    let (addr, mut accepted) = spawn_server(server_config(&server).unwrap()).await;

    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(pem_certs(ca.cert_pem()));
    let cfg = ClientConfig::builder_with_provider(tally_certs::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let res = connect(
        Arc::new(cfg),
        addr,
        ServerName::try_from("localhost").unwrap(),
    )
    .await;
    assert!(res.is_err());
    match next_accept(&mut accepted).await {
        Accepted::Failed(e) => assert!(
            e.contains("NoCertificatesPresented") || e.contains("certificate"),
            "{e}"
        ),
        Accepted::Ok { .. } => panic!("server accepted a client without a certificate"),
    }
}

#[tokio::test]
async fn expired_client_cert_is_refused() {
    install_provider();
    let ca = ca();
    let server = material(&ca, ca.cert_pem(), "polling");
    let (addr, mut accepted) = spawn_server(server_config(&server).unwrap()).await;

    let now = SystemTime::now();
    let expired = ca
        .issue_between(
            &id("user"),
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        )
        .unwrap();
    // Expired material still loads (the peer is the one to refuse it).
    let client = Material::from_pem(
        ca.cert_pem().as_bytes(),
        expired.cert_pem.as_bytes(),
        expired.key_pem.as_bytes(),
    )
    .unwrap();
    assert!(client.not_after() < now);
    assert_eq!(client.remaining(now), Duration::ZERO);

    let res = connect(
        client_config(&client).unwrap(),
        addr,
        server_name_for(&id("polling")),
    )
    .await;
    assert!(res.is_err(), "expired client certificate was accepted");
    match next_accept(&mut accepted).await {
        Accepted::Failed(e) => assert!(e.contains("expired"), "{e}"),
        Accepted::Ok { .. } => panic!("server accepted an expired client certificate"),
    }
}

#[tokio::test]
async fn expired_server_cert_is_refused_by_client() {
    install_provider();
    let ca = ca();
    let now = SystemTime::now();
    let expired = ca
        .issue_between(
            &id("polling"),
            now - Duration::from_secs(7200),
            now - Duration::from_secs(60),
        )
        .unwrap();
    let server = Material::from_pem(
        ca.cert_pem().as_bytes(),
        expired.cert_pem.as_bytes(),
        expired.key_pem.as_bytes(),
    )
    .unwrap();
    let (addr, _accepted) = spawn_server(server_config(&server).unwrap()).await;
    let client = material(&ca, ca.cert_pem(), "user");
    let err = connect(
        client_config(&client).unwrap(),
        addr,
        server_name_for(&id("polling")),
    )
    .await
    .err()
    .expect("client accepted an expired server certificate");
    let tls = rustls_error(&err).unwrap_or_else(|| panic!("not a TLS error: {err}"));
    assert!(
        matches!(
            tls,
            rustls::Error::InvalidCertificate(rustls::CertificateError::ExpiredContext { .. })
                | rustls::Error::InvalidCertificate(rustls::CertificateError::Expired)
        ),
        "{tls}"
    );
}

#[tokio::test]
async fn server_with_unexpected_identity_is_refused() {
    install_provider();
    let ca = ca();
    // A genuine mesh certificate, but for "billing", where the caller wants "polling".
    let server = material(&ca, ca.cert_pem(), "billing");
    let (addr, _accepted) = spawn_server(server_config(&server).unwrap()).await;
    let client = material(&ca, ca.cert_pem(), "user");

    let err = connect(
        client_config(&client).unwrap(),
        addr,
        server_name_for(&id("polling")),
    )
    .await
    .err()
    .expect("client accepted the wrong server identity");
    let msg = err.to_string();
    assert!(
        msg.contains("spiffe://tally.local/ns/default/sa/polling")
            && msg.contains("spiffe://tally.local/ns/default/sa/billing"),
        "error should name both ids: {msg}"
    );
    // Callers can get the structured error back.
    let Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) =
        rustls_error(&err)
    else {
        panic!("unexpected error shape: {err:?}");
    };
    let mismatch = other
        .0
        .downcast_ref::<IdentityMismatch>()
        .expect("IdentityMismatch inside");
    assert_eq!(mismatch.expected, id("polling"));
    assert_eq!(
        mismatch.presented,
        "spiffe://tally.local/ns/default/sa/billing"
    );

    // The same server is fine for a caller that expects "billing".
    connect(
        client_config(&client).unwrap(),
        addr,
        server_name_for(&id("billing")),
    )
    .await
    .expect("expected identity accepted");
}

#[tokio::test]
async fn client_refuses_a_server_name_that_is_not_a_mesh_name() {
    install_provider();
    let ca = ca();
    let server = material(&ca, ca.cert_pem(), "polling");
    let (addr, _accepted) = spawn_server(server_config(&server).unwrap()).await;
    let client = material(&ca, ca.cert_pem(), "user");
    // The certificate has a DNS SAN "localhost", but DNS names are not identities here.
    let err = connect(
        client_config(&client).unwrap(),
        addr,
        ServerName::try_from("localhost").unwrap(),
    )
    .await
    .err()
    .expect("a non-mesh server name was accepted");
    assert!(err.to_string().contains("not a mesh name"), "{err}");
}

#[tokio::test]
async fn server_cert_from_another_ca_is_refused_by_client() {
    install_provider();
    let ca = ca();
    let other_ca = ca_other();
    // The impostor's server trusts our CA for clients, but its own cert comes from elsewhere.
    let impostor_issued = other_ca
        .issue(&id("polling"), Duration::from_secs(3600))
        .unwrap();
    let bundle = join_bundle(&[ca.cert_pem(), other_ca.cert_pem()]).unwrap();
    let impostor = Material::from_pem(
        bundle.as_bytes(),
        impostor_issued.cert_pem.as_bytes(),
        impostor_issued.key_pem.as_bytes(),
    )
    .unwrap();
    let (addr, _accepted) = spawn_server(server_config(&impostor).unwrap()).await;
    let client = material(&ca, ca.cert_pem(), "user");
    let err = connect(
        client_config(&client).unwrap(),
        addr,
        server_name_for(&id("polling")),
    )
    .await
    .err()
    .expect("client accepted a server from another CA");
    assert!(
        matches!(
            rustls_error(&err),
            Some(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer | rustls::CertificateError::BadSignature
            ))
        ),
        "{err}"
    );
}

#[tokio::test]
async fn tls12_only_client_is_refused() {
    install_provider();
    let ca = ca();
    let server = material(&ca, ca.cert_pem(), "polling");
    let (addr, mut accepted) = spawn_server(server_config(&server).unwrap()).await;

    let issued = ca.issue(&id("user"), Duration::from_secs(3600)).unwrap();
    let cfg = plain_client(
        &ca,
        &issued.cert_pem,
        &issued.key_pem,
        &[&rustls::version::TLS12],
    );
    let err = connect(cfg, addr, ServerName::try_from("localhost").unwrap())
        .await
        .err()
        .expect("a TLS 1.2 client was accepted");
    eprintln!("client error: {err}");
    assert!(
        err.to_string().contains("ProtocolVersion"),
        "client should get a protocol_version alert: {err}"
    );
    match next_accept(&mut accepted).await {
        Accepted::Failed(e) => assert!(e.contains("Tls12NotOfferedOrEnabled"), "{e}"),
        Accepted::Ok { .. } => panic!("server accepted TLS 1.2"),
    }
}

#[tokio::test]
async fn bundle_with_old_and_new_roots_accepts_certs_from_both() {
    install_provider();
    let dir = tempfile::tempdir().unwrap();
    let old = CertAuthority::init(dir.path(), "tally.local", false).unwrap();
    let new = tally_certs::rotate_root(dir.path()).unwrap();
    assert_ne!(old.cert_pem(), new.cert_pem());
    let bundle = std::fs::read_to_string(dir.path().join("bundle.pem")).unwrap();
    assert_eq!(pem_certs(&bundle).len(), 2);
    // ca.pem is now the new root.
    let loaded = CertAuthority::load(dir.path()).unwrap();
    assert_eq!(loaded.cert_pem(), new.cert_pem());

    // Server still on a certificate from the old root, client already on the new one.
    let server = material(&old, &bundle, "polling");
    let client = material(&new, &bundle, "user");
    assert_eq!(server.root_count(), 2);
    let (addr, mut accepted) = spawn_server(server_config(&server).unwrap()).await;
    let conn = connect(
        client_config(&client).unwrap(),
        addr,
        server_name_for(&id("polling")),
    )
    .await
    .expect("old-root server and new-root client talk during rotation");
    assert_eq!(
        conn.greeting,
        "hello spiffe://tally.local/ns/default/sa/user"
    );
    assert!(matches!(
        next_accept(&mut accepted).await,
        Accepted::Ok { .. }
    ));

    // A workload that only has the new root refuses the old-root server.
    let new_only = material(&new, new.cert_pem(), "user");
    assert!(
        connect(
            client_config(&new_only).unwrap(),
            addr,
            server_name_for(&id("polling")),
        )
        .await
        .is_err()
    );
}

fn ca_other() -> CertAuthority {
    CertAuthority::generate("tally.local").unwrap()
}

fn pem_certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

/// A standard rustls client (webpki name checks against our root), not the mesh config.
fn plain_client(
    ca: &CertAuthority,
    cert_pem: &str,
    key_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(pem_certs(ca.cert_pem()));
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let cfg = ClientConfig::builder_with_provider(tally_certs::tls::provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(pem_certs(cert_pem), key)
        .unwrap();
    Arc::new(cfg)
}
