//! Outbound routing: the app dials the target by name (`http://user`, `user:80`), so the
//! `:authority` host picks the per-service stack.

use crate::{BoxFuture, BoxService, ProxyError, Req, Rsp};
use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Service, ServiceExt};

/// The target service name of a request: the host of `:authority` (or `Host`), without port.
pub fn service_name(req: &Req) -> Option<String> {
    let authority = match req.uri().authority() {
        Some(a) => a.as_str().to_string(),
        None => req
            .headers()
            .get(http::header::HOST)?
            .to_str()
            .ok()?
            .to_string(),
    };
    host_of(&authority).map(str::to_ascii_lowercase)
}

/// `user:80` → `user`; `[::1]:80` → `::1`. `None` when empty.
pub fn host_of(authority: &str) -> Option<&str> {
    let a = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(rest) = a.strip_prefix('[') {
        rest.split_once(']').map(|(h, _)| h)?
    } else {
        a.split_once(':').map_or(a, |(h, _)| h)
    };
    (!host.is_empty()).then_some(host)
}

#[derive(Clone)]
pub struct Router {
    routes: Arc<HashMap<String, BoxService>>,
}

impl Router {
    pub fn new(routes: HashMap<String, BoxService>) -> Self {
        Self {
            routes: Arc::new(routes),
        }
    }

    fn lookup(&self, host: &str) -> Option<BoxService> {
        if let Some(s) = self.routes.get(host) {
            return Some(s.clone());
        }
        // `user.tally.svc` → `user`
        let first = host.split('.').next()?;
        self.routes.get(first).cloned()
    }
}

impl Service<Req> for Router {
    type Response = Rsp;
    type Error = ProxyError;
    type Future = BoxFuture<Result<Rsp, ProxyError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let name = service_name(&req).unwrap_or_default();
        match self.lookup(&name) {
            Some(svc) => Box::pin(svc.oneshot(req)),
            None => Box::pin(async move { Err(ProxyError::NoRoute(name)) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(host_of("user"), Some("user"));
        assert_eq!(host_of("user:80"), Some("user"));
        assert_eq!(host_of("[::1]:80"), Some("::1"));
        assert_eq!(host_of(""), None);
        assert_eq!(host_of(":80"), None);
    }
}
