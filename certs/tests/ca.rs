//! The CA directory: create, save, load, issue, write workload files.

use std::time::{Duration, SystemTime};

use tally_certs::ca::{BUNDLE_FILE, CA_CERT_FILE, CA_KEY_FILE, CLOCK_SKEW_ALLOWANCE};
use tally_certs::tls::{IdentityPaths, Material};
use tally_certs::{CertAuthority, CertError, SpiffeId, inspect_pem, write_workload};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

fn id(service: &str) -> SpiffeId {
    SpiffeId::local("default", service).unwrap()
}

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_writes_files_with_safe_modes_and_load_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("mesh-ca");
    let ca = CertAuthority::init(&ca_dir, "example.org", false).unwrap();
    for f in [CA_CERT_FILE, CA_KEY_FILE, BUNDLE_FILE] {
        assert!(ca_dir.join(f).is_file(), "{f} missing");
    }
    #[cfg(unix)]
    {
        assert_eq!(mode(&ca_dir.join(CA_KEY_FILE)), 0o600);
        assert_eq!(mode(&ca_dir.join(CA_CERT_FILE)), 0o644);
    }
    assert_eq!(
        std::fs::read_to_string(ca_dir.join(BUNDLE_FILE)).unwrap(),
        ca.cert_pem()
    );

    let loaded = CertAuthority::load(&ca_dir).unwrap();
    assert_eq!(loaded.trust_domain(), "example.org");
    assert_eq!(loaded.cert_pem(), ca.cert_pem());

    // The loaded CA issues certificates that chain to the saved root.
    let issued = loaded
        .issue(
            &SpiffeId::new("example.org", "default", "user").unwrap(),
            Duration::from_secs(600),
        )
        .unwrap();
    let m = Material::from_pem(
        ca.cert_pem().as_bytes(),
        issued.cert_pem.as_bytes(),
        issued.key_pem.as_bytes(),
    )
    .unwrap();
    assert_eq!(m.identity().trust_domain(), "example.org");

    // A second init does not overwrite the CA unless forced.
    let err = CertAuthority::init(&ca_dir, "example.org", false).unwrap_err();
    assert!(matches!(err, CertError::CaExists(_)), "{err}");
    assert_eq!(
        CertAuthority::load(&ca_dir).unwrap().cert_pem(),
        ca.cert_pem()
    );
    let replaced = CertAuthority::init(&ca_dir, "example.org", true).unwrap();
    assert_ne!(replaced.cert_pem(), ca.cert_pem());
}

#[test]
fn load_refuses_a_key_that_does_not_belong_to_the_certificate() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    CertAuthority::init(a.path(), "tally.local", false).unwrap();
    CertAuthority::init(b.path(), "tally.local", false).unwrap();
    std::fs::copy(b.path().join(CA_KEY_FILE), a.path().join(CA_KEY_FILE)).unwrap();
    let err = CertAuthority::load(a.path()).unwrap_err();
    assert!(err.to_string().contains("does not belong"), "{err}");

    let missing = tempfile::tempdir().unwrap();
    let err = CertAuthority::load(missing.path()).unwrap_err();
    assert!(err.to_string().contains(CA_CERT_FILE), "{err}");
}

