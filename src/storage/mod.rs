//! Where cache entries live: the storage contract and its two backends, a local directory
//! ([`disk::DiskStore`]) and an S3-compatible bucket ([`s3::S3Store`]).
//!
//! This module is a leaf: it owns the key ([`CacheKey`]) and the record ([`EntryMeta`]) and
//! knows nothing of HTTP, mirrors or the cache policy above it. The cache engine talks to a
//! [`Store`] and never asks which backend it is; it asks [`Store::capabilities`] instead.
//!
//! The contract every backend keeps:
//! - **Entries.** An entry is a record ([`EntryMeta`]) and a body. The record names the body's
//!   version (`EntryMeta::body`), new at every commit: a reader holding a version keeps
//!   reading that version, never a mix of two.
//! - **Look-up** ([`Store::load`]): the complete entry stored for a key, or none. A record
//!   that does not parse or belongs to another key or format version is none.
//! - **Reads** ([`Store::open`]): a byte range of a body, as a [`Source`]: bytes in memory, a
//!   local file, or a stream. [`StorageError::Missing`] when the version is gone (replaced or
//!   removed meanwhile); [`StorageError::Remote`] when the store failed to answer (the caller
//!   falls back to the mirror and keeps the entry).
//! - **Writes** ([`Store::begin`] → [`Writer`] → [`Store::commit`]): chunks are appended as
//!   they arrive to a local spool that readers of the fill follow ([`Writer::spool`]); commit
//!   makes the entry visible atomically, whole, with its record; a writer dropped without a
//!   commit leaves nothing (its spool is removed, an upload is aborted).
//! - **Changes**: [`Store::update_meta`] rewrites a record (same body); [`Store::remove`]
//!   removes an entry only while it is still the version given.
//! - **Listing** ([`Store::list`]): every entry as a stream of pages, to rebuild the index;
//!   it also removes what an interrupted run left (bodies no record names).
//! - **Accesses** ([`Store::touch`], [`Store::last_access`]): the last access, kept for LRU
//!   and TTL across restarts and, on a shared store, across instances.
//! - **Health and capabilities**: [`Store::check`] (a write probe, a bucket round trip),
//!   [`Store::space`] (free space, where it means something), [`Capabilities`] (local files,
//!   whether this process is the only writer).

pub mod disk;
mod key;
mod meta;
pub mod s3;
mod spool;

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

pub use key::CacheKey;
pub use meta::{EntryMeta, META_VERSION};
pub use spool::{FileReader, Spool};

/// Storage failures. Paths and object names are for the operator's log, never sent to clients.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("storage task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The store did not answer, or answered with a failure (timeout, refused connection,
    /// 5xx, throttling, a redirect, which is never followed): the entry is not at fault.
    #[error("object store {op}: {detail}")]
    Remote { op: &'static str, detail: String },
    /// The body version asked for is not there (removed or replaced meanwhile).
    #[error("stored body missing: {0}")]
    Missing(String),
}

impl StorageError {
    /// Whether the store itself failed (the entry may be fine).
    pub fn is_remote(&self) -> bool {
        matches!(self, StorageError::Remote { .. })
    }
}

pub(crate) fn io<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StorageError + 'a {
    move |source| StorageError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A body (or a range of it) to send.
pub enum Source {
    /// The whole body of a local file, whose length was checked against its record.
    File(File),
    /// The bytes asked for, as they come.
    Stream(BoxStream<'static, std::io::Result<Bytes>>),
}

/// One stored entry found by a listing, with its last access (unix seconds).
#[derive(Debug)]
pub struct Listed {
    pub meta: EntryMeta,
    pub accessed: u64,
}

/// What a backend can do.
#[derive(Debug, Clone, Copy)]
pub struct Capabilities {
    /// `disk` or `s3`.
    pub name: &'static str,
    /// Bodies are local files ([`Source::File`]): the scrub reads them back.
    pub local_files: bool,
    /// This process is the only writer: the index built from a listing stays complete, and a
    /// key missing from it is not stored. A shared store is asked on a miss.
    pub sole_writer: bool,
}

/// Labels of the storage operation metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub backend: &'static str,
    pub op: &'static str,
}

/// Storage operation metrics, registered by the telemetry module.
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    pub operations: Family<OpLabel, Counter>,
    pub errors: Family<OpLabel, Counter>,
    pub duration: Family<OpLabel, Histogram>,
    /// Bytes read from spools for uploads and not yet sent, all uploads together.
    pub upload_buffered: Gauge,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            operations: Family::default(),
            errors: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 14))
            }),
            upload_buffered: Gauge::default(),
        }
    }
}

impl StoreMetrics {
    /// Makes the operation and error counters of `backend`'s `ops` exist, at zero.
    pub(crate) fn zero(&self, backend: &'static str, ops: &[&'static str]) {
        for &op in ops {
            let label = OpLabel { backend, op };
            drop(self.operations.get_or_create(&label));
            drop(self.errors.get_or_create(&label));
        }
    }

    pub(crate) fn observe(
        &self,
        backend: &'static str,
        op: &'static str,
        started: std::time::Instant,
        ok: bool,
    ) {
        let label = OpLabel { backend, op };
        self.operations.get_or_create(&label).inc();
        if !ok {
            self.errors.get_or_create(&label).inc();
        }
        self.duration
            .get_or_create(&label)
            .observe(started.elapsed().as_secs_f64());
    }
}

