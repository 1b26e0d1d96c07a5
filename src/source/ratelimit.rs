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
                    tokens: capacity,
                }
            })
            .collect();
        RateLimiter {
            state: Mutex::new((buckets, Instant::now())),
        }
    }

    /// Waits until every bucket has a token, then takes them.
    pub async fn acquire(&self) {
        loop {
            let wait = self.try_acquire();
            match wait {
                None => return,
                Some(d) => tokio::time::sleep(d).await,
            }
        }
    }

    /// Takes a token from every bucket if all have one; otherwise says how long to wait.
    fn try_acquire(&self) -> Option<Duration> {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (buckets, last) = &mut *guard;
        let now = Instant::now();
        let elapsed = now.duration_since(*last).as_secs_f64();
        *last = now;
        let mut wait: f64 = 0.0;
        for b in buckets.iter_mut() {
            b.tokens = (b.tokens + elapsed * b.rate).min(b.capacity);
            if b.tokens < 1.0 {
                wait = wait.max((1.0 - b.tokens) / b.rate);
            }
        }
        if wait > 0.0 {
            return Some(Duration::from_secs_f64(wait));
        }
        for b in buckets.iter_mut() {
            b.tokens -= 1.0;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With tokio's paused clock the admitted times are exact: no window of one period ever
    /// holds more than the limit.
    #[tokio::test(start_paused = true)]
    async fn never_exceeds_limit_in_any_window() {
        let period = Duration::from_secs(60);
        let limiter = RateLimiter::new(&[(150, period)]);
        let start = Instant::now();
        let mut times = Vec::new();
        for _ in 0..600 {
            limiter.acquire().await;
            times.push(Instant::now().duration_since(start));
        }
        for (i, t) in times.iter().enumerate() {
            let in_window = times[i..].iter().take_while(|u| **u < *t + period).count();
            assert!(in_window <= 150, "{in_window} requests within 60 s from {t:?}");
        }
        // And it is not needlessly slow: 600 requests at ~142/min take about 4 minutes.
        let total = *times.last().expect("600 times");
        assert!(total < Duration::from_secs(5 * 60), "{total:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn both_mde_limits_hold() {
        let limiter = RateLimiter::new(&[
            (100, Duration::from_secs(60)),
            (1500, Duration::from_secs(3600)),
        ]);
        let start = Instant::now();
        let mut times = Vec::new();
        for _ in 0..1600 {
            limiter.acquire().await;
            times.push(Instant::now().duration_since(start));
        }
        let hour = Duration::from_secs(3600);
        for (i, t) in times.iter().enumerate() {
            let minute = times[i..].iter().take_while(|u| **u < *t + Duration::from_secs(60)).count();
            assert!(minute <= 100);
            let in_hour = times[i..].iter().take_while(|u| **u < *t + hour).count();
            assert!(in_hour <= 1500);
        }
    }
}
