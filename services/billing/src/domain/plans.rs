//! The plan catalogue: what each plan costs and what it grants.

use serde::{Deserialize, Serialize};

/// A plan a user can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanId {
    Free,
    Pro,
    Team,
}

/// What a plan costs and grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub id: PlanId,
    pub name: &'static str,
    /// Monthly price; zero means nothing is charged.
    pub price_cents: u64,
    /// Polls the subscriber may have open at once.
    pub max_open_polls: u32,
    /// People the subscription covers.
    pub seats: u32,
}

/// Every plan, cheapest first.
pub const PLANS: [Plan; 3] = [
    Plan {
        id: PlanId::Free,
        name: "free",
        price_cents: 0,
        max_open_polls: 3,
        seats: 1,
    },
    Plan {
        id: PlanId::Pro,
        name: "pro",
        price_cents: 900,
        max_open_polls: 50,
        seats: 1,
    },
    Plan {
        id: PlanId::Team,
        name: "team",
        price_cents: 2900,
        max_open_polls: 500,
        seats: 10,
    },
];

/// Currency of every price.
pub const CURRENCY: &str = "usd";

impl PlanId {
    /// The plan's terms.
    pub fn plan(self) -> Plan {
        match self {
            PlanId::Free => PLANS[0],
            PlanId::Pro => PLANS[1],
            PlanId::Team => PLANS[2],
        }
    }

    /// Lower-case name used in events (`free`, `pro`, `team`).
    pub fn name(self) -> &'static str {
        self.plan().name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_matches_the_offer() {
        let limits: Vec<u32> = PLANS.iter().map(|p| p.max_open_polls).collect();
        assert_eq!(limits, [3, 50, 500]);
        assert_eq!(PlanId::Free.plan().price_cents, 0);
        assert!(PlanId::Pro.plan().price_cents > 0);
        assert!(PlanId::Team.plan().price_cents > PlanId::Pro.plan().price_cents);
        assert_eq!(PlanId::Team.name(), "team");
    }
}
