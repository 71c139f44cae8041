//! Per-account throttling of failed logins that an attacker cannot turn into
//! a lock-out of the real user.
//!
//! The design follows OWASP's Authentication and Credential Stuffing cheat
//! sheets and what large identity services do ("smart lockout"):
//!
//! - **Two budgets.** Failures are counted per *(account, client address)*
//!   with a tight budget ([`ThrottlePolicy::client_free_failures`]) and per
//!   *account* with a looser one ([`ThrottlePolicy::account_free_failures`]),
//!   which is what stops a guesser spread over many addresses.
//! - **Delays, never a lock.** Past a budget, each further failure blocks the
//!   key for an exponentially growing time (`base_delay * 2^k`) capped at
//!   [`ThrottlePolicy::max_delay`] (minutes, not hours). Calls refused while
//!   blocked neither check the password nor extend the block, so hammering an
//!   account cannot keep it blocked longer than one capped delay at a time.
//!   Failures are forgotten after a quiet [`ThrottlePolicy::window`].
//! - **Known clients keep working.** An address that logged in to the
//!   account successfully within [`ThrottlePolicy::trusted_for`] is exempt
//!   from the account-wide block (OWASP's "device cookie" idea, keyed by
//!   address); it is limited only by its own pair budget, and its failures do
//!   not spend the account's. So 40 guesses from 40 addresses throttle every
//!   new address while the owner still logs in from where they usually do.
//!   A new address waits at most one capped delay.
//! - **Success resets** the pair's failures (not the account's: the owner's
//!   logins must not hand a guesser a fresh account budget).
//! - **Races cannot skip the count:** [`LoginThrottle::begin`] counts the
//!   attempt as a failure before the password is checked and
//!   [`LoginThrottle::finish`] takes it back on success (or when the check
//!   could not be made), so concurrent guesses see each other.
//! - **Unknown accounts are throttled alike**, keyed by the canonical email,
//!   so the throttle does not reveal which emails have accounts.
//! - **Bounded memory:** keys are 32-byte hashes; each table holds at most
//!   [`ThrottlePolicy::max_tracked`] entries and evicts the least recently
//!   touched one when full (stale entries go first, being the oldest).
//!   IPv6 addresses count per /64, since one host usually owns a whole /64.
//!
//! Time is passed in (`now`), so every rule is tested with an injected clock.

use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Failures per (account, address) before that pair is delayed.
pub const DEFAULT_CLIENT_FREE_FAILURES: u32 = 5;
/// Failures per account, from addresses it does not know, before they are delayed.
pub const DEFAULT_ACCOUNT_FREE_FAILURES: u32 = 20;
/// A key's failures are forgotten after this long without one.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(15 * 60);
/// First delay past a budget; each further failure doubles it.
pub const DEFAULT_BASE_DELAY: Duration = Duration::from_secs(2);
/// Longest delay: a throttled account is never locked for longer at a time.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(5 * 60);
/// How long an address that logged in stays known to the account.
pub const DEFAULT_TRUSTED_FOR: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most keys tracked per table (failures, known addresses).
pub const DEFAULT_MAX_TRACKED: usize = 100_000;

/// The throttle's tunables; [`Default`] gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottlePolicy {
    pub client_free_failures: u32,
    pub account_free_failures: u32,
    pub window: Duration,
    pub base_delay: Duration,
    pub max_delay: Duration,
    pub trusted_for: Duration,
    pub max_tracked: usize,
}

impl Default for ThrottlePolicy {
    fn default() -> Self {
        Self {
            client_free_failures: DEFAULT_CLIENT_FREE_FAILURES,
            account_free_failures: DEFAULT_ACCOUNT_FREE_FAILURES,
            window: DEFAULT_WINDOW,
            base_delay: DEFAULT_BASE_DELAY,
            max_delay: DEFAULT_MAX_DELAY,
            trusted_for: DEFAULT_TRUSTED_FOR,
            max_tracked: DEFAULT_MAX_TRACKED,
        }
    }
}

/// A refused attempt: try again after `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    pub retry_after: Duration,
    /// Whether the account-wide budget (not the address's own) refused it.
    pub account_wide: bool,
}

/// An admitted attempt, already counted as a failure until [`LoginThrottle::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "finish the attempt with its outcome"]
pub struct Attempt {
    pair: Key,
    account: Key,
    counted_on_account: bool,
}

/// How an admitted attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Right password: the pair is reset and the address becomes known.
    Succeeded,
    /// Wrong email or password: the failure stays counted.
    Failed,
    /// The password could not be checked (storage down): not counted.
    NotJudged,
}

type Key = [u8; 32];

#[derive(Debug, Clone, Copy)]
struct Strikes {
    failures: u32,
    last_failure: Instant,
    blocked_until: Option<Instant>,
}

