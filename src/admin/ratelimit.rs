//! Per-IP limit on `/api/*` requests: at most N in any sliding minute.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);

/// Request times per client, within the last minute.
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: u32,
    seen: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl RateLimiter {
    /// A limiter allowing `per_minute` requests per IP (0: unlimited).
    pub fn new(per_minute: u32) -> RateLimiter {
        RateLimiter {
            per_minute,
            seen: Mutex::default(),
        }
    }

    /// Admits a request from `ip` at `now`, or says how many seconds to wait.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), u64> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.len() > 10_000 {
            // Forget clients that have been quiet for a minute, so the map stays bounded.
            seen.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < WINDOW)
            });
        }
        let times = seen.entry(ip).or_default();
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            times.pop_front();
        }
        if times.len() >= self.per_minute as usize {
            let oldest = times.front().copied().unwrap_or(now);
            return Err((WINDOW.saturating_sub(now.duration_since(oldest)))
                .as_secs()
                .max(1));
        }
        times.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_minute_per_ip() {
        let limiter = RateLimiter::new(2);
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(limiter.check(a, t0).is_ok());
        assert!(limiter.check(a, t0 + Duration::from_secs(10)).is_ok());
        assert_eq!(limiter.check(a, t0 + Duration::from_secs(20)), Err(40));
        assert!(
            limiter.check(b, t0 + Duration::from_secs(20)).is_ok(),
            "limits are per IP"
        );
        assert!(
            limiter.check(a, t0 + Duration::from_secs(61)).is_ok(),
            "the window slides"
        );
        assert!(RateLimiter::new(0).check(a, t0).is_ok());
    }
}
