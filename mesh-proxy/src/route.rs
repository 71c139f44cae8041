//! Outbound routing: the app dials the target by name (`http://user`, `user:80`), so the
//! `:authority` host picks the per-service stack.

use crate::layer::Next;
use crate::{BoxService, ProxyError, Req, Rsp};
use std::collections::HashMap;

/// The target service name of a request: the host of `:authority` (or `Host`), without port.
pub(crate) fn service_name(req: &Req) -> Option<String> {
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

/// Innermost service of the outbound listener: picks the target service's stack.
pub(crate) struct Router {
    routes: HashMap<String, BoxService>,
}

impl Router {
    pub(crate) fn new(routes: HashMap<String, BoxService>) -> Self {
        Self { routes }
    }

    fn lookup(&self, host: &str) -> Option<&BoxService> {
        if let Some(s) = self.routes.get(host) {
            return Some(s);
        }
        // `user.tally.svc` → `user`
        let first = host.split('.').next()?;
        self.routes.get(first)
    }
}

impl Next for Router {
    type Error = ProxyError;

    async fn call(&self, req: Req) -> Result<Rsp, ProxyError> {
        let name = service_name(&req).unwrap_or_default();
        match self.lookup(&name) {
            Some(route) => route.call(req).await,
            None => Err(ProxyError::NoRoute(name)),
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
