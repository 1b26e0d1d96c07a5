//! Per-tenant request rate limiter: token buckets that keep under the API's documented limits
//! (Graph 150/min; MDE 100/min and 1,500/h — defender-api.md §0, §1.5, §3.1).
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Share of each limit actually used: our clock and the API's counter do not agree exactly, and
/// request latency varies, so a limiter that allowed the full limit could still be seen above it.
const SAFETY: f64 = 0.95;

struct Bucket {
    capacity: f64,
    /// Tokens per second.
    rate: f64,
    tokens: f64,
}

/// Several token buckets; a request needs one token from each.
///
/// A bucket for "L requests per P" gets capacity `b` (a tenth of the limit, at least 1) and
/// refills at `(SAFETY*L - b) / P`, so any window of length P admits at most `b + rate*P =
/// SAFETY*L` requests: the limit holds for every sliding window, not only on average.
///
/// Buckets start **empty**, not full (issue 8 §3): the API counts the requests of the process
/// that ran before a restart too, and a full bucket after every restart would add `b` requests
/// to a window each time. Empty, the window spanning a restart holds at most `b + rate*t` before
/// it and `rate*t'` after it, `t + t' = P`: still `SAFETY*L`, however often the daemon restarts.
/// The cost is one refill interval (about half a second) before a tenant's first request.
pub struct RateLimiter {
    state: Mutex<(Vec<Bucket>, Instant)>,
}

impl RateLimiter {
    pub fn new(limits: &[(u32, Duration)]) -> Self {
        let buckets = limits
            .iter()
            .filter(|(n, p)| *n > 0 && !p.is_zero())
            .map(|&(n, period)| {
                let usable = (f64::from(n) * SAFETY).max(1.0);
                let capacity = (usable / 10.0).floor().max(1.0);
                let rate = ((usable - capacity).max(0.5)) / period.as_secs_f64();
                Bucket {
                    capacity,
                    rate,
                    tokens: 0.0,
                }
            })
            .collect();
        RateLimiter {
            state: Mutex::new((buckets, Instant::now())),
        }
    }

    /// Waits until every bucket has a token, then takes them. Returns how long it waited.
    pub async fn acquire(&self) -> Duration {
        let start = Instant::now();
        loop {
            let wait = self.try_acquire(Instant::now());
            match wait {
                None => return start.elapsed(),
                Some(d) => tokio::time::sleep(d).await,
            }
        }
    }

    /// Takes a token from every bucket if all have one; otherwise says how long to wait.
    fn try_acquire(&self, now: Instant) -> Option<Duration> {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (buckets, last) = &mut *guard;
        let elapsed = now.saturating_duration_since(*last).as_secs_f64();
        *last = now.max(*last);
        let mut wait: f64 = 0.0;
        for b in buckets.iter_mut() {
            b.tokens = (b.tokens + elapsed * b.rate).min(b.capacity);
            // A hair below 1.0 from float rounding counts as a whole token.
            if b.tokens < 1.0 - 1e-9 {
                wait = wait.max((1.0 - b.tokens) / b.rate);
            }
        }
        if wait > 0.0 {
            // Rounded up to whole microseconds so the wait always moves time forward.
            return Some(Duration::from_micros((wait * 1e6).ceil() as u64));
        }
        for b in buckets.iter_mut() {
            b.tokens = (b.tokens - 1.0).max(0.0);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives the limiter on a simulated clock: each request is admitted at the first instant
    /// `try_acquire` allows. Returns the admission times since start.
    fn admitted(limiter: &RateLimiter, n: usize) -> Vec<Duration> {
        let start = Instant::now();
        limiter.state.lock().expect("lock").1 = start;
        let mut now = start;
        let mut times = Vec::with_capacity(n);
        while times.len() < n {
            match limiter.try_acquire(now) {
                None => times.push(now - start),
                Some(wait) => now += wait,
            }
        }
        times
    }

    fn max_in_window(times: &[Duration], window: Duration) -> usize {
        (0..times.len())
            .map(|i| {
                times[i..]
                    .iter()
                    .take_while(|u| **u < times[i] + window)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn graph_limit_holds_in_every_window() {
        let minute = Duration::from_secs(60);
        let times = admitted(&RateLimiter::new(&[(150, minute)]), 600);
        assert!(max_in_window(&times, minute) <= 150);
        // Not needlessly slow either: about 142 per minute after the first burst.
        assert!(times[599] < Duration::from_secs(5 * 60), "{:?}", times[599]);
    }

    #[test]
    fn a_new_limiter_starts_empty() {
        let limiter = RateLimiter::new(&[(150, Duration::from_secs(60))]);
        let now = Instant::now();
        limiter.state.lock().expect("lock").1 = now;
        let wait = limiter.try_acquire(now).expect("no token at start");
        // One token refills in 1 / ((142.5 - 14) / 60 s) = 0.47 s.
        assert!(wait > Duration::from_millis(400) && wait < Duration::from_millis(500));
    }

    #[test]
    fn both_mde_limits_hold() {
        let (minute, hour) = (Duration::from_secs(60), Duration::from_secs(3600));
        let times = admitted(&RateLimiter::new(&[(100, minute), (1500, hour)]), 3000);
        assert!(max_in_window(&times, minute) <= 100);
        assert!(max_in_window(&times, hour) <= 1500);
    }
}
