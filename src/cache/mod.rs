//! The cache engine: look-up, single-flight fills, and the in-memory index of entries.
//!
//! A request asks [`Cache::lookup`]. A fresh entry is a hit. Otherwise the request joins the
//! fill in progress for its key, or starts one: exactly one upstream request per key at a
//! time, however many clients wait. The fill runs in its own task, so a client that hangs up
//! does not abort it; clients follow it through a watch channel ([`fill::FillState`]) and read
//! the growing body file as bytes arrive.

pub mod body;
mod capacity;
pub use capacity::{CacheStats, Removal};
pub mod eviction;
pub mod fill;
pub mod hot;
pub mod index;
mod learn;
pub mod policy;
pub mod scrub;
pub mod serve;
pub mod verify;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio::sync::watch;

use crate::config::{CacheLimits, Tuning};
use crate::distro::class::FileClass;
use crate::mirror::MirrorSet;
use crate::storage::CacheKey;
use crate::storage::EntryMeta;
use crate::storage::{StorageError, Store};
use crate::telemetry::metrics::Metrics;
use crate::unix_now;
use crate::upstream::Upstream;
use eviction::Entries;
use fill::FillState;
use index::{Expectation, IndexTables};

/// What a look-up found.
#[derive(Debug)]
pub enum Lookup {
    /// A fresh entry: serve it.
    Hit(Arc<EntryMeta>),
    /// Follow this fill. `stale` is the entry being revalidated or replaced, if any: it is
    /// served when the mirror fails (stale-if-error).
    Fill {
        rx: watch::Receiver<FillState>,
        stale: Option<Arc<EntryMeta>>,
        /// When the fill started (a joined fill may have been running for a while).
        since: Instant,
    },
    /// Nothing fresh is stored and no fill is running, and none was started.
    Absent,
}

/// The cache: storage, index and fills in progress.
#[derive(Debug)]
pub struct Cache {
    store: Store,
    upstream: Upstream,
    tuning: Tuning,
    limits: CacheLimits,
    metrics: Arc<Metrics>,
    /// Entries known to be stored, with size and last access. Until the start-up scan is done
    /// (`loaded`), a miss here falls back to reading the metadata from disk.
    entries: Mutex<Entries>,
    loaded: AtomicBool,
    /// Fills in progress, by key.
    fills: Mutex<HashMap<CacheKey, (watch::Receiver<FillState>, Instant)>>,
    /// What Release and Packages indexes say about other files.
    indexes: IndexTables,
    hits: AtomicU64,
    misses: AtomicU64,
    /// Last time (unix seconds) a storage problem was logged, to log it once a minute.
    space_warned: AtomicU64,
    /// The last storage problem (unix seconds, what), until a commit succeeds.
    storage_problem: Mutex<Option<(u64, String)>>,
    /// Outcome of the last request to each repo's mirror.
    mirror_health: Mutex<HashMap<String, MirrorHealth>>,
    /// Small bodies in memory.
    pub hot: hot::HotBodies,
}

/// The last thing a mirror did, for health checks and the status page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MirrorHealth {
    pub ok: bool,
    /// Unix seconds.
    pub at: u64,
    pub error: Option<String>,
}

/// What a fill needs to know about the request that started it.
#[derive(Debug, Clone)]
pub struct FillRequest {
    pub key: CacheKey,
    /// The repo's mirrors, tried in turn.
    pub mirrors: Arc<MirrorSet>,
    pub class: FileClass,
    /// The path inside the repo (the key without its namespace).
    pub path: String,
    /// The repo id (the key's namespace).
    pub repo: String,
    /// What an index says the file must be.
    pub expect: Option<Expectation>,
    /// Lifetime set by a distributions.yaml cache rule matching the path.
    pub rule_max_age: Option<u64>,
    /// The repo is an Alpine tree: an `.apk` is checked as an Alpine package.
    pub alpine: bool,
    /// Started by a read-ahead: until the flag is set (its request claimed it), the fill
    /// stops, storing nothing, once no one waits for it.
    pub speculative: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl FillRequest {
    /// Whether a transfer cut on one mirror may continue on another from where it stopped:
    /// the file cannot differ between mirrors (its name never changes meaning, or an index
    /// or the URL pins its hash, checked at the end).
    pub fn resumable(&self) -> bool {
        self.class == FileClass::Immutable
            || self.expect.is_some()
            || crate::distro::class::by_hash_digest(&self.path).is_some()
    }
}

impl Cache {
    /// A cache over `store`, filling from `upstream`, within `limits`.
    pub fn new(
        store: Store,
        upstream: Upstream,
        tuning: Tuning,
        limits: CacheLimits,
        metrics: Arc<Metrics>,
    ) -> Cache {
        Cache {
            store,
            upstream,
            tuning,
            limits,
            metrics,
            entries: Mutex::default(),
            loaded: AtomicBool::new(false),
            fills: Mutex::default(),
            indexes: IndexTables::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            space_warned: AtomicU64::new(0),
            storage_problem: Mutex::default(),
            mirror_health: Mutex::default(),
            hot: hot::HotBodies::new(16 << 20),
        }
    }

    /// The storage backend.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Timeouts and freshness windows in force.
    pub fn tuning(&self) -> &Tuning {
        &self.tuning
    }

    /// The metrics the cache keeps.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn indexed(&self, key: &CacheKey) -> Option<Arc<EntryMeta>> {
        self.entries().peek(key).map(|slot| slot.meta.clone())
    }

    /// Records a stored entry (a commit or a revalidation) and makes room if needed.
    fn remember(self: &Arc<Self>, key: CacheKey, meta: Arc<EntryMeta>) {
        let now = unix_now();
        self.entries().insert(key, meta, now, now);
        self.enforce_limits(now);
    }

