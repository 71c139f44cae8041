//! SPIFFE identities of mesh workloads.
//!
//! Every workload in the mesh is named `spiffe://<trust-domain>/ns/<namespace>/sa/<service>`.
//! The identity is carried as the URI SAN of its certificate and is what authorization
//! decisions are made on. Namespace and service must be DNS labels, so that the identity
//! also maps to the DNS name `<service>.<namespace>.svc` used as the TLS server name.

use std::fmt;
use std::str::FromStr;

/// The trust domain used when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "tally.local";
/// The namespace used when none is given.
pub const DEFAULT_NAMESPACE: &str = "default";

const SCHEME: &str = "spiffe://";

/// A workload identity: `spiffe://<trust_domain>/ns/<namespace>/sa/<service>`.
///
/// Construct with [`SpiffeId::new`] or parse with [`str::parse`]; both validate, so every
/// value of this type is well formed.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service: String,
}

/// Why a SPIFFE id was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// The text does not start with `spiffe://`.
    #[error("{0:?} is not a SPIFFE id: it must start with \"spiffe://\"")]
    MissingScheme(String),
    /// The trust domain is empty or contains characters SPIFFE does not allow.
    #[error(
        "invalid trust domain {value:?}: {reason} (use lowercase letters, digits, '.', '-' and '_', e.g. \"tally.local\")"
    )]
    TrustDomain {
        /// The rejected trust domain.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The path is not `/ns/<namespace>/sa/<service>`.
    #[error("invalid SPIFFE id path {0:?}: expected \"/ns/<namespace>/sa/<service>\"")]
    Path(String),
    /// A namespace or service is not a DNS label.
    #[error(
        "invalid {field} {value:?}: {reason} (use 1-63 lowercase letters, digits and '-', not starting or ending with '-')"
    )]
    Label {
        /// `namespace` or `service`.
        field: &'static str,
        /// The rejected value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl SpiffeId {
    /// Builds an identity, validating each part.
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service: impl Into<String>,
    ) -> Result<Self, SpiffeIdError> {
        let trust_domain = trust_domain.into();
        let namespace = namespace.into();
        let service = service.into();
        validate_trust_domain(&trust_domain)?;
        validate_label("namespace", &namespace)?;
        validate_label("service", &service)?;
        Ok(Self {
            trust_domain,
            namespace,
            service,
        })
    }

    /// An identity in the default trust domain (`tally.local`).
    pub fn local(namespace: &str, service: &str) -> Result<Self, SpiffeIdError> {
        Self::new(DEFAULT_TRUST_DOMAIN, namespace, service)
    }

    /// The trust domain, e.g. `tally.local`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The namespace, e.g. `default`.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The service (SPIFFE "service account"), e.g. `polling`.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The DNS name this identity answers to as a TLS server: `<service>.<namespace>.svc`.
    pub fn dns_name(&self) -> String {
        format!("{}.{}.svc", self.service, self.namespace)
    }

    /// Maps a mesh DNS name (`<service>.<namespace>.svc`) back to an identity in `trust_domain`.
    ///
    /// Returns `None` for names that are not of that shape.
    pub fn from_dns_name(trust_domain: &str, name: &str) -> Option<Self> {
        let rest = name.strip_suffix(".svc")?;
        let (service, namespace) = rest.split_once('.')?;
        Self::new(trust_domain, namespace, service).ok()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SCHEME}{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service
        )
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({self})")
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix(SCHEME)
            .ok_or_else(|| SpiffeIdError::MissingScheme(s.to_owned()))?;
        let (trust_domain, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        validate_trust_domain(trust_domain)?;
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["", "ns", namespace, "sa", service] => Self::new(trust_domain, *namespace, *service),
            _ => Err(SpiffeIdError::Path(path.to_owned())),
        }
    }
}

fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    let err = |reason| {
        Err(SpiffeIdError::TrustDomain {
            value: td.to_owned(),
            reason,
        })
    };
    if td.is_empty() {
        return err("it is empty");
    }
    if td.len() > 255 {
        return err("it is longer than 255 characters");
    }
    if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return err("it contains a character that is not allowed");
    }
    Ok(())
}

fn validate_label(field: &'static str, value: &str) -> Result<(), SpiffeIdError> {
    let err = |reason| {
        Err(SpiffeIdError::Label {
            field,
            value: value.to_owned(),
            reason,
        })
    };
    if value.is_empty() {
        return err("it is empty");
    }
    if value.len() > 63 {
        return err("it is longer than 63 characters");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return err("it contains a character that is not allowed");
    }
    if value.starts_with('-') || value.ends_with('-') {
        return err("it starts or ends with '-'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let id = SpiffeId::local("default", "polling").unwrap();
        assert_eq!(id.to_string(), "spiffe://tally.local/ns/default/sa/polling");
        let back: SpiffeId = id.to_string().parse().unwrap();
        assert_eq!(back, id);
        assert_eq!(back.trust_domain(), "tally.local");
        assert_eq!(back.namespace(), "default");
        assert_eq!(back.service(), "polling");
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let e = "http://tally.local/ns/a/sa/b"
            .parse::<SpiffeId>()
            .unwrap_err();
        assert!(matches!(e, SpiffeIdError::MissingScheme(_)));
        assert!(e.to_string().contains("spiffe://"));

        let e = "spiffe:///ns/a/sa/b".parse::<SpiffeId>().unwrap_err();
        assert!(matches!(e, SpiffeIdError::TrustDomain { .. }), "{e}");

        let e = "spiffe://Tally.local/ns/a/sa/b"
            .parse::<SpiffeId>()
            .unwrap_err();
        assert!(matches!(e, SpiffeIdError::TrustDomain { .. }), "{e}");

        for bad_path in [
            "spiffe://tally.local",
            "spiffe://tally.local/",
            "spiffe://tally.local/ns/a",
            "spiffe://tally.local/ns/a/sa/b/extra",
            "spiffe://tally.local/sa/b/ns/a",
            "spiffe://tally.local/ns/a/sa/b/",
        ] {
            let e = bad_path.parse::<SpiffeId>().unwrap_err();
            assert!(matches!(e, SpiffeIdError::Path(_)), "{bad_path}: {e}");
            assert!(e.to_string().contains("/ns/<namespace>/sa/<service>"));
        }

        let e = "spiffe://tally.local/ns/a/sa/Polling"
            .parse::<SpiffeId>()
            .unwrap_err();
        assert!(
            matches!(
                e,
                SpiffeIdError::Label {
                    field: "service",
                    ..
                }
            ),
            "{e}"
        );
        let e = "spiffe://tally.local/ns//sa/b"
            .parse::<SpiffeId>()
            .unwrap_err();
        assert!(
            matches!(
                e,
                SpiffeIdError::Label {
                    field: "namespace",
                    ..
                }
            ),
            "{e}"
        );
        let e = "spiffe://tally.local/ns/-a/sa/b"
            .parse::<SpiffeId>()
            .unwrap_err();
        assert!(e.to_string().contains("'-'"), "{e}");
        let long = "a".repeat(64);
        assert!(SpiffeId::local("default", &long).is_err());
        assert!(SpiffeId::local("default", &"a".repeat(63)).is_ok());
    }

    #[test]
    fn dns_name_maps_back_to_the_identity() {
        let id = SpiffeId::new("example.org", "prod", "user").unwrap();
        assert_eq!(id.dns_name(), "user.prod.svc");
        assert_eq!(
            SpiffeId::from_dns_name("example.org", &id.dns_name()),
            Some(id)
        );
        assert_eq!(SpiffeId::from_dns_name("tally.local", "localhost"), None);
        assert_eq!(SpiffeId::from_dns_name("tally.local", "a.b.c.svc"), None);
        assert_eq!(SpiffeId::from_dns_name("tally.local", "user.svc"), None);
    }
}
