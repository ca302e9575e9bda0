//! The in-memory index of stored entries: size, last access, and which entries to remove to
//! respect the size limit and the TTL.
//!
//! Pure bookkeeping, no I/O: the cache asks it what to remove and removes it. Time is passed
//! in (unix seconds), so the policy is tested with any clock.
//!
//! - LRU by last access (hits included), not by store time: a package used every day stays.
//!   Of entries last used within the same second, the one used first goes first.
//! - When over the limit, entries are removed down to 95 % of it, stale indexes first (they
//!   would be revalidated anyway), then least recently used.
//! - TTL counts from the last access.

use std::collections::HashMap;
use std::sync::Arc;

use crate::distro::class::{FileClass, classify};
use crate::storage::CacheKey;
use crate::storage::EntryMeta;

/// One stored entry.
#[derive(Debug, Clone)]
pub struct Slot {
    pub meta: Arc<EntryMeta>,
    /// Unix seconds of the last time it was served or stored.
    pub last_access: u64,
    /// Last access written to disk (the body's mtime), so that LRU order survives a restart.
    pub persisted_access: u64,
    /// When it was last stored, served or seen used in the store's listing, in this process's
    /// order of events (0: found in the store, order unknown): of two entries used within the
    /// same second, the one used first goes first.
    recency: u64,
}

/// Every stored entry known to this process.
#[derive(Debug, Default)]
pub struct Entries {
    map: HashMap<CacheKey, Slot>,
    total_bytes: u64,
    /// Counts stores and accesses, for [`Slot::recency`].
    events: u64,
}

impl Entries {
    /// Every entry's key and metadata (for a scrub).
    pub fn metas(&self) -> Vec<(CacheKey, Arc<EntryMeta>)> {
        self.map
            .iter()
            .map(|(k, s)| (k.clone(), s.meta.clone()))
            .collect()
    }

    /// The entry for `key`, without touching it.
    pub fn peek(&self, key: &CacheKey) -> Option<&Slot> {
        self.map.get(key)
    }

    /// Records an access at `now`; returns the entry and whether its access time should be
    /// written to disk (once per `persist_every` seconds).
    pub fn touch(
        &mut self,
        key: &CacheKey,
        now: u64,
        persist_every: u64,
    ) -> Option<(Arc<EntryMeta>, bool)> {
        let slot = self.map.get_mut(key)?;
        self.events += 1;
        slot.recency = self.events;
        slot.last_access = slot.last_access.max(now);
        let persist = now.saturating_sub(slot.persisted_access) >= persist_every;
        if persist {
            slot.persisted_access = now;
        }
        Some((slot.meta.clone(), persist))
    }

    /// Adds or replaces an entry; returns the one it replaced.
    pub fn insert(
        &mut self,
        key: CacheKey,
        meta: Arc<EntryMeta>,
        last_access: u64,
        persisted_access: u64,
    ) -> Option<Slot> {
        self.total_bytes += meta.len;
        self.events += 1;
        let old = self.map.insert(
            key,
            Slot {
                meta,
                last_access,
                persisted_access,
                recency: self.events,
            },
        );
        if let Some(old) = &old {
            self.total_bytes -= old.meta.len;
        }
        old
    }

    /// Adds an entry found in the store unless one is already known (a newer one from this
    /// run). Its order among entries used within the same second is unknown: it goes first.
    pub fn insert_scanned(
        &mut self,
        key: CacheKey,
        meta: Arc<EntryMeta>,
        last_access: u64,
    ) -> bool {
        if self.map.contains_key(&key) {
            return false;
        }
        self.insert(key.clone(), meta, last_access, last_access);
        if let Some(slot) = self.map.get_mut(&key) {
            slot.recency = 0;
        }
        true
    }

    /// Learns a known entry's last access as the store lists it (read through another
    /// instance): only a later one than memory's counts as a use.
    pub fn learn_access(&mut self, key: &CacheKey, at: u64) {
        if let Some(slot) = self.map.get_mut(key)
            && at > slot.last_access
        {
            slot.last_access = at;
            self.events += 1;
            slot.recency = self.events;
        }
    }