/// A map with a cap that evicts the least recently touched entry.
#[derive(Debug)]
struct Recent<V> {
    map: HashMap<Key, (V, Instant, u64)>,
    order: BTreeSet<(Instant, u64, Key)>,
    cap: usize,
    seq: u64,
}

impl<V> Recent<V> {
    fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: BTreeSet::new(),
            cap: cap.max(1),
            seq: 0,
        }
    }

    fn get(&self, k: &Key) -> Option<&V> {
        self.map.get(k).map(|(v, _, _)| v)
    }

    fn remove(&mut self, k: &Key) -> Option<V> {
        let (v, at, seq) = self.map.remove(k)?;
        self.order.remove(&(at, seq, *k));
        Some(v)
    }

    /// Stores `v` under `k`, marking it touched at `now`; evicts when full.
    fn put(&mut self, k: Key, v: V, now: Instant) {
        self.remove(&k);
        while self.map.len() >= self.cap {
            let Some(oldest) = self.order.pop_first() else {
                break;
            };
            self.map.remove(&oldest.2);
        }
        self.seq = self.seq.wrapping_add(1);
        self.map.insert(k, (v, now, self.seq));
        self.order.insert((now, self.seq, k));
    }

    /// Drops entries last touched before `cutoff`.
    fn drop_older_than(&mut self, cutoff: Instant) {
        while let Some(first) = self.order.first().copied() {
            if first.0 >= cutoff {
                break;
            }
            self.order.pop_first();
            self.map.remove(&first.2);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

/// The throttle state of one service instance.
#[derive(Debug)]
pub struct LoginThrottle {
    policy: ThrottlePolicy,
    strikes: Recent<Strikes>,
    known: Recent<()>,
}

fn hash(parts: &[&[u8]]) -> Key {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize().into()
}

/// The address as throttled: IPv4 as is, IPv6 by its /64.
fn address_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.octets().to_vec(),
            None => v6.octets()[..8].to_vec(),
        },
    }
}

impl LoginThrottle {
    pub fn new(policy: ThrottlePolicy) -> Self {
        Self {
            strikes: Recent::new(policy.max_tracked),
            known: Recent::new(policy.max_tracked),
            policy,
        }
    }

    /// Admits an attempt on `account` (canonical email) from `client`, counting
    /// it as a failure until finished, or refuses it with the time to wait.
    pub fn begin(
        &mut self,
        account: &str,
        client: IpAddr,
        now: Instant,
    ) -> Result<Attempt, Throttled> {
        self.expire(now);
        let account_key = hash(&[b"account", account.as_bytes()]);
        let pair_key = hash(&[b"pair", account.as_bytes(), &address_bytes(client)]);
        if let Some(wait) = self.blocked(&pair_key, now) {
            return Err(Throttled {
                retry_after: wait,
                account_wide: false,
            });
        }
        let known = self.known.get(&pair_key).is_some();
        if !known && let Some(wait) = self.blocked(&account_key, now) {
            return Err(Throttled {
                retry_after: wait,
                account_wide: true,
            });
        }
        let free = self.policy.client_free_failures;
        self.strike(pair_key, free, now);
        if !known {
            let free = self.policy.account_free_failures;
            self.strike(account_key, free, now);
        }
        Ok(Attempt {
            pair: pair_key,
            account: account_key,
            counted_on_account: !known,
        })
    }

    /// Records how an admitted attempt ended.
    pub fn finish(&mut self, attempt: Attempt, outcome: Outcome, now: Instant) {
        match outcome {
            Outcome::Failed => {}
            Outcome::Succeeded => {
                self.strikes.remove(&attempt.pair);
                self.known.put(attempt.pair, (), now);
                if attempt.counted_on_account {
                    self.unstrike(attempt.account, self.policy.account_free_failures);
                }
            }
            Outcome::NotJudged => {
                self.unstrike(attempt.pair, self.policy.client_free_failures);
                if attempt.counted_on_account {
                    self.unstrike(attempt.account, self.policy.account_free_failures);
                }
            }
        }
    }

    /// Keys tracked (failures, known addresses), for metrics and tests.
    #[cfg(test)]
    pub fn tracked(&self) -> (usize, usize) {
        (self.strikes.len(), self.known.len())
    }

    fn blocked(&self, key: &Key, now: Instant) -> Option<Duration> {
        let until = self.strikes.get(key)?.blocked_until?;
        (until > now).then(|| until - now)
    }

