//! Inbound authorization: per gRPC service (and optionally method) allow-lists of caller
//! SPIFFE ids. Once any rule exists, calls no rule allows are denied (PERMISSION_DENIED),
//! logged with the caller's identity and counted.

use crate::config::AuthzRule;
use crate::metrics::{DenyLabels, Metrics, OTHER};
use crate::{BoxFuture, PeerId, ProxyError, Req, Rsp, grpc};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service, ServiceExt};

#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: Vec<AuthzRule>,
}

impl Policy {
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

#[derive(Clone)]
pub struct AuthzLayer {
    policy: Arc<Policy>,
    metrics: Arc<Metrics>,
}

impl AuthzLayer {
    pub fn new(policy: Policy, metrics: Arc<Metrics>) -> Self {
        Self {
            policy: Arc::new(policy),
            metrics,
        }
    }
}

impl<S> Layer<S> for AuthzLayer {
    type Service = Authz<S>;
    fn layer(&self, inner: S) -> Authz<S> {
        Authz {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authz<S> {
    inner: S,
    layer: AuthzLayer,
}

impl<S> Service<Req> for Authz<S>
where
    S: Service<Req, Response = Rsp, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Rsp;
    type Error = ProxyError;
    type Future = BoxFuture<Result<Rsp, ProxyError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let caller = req.extensions().get::<PeerId>().and_then(|p| p.0.clone());
        let path = req.uri().path().to_string();
        if let Err(e) = self.layer.policy.check(&path, caller.as_deref()) {
            let caller = caller.unwrap_or_else(|| "anonymous".into());
            tracing::warn!(caller = %caller, path = %path, reason = e.reason(), "inbound call denied");
            // Labels from the configured sets only: a caller choosing paths adds no series.
            let labels = &self.layer.metrics.labels;
            let route = grpc::split_path(&path)
                .map_or_else(|| OTHER.to_string(), |(s, _)| labels.inbound.get(s));
            let caller = match caller.as_str() {
                "anonymous" => caller,
                id => labels.callers.get(id),
            };
            self.layer
                .metrics
                .authz_denied
                .get_or_create(&DenyLabels { route, caller })
                .inc();
            return Box::pin(async move { Err(e) });
        }
        Box::pin(self.inner.clone().oneshot(req))
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
