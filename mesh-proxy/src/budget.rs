//! Retry budget per destination service (Finagle/Linkerd style): retries may add at most
//! `ratio` of the requests seen in the window, plus `min_per_second`, so retries cannot turn an
//! outage into a retry storm. tower-resilience's retry has attempt limits but no shared budget.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

pub struct RetryBudget {
    ratio: f64,
    min_per_second: u32,
    window: Duration,
    state: Mutex<VecDeque<Bucket>>,
}

struct Bucket {
    start: Instant,
    requests: u64,
    retries: u64,
}

/// Width of one counting bucket.
const BUCKET: Duration = Duration::from_secs(1);

impl RetryBudget {
    pub fn new(ratio: f64, min_per_second: u32, window: Duration) -> Self {
        Self {
            ratio,
            min_per_second,
            window,
            state: Mutex::new(VecDeque::new()),
        }
    }

    fn with_current<T>(&self, f: impl FnOnce(&mut VecDeque<Bucket>) -> T) -> T {
        let now = Instant::now();
        let mut q = self.state.lock();
        while q
            .front()
            .is_some_and(|b| now.duration_since(b.start) > self.window)
        {
            q.pop_front();
        }
        if q.back()
            .is_none_or(|b| now.duration_since(b.start) >= BUCKET)
        {
            q.push_back(Bucket {
                start: now,
                requests: 0,
                retries: 0,
            });
        }
        f(&mut q)
    }

    /// Records an original request.
    pub fn deposit(&self) {
        self.with_current(|q| {
            if let Some(b) = q.back_mut() {
                b.requests += 1;
            }
        });
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn withdraw(&self) -> bool {
        let window_secs = self.window.as_secs_f64();
        let (ratio, min) = (self.ratio, f64::from(self.min_per_second));
        self.with_current(|q| {
            let requests: u64 = q.iter().map(|b| b.requests).sum();
            let retries: u64 = q.iter().map(|b| b.retries).sum();
            let allowed = min * window_secs + ratio * requests as f64;
            if (retries as f64) + 1.0 <= allowed {
                if let Some(b) = q.back_mut() {
                    b.retries += 1;
                }
                true
            } else {
                false
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ratio_bounds_retries() {
        let b = RetryBudget::new(0.2, 0, Duration::from_secs(10));
        for _ in 0..50 {
            b.deposit();
        }
        let granted = (0..100).filter(|_| b.withdraw()).count();
        assert_eq!(granted, 10);
    }

    #[tokio::test(start_paused = true)]
    async fn floor_allows_some_retries_and_window_expires() {
        let b = RetryBudget::new(0.0, 1, Duration::from_secs(2));
        assert_eq!((0..10).filter(|_| b.withdraw()).count(), 2);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(b.withdraw());
    }
}