    fn strike(&mut self, key: Key, free: u32, now: Instant) {
        let mut s = match self.strikes.get(&key) {
            Some(s) if now.saturating_duration_since(s.last_failure) <= self.policy.window => *s,
            _ => Strikes {
                failures: 0,
                last_failure: now,
                blocked_until: None,
            },
        };
        s.failures = s.failures.saturating_add(1);
        s.last_failure = now;
        if s.failures >= free {
            s.blocked_until = Some(now + self.delay(s.failures - free));
        }
        self.strikes.put(key, s, now);
    }

    /// Takes back one counted failure; clears the block when under budget again.
    fn unstrike(&mut self, key: Key, free: u32) {
        let Some(mut s) = self.strikes.get(&key).copied() else {
            return;
        };
        s.failures = s.failures.saturating_sub(1);
        if s.failures < free {
            s.blocked_until = None;
        }
        let touched = s.last_failure;
        self.strikes.put(key, s, touched);
    }

    /// `base_delay * 2^excess`, capped at `max_delay`.
    fn delay(&self, excess: u32) -> Duration {
        let factor = 1u32.checked_shl(excess.min(31)).unwrap_or(u32::MAX);
        self.policy
            .base_delay
            .saturating_mul(factor)
            .min(self.policy.max_delay)
    }

