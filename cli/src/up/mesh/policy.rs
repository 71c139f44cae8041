//! The mesh's authorization policy as data ([`POLICY`]): which callers each
//! service's inbound sidecar lets through to which gRPC service, turned into
//! `tally-proxy` authz rules and into the lines `tally up` prints.

use super::spiffe_id;
use tally_proxy::config::AuthzRule;

/// One entry of the authorization policy: which callers the `target`'s
/// inbound sidecar lets through to `grpc_service` (all methods when
/// `methods` is empty).
#[derive(Debug, Clone, Copy)]
pub struct Grant {
    pub target: &'static str,
    pub grpc_service: &'static str,
    pub methods: &'static [&'static str],
    pub callers: &'static [&'static str],
}

/// The authorization policy of the inbound sidecars. A call no grant allows
/// is denied with PERMISSION_DENIED; a sidecar whose service has no grant
/// denies every call (its service is reached by operators and clients on its
/// own port, not through the mesh). Health, reflection and
/// `ConsumerAdminService` are operator tools: they are on the service's own
/// port, not on the mesh, except the one health check billing makes.
pub const POLICY: &[Grant] = &[
    // Token verification: the JWKS and API-key lookups, nothing else. The
    // gateway verifies tokens and API keys at the edge too. (A method rule is
    // more specific than the gateway's service-wide grant below, so the
    // gateway must be named here.)
    Grant {
        target: "user",
        grpc_service: "tally.user.v1.UserService",
        methods: &["GetJwks"],
        callers: &["polling", "notification", "analytics", "billing", "gateway"],
    },
    Grant {
        target: "user",
        grpc_service: "tally.user.v1.UserService",
        methods: &["VerifyApiKey"],
        callers: &["polling", "notification", "analytics", "billing", "gateway"],
    },
    // Polling's event feed: its two consumers.
    Grant {
        target: "polling",
        grpc_service: "tally.events.v1.EventFeedService",
        methods: &[],
        callers: &["notification", "analytics"],
    },
    // Billing's event feed (PlanLimitsGranted): polling.
    Grant {
        target: "billing",
        grpc_service: "tally.events.v1.EventFeedService",
        methods: &[],
        callers: &["polling"],
    },
    // Payments: only billing's saga.
    Grant {
        target: "payment",
        grpc_service: "tally.payment.v1.PaymentService",
        methods: &[],
        callers: &["billing"],
    },
    // The browser gateway: the public API of each service it routes to.
    Grant {
        target: "user",
        grpc_service: "tally.user.v1.UserService",
        methods: &[],
        callers: &["gateway"],
    },
    Grant {
        target: "polling",
        grpc_service: "tally.poll.v1.PollService",
        methods: &[],
        callers: &["gateway"],
    },
    Grant {
        target: "notification",
        grpc_service: "tally.notification.v1.NotificationService",
        methods: &[],
        callers: &["gateway"],
    },
    Grant {
        target: "analytics",
        grpc_service: "tally.analytics.v1.AnalyticsService",
        methods: &[],
        callers: &["gateway"],
    },
    Grant {
        target: "billing",
        grpc_service: "tally.billing.v1.BillingService",
        methods: &[],
        callers: &["gateway"],
    },
    // Billing's health depends on payment's, checked through the mesh.
    Grant {
        target: "payment",
        grpc_service: "grpc.health.v1.Health",
        methods: &["Check"],
        callers: &["billing"],
    },
];

/// The inbound authorization rules of `target`'s sidecar, from [`POLICY`].
pub fn authz_rules(target: &str) -> Vec<AuthzRule> {
    authz_rules_without(target, &[])
}

