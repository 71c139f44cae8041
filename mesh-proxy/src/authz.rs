//! Inbound authorization: per gRPC service (and optionally method) allow-lists of caller
//! SPIFFE ids. Once any rule exists, calls no rule allows are denied (PERMISSION_DENIED),
//! logged with the caller's identity, counted and audited (allows are sampled).

use crate::config::AuthzRule;
use crate::layer::{Layer, Next};
use crate::metrics::{DenyLabels, Metrics, OTHER};
use crate::{PeerId, ProxyError, Req, Rsp, grpc};
use std::sync::Arc;

/// The inbound allow-lists: which caller identities may call which gRPC methods.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: Vec<AuthzRule>,
}

impl Policy {
    /// A policy from `[[inbound.authz]]` rules; no rules means every caller is allowed.
    pub fn new(rules: Vec<AuthzRule>) -> Self {
        Self { rules }
    }

    /// The most specific matching rules decide: method rules, then service rules, then `*`.
    pub fn check(&self, path: &str, caller: Option<&str>) -> Result<(), ProxyError> {
        if self.rules.is_empty() {
            return Ok(());
        }
        let (svc, method) = grpc::split_path(path).unwrap_or(("", ""));
        let tiers: [&dyn Fn(&AuthzRule) -> bool; 3] = [
            &|r| r.service == svc && r.method.as_deref() == Some(method),
            &|r| r.service == svc && r.method.is_none(),
            &|r| r.service == "*",
        ];
        let deny = || ProxyError::Denied {
            caller: caller.unwrap_or("anonymous").to_string(),
            path: path.to_string(),
        };
        for tier in tiers {
            let matching: Vec<&AuthzRule> = self.rules.iter().filter(|r| tier(r)).collect();
            if matching.is_empty() {
                continue;
            }
            let Some(caller) = caller else {
                return Err(ProxyError::Unauthenticated(path.to_string()));
            };
            let allowed = matching
                .iter()
                .any(|r| r.allow.iter().any(|a| a == "*" || a == caller));
            return if allowed { Ok(()) } else { Err(deny()) };
        }
        Err(deny())
    }
}

pub(crate) struct AuthzLayer {
    policy: Policy,
    metrics: Arc<Metrics>,
}

impl AuthzLayer {
    pub(crate) fn new(policy: Policy, metrics: Arc<Metrics>) -> Self {
        Self { policy, metrics }
    }
}

impl<N: Next<Error = ProxyError>> Layer<N> for AuthzLayer {
    type Error = ProxyError;

    async fn handle(&self, req: Req, next: &N) -> Result<Rsp, ProxyError> {
        let caller = req
            .extensions()
            .get::<PeerId>()
            .and_then(|p| p.0.as_deref());
        let path = req.uri().path();
        if let Err(e) = self.policy.check(path, caller) {
            let caller = caller.unwrap_or("anonymous").to_string();
            tracing::warn!(caller = %caller, path = %path, reason = e.reason(), "inbound call denied");
            // Labels from the configured sets only: a caller choosing paths adds no series.
            let labels = &self.metrics.labels;
            let route = grpc::split_path(path)
                .map_or_else(|| OTHER.to_string(), |(s, _)| labels.inbound.get(s));
            let caller = match caller.as_str() {
                "anonymous" => caller,
                id => labels.callers.get(id),
            };
            self.metrics
                .authz_denied
                .get_or_create(&DenyLabels { route, caller })
                .inc();
            let who = req
                .extensions()
                .get::<PeerId>()
                .and_then(|p| p.0.clone())
                .unwrap_or_else(|| "anonymous".into());
            crate::audit::record(
                crate::audit::Event::new(who, "authz.deny", path, "denied").with_detail(e.reason()),
            );
            return Err(e);
        }
        if crate::audit::sample_allow() {
            crate::audit::record(crate::audit::Event::new(
                caller.unwrap_or("anonymous"),
                "authz.allow",
                path,
                "allowed",
            ));
        }
        next.call(req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(service: &str, method: Option<&str>, allow: &[&str]) -> AuthzRule {
        AuthzRule {
            service: service.into(),
            method: method.map(Into::into),
            allow: allow.iter().map(|s| s.to_string()).collect(),
        }
    }

    const A: &str = "spiffe://tally.local/ns/t/sa/a";
    const B: &str = "spiffe://tally.local/ns/t/sa/b";

    #[test]
    fn no_rules_allows_everyone() {
        assert!(Policy::default().check("/x.Y/Z", None).is_ok());
    }

    #[test]
    fn default_deny_and_specificity() {
        let p = Policy::new(vec![
            rule("u.User", None, &[A, B]),
            rule("u.User", Some("Secret"), &[A]),
        ]);
        assert!(p.check("/u.User/Get", Some(B)).is_ok());
        assert!(p.check("/u.User/Secret", Some(A)).is_ok());
        assert!(matches!(
            p.check("/u.User/Secret", Some(B)),
            Err(ProxyError::Denied { .. })
        ));
        assert!(matches!(
            p.check("/other.Svc/Get", Some(A)),
            Err(ProxyError::Denied { .. })
        ));
        assert!(matches!(
            p.check("/u.User/Get", None),
            Err(ProxyError::Unauthenticated(_))
        ));
    }

    #[test]
    fn wildcard_service_and_caller() {
        let p = Policy::new(vec![rule("*", None, &["*"])]);
        assert!(p.check("/a.B/C", Some(A)).is_ok());
        assert!(p.check("/a.B/C", None).is_err());
    }
}