/// A body being written; see the module doc.
#[derive(Debug)]
pub struct Writer {
    spool: Spool,
    upload: Option<s3::Upload>,
}

impl Writer {
    /// The spool's read handle, for the readers of a fill in progress.
    pub fn spool(&self) -> Arc<File> {
        self.spool.reader()
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.spool.written()
    }

    /// Appends `data`.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), StorageError> {
        self.spool.write(data).await
    }

    /// Makes what was appended readable through [`Writer::spool`] and lets the backend move
    /// it on (an upload part).
    pub async fn flush(&mut self) -> Result<(), StorageError> {
        self.spool.flush().await?;
        if let Some(upload) = &self.upload {
            upload.progress(self.spool.written());
        }
        Ok(())
    }
}

/// The configured backend.
#[derive(Debug)]
pub enum Store {
    Disk(disk::DiskStore),
    S3(s3::S3Store),
}

impl Store {
    pub fn capabilities(&self) -> Capabilities {
        match self {
            Store::Disk(_) => Capabilities {
                name: "disk",
                local_files: true,
                sole_writer: true,
            },
            Store::S3(_) => Capabilities {
                name: "s3",
                local_files: false,
                sole_writer: false,
            },
        }
    }

    /// The complete entry stored for `key`, if any.
    pub async fn load(&self, key: &CacheKey) -> Result<Option<EntryMeta>, StorageError> {
        match self {
            Store::Disk(d) => d.load(key).await,
            Store::S3(s) => s.load(key).await,
        }
    }

    /// Bytes `start..end` of `meta`'s body. A disk body comes whole as a file (checked
    /// against the record's length); the caller reads the range from it.
    pub async fn open(
        &self,
        meta: &EntryMeta,
        start: u64,
        end: u64,
    ) -> Result<Source, StorageError> {
        match self {
            Store::Disk(d) => d.open_checked(meta).map(Source::File),
            Store::S3(s) => s.open(meta, start, end).await,
        }
    }

    /// Starts writing a body of `key`; `len` is its length when announced.
    pub async fn begin(&self, key: &CacheKey, len: Option<u64>) -> Result<Writer, StorageError> {
        match self {
            Store::Disk(d) => Ok(Writer {
                spool: d.create_spool().await?,
                upload: None,
            }),
            Store::S3(s) => {
                let spool = s.create_spool().await?;
                let upload = s.start_upload(key, spool.reader(), len);
                Ok(Writer {
                    spool,
                    upload: Some(upload),
                })
            }
        }
    }

    /// Makes the written body `key`'s entry, described by `meta` (whose `body` is set here).
    pub async fn commit(
        &self,
        key: &CacheKey,
        writer: Writer,
        meta: EntryMeta,
    ) -> Result<EntryMeta, StorageError> {
        match self {
            Store::Disk(d) => d.commit(key, writer.spool, meta).await,
            Store::S3(s) => s.commit(key, writer, meta).await,
        }
    }

    /// Replaces the record of an existing entry (after a revalidation), body unchanged.
    pub async fn update_meta(&self, key: &CacheKey, meta: &EntryMeta) -> Result<(), StorageError> {
        match self {
            Store::Disk(d) => d.update_meta(key, meta).await,
            Store::S3(s) => s.update_meta(key, meta).await,
        }
    }

    /// Removes `key`'s entry if it is still the version `meta` describes.
    pub async fn remove(&self, key: &CacheKey, meta: &EntryMeta) -> Result<(), StorageError> {
        match self {
            Store::Disk(d) => d.remove(key, meta).await,
            Store::S3(s) => s.remove(key, meta).await,
        }
    }

    /// Every entry, a page at a time; removes what an interrupted run left older than
    /// `orphans_before`.
    pub fn list(
        &self,
        orphans_before: SystemTime,
    ) -> BoxStream<'_, Result<Vec<Listed>, StorageError>> {
        match self {
            Store::Disk(d) => d.list(orphans_before),
            Store::S3(s) => s.list(),
        }
    }

    /// Records an access to `key`'s entry now.
    pub async fn touch(&self, key: &CacheKey, meta: &EntryMeta) {
        match self {
            Store::Disk(d) => d.touch(meta, crate::unix_now()).await,
            Store::S3(s) => s.touch(key).await,
        }
    }

    /// The last access recorded for `key` by any instance sharing the store (unix seconds),
    /// where the store keeps one apart from this process's own memory.
    pub async fn last_access(&self, key: &CacheKey) -> Option<u64> {
        match self {
            Store::Disk(_) => None,
            Store::S3(s) => s.last_access(key).await,
        }
    }

    /// Whether the store works: a write probe on disk, a bucket round trip on S3.
    pub async fn check(&self) -> Result<(), StorageError> {
        match self {
            Store::Disk(d) => d.check_writable().await,
            Store::S3(s) => s.check().await,
        }
    }

    /// Free and total bytes, where the store has a size (a local file system).
    pub fn space(&self) -> Option<(u64, u64)> {
        match self {
            Store::Disk(d) => d.space(),
            Store::S3(_) => None,
        }
    }

    /// Periodic housekeeping of a shared store: aborts uploads and removes bodies that
    /// interrupted runs of any instance left behind. Nothing to do on disk (the listing does
    /// it at start).
    pub async fn maintain(&self) {
        if let Store::S3(s) = self {
            s.sweep().await;
        }
    }
}