    /// Forgets failures older than the window (their blocks, at most
    /// `max_delay` long, are over) and addresses no longer known.
    fn expire(&mut self, now: Instant) {
        let keep = self.policy.window.max(self.policy.max_delay);
        if let Some(cutoff) = now.checked_sub(keep) {
            self.strikes.drop_older_than(cutoff);
        }
        if let Some(cutoff) = now.checked_sub(self.policy.trusted_for) {
            self.known.drop_older_than(cutoff);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn policy() -> ThrottlePolicy {
        ThrottlePolicy {
            client_free_failures: 3,
            account_free_failures: 5,
            window: Duration::from_secs(600),
            base_delay: SECOND,
            max_delay: Duration::from_secs(60),
            trusted_for: Duration::from_secs(3600),
            max_tracked: 1000,
        }
    }

    fn fail(
        t: &mut LoginThrottle,
        acct: &str,
        from: IpAddr,
        now: Instant,
    ) -> Result<(), Throttled> {
        let a = t.begin(acct, from, now)?;
        t.finish(a, Outcome::Failed, now);
        Ok(())
    }

    fn succeed(
        t: &mut LoginThrottle,
        acct: &str,
        from: IpAddr,
        now: Instant,
    ) -> Result<(), Throttled> {
        let a = t.begin(acct, from, now)?;
        t.finish(a, Outcome::Succeeded, now);
        Ok(())
    }

    #[test]
    fn one_address_is_delayed_exponentially_after_its_budget() {
        let mut t = LoginThrottle::new(policy());
        let t0 = tokio::time::Instant::now().into_std();
        for _ in 0..2 {
            fail(&mut t, "a@x.io", ip(1), t0).unwrap();
        }
        // The third failure spends the budget and blocks for the base delay.
        fail(&mut t, "a@x.io", ip(1), t0).unwrap();
        let e = t.begin("a@x.io", ip(1), t0).unwrap_err();
        assert_eq!(e.retry_after, SECOND);
        assert!(!e.account_wide);
        // Refused calls do not extend the block.
        let e = t.begin("a@x.io", ip(1), t0 + SECOND / 2).unwrap_err();
        assert_eq!(e.retry_after, SECOND / 2);
        fail(&mut t, "a@x.io", ip(1), t0 + SECOND).unwrap();
        assert_eq!(
            t.begin("a@x.io", ip(1), t0 + SECOND)
                .unwrap_err()
                .retry_after,
            2 * SECOND
        );
        fail(&mut t, "a@x.io", ip(1), t0 + 3 * SECOND).unwrap();
        assert_eq!(
            t.begin("a@x.io", ip(1), t0 + 3 * SECOND)
                .unwrap_err()
                .retry_after,
            4 * SECOND
        );
        // Another account from the same address is unaffected.
        fail(&mut t, "b@x.io", ip(1), t0 + 3 * SECOND).unwrap();
    }

    #[test]
    fn delays_are_capped_so_an_account_is_never_locked_for_long() {
        let mut t = LoginThrottle::new(policy());
        let mut now = tokio::time::Instant::now().into_std();
        let mut admitted = 0;
        while admitted < 20 {
            match t.begin("a@x.io", ip(1), now) {
                Ok(a) => {
                    t.finish(a, Outcome::Failed, now);
                    admitted += 1;
                }
                Err(e) => {
                    assert!(e.retry_after <= Duration::from_secs(60), "{e:?}");
                    now += e.retry_after;
                }
            }
        }
        let e = t.begin("a@x.io", ip(1), now).unwrap_err();
        assert_eq!(e.retry_after, Duration::from_secs(60));
        // After the capped delay the right password gets in and resets the pair.
        succeed(&mut t, "a@x.io", ip(1), now + Duration::from_secs(60)).unwrap();
        fail(&mut t, "a@x.io", ip(1), now + Duration::from_secs(61)).unwrap();
    }

    #[test]
    fn many_addresses_hit_the_account_budget_but_a_known_address_gets_in() {
        let mut t = LoginThrottle::new(policy());
        let t0 = tokio::time::Instant::now().into_std();
        // The owner logged in from home before.
        succeed(&mut t, "a@x.io", ip(200), t0).unwrap();
        let mut refused = 0;
        for i in 0..40 {
            match fail(&mut t, "a@x.io", ip(i), t0 + SECOND) {
                Ok(()) => {}
                Err(e) => {
                    assert!(e.account_wide);
                    refused += 1;
                }
            }
        }
        assert_eq!(refused, 35, "the account budget (5) admits 5 of 40");
        // A new address (even with the right password) waits...
        let e = t.begin("a@x.io", ip(250), t0 + SECOND).unwrap_err();
        assert!(e.account_wide && e.retry_after <= Duration::from_secs(60));
        // ...but the owner's known address is not blocked,
        succeed(&mut t, "a@x.io", ip(200), t0 + 2 * SECOND).unwrap();
        // and the new address gets in once the delay is over.
        succeed(&mut t, "a@x.io", ip(250), t0 + SECOND + e.retry_after).unwrap();
    }

    #[test]
    fn known_addresses_spend_only_their_own_budget() {
        let mut t = LoginThrottle::new(policy());
        let t0 = tokio::time::Instant::now().into_std();
        succeed(&mut t, "a@x.io", ip(9), t0).unwrap();
        for _ in 0..3 {
            fail(&mut t, "a@x.io", ip(9), t0).unwrap();
        }
        let e = t.begin("a@x.io", ip(9), t0).unwrap_err();
        assert!(!e.account_wide);
        // The account budget was not touched by the owner's typos.
        for i in 0..4 {
            fail(&mut t, "a@x.io", ip(i), t0).unwrap();
        }
    }

    #[test]
    fn concurrent_attempts_are_counted_before_they_finish() {
        let mut t = LoginThrottle::new(policy());
        let t0 = tokio::time::Instant::now().into_std();
        let pending: Vec<_> = (0..3)
            .map(|_| t.begin("a@x.io", ip(1), t0).unwrap())
            .collect();
        assert!(t.begin("a@x.io", ip(1), t0).is_err());
        for a in pending {
            t.finish(a, Outcome::NotJudged, t0);
        }
        // Attempts that could not be judged are taken back.
        let _admitted = t.begin("a@x.io", ip(1), t0).unwrap();
    }

    #[test]
    fn failures_are_forgotten_after_a_quiet_window() {
        let mut t = LoginThrottle::new(policy());
        let t0 = tokio::time::Instant::now().into_std();
        for _ in 0..3 {
            fail(&mut t, "a@x.io", ip(1), t0).unwrap();
        }
        assert!(t.begin("a@x.io", ip(1), t0).is_err());
        let later = t0 + Duration::from_secs(601);
        for _ in 0..2 {
            fail(&mut t, "a@x.io", ip(1), later).unwrap();
        }
        let _admitted = t.begin("a@x.io", ip(1), later).unwrap();
        assert_eq!(t.tracked().0, 2, "pair and account");
        let _ = t.begin("z@x.io", ip(1), later + Duration::from_secs(700));
        assert_eq!(t.tracked().0, 2, "the stale entries were dropped");
    }

    #[test]
    fn memory_is_bounded_by_the_cap() {
        let mut t = LoginThrottle::new(ThrottlePolicy {
            max_tracked: 50,
            ..policy()
        });
        let t0 = tokio::time::Instant::now().into_std();
        for i in 0..1000u32 {
            let _ = fail(&mut t, &format!("u{i}@x.io"), ip(1), t0);
            let _ = succeed(&mut t, &format!("v{i}@x.io"), ip(2), t0);
        }
        let (strikes, known) = t.tracked();
        assert!(strikes <= 50 && known <= 50, "{strikes} {known}");
    }

    #[test]
    fn ipv6_counts_per_slash_64() {
        let mut t = LoginThrottle::new(policy());
        let t0 = tokio::time::Instant::now().into_std();
        for i in 0..3u16 {
            let a: IpAddr = format!("2001:db8::{i:x}").parse().unwrap();
            fail(&mut t, "a@x.io", a, t0).unwrap();
        }
        let same_64: IpAddr = "2001:db8::ffff".parse().unwrap();
        assert!(!t.begin("a@x.io", same_64, t0).unwrap_err().account_wide);
        let other_64: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        let _admitted = t.begin("a@x.io", other_64, t0).unwrap();
    }
}
