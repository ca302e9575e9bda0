//! The cache engine: look-up, single-flight fills, and the in-memory index of entries.
//!
//! A request asks [`Cache::lookup`]. A fresh entry is a hit. Otherwise the request joins the
//! fill in progress for its key, or starts one: exactly one upstream request per key at a
//! time, however many clients wait. The fill runs in its own task, so a client that hangs up
//! does not abort it; clients follow it through a watch channel ([`fill::FillState`]) and read
//! the growing body file as bytes arrive.

pub mod body;
pub mod fill;
pub mod key;
pub mod meta;
pub mod policy;
pub mod serve;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;
use url::Url;

use crate::config::Tuning;
use crate::distro::class::FileClass;
use crate::storage::StorageError;
use crate::storage::disk::DiskStore;
use crate::upstream::Upstream;
use fill::FillState;
use key::CacheKey;
use meta::{EntryMeta, unix_now};

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
    },
}

/// The cache: storage, index and fills in progress.
#[derive(Debug)]
pub struct Cache {
    store: DiskStore,
    upstream: Upstream,
    tuning: Tuning,
    /// Entries known to be stored; a miss here falls back to reading the metadata from disk.
    index: Mutex<HashMap<CacheKey, Arc<EntryMeta>>>,
    /// Fills in progress, by key.
    fills: Mutex<HashMap<CacheKey, watch::Receiver<FillState>>>,
}

/// What a fill needs to know about the request that started it.
#[derive(Debug, Clone)]
pub struct FillRequest {
    pub key: CacheKey,
    pub url: Url,
    pub class: FileClass,
    /// The path inside the repo (the key without its namespace).
    pub path: String,
}

impl Cache {
    /// A cache over `store`, filling from `upstream`.
    pub fn new(store: DiskStore, upstream: Upstream, tuning: Tuning) -> Cache {
        Cache {
            store,
            upstream,
            tuning,
            index: Mutex::default(),
            fills: Mutex::default(),
        }
    }

    /// The storage backend.
    pub fn store(&self) -> &DiskStore {
        &self.store
    }

    /// Timeouts and freshness windows in force.
    pub fn tuning(&self) -> &Tuning {
        &self.tuning
    }

    fn indexed(&self, key: &CacheKey) -> Option<Arc<EntryMeta>> {
        self.index
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    fn remember(&self, key: CacheKey, meta: Arc<EntryMeta>) {
        self.index
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, meta);
    }

    /// Forgets an entry whose body could not be read, so that the next request refills it.
    pub fn forget(&self, key: &CacheKey) {
        self.index
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }

    /// The stored entry for `key`, fresh or not.
    pub async fn entry(&self, key: &CacheKey) -> Result<Option<Arc<EntryMeta>>, StorageError> {
        if let Some(meta) = self.indexed(key) {
            return Ok(Some(meta));
        }
        let Some(meta) = self.store.load(key).await? else {
            return Ok(None);
        };
        let meta = Arc::new(meta);
        self.remember(key.clone(), meta.clone());
        Ok(Some(meta))
    }

    /// A fresh entry, or the fill to follow (joined or started).
    pub async fn lookup(self: &Arc<Self>, request: FillRequest) -> Result<Lookup, StorageError> {
        let stored = self.entry(&request.key).await?;
        if let Some(meta) = stored.as_ref().filter(|m| m.is_fresh(unix_now())) {
            return Ok(Lookup::Hit(meta.clone()));
        }
        let mut fills = self.fills.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(rx) = fills.get(&request.key) {
            return Ok(Lookup::Fill {
                rx: rx.clone(),
                stale: stored,
            });
        }
        // A fill may have committed between the look-up above and taking the lock.
        let current = self.indexed(&request.key).or(stored);
        if let Some(meta) = current.as_ref().filter(|m| m.is_fresh(unix_now())) {
            return Ok(Lookup::Hit(meta.clone()));
        }
        let (tx, rx) = watch::channel(FillState::Pending);
        fills.insert(request.key.clone(), rx.clone());
        drop(fills);
        tokio::spawn(fill::run(self.clone(), request, current.clone(), tx));
        Ok(Lookup::Fill { rx, stale: current })
    }

    fn fill_finished(&self, key: &CacheKey) {
        self.fills
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }
}
