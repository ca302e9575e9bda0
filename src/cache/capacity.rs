//! Keeping the cache within its limits: admission (file size, free space), eviction by size
//! (LRU) and by TTL (from last access), cleanup, purge, the start-up index scan, and stats.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::Cache;
use super::eviction::Slot;
use crate::storage::CacheKey;
use crate::storage::EntryMeta;
use crate::units::human_size;
use crate::unix_now;

/// The answer of `GET /api/cache/stats`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CacheStats {
    pub total_size_bytes: u64,
    pub total_size_human: String,
    pub item_count: usize,
    pub stale_count: usize,
    pub hit_count: u64,
    pub miss_count: u64,
    pub hit_rate: f64,
}

/// What a cleanup or purge removed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Removal {
    pub removed_items: usize,
    pub removed_bytes: u64,
    pub duration_ms: u64,
}

/// Free space under which new entries are not stored: 5 % of the file system, at most 5 GiB.
fn free_space_floor(total: u64) -> u64 {
    (total / 20).min(5 << 30)
}

impl Cache {
    /// Whether a new entry of `len` bytes (when known) may be stored, making room first: not
    /// when it is larger than the whole size limit; otherwise least recently used entries are
    /// removed when the size limit or the file system's free space requires it, and the entry
    /// is refused only when even that cannot make room. A refused file is still streamed to its
    /// clients, from the mirror.
    pub(super) async fn admit(self: &Arc<Self>, len: Option<u64>) -> bool {
        if let Some(len) = len.filter(|&n| n > self.limits.max_object_bytes) {
            tracing::info!(
                bytes = len,
                limit = self.limits.max_object_bytes,
                "file larger than --max-object-size: streamed, not kept"
            );
            return false;
        }
        if let (Some(len), Some(max)) = (len, self.limits.max_size_bytes)
            && len > max
        {
            tracing::info!(
                bytes = len,
                limit = max,
                "file larger than the whole cache: streamed, not kept"
            );
            return false;
        }
        let now = unix_now();
        if let (Some(len), Some(max)) = (len, self.limits.max_size_bytes) {
            let evicted = self.entries().evict(now, Some(max - len), None);
            self.delete(self.evicted(evicted, "to make room for a new one"), true)
                .await;
        }
        let Some((free, total)) = self.store.space() else {
            return true;
        };
        let floor = self
            .tuning
            .free_space_floor
            .unwrap_or_else(|| free_space_floor(total));
        let need = len.unwrap_or(0).saturating_add(floor);
        if free >= need {
            return true;
        }
        // The cache may use the space it holds: evict enough to fit.
        let short = need - free;
        let held = self.entries().total_bytes();
        if held >= short {
            let evicted = self.entries().evict(now, Some(held - short), None);
            let gone = self.evicted(evicted, "to make room for a new one");
            let freed: u64 = gone.iter().map(|(_, s)| s.meta.len).sum();
            self.delete(gone, false).await;
            // Counted, not measured again: a removed body still being read frees its blocks
            // only when its last reader closes it (a write that still finds the disk full
            // fails the fill cleanly, and its readers finish from the mirror).
            if freed >= short {
                return true;
            }
        }
        self.storage_failed(&format!(
            "cache file system nearly full ({free} bytes free, {floor} kept free): new files are streamed, not stored"
        ));
        false
    }

    /// Accounts for entries just evicted from the index (gauges, counter, log, saying `why`)
    /// and returns what to remove from storage.
    fn evicted(&self, evicted: Vec<(CacheKey, Slot)>, why: &str) -> Vec<(CacheKey, Slot)> {
        self.update_gauges();
        if !evicted.is_empty() {
            self.metrics.cache_evictions.inc_by(evicted.len() as u64);
            tracing::info!(
                entries = evicted.len(),
                "evicted least recently used entries {why}"
            );
        }
        evicted
    }

    /// Drops an entry whose body turned out damaged (truncated, changed, unreadable), from
    /// memory and storage, unless a newer version replaced it meanwhile; counted in
    /// `apt_proxy_cache_damaged_entries_total`.
    pub fn drop_damaged(self: &Arc<Self>, key: &CacheKey, meta: &Arc<EntryMeta>) {
        self.metrics.cache_damaged.inc();
        self.drop_entry(key, meta);
    }

