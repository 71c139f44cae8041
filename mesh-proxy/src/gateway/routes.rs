//! Which service answers a gRPC path, and whether it needs credentials: the longest
//! configured prefix (`pkg`, `pkg.Service` or `pkg.Service/Method`) of `pkg.Service/Method`.

use super::config::{Access, RouteConfig};
use crate::grpc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub prefix: String,
    /// The `[services.<name>]` the call goes to through the outbound stack.
    pub service: String,
    pub access: Access,
}

#[derive(Debug, Clone)]
pub struct RouteTable {
    /// Longest prefix first.
    routes: Vec<Route>,
}

/// True when `prefix` covers `name` at a name boundary (`tally.poll` does not cover `tally.polling`).
fn covers(prefix: &str, name: &str) -> bool {
    match name.strip_prefix(prefix) {
        Some("") => true,
        Some(rest) => rest.starts_with('.') || rest.starts_with('/'),
        None => false,
    }
}

impl RouteTable {
    pub fn new(cfg: &[RouteConfig]) -> Self {
        let mut routes: Vec<Route> = cfg
            .iter()
            .map(|r| Route {
                prefix: r.prefix.clone(),
                service: r.service.clone(),
                access: r.access,
            })
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Self { routes }
    }

    /// The route of a `/pkg.Service/Method` path, if any.
    pub fn lookup(&self, path: &str) -> Option<&Route> {
        let (svc, method) = grpc::split_path(path)?;
        let name = format!("{svc}/{method}");
        self.routes.iter().find(|r| covers(&r.prefix, &name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        let r = |prefix: &str, service: &str, access| RouteConfig {
            prefix: prefix.into(),
            service: service.into(),
            access,
        };
        RouteTable::new(&[
            r("tally.poll.v1", "polling", Access::Authenticated),
            r("tally.user.v1", "user", Access::Authenticated),
            r("tally.user.v1.UserService/Login", "user", Access::Public),
        ])
    }

    #[test]
    fn longest_prefix_at_name_boundaries() {
        let t = table();
        let poll = t.lookup("/tally.poll.v1.PollService/CreatePoll").unwrap();
        assert_eq!(poll.service, "polling");
        let login = t.lookup("/tally.user.v1.UserService/Login").unwrap();
        assert_eq!(login.access, Access::Public);
        let other = t.lookup("/tally.user.v1.UserService/LoginX").unwrap();
        assert_eq!(other.access, Access::Authenticated);
        assert!(t.lookup("/tally.polling.v1.X/Y").is_none());
        assert!(t.lookup("/nope.Service/M").is_none());
        assert!(t.lookup("/bad").is_none());
    }
}