    /// Removes an entry.
    pub fn remove(&mut self, key: &CacheKey) -> Option<Slot> {
        let old = self.map.remove(key)?;
        self.total_bytes -= old.meta.len;
        Some(old)
    }

    /// Removes every entry and returns them.
    pub fn drain(&mut self) -> Vec<(CacheKey, Slot)> {
        self.total_bytes = 0;
        self.map.drain().collect()
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Entries that are past their freshness at `now`.
    pub fn stale_count(&self, now: u64) -> usize {
        self.map.values().filter(|s| !s.meta.is_fresh(now)).count()
    }

    /// Removes and returns what must go at `now`: entries not accessed within `ttl` seconds,
    /// then, while the total exceeds `max_bytes`, stale indexes and least recently used
    /// entries down to 95 % of the limit.
    pub fn evict(
        &mut self,
        now: u64,
        max_bytes: Option<u64>,
        ttl: Option<u64>,
    ) -> Vec<(CacheKey, Slot)> {
        let mut out = Vec::new();
        if let Some(ttl) = ttl {
            let expired: Vec<CacheKey> = self
                .map
                .iter()
                .filter(|(_, s)| now.saturating_sub(s.last_access) > ttl)
                .map(|(k, _)| k.clone())
                .collect();
            for key in expired {
                if let Some(slot) = self.remove(&key) {
                    out.push((key, slot));
                }
            }
        }
        let Some(max) = max_bytes else { return out };
        if self.total_bytes <= max {
            return out;
        }
        let target = max - max / 20;
        let mut order: Vec<((bool, u64, u64), CacheKey)> = self
            .map
            .iter()
            .map(|(k, s)| {
                let path = k.as_str().split_once('/').map_or("", |(_, p)| p);
                let keep_first = classify(path) != FileClass::Volatile || s.meta.is_fresh(now);
                ((keep_first, s.last_access, s.recency), k.clone())
            })
            .collect();
        order.sort_unstable_by_key(|(rank, _)| *rank);
        for (_, key) in order {
            if self.total_bytes <= target {
                break;
            }
            if let Some(slot) = self.remove(&key) {
                out.push((key, slot));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::META_VERSION;

    fn meta(key: &str, len: u64, fresh_until: u64) -> Arc<EntryMeta> {
        Arc::new(EntryMeta {
            v: META_VERSION,
            key: key.into(),
            body: String::new(),
            status: 200,
            len,
            content_type: None,
            last_modified: None,
            etag: None,
            cache_control: None,
            sha256: String::new(),
            digests: Default::default(),
            stored_at: 0,
            fresh_until,
        })
    }

    fn add(e: &mut Entries, key: &str, len: u64, at: u64, fresh_until: u64) {
        e.insert(
            CacheKey::new("debian", key),
            meta(&format!("debian/{key}"), len, fresh_until),
            at,
            at,
        );
    }

    fn keys(v: &[(CacheKey, Slot)]) -> Vec<String> {
        let mut k: Vec<String> = v.iter().map(|(k, _)| k.as_str().to_string()).collect();
        k.sort();
        k
    }

    #[test]
    fn least_recently_used_goes_first_and_hits_count() {
        let mut e = Entries::default();
        add(&mut e, "pool/a.deb", 40, 100, u64::MAX);
        add(&mut e, "pool/b.deb", 40, 200, u64::MAX);
        add(&mut e, "pool/c.deb", 40, 300, u64::MAX);
        assert_eq!(e.total_bytes(), 120);
        // a is read again: b is now the least recently used.
        e.touch(&CacheKey::new("debian", "pool/a.deb"), 400, 3600);
        let gone = e.evict(500, Some(100), None);
        assert_eq!(keys(&gone), ["debian/pool/b.deb"]);
        assert_eq!(e.total_bytes(), 80);
        assert!(e.evict(500, Some(100), None).is_empty());
    }

    #[test]
    fn within_one_second_the_entry_used_first_goes_first() {
        // Many times over: the map's order is random, the choice must not be.
        for _ in 0..20 {
            let mut e = Entries::default();
            for name in ["a", "b", "c", "d"] {
                add(&mut e, &format!("pool/{name}.deb"), 10, 100, u64::MAX);
            }
            e.touch(&CacheKey::new("debian", "pool/a.deb"), 100, 3600);
            e.touch(&CacheKey::new("debian", "pool/c.deb"), 100, 3600);
            let gone = e.evict(100, Some(21), None);
            assert_eq!(keys(&gone), ["debian/pool/b.deb", "debian/pool/d.deb"]);
        }
        // What a listing of the store says: an older access than memory's changes nothing,
        // and an entry found there goes before those used in this run in the same second.
        for _ in 0..20 {
            let mut e = Entries::default();
            add(&mut e, "pool/a.deb", 10, 100, u64::MAX);
            add(&mut e, "pool/b.deb", 10, 100, u64::MAX);
            e.learn_access(&CacheKey::new("debian", "pool/a.deb"), 90);
            e.insert_scanned(
                CacheKey::new("debian", "pool/c.deb"),
                meta("debian/pool/c.deb", 10, u64::MAX),
                100,
            );
            let gone = e.evict(100, Some(11), None);
            assert_eq!(keys(&gone), ["debian/pool/a.deb", "debian/pool/c.deb"]);
        }
    }

    #[test]
    fn stale_indexes_go_before_packages() {
        let mut e = Entries::default();
        add(&mut e, "pool/old.deb", 50, 100, u64::MAX);
        add(
            &mut e,
            "dists/s/main/binary-amd64/Packages.gz",
            50,
            900,
            950,
        );
        let gone = e.evict(1000, Some(60), None);
        assert_eq!(
            keys(&gone),
            ["debian/dists/s/main/binary-amd64/Packages.gz"]
        );
    }

    #[test]
    fn ttl_counts_from_last_access() {
        let mut e = Entries::default();
        add(&mut e, "pool/daily.deb", 1, 0, u64::MAX);
        add(&mut e, "pool/once.deb", 1, 0, u64::MAX);
        for day in 1..10 {
            e.touch(
                &CacheKey::new("debian", "pool/daily.deb"),
                day * 86_400,
                3600,
            );
        }
        let gone = e.evict(10 * 86_400, None, Some(7 * 86_400));
        assert_eq!(keys(&gone), ["debian/pool/once.deb"]);
        assert_eq!(e.len(), 1);
    }

    #[test]
    fn access_is_persisted_hourly() {
        let mut e = Entries::default();
        add(&mut e, "pool/a.deb", 1, 1000, u64::MAX);
        let k = CacheKey::new("debian", "pool/a.deb");
        assert!(!e.touch(&k, 1500, 3600).unwrap().1);
        assert!(e.touch(&k, 4600, 3600).unwrap().1);
        assert!(!e.touch(&k, 4601, 3600).unwrap().1);
    }

    #[test]
    fn replacing_and_scanning_keep_totals_right() {
        let mut e = Entries::default();
        add(&mut e, "pool/a.deb", 10, 1, u64::MAX);
        add(&mut e, "pool/a.deb", 30, 2, u64::MAX);
        assert_eq!((e.len(), e.total_bytes()), (1, 30));
        assert!(!e.insert_scanned(
            CacheKey::new("debian", "pool/a.deb"),
            meta("debian/pool/a.deb", 5, 0),
            0
        ));
        assert!(e.insert_scanned(
            CacheKey::new("debian", "pool/b.deb"),
            meta("debian/pool/b.deb", 5, 0),
            0
        ));
        assert_eq!((e.len(), e.total_bytes(), e.stale_count(10)), (2, 35, 1));
        assert_eq!(e.drain().len(), 2);
        assert_eq!(e.total_bytes(), 0);
    }
}