#[test]
fn issued_cert_has_spiffe_and_dns_sans_both_ekus_and_the_asked_validity() {
    let ca = CertAuthority::generate("tally.local").unwrap();
    let before = SystemTime::now();
    let issued = ca
        .issue(&id("polling"), Duration::from_secs(15 * 60))
        .unwrap();
    assert_eq!(
        issued.not_after.duration_since(issued.not_before).unwrap(),
        Duration::from_secs(15 * 60) + CLOCK_SKEW_ALLOWANCE
    );
    assert!(issued.not_before <= before);
    assert!(issued.not_after > before + Duration::from_secs(14 * 60));

    let der = &inspect_der(&issued.cert_pem);
    let (_, cert) = X509Certificate::from_der(der).unwrap();
    assert!(!cert.is_ca());
    let mut uris = Vec::new();
    let mut dns = Vec::new();
    let mut eku_server = false;
    let mut eku_client = false;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for n in &san.general_names {
                    match n {
                        GeneralName::URI(u) => uris.push(u.to_string()),
                        GeneralName::DNSName(d) => dns.push(d.to_string()),
                        _ => {}
                    }
                }
            }
            ParsedExtension::ExtendedKeyUsage(eku) => {
                eku_server = eku.server_auth;
                eku_client = eku.client_auth;
            }
            _ => {}
        }
    }
    assert_eq!(uris, ["spiffe://tally.local/ns/default/sa/polling"]);
    assert_eq!(dns, ["localhost", "polling.default.svc"]);
    assert!(eku_server && eku_client);

    let summary = &inspect_pem(issued.cert_pem.as_bytes()).unwrap()[0];
    assert_eq!(summary.spiffe_id, Some(id("polling")));
    assert_eq!(summary.not_after, issued.not_after);

    // Each issue makes a fresh key and serial.
    let again = ca.issue(&id("polling"), Duration::from_secs(900)).unwrap();
    assert_ne!(again.key_pem, issued.key_pem);
    assert_ne!(again.cert_pem, issued.cert_pem);
}

#[test]
fn write_workload_replaces_files_atomically_with_safe_modes() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertAuthority::init(dir.path(), "tally.local", false).unwrap();
    let first = ca.issue(&id("user"), Duration::from_secs(3600)).unwrap();
    let paths = write_workload(dir.path(), &id("user"), &first).unwrap();
    assert_eq!(paths, IdentityPaths::for_workload(dir.path(), &id("user")));
    assert_eq!(paths.cert, dir.path().join("user.pem"));
    assert_eq!(paths.key, dir.path().join("user-key.pem"));
    assert_eq!(paths.bundle, dir.path().join("bundle.pem"));
    #[cfg(unix)]
    {
        assert_eq!(mode(&paths.key), 0o600);
        assert_eq!(mode(&paths.cert), 0o644);
    }
    let m1 = Material::load(&paths).unwrap();
    assert_eq!(m1.identity(), &id("user"));

    // Rewriting goes through rename: the old inode is replaced, not truncated in place.
    #[cfg(unix)]
    let inode_before = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&paths.cert).unwrap().ino()
    };
    let second = ca.issue(&id("user"), Duration::from_secs(7200)).unwrap();
    write_workload(dir.path(), &id("user"), &second).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        assert_ne!(std::fs::metadata(&paths.cert).unwrap().ino(), inode_before);
    }
    assert_eq!(
        std::fs::read_to_string(&paths.cert).unwrap(),
        second.cert_pem
    );
    let m2 = Material::load(&paths).unwrap();
    assert_eq!(m2.not_after(), second.not_after);

    // No temporary files are left behind.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "bundle.pem",
            "ca-key.pem",
            "ca.pem",
            "user-key.pem",
            "user.pem"
        ]
    );

    // Service names that would overwrite CA files are refused.
    let err = write_workload(dir.path(), &id("ca"), &second).unwrap_err();
    assert!(matches!(err, CertError::ReservedName(_)), "{err}");
}

#[test]
fn material_refuses_mismatched_or_broken_files() {
    let ca = CertAuthority::generate("tally.local").unwrap();
    let a = ca.issue(&id("user"), Duration::from_secs(3600)).unwrap();
    let b = ca.issue(&id("user"), Duration::from_secs(3600)).unwrap();
    let bundle = ca.cert_pem().as_bytes();

    let err = Material::from_pem(bundle, a.cert_pem.as_bytes(), b.key_pem.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("does not fit"), "{err}");

    let half = &a.cert_pem.as_bytes()[..a.cert_pem.len() / 2];
    assert!(Material::from_pem(bundle, half, a.key_pem.as_bytes()).is_err());
    assert!(Material::from_pem(bundle, b"", a.key_pem.as_bytes()).is_err());
    assert!(Material::from_pem(b"", a.cert_pem.as_bytes(), a.key_pem.as_bytes()).is_err());

    // A certificate without a SPIFFE id (here: the CA itself) is not a workload identity.
    let err = Material::from_pem(bundle, bundle, a.key_pem.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("SPIFFE"), "{err}");
}

fn inspect_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}
