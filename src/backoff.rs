//! Capped exponential backoff with jitter, the one rule for every retry: a tenant's requests
//! and restarts, a destination's reconnects, a delivery loop's restart.

use std::time::Duration;

/// "Equal jitter": a random delay in [d/2, d] where d = min(base * 2^(attempt-1), max), so that
/// many tenants or destinations failing together do not retry in step.
pub fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let d = exp.min(max);
    let half = d / 2;
    half + d.mul_f64(rand::random::<f64>() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        let mut seen = std::collections::HashSet::new();
        for attempt in 1..40 {
            let d = backoff(base, max, attempt);
            let cap = base.saturating_mul(1 << (attempt - 1).min(20)).min(max);
            assert!(d >= cap / 2 && d <= cap, "attempt {attempt}: {d:?}");
            seen.insert(d);
        }
        assert!(seen.len() > 10, "no jitter: {seen:?}");
    }
}
