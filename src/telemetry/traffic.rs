//! Traffic over the last hours, for the status page's charts: requests per repo and bytes
//! served from the cache or fetched from mirrors, in five-minute buckets. Nothing is counted
//! here: the counters the proxy keeps anyway are sampled (every minute and on each page view)
//! and the increase since the last sample goes to the current bucket, so requests pay nothing
//! for the charts. Memory is fixed: [`BUCKETS`] buckets, each with one counter per repo id seen
//! (repo ids come from the configuration, so they are few).

use std::sync::{Mutex, PoisonError};

/// Seconds per bucket.
pub const BUCKET_SECS: u64 = 300;
/// Buckets kept: six hours.
pub const BUCKETS: usize = 72;

/// One bucket.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bucket {
    /// Unix time of its start, a multiple of [`BUCKET_SECS`].
    pub start: u64,
    /// Requests by repo id (`-` for requests that named no repo), in first-seen order.
    pub requests: Vec<(String, u64)>,
    pub cache_bytes: u64,
    pub upstream_bytes: u64,
}

/// The counters at one moment, since start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    /// Package requests by repo id.
    pub requests: Vec<(String, u64)>,
    /// Every request, the proxy's own pages and probes included.
    pub all_requests: u64,
    pub cache_bytes: u64,
    pub upstream_bytes: u64,
}

#[derive(Debug, Default)]
struct Ring {
    /// Oldest first; the last is the current bucket.
    buckets: std::collections::VecDeque<Bucket>,
    /// The counters when last sampled.
    seen: Totals,
}

impl Ring {
    /// The bucket for `now`, made (and the oldest dropped) when time has moved on.
    fn current(&mut self, now: u64) -> &mut Bucket {
        let start = now - now % BUCKET_SECS;
        if self.buckets.back().is_none_or(|b| b.start < start) {
            self.buckets.push_back(Bucket {
                start,
                ..Bucket::default()
            });
            while self.buckets.len() > BUCKETS {
                self.buckets.pop_front();
            }
        }
        self.buckets.back_mut().expect("just made")
    }
}

/// The traffic history.
#[derive(Debug, Default)]
pub struct Traffic {
    ring: Mutex<Ring>,
}

impl Traffic {
    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Attributes to the bucket of `now` what the counters grew by since the last sample;
    /// requests that named no repo go under `-`.
    pub fn sample(&self, totals: Totals, now: u64) {
        let mut ring = self.lock();
        let seen = std::mem::replace(&mut ring.seen, totals);
        let totals = &ring.seen;
        let before = |repo: &str| {
            seen.requests
                .iter()
                .find(|(r, _)| r == repo)
                .map_or(0, |(_, n)| *n)
        };
        let mut grown: Vec<(String, u64)> = totals
            .requests
            .iter()
            .map(|(repo, n)| (repo.clone(), n.saturating_sub(before(repo))))
            .filter(|(_, n)| *n > 0)
            .collect();
        let repos: u64 = grown.iter().map(|(_, n)| n).sum();
        let other = totals
            .all_requests
            .saturating_sub(seen.all_requests)
            .saturating_sub(repos);
        if other > 0 {
            grown.push(("-".to_string(), other));
        }
        let cache = totals.cache_bytes.saturating_sub(seen.cache_bytes);
        let upstream = totals.upstream_bytes.saturating_sub(seen.upstream_bytes);
        let bucket = ring.current(now);
        for (repo, n) in grown {
            match bucket.requests.iter_mut().find(|(r, _)| *r == repo) {
                Some((_, total)) => *total += n,
                None => bucket.requests.push((repo, n)),
            }
        }
        bucket.cache_bytes += cache;
        bucket.upstream_bytes += upstream;
    }

    /// The last [`BUCKETS`] buckets ending with the one of `now`, oldest first; buckets with no
    /// traffic are present and empty.
    pub fn history(&self, now: u64) -> Vec<Bucket> {
        let ring = self.lock();
        let last = now - now % BUCKET_SECS;
        let first = last.saturating_sub(BUCKET_SECS * (BUCKETS as u64 - 1));
        (0..BUCKETS as u64)
            .map(|i| first + i * BUCKET_SECS)
            .map(|start| {
                ring.buckets
                    .iter()
                    .find(|b| b.start == start)
                    .cloned()
                    .unwrap_or(Bucket {
                        start,
                        ..Bucket::default()
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_roll_and_keep_six_hours() {
        let t = Traffic::default();
        let t0 = 1_800_000_000 - 1_800_000_000 % BUCKET_SECS;
        let totals = |debian: u64, alpine: u64, all: u64, cache: u64, upstream: u64| Totals {
            requests: vec![("debian".into(), debian), ("alpine".into(), alpine)],
            all_requests: all,
            cache_bytes: cache,
            upstream_bytes: upstream,
        };
        t.sample(totals(2, 1, 4, 100, 40), t0 + 60);
        t.sample(totals(2, 1, 4, 100, 40), t0 + 120);
        t.sample(totals(3, 1, 5, 150, 40), t0 + BUCKET_SECS + 1);
        let h = t.history(t0 + BUCKET_SECS + 2);
        assert_eq!(h.len(), BUCKETS);
        let (before, last) = (&h[BUCKETS - 2], &h[BUCKETS - 1]);
        assert_eq!(before.start, t0);
        assert_eq!(
            before.requests,
            [("debian".into(), 2), ("alpine".into(), 1), ("-".into(), 1)]
        );
        assert_eq!((before.cache_bytes, before.upstream_bytes), (100, 40));
        assert_eq!(last.requests, [("debian".into(), 1)]);
        assert_eq!((last.cache_bytes, last.upstream_bytes), (50, 0));
        assert!(h[..BUCKETS - 2].iter().all(|b| b.requests.is_empty()));
        // Seven hours later the old buckets are gone, and memory stays bounded.
        for i in 0..100 {
            t.sample(
                totals(4 + i, 1, 6 + i, 150, 40),
                t0 + 7 * 3600 + i * BUCKET_SECS,
            );
        }
        assert_eq!(t.lock().buckets.len(), BUCKETS);
        let h = t.history(t0 + 7 * 3600 + 99 * BUCKET_SECS);
        assert!(h.iter().all(|b| b.requests == [("debian".to_string(), 1)]));
    }
}