    /// Records that a stored entry was served (LRU order), and counts the hit.
    pub fn served_from_cache(self: &Arc<Self>, key: &CacheKey) {
        let touched = self.entries().touch(
            key,
            unix_now(),
            self.tuning.access_persist_interval.as_secs(),
        );
        if let Some((meta, true)) = touched {
            let cache = self.clone();
            let key = key.clone();
            tokio::spawn(async move { cache.store.touch(&key, &meta).await });
        }
    }

    /// Counts a request for `repo` answered from the cache (`hit`) or from a mirror.
    pub fn count(&self, repo: &str, hit: bool) {
        if hit {
            self.hits.fetch_add(1, Ordering::Relaxed);
        } else {
            self.misses.fetch_add(1, Ordering::Relaxed);
        }
        self.metrics.count_cache(repo, hit);
    }

    /// Records how a mirror request for `repo` went.
    pub(crate) fn record_mirror(&self, repo: &str, error: Option<String>) {
        let health = MirrorHealth {
            ok: error.is_none(),
            at: unix_now(),
            error,
        };
        self.mirror_health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(repo.to_string(), health);
    }

    /// The last outcome per repo.
    pub fn mirror_health(&self) -> HashMap<String, MirrorHealth> {
        self.mirror_health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The stored entry for `key`, fresh or not. Memory answers while it knows every entry
    /// (the start-up listing is done and this process is the store's only writer); otherwise
    /// the store is asked. A store that fails to answer is taken as having nothing: the
    /// request goes to the mirror.
    pub async fn entry(&self, key: &CacheKey) -> Result<Option<Arc<EntryMeta>>, StorageError> {
        if let Some(meta) = self.indexed(key) {
            return Ok(Some(meta));
        }
        if self.loaded.load(Ordering::Acquire) && self.store.capabilities().sole_writer {
            return Ok(None);
        }
        self.load_from_store(key).await
    }

    /// Reads `key`'s record from the store into memory.
    async fn load_from_store(
        &self,
        key: &CacheKey,
    ) -> Result<Option<Arc<EntryMeta>>, StorageError> {
        let meta = match self.store.load(key).await {
            Ok(Some(meta)) => Arc::new(meta),
            Ok(None) => return Ok(None),
            Err(e) if e.is_remote() => {
                self.storage_failed(&format!("cannot read a record: {e}"));
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let now = unix_now();
        {
            let mut entries = self.entries();
            // A newer version than memory's, written by another instance, replaces it.
            let known = entries.peek(key).map(|s| s.meta.stored_at);
            if known.is_none_or(|at| at < meta.stored_at) {
                // Accesses are recorded from the store time on: the first hit through this
                // instance tells the others (on a shared store) the entry is in use.
                entries.insert(key.clone(), meta.clone(), now, meta.stored_at);
            }
        }
        self.update_gauges();
        Ok(Some(meta))
    }

    /// A fresh entry, or the fill to follow: joined, or started when `start_fill` (a HEAD or a
    /// byte range of a file not cached does not start one, and gets [`Lookup::Absent`]).
    pub async fn lookup(
        self: &Arc<Self>,
        request: &FillRequest,
        start_fill: bool,
    ) -> Result<Lookup, StorageError> {
        let mut stored = self.entry(&request.key).await?;
        // A stored package is not answered while a package index of its repo is being learnt:
        // the index may contradict it. (One not stored is fetched at once; its fill waits for
        // the index before its last byte.)
        let learnt = if stored.is_some()
            && request.expect.is_none()
            && index::is_package(&request.path)
            && self.indexes.settled(&request.repo, learn::SETTLE_MAX).await
        {
            self.indexes.expected(&request.repo, &request.path)
        } else {
            None
        };
        let expect = request.expect.as_ref().or(learnt.as_ref());
        // A copy that an index contradicts is neither served nor kept as a fallback.
        let agrees =
            |m: &Arc<EntryMeta>| expect.is_none_or(|e| m.status != 200 || e.digest.matches(m));
        // On a shared store another instance may hold the version the index names.
        if stored.as_ref().is_some_and(|m| !agrees(m)) && !self.store.capabilities().sole_writer {
            stored = self.load_from_store(&request.key).await?;
        }
        let stored = stored.filter(agrees);
        if let Some(meta) = stored.as_ref().filter(|m| m.is_fresh(unix_now())) {
            return Ok(Lookup::Hit(meta.clone()));
        }
        let mut fills = self.fills.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((rx, since)) = fills.get(&request.key) {
            return Ok(Lookup::Fill {
                rx: rx.clone(),
                stale: stored,
                since: *since,
            });
        }
        // A fill may have committed between the look-up above and taking the lock.
        let current = self.indexed(&request.key).filter(agrees).or(stored);

        if let Some(meta) = current.as_ref().filter(|m| m.is_fresh(unix_now())) {
            return Ok(Lookup::Hit(meta.clone()));
        }
        if !start_fill {
            return Ok(Lookup::Absent);
        }
        let (tx, rx) = watch::channel(FillState::Pending);
        let since = Instant::now();
        fills.insert(request.key.clone(), (rx.clone(), since));
        drop(fills);
        tokio::spawn(fill::run(
            self.clone(),
            FillRequest {
                expect: expect.cloned(),
                ..request.clone()
            },
            current.clone(),
            tx,
        ));
        Ok(Lookup::Fill {
            rx,
            stale: current,
            since,
        })
    }

    fn fill_finished(&self, key: &CacheKey) {
        self.fills
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }
}