    /// Drops an entry from memory and storage, unless a newer version replaced it meanwhile.
    pub(super) fn drop_entry(self: &Arc<Self>, key: &CacheKey, meta: &Arc<EntryMeta>) {
        let mut entries = self.entries();
        if entries
            .peek(key)
            .is_some_and(|slot| slot.meta.body == meta.body)
        {
            entries.remove(key);
        }
        drop(entries);
        self.hot.remove(&meta.body);
        self.update_gauges();
        let cache = self.clone();
        let (key, meta) = (key.clone(), meta.clone());
        tokio::spawn(async move {
            if let Err(e) = cache.store.remove(&key, &meta).await {
                tracing::warn!(key = %key, error = %e, "removing a cache entry failed");
            }
        });
    }

    /// Records a storage problem (full or failing disk) for the health check; logged at most
    /// once a minute.
    pub(super) fn storage_failed(&self, problem: &str) {
        let now = unix_now();
        if now.saturating_sub(self.space_warned.swap(now, Ordering::Relaxed)) >= 60 {
            tracing::warn!(problem, "cache storage problem");
        }
        *self
            .storage_problem
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((now, problem.to_string()));
    }

    /// A commit succeeded: the storage works again.
    pub(super) fn storage_ok(&self) {
        *self
            .storage_problem
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    /// The last storage problem and when it happened (unix seconds), until a commit succeeds.
    pub fn storage_problem(&self) -> Option<(u64, String)> {
        self.storage_problem
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Removes what the size limit requires after an entry was added.
    pub(super) fn enforce_limits(self: &Arc<Self>, now: u64) {
        let evicted = self.entries().evict(now, self.limits.max_size_bytes, None);
        let gone = self.evicted(evicted, "to respect the size limit");
        if !gone.is_empty() {
            let cache = self.clone();
            tokio::spawn(async move { cache.delete(gone, true).await });
        }
    }

    /// Removes evicted entries from the store. With `respect_access`, on a store shared by
    /// several instances, an entry read through another instance since this one last saw it
    /// used is kept (and its access time learnt): the LRU order and the TTL are the fleet's,
    /// not one instance's.
    /// Returns the entries and bytes kept that way.
    async fn delete(&self, gone: Vec<(CacheKey, Slot)>, respect_access: bool) -> (usize, u64) {
        let shared = !self.store.capabilities().sole_writer;
        let (mut kept, mut kept_bytes) = (0usize, 0u64);
        for (key, slot) in gone {
            if respect_access
                && shared
                && let Some(at) = self.store.last_access(&key).await
                && at > slot.last_access
            {
                kept_bytes += slot.meta.len;
                self.entries().insert_scanned(key, slot.meta, at);
                kept += 1;
                continue;
            }
            if let Err(e) = self.store.remove(&key, &slot.meta).await {
                tracing::warn!(key = %key, error = %e, "removing a cache entry failed");
            }
        }
        if kept > 0 {
            self.update_gauges();
            tracing::info!(kept, "entries read through another instance were kept");
        }
        (kept, kept_bytes)
    }

    pub(super) fn update_gauges(&self) {
        let (bytes, items) = {
            let entries = self.entries();
            (entries.total_bytes(), entries.len())
        };
        self.metrics.cache_size_bytes.set(bytes as i64);
        self.metrics.cache_items.set(items as i64);
    }

    /// Removes entries not used within the TTL, then what the size limit requires.
    pub async fn cleanup(&self) -> Removal {
        let started = Instant::now();
        if !self.store.capabilities().sole_writer {
            // What other instances stored counts toward the limits too.
            self.scan_store(std::time::SystemTime::now()).await;
        }
        let ttl = self.limits.ttl.map(|d| d.as_secs());
        let evicted = self
            .entries()
            .evict(unix_now(), self.limits.max_size_bytes, ttl);
        let evicted = self.evicted(evicted, "by the cleanup (TTL, size limit)");
        let removed_bytes: u64 = evicted.iter().map(|(_, s)| s.meta.len).sum();
        let removed_items = evicted.len();
        let (kept_items, kept_bytes) = self.delete(evicted, true).await;
        let (removed_items, removed_bytes) =
            (removed_items - kept_items, removed_bytes - kept_bytes);
        self.metrics
            .cleanup_duration
            .observe(started.elapsed().as_secs_f64());
        tracing::info!(removed_items, removed_bytes, "cache cleanup done");
        Removal {
            removed_items,
            removed_bytes,
            duration_ms: started.elapsed().as_millis() as u64,
        }
    }

    /// Removes every entry. Transfers in flight finish: a body being read lives until closed.
    pub async fn purge(&self) -> Removal {
        let started = Instant::now();
        if !self.store.capabilities().sole_writer {
            self.scan_store(std::time::SystemTime::now()).await;
        }
        let all = self.entries().drain();
        self.hot.clear();
        self.update_gauges();
        let removed_bytes = all.iter().map(|(_, s)| s.meta.len).sum();
        let removed_items = all.len();
        self.delete(all, false).await;
        tracing::info!(removed_items, removed_bytes, "cache purged");
        Removal {
            removed_items,
            removed_bytes,
            duration_ms: started.elapsed().as_millis() as u64,
        }
    }

    /// Counters and totals, from memory: never a walk of the directory.
    pub fn stats(&self) -> CacheStats {
        let (total, items, stale) = {
            let entries = self.entries();
            (
                entries.total_bytes(),
                entries.len(),
                entries.stale_count(unix_now()),
            )
        };
        let (hits, misses) = (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        );
        let rate = if hits + misses == 0 {
            0.0
        } else {
            hits as f64 / (hits + misses) as f64
        };
        CacheStats {
            total_size_bytes: total,
            total_size_human: human_size(total),
            item_count: items,
            stale_count: stale,
            hit_count: hits,
            miss_count: misses,
            hit_rate: (rate * 1000.0).round() / 1000.0,
        }
    }

    /// Whether the start-up scan of the cache directory is done.
    pub fn index_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Reads every entry's record into the index (in the background at start), removing the
    /// bodies an interrupted run left older than `orphans_before`, then applies the limits.
    /// Entries stored meanwhile by this run are kept as they are.
    pub async fn load_index(self: &Arc<Self>, orphans_before: std::time::SystemTime) {
        let started = Instant::now();
        let Some(n) = self.scan_store(orphans_before).await else {
            // A shared store is asked on every miss anyway: serve, and list again at the
            // next cleanup.
            if !self.store.capabilities().sole_writer {
                self.loaded.store(true, Ordering::Release);
            }
            return;
        };
        // The Release files are known, and package requests wait for the package indexes in
        // the cache, from now on.
        self.restore_indexes().await;
        self.loaded.store(true, Ordering::Release);
        let (bytes, items) = {
            let e = self.entries();
            (e.total_bytes(), e.len())
        };
        tracing::info!(
            scanned = n,
            items,
            bytes,
            ms = started.elapsed().as_millis() as u64,
            "cache index loaded"
        );
        self.enforce_limits(unix_now());
    }

    /// Adds what the store lists to the index, page by page: entries not known yet, and
    /// later accesses of known ones (through another instance). Returns how many entries were
    /// listed, `None` when listing failed.
    async fn scan_store(&self, orphans_before: std::time::SystemTime) -> Option<usize> {
        use futures_util::StreamExt;
        let mut pages = self.store.list(orphans_before);
        let mut n = 0;
        while let Some(page) = pages.next().await {
            let page = match page {
                Ok(page) => page,
                Err(e) => {
                    tracing::error!(error = %e, "listing the cache storage failed; entries are read on demand");
                    self.storage_failed(&format!("cannot list the cache: {e}"));
                    return None;
                }
            };
            n += page.len();
            let mut entries = self.entries();
            for listed in page {
                let key = CacheKey::from_stored(listed.meta.key.clone());
                if !entries.insert_scanned(key.clone(), Arc::new(listed.meta), listed.accessed) {
                    entries.learn_access(&key, listed.accessed);
                }
            }
        }
        self.update_gauges();
        Some(n)
    }

    /// Runs the store's housekeeping every `every` until the process ends.
    pub async fn run_maintenance(self: Arc<Self>, every: std::time::Duration) {
        loop {
            self.store.maintain().await;
            tokio::time::sleep(every).await;
        }
    }

    /// Runs [`Cache::cleanup`] every cleanup interval (if one is set) until the process ends.
    pub async fn run_cleanups(self: Arc<Self>) {
        let Some(every) = self.limits.cleanup_interval else {
            return;
        };
        let mut ticker = tokio::time::interval(every);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            self.cleanup().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_free_space_floor() {
        assert_eq!(free_space_floor(100 << 30), 5 << 30);
        assert_eq!(free_space_floor(20 << 30), 1 << 30);
    }
}
