//! Per-key token buckets: the unauthenticated join endpoint is limited per client address,
//! write requests per user, so one caller cannot take the service (or the CA) for itself.

use crate::ErrorCode;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::ApiError;

/// A bucket per key holding up to `burst` requests, refilled at `per_sec`.
pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

/// Buckets kept before full ones are forgotten (a full bucket is the same as none).
const MAX_KEYS: usize = 10_000;

impl RateLimiter {
    pub fn new(per_sec: f64, burst: u32) -> RateLimiter {
        RateLimiter {
            per_sec,
            burst: f64::from(burst),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take one request from `key`'s bucket, or say how long until one is there.
    pub fn take(&self, key: &str) -> Result<(), Duration> {
        self.take_at(key, Instant::now())
    }

    fn take_at(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if b.len() >= MAX_KEYS && !b.contains_key(key) {
            let (per_sec, burst) = (self.per_sec, self.burst);
            b.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * per_sec < burst
            });
        }
        let (tokens, at) = b.entry(key.to_string()).or_insert((self.burst, now));
        let refilled = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * self.per_sec)
            .min(self.burst);
        *at = now;
        if refilled >= 1.0 {
            *tokens = refilled - 1.0;
            Ok(())
        } else {
            *tokens = refilled;
            Err(Duration::from_secs_f64((1.0 - refilled) / self.per_sec))
        }
    }

    /// [`take`](Self::take) as an API answer: 429 `rate_limited`, saying when to retry.
    pub fn check(&self, key: &str, what: &str) -> Result<(), ApiError> {
        self.take(key).map_err(|wait| ApiError {
            code: ErrorCode::RateLimited,
            message: format!(
                "too many {what} requests; retry in {} s",
                wait.as_secs().max(1)
            ),
            field: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_and_are_per_key() {
        let l = RateLimiter::new(2.0, 3);
        let t = Instant::now();
        for _ in 0..3 {
            l.take_at("a", t).unwrap();
        }
        let wait = l.take_at("a", t).unwrap_err();
        assert!(wait <= Duration::from_millis(500), "{wait:?}");
        l.take_at("b", t).unwrap();
        l.take_at("a", t + Duration::from_millis(500)).unwrap();
        assert!(l.take_at("a", t + Duration::from_millis(500)).is_err());
    }
}
