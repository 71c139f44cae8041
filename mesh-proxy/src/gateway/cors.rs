//! CORS for browser callers: preflight `OPTIONS` answered here, and the allow/expose headers
//! added to every response for an allowed origin. Kept apart from the gRPC-Web translation,
//! as Envoy keeps its `cors` filter apart from `grpc_web`.

use super::config::CorsConfig;
use crate::Rsp;
use crate::body;
use http::{HeaderMap, HeaderValue, StatusCode, header};

#[derive(Clone)]
pub struct Cors {
    any_origin: bool,
    origins: Vec<String>,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    max_age: HeaderValue,
}

fn joined(list: &[String]) -> Option<HeaderValue> {
    HeaderValue::from_str(&list.join(", ")).ok()
}

impl Cors {
    pub fn new(cfg: &CorsConfig) -> Self {
        Self {
            any_origin: cfg.allowed_origins.iter().any(|o| o == "*"),
            origins: cfg.allowed_origins.clone(),
            allow_headers: joined(&cfg.allow_headers),
            expose_headers: joined(&cfg.expose_headers),
            max_age: HeaderValue::from(cfg.max_age_s),
        }
    }

    /// The request's `Origin` when it is allowed.
    fn allowed<'a>(&self, req: &'a HeaderMap) -> Option<&'a HeaderValue> {
        let origin = req.get(header::ORIGIN)?;
        let s = origin.to_str().ok()?;
        (self.any_origin || self.origins.iter().any(|o| o.eq_ignore_ascii_case(s)))
            .then_some(origin)
    }

    /// True for a CORS preflight (`OPTIONS` with `Access-Control-Request-Method`).
    pub fn is_preflight(method: &http::Method, headers: &HeaderMap) -> bool {
        method == http::Method::OPTIONS
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// Answers a preflight: 204 with the allow headers, or 403 for an origin not allowed.
    pub fn preflight(&self, req: &HeaderMap) -> Rsp {
        let mut rsp = Rsp::new(body::empty());
        let Some(origin) = self.allowed(req) else {
            *rsp.status_mut() = StatusCode::FORBIDDEN;
            return rsp;
        };
        *rsp.status_mut() = StatusCode::NO_CONTENT;
        let h = rsp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("POST, OPTIONS"),
        );
        if let Some(v) = &self.allow_headers {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
        }
        if let Some(v) = &self.expose_headers {
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
        h.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        h.insert(header::VARY, HeaderValue::from_static("origin"));
        rsp
    }

    /// Adds the CORS headers to an actual response when the origin is allowed.
    pub fn decorate(&self, origin: Option<&HeaderValue>, rsp: &mut Rsp) {
        let Some(origin) = origin else { return };
        let mut probe = HeaderMap::new();
        probe.insert(header::ORIGIN, origin.clone());
        let Some(origin) = self.allowed(&probe).cloned() else {
            return;
        };
        let h = rsp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        if let Some(v) = &self.expose_headers {
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
        h.append(header::VARY, HeaderValue::from_static("origin"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(origin: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, HeaderValue::from_static(origin));
        h.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static("POST"),
        );
        h
    }

    #[test]
    fn preflight_allows_listed_origin_only() {
        let cors = Cors::new(&CorsConfig {
            allowed_origins: vec!["https://app.example".into()],
            ..Default::default()
        });
        let ok = cors.preflight(&req("https://app.example"));
        assert_eq!(ok.status(), StatusCode::NO_CONTENT);
        let allow = ok.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS]
            .to_str()
            .unwrap();
        for h in [
            "x-grpc-web",
            "x-user-agent",
            "authorization",
            "content-type",
            "grpc-timeout",
        ] {
            assert!(allow.contains(h), "{allow}");
        }
        let no = cors.preflight(&req("https://evil.example"));
        assert_eq!(no.status(), StatusCode::FORBIDDEN);
        assert!(
            !no.headers()
                .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        );
    }
}