/// [`authz_rules`] as if the `absent` callers did not exist (their grants
/// dropped), e.g. for a deployment without the gateway.
pub fn authz_rules_without(target: &str, absent: &[&str]) -> Vec<AuthzRule> {
    let mut rules = Vec::new();
    for g in POLICY.iter().filter(|g| g.target == target) {
        let allow: Vec<String> = g
            .callers
            .iter()
            .filter(|c| !absent.contains(c))
            .map(|c| spiffe_id(c))
            .collect();
        if allow.is_empty() {
            continue;
        }
        if g.methods.is_empty() {
            rules.push(AuthzRule {
                service: g.grpc_service.into(),
                method: None,
                allow,
            });
        } else {
            for m in g.methods {
                rules.push(AuthzRule {
                    service: g.grpc_service.into(),
                    method: Some((*m).into()),
                    allow: allow.clone(),
                });
            }
        }
    }
    if rules.is_empty() {
        // A rule that allows nobody: with any rule present the proxy denies
        // whatever is not allowed, so this sidecar lets nothing through.
        rules.push(AuthzRule {
            service: "*".into(),
            method: None,
            allow: Vec::new(),
        });
    }
    rules
}
/// The policy in words, one line per service with a sidecar, for the
/// summary `tally up` prints.
pub fn policy_lines(services: &[&str]) -> Vec<String> {
    services
        .iter()
        .map(|target| {
            let grants: Vec<String> = POLICY
                .iter()
                .filter(|g| g.target == *target)
                .map(|g| {
                    let short = g.grpc_service.rsplit('.').next().unwrap_or(g.grpc_service);
                    let what = if g.methods.is_empty() {
                        short.to_string()
                    } else {
                        format!("{short}/{}", g.methods.join(","))
                    };
                    format!("{what} <- {}", g.callers.join(", "))
                })
                .collect();
            if grants.is_empty() {
                format!("{target}: no caller through the mesh")
            } else {
                format!("{target}: {}", grants.join("; "))
            }
        })
        .collect()
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::up::mesh::gateway::GATEWAY_TARGETS;
    use crate::up::mesh::test_plan::{plan, proxy};
    use crate::up::platform::platform;

    #[test]
    fn policy_lets_each_caller_reach_exactly_what_it_calls() {
        // Every outbound edge of the platform has a grant, and every grant's
        // caller really calls the target.
        let p = platform();
        for s in &p.services {
            for target in s.outbound {
                assert!(
                    POLICY
                        .iter()
                        .any(|g| g.target == *target && g.callers.contains(&s.name)),
                    "{} calls {target} but the policy lets it reach nothing there",
                    s.name
                );
            }
        }
        for g in POLICY {
            for c in g.callers {
                let caller = p
                    .services
                    .iter()
                    .find(|s| s.name == *c)
                    .unwrap_or_else(|| panic!("unknown caller {c}"));
                assert!(caller.outbound.contains(&g.target), "{c} -> {}", g.target);
            }
        }
        // User: token verification from the four verifiers, and its public
        // API from the gateway.
        let rules = authz_rules("user");
        assert_eq!(rules.len(), 3);
        assert_eq!(rules[0].method.as_deref(), Some("GetJwks"));
        assert_eq!(rules[0].allow.len(), 5);
        assert!(!rules[0].allow.contains(&spiffe_id("payment")));
        assert!(rules[0].allow.contains(&spiffe_id("gateway")));
        assert_eq!(rules[1].method.as_deref(), Some("VerifyApiKey"));
        assert!(rules[1].allow.contains(&spiffe_id("gateway")));
        assert!(!rules[1].allow.contains(&spiffe_id("payment")));
        assert_eq!(
            rules[2],
            AuthzRule {
                service: "tally.user.v1.UserService".into(),
                method: None,
                allow: vec![spiffe_id("gateway")]
            }
        );
        // The gateway reaches the public APIs only: never payment, never a
        // feed or an admin service.
        for g in POLICY.iter().filter(|g| g.callers.contains(&"gateway")) {
            assert!(
                GATEWAY_TARGETS.contains(&(g.target, g.grpc_service)),
                "{} {}",
                g.target,
                g.grpc_service
            );
        }
        assert!(
            authz_rules("payment")
                .iter()
                .all(|r| !r.allow.contains(&spiffe_id("gateway")))
        );
        // Analytics: only the gateway calls it.
        assert_eq!(
            authz_rules("analytics"),
            [AuthzRule {
                service: "tally.analytics.v1.AnalyticsService".into(),
                method: None,
                allow: vec![spiffe_id("gateway")]
            }]
        );
        // Without the gateway, services nobody calls deny everything.
        assert_eq!(
            authz_rules_without("analytics", &["gateway"]),
            [AuthzRule {
                service: "*".into(),
                method: None,
                allow: vec![]
            }]
        );
    }

    #[test]
    fn the_policy_decides_like_the_proxy_would() {
        let user = tally_proxy::authz::Policy::new(
            proxy(&plan(), "user-1-proxy")
                .inbound
                .expect("inbound")
                .authz,
        );
        let jwks = "/tally.user.v1.UserService/GetJwks";
        assert!(user.check(jwks, Some(&spiffe_id("polling"))).is_ok());
        assert!(user.check(jwks, Some(&spiffe_id("payment"))).is_err());
        assert!(
            user.check(
                "/tally.user.v1.UserService/Login",
                Some(&spiffe_id("polling"))
            )
            .is_err()
        );
        assert!(
            user.check("/grpc.health.v1.Health/Check", Some(&spiffe_id("polling")))
                .is_err()
        );
        let analytics = tally_proxy::authz::Policy::new(
            proxy(&plan(), "analytics-proxy")
                .inbound
                .expect("inbound")
                .authz,
        );
        assert!(
            analytics
                .check(
                    "/tally.analytics.v1.AnalyticsService/GetPollResults",
                    Some(&spiffe_id("polling"))
                )
                .is_err()
        );
        let gw = Some(spiffe_id("gateway"));
        // The gateway fetches the keys and verifies API keys at the edge.
        assert!(user.check(jwks, gw.as_deref()).is_ok());
        assert!(
            user.check("/tally.user.v1.UserService/VerifyApiKey", gw.as_deref())
                .is_ok()
        );
        assert!(
            user.check(
                "/tally.user.v1.UserService/VerifyApiKey",
                Some(&spiffe_id("payment"))
            )
            .is_err()
        );
        assert!(
            user.check("/tally.user.v1.UserService/Login", gw.as_deref())
                .is_ok()
        );
        assert!(
            analytics
                .check(
                    "/tally.analytics.v1.AnalyticsService/GetPollResults",
                    gw.as_deref()
                )
                .is_ok()
        );
        let polling = tally_proxy::authz::Policy::new(
            proxy(&plan(), "polling-proxy")
                .inbound
                .expect("inbound")
                .authz,
        );
        assert!(
            polling
                .check("/tally.poll.v1.PollService/CreatePoll", gw.as_deref())
                .is_ok()
        );
        assert!(
            polling
                .check("/tally.events.v1.EventFeedService/Subscribe", gw.as_deref())
                .is_err()
        );
        assert!(
            polling
                .check(
                    "/tally.events.v1.ConsumerAdminService/ListConsumers",
                    gw.as_deref()
                )
                .is_err()
        );
    }

    #[test]
    fn policy_lines_name_callers() {
        let lines = policy_lines(&["user", "analytics"]);
        assert_eq!(
            lines[0],
            "user: UserService/GetJwks <- polling, notification, analytics, billing, gateway; \
             UserService/VerifyApiKey <- polling, notification, analytics, billing, gateway; \
             UserService <- gateway"
        );
        assert_eq!(lines[1], "analytics: AnalyticsService <- gateway");
        assert_eq!(
            policy_lines(&["payment"])[0],
            "payment: PaymentService <- billing; Health/Check <- billing"
        );
    }
}
