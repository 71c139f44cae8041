//! Token buckets at the edge: one per client (its authenticated principal, else its IP) and
//! one for the whole gateway, checked in that order (`check`): a client beyond its own limit
//! is refused by its bucket and spends nothing of the global one, so one client cannot starve
//! the others. A refused call learns how long until its next token, sent as
//! `grpc-retry-pushback-ms`.
//!
//! Written here rather than taken from tower-resilience: its rate limiter is one shared
//! limiter per layer (no keys), and it reports no wait time for pushback. Memory stays
//! bounded: a bucket that has refilled completely is the same as a new one, so such buckets
//! are evicted when the table is full, and clients beyond `max_clients` share one overflow
//! bucket instead of growing the table.

use super::config::RateLimitConfig;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// Least time between two sweeps of the client table.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
struct Rate {
    per_second: f64,
    burst: f64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Self {
        Self {
            tokens: rate.burst,
            last: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_second).min(rate.burst);
        self.last = now;
    }

    /// Takes one token, or says how long until one is available.
    fn take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - self.tokens) / rate.per_second;
        Err(Duration::from_secs_f64(wait.clamp(0.001, 3600.0)))
    }

    /// Gives back a token taken for a call that another limit then refused.
    fn refund(&mut self, rate: Rate) {
        self.tokens = (self.tokens + 1.0).min(rate.burst);
    }

    fn is_full(&self, rate: Rate, now: Instant) -> bool {
        let mut b = *self;
        b.refill(rate, now);
        b.tokens >= rate.burst
    }
}

/// Which limit refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Global,
    Client,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Global => "global",
            Scope::Client => "client",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub scope: Scope,
    pub retry_after: Duration,
}

struct Clients {
    buckets: HashMap<String, Bucket>,
    overflow: Option<Bucket>,
    last_sweep: Option<Instant>,
}

pub struct RateLimiter {
    global: Option<(Rate, Mutex<Option<Bucket>>)>,
    per_client: Option<Rate>,
    max_clients: usize,
    clients: Mutex<Clients>,
}

fn rate(per_second: f64, burst: u32) -> Option<Rate> {
    (per_second > 0.0).then_some(Rate {
        per_second,
        burst: f64::from(burst.max(1)),
    })
}

impl RateLimiter {
    pub fn new(cfg: &RateLimitConfig) -> Self {
        Self {
            global: rate(cfg.global_per_second, cfg.global_burst).map(|r| (r, Mutex::new(None))),
            per_client: rate(cfg.per_client_per_second, cfg.per_client_burst),
            max_clients: cfg.max_clients,
            clients: Mutex::new(Clients {
                buckets: HashMap::new(),
                overflow: None,
                last_sweep: None,
            }),
        }
    }

    /// Admits one call of `client`: its own bucket first, then the global one. When the global
    /// bucket refuses, the client's token is given back (the call was not served).
    pub fn check(&self, client: &str, now: Instant) -> Result<(), Limited> {
        self.check_client(client, now)?;
        self.check_global(now)
            .inspect_err(|_| self.refund_client(client))
    }

    fn refund_client(&self, key: &str) {
        let Some(rate) = self.per_client else { return };
        let mut c = self.clients.lock();
        match c.buckets.get_mut(key) {
            Some(b) => b.refund(rate),
            None => {
                if let Some(b) = c.overflow.as_mut() {
                    b.refund(rate);
                }
            }
        }
    }

    /// The gateway-wide limit.
    pub fn check_global(&self, now: Instant) -> Result<(), Limited> {
        let Some((rate, bucket)) = &self.global else {
            return Ok(());
        };
        let mut b = bucket.lock();
        b.get_or_insert_with(|| Bucket::full(*rate, now))
            .take(*rate, now)
            .map_err(|retry_after| Limited {
                scope: Scope::Global,
                retry_after,
            })
    }

    /// The limit of one client.
    pub fn check_client(&self, key: &str, now: Instant) -> Result<(), Limited> {
        let Some(rate) = self.per_client else {
            return Ok(());
        };
        let mut c = self.clients.lock();
        let limited = |retry_after| Limited {
            scope: Scope::Client,
            retry_after,
        };
        if let Some(b) = c.buckets.get_mut(key) {
            return b.take(rate, now).map_err(limited);
        }
        if c.buckets.len() >= self.max_clients {
            let due = c
                .last_sweep
                .is_none_or(|at| now.saturating_duration_since(at) >= SWEEP_INTERVAL);
            if due {
                c.last_sweep = Some(now);
                c.buckets.retain(|_, b| !b.is_full(rate, now));
            }
            if c.buckets.len() >= self.max_clients {
                return c
                    .overflow
                    .get_or_insert_with(|| Bucket::full(rate, now))
                    .take(rate, now)
                    .map_err(limited);
            }
        }
        let mut b = Bucket::full(rate, now);
        let r = b.take(rate, now);
        c.buckets.insert(key.to_string(), b);
        r.map_err(limited)
    }

