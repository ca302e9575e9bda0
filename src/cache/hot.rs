//! Small bodies kept in memory: a hit on a small file then costs no open, read or copy from
//! the page cache. Keyed by the body's file name, which is new at every commit, so a replaced
//! entry can never be answered from here; bounded in total size (random eviction: cheap, and
//! good enough for a hot set).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;

/// Bodies up to this size are kept.
pub const MAX_BODY: u64 = 64 * 1024;

/// What an entry costs beyond its body and name (map slot, allocation headers): empty bodies
/// (404s) cost something too, so that their number stays bounded.
const ENTRY_OVERHEAD: usize = 64;

fn cost(name: &str, body: &Bytes) -> usize {
    name.len() + body.len() + ENTRY_OVERHEAD
}

/// The small-body cache.
#[derive(Debug)]
pub struct HotBodies {
    capacity: usize,
    inner: Mutex<(HashMap<String, Bytes>, usize)>,
}

impl HotBodies {
    /// A cache holding at most `capacity` bytes of bodies (with names and overhead).
    pub fn new(capacity: usize) -> HotBodies {
        HotBodies {
            capacity,
            inner: Mutex::new((HashMap::new(), 0)),
        }
    }

    pub fn get(&self, body: &str) -> Option<Bytes> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .get(body)
            .cloned()
    }

    pub fn insert(&self, body: &str, bytes: Bytes) {
        let needed = cost(body, &bytes);
        if bytes.len() as u64 > MAX_BODY || needed > self.capacity {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (map, total) = &mut *inner;
        while *total + needed > self.capacity {
            let Some(victim) = map.keys().next().cloned() else {
                break;
            };
            if let Some(old) = map.remove(&victim) {
                *total -= cost(&victim, &old);
            }
        }
        *total += needed;
        if let Some(old) = map.insert(body.to_string(), bytes) {
            *total -= cost(body, &old);
        }
    }

    /// Drops one body (its entry was found damaged).
    pub fn remove(&self, body: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (map, total) = &mut *inner;
        if let Some(old) = map.remove(body) {
            *total -= cost(body, &old);
        }
    }

    /// Drops everything (purge).
    pub fn clear(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.0.clear();
        inner.1 = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded() {
        let hot = HotBodies::new(200);
        hot.insert("a", Bytes::from(vec![1; 60]));
        assert_eq!(hot.get("a").as_deref(), Some(&[1u8; 60][..]));
        hot.insert("b", Bytes::from(vec![2; 60]));
        let inner = hot.inner.lock().unwrap();
        assert_eq!(inner.0.len(), 1, "two entries of 125 do not fit in 200");
        assert_eq!(inner.1, 60 + 1 + ENTRY_OVERHEAD);
        drop(inner);
        assert_eq!(hot.get("b").as_deref(), Some(&[2u8; 60][..]));
        hot.insert("big", Bytes::from(vec![0; 300]));
        assert!(hot.get("big").is_none());
        hot.clear();
        assert!(hot.get("a").is_none() && hot.get("b").is_none());
    }

    #[test]
    fn empty_bodies_are_bounded_too() {
        let hot = HotBodies::new(1000);
        for i in 0..1000 {
            hot.insert(&format!("{i:04}"), Bytes::new());
        }
        let inner = hot.inner.lock().unwrap();
        assert!(
            inner.0.len() <= 1000 / (4 + ENTRY_OVERHEAD),
            "{}",
            inner.0.len()
        );
        assert!(inner.1 <= 1000);
    }
}
