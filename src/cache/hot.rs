//! Small bodies kept in memory: a hit on a small file then costs no open, read or copy from
//! the page cache. Keyed by the body's file name, which is new at every commit, so a replaced
//! entry can never be answered from here; bounded in total size (random eviction: cheap, and
//! good enough for a hot set).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;

/// Bodies up to this size are kept.
pub const MAX_BODY: u64 = 64 * 1024;

/// The small-body cache.
#[derive(Debug)]
pub struct HotBodies {
    capacity: usize,
    inner: Mutex<(HashMap<String, Bytes>, usize)>,
}

impl HotBodies {
    /// A cache holding at most `capacity` bytes of bodies.
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
        if bytes.len() as u64 > MAX_BODY || bytes.len() > self.capacity {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (map, total) = &mut *inner;
        while *total + bytes.len() > self.capacity {
            let Some(victim) = map.keys().next().cloned() else {
                break;
            };
            if let Some(old) = map.remove(&victim) {
                *total -= old.len();
            }
        }
        *total += bytes.len();
        if let Some(old) = map.insert(body.to_string(), bytes) {
            *total -= old.len();
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
        let hot = HotBodies::new(100);
        hot.insert("a", Bytes::from(vec![0; 60]));
        hot.insert("b", Bytes::from(vec![0; 60]));
        let inner = hot.inner.lock().unwrap();
        assert_eq!(inner.0.len(), 1);
        assert_eq!(inner.1, 60);
        drop(inner);
        hot.insert("big", Bytes::from(vec![0; 200]));
        assert!(hot.get("big").is_none());
        hot.clear();
        assert!(hot.get("a").is_none() && hot.get("b").is_none());
    }
}