    /// Client buckets currently held.
    #[cfg(test)]
    pub fn tracked_clients(&self) -> usize {
        self.clients.lock().buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_client: f64, burst: u32, max_clients: usize) -> RateLimiter {
        RateLimiter::new(&RateLimitConfig {
            per_client_per_second: per_client,
            per_client_burst: burst,
            global_per_second: 0.0,
            global_burst: 0,
            max_clients,
            trusted_proxies: Vec::new(),
        })
    }

    #[test]
    fn burst_then_refusal_with_wait_then_refill() {
        let l = limiter(2.0, 3, 10);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.check_client("a", t0).is_ok());
        }
        let refused = l.check_client("a", t0).unwrap_err();
        assert_eq!(refused.scope, Scope::Client);
        assert_eq!(refused.retry_after, Duration::from_millis(500));
        // Another client has its own bucket.
        assert!(l.check_client("b", t0).is_ok());
        assert!(l.check_client("a", t0 + Duration::from_millis(500)).is_ok());
    }

    #[test]
    fn memory_is_bounded_and_idle_buckets_are_evicted() {
        let l = limiter(1.0, 1, 2);
        let t0 = Instant::now();
        assert!(l.check_client("a", t0).is_ok());
        assert!(l.check_client("b", t0).is_ok());
        // Table full, nothing idle: the newcomer uses the overflow bucket.
        assert!(l.check_client("c", t0).is_ok());
        assert!(l.check_client("d", t0).is_err());
        assert_eq!(l.tracked_clients(), 2);
        // Two seconds later a and b have refilled, so they are evicted for e.
        let t2 = t0 + Duration::from_secs(2);
        assert!(l.check_client("e", t2).is_ok());
        assert_eq!(l.tracked_clients(), 1);
    }

    #[test]
    fn global_limit() {
        let l = RateLimiter::new(&RateLimitConfig {
            per_client_per_second: 0.0,
            per_client_burst: 0,
            global_per_second: 1.0,
            global_burst: 2,
            max_clients: 1,
            trusted_proxies: Vec::new(),
        });
        let t0 = Instant::now();
        assert!(l.check_global(t0).is_ok());
        assert!(l.check_global(t0).is_ok());
        assert_eq!(l.check_global(t0).unwrap_err().scope, Scope::Global);
        assert!(l.check_client("anyone", t0).is_ok());
    }

    #[test]
    fn a_client_beyond_its_limit_spends_nothing_of_the_global_bucket() {
        let l = RateLimiter::new(&RateLimitConfig {
            per_client_per_second: 0.001,
            per_client_burst: 3,
            global_per_second: 0.001,
            global_burst: 6,
            max_clients: 10,
            trusted_proxies: Vec::new(),
        });
        let t0 = Instant::now();
        let refused: Vec<Scope> = (0..100)
            .filter_map(|_| l.check("user:mallory", t0).err().map(|e| e.scope))
            .collect();
        assert_eq!(refused.len(), 97);
        assert!(refused.iter().all(|s| *s == Scope::Client));
        // Another client still gets its whole burst.
        for _ in 0..3 {
            assert!(l.check("user:alice", t0).is_ok());
        }
        assert_eq!(l.check("user:alice", t0).unwrap_err().scope, Scope::Client);
    }

    #[test]
    fn a_global_refusal_gives_the_client_token_back() {
        let l = RateLimiter::new(&RateLimitConfig {
            per_client_per_second: 0.001,
            per_client_burst: 2,
            global_per_second: 0.001,
            global_burst: 1,
            max_clients: 10,
            trusted_proxies: Vec::new(),
        });
        let t0 = Instant::now();
        assert!(l.check("a", t0).is_ok());
        // The global bucket is empty: b is refused by it, and keeps both its own tokens.
        assert_eq!(l.check("b", t0).unwrap_err().scope, Scope::Global);
        assert_eq!(l.check("b", t0).unwrap_err().scope, Scope::Global);
        assert!(l.check_client("b", t0).is_ok());
        assert!(l.check_client("b", t0).is_ok());
        assert!(l.check_client("b", t0).is_err());
    }
}
