//! Learning from indexes: the Release files and repomd.xml that vouch for other indexes, and
//! the package indexes (Packages, primary metadata, APKINDEX) that vouch for packages.
//!
//! - A Release or repomd.xml is small: it is learnt before its clients get their last byte.
//! - A package index can be tens of megabytes: it is parsed on the blocking pool, off the
//!   client's path. Until that is done, a package of the same repo that is not stored is
//!   fetched at once but waits for it before its last byte (at most [`SETTLE_MAX`]), so that
//!   a client that reads the index and then asks for a package finds the package vouched for
//!   while the download and the parse overlap; a stored one waits before it is answered (the
//!   index may contradict it).
//! - A package stored before its index was learnt carries the digests the index may name
//!   (computed while it was written): when the index arrives, each stored package it lists is
//!   checked against it from its record, and one that contradicts it is dropped.
//! - After a restart, the indexes in the cache are learnt again in the background
//!   ([`Cache::restore_indexes`]).

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::Cache;
use super::index::{
    self, Digest, Expectation, IndexError, PackageFormat, PackageIndex, ReleaseTable,
};
use crate::storage::{CacheKey, EntryMeta, FileReader, Source};
use crate::telemetry::metrics::DistroLabel;

/// Longest a package request waits for its repo's package index to be learnt.
pub const SETTLE_MAX: Duration = Duration::from_secs(10);

/// Longest silence of a store read while a stored package index is learnt again.
const STORE_SILENCE: Duration = Duration::from_secs(30);

/// Stored entries checked against a new index per hold of the entries' lock.
const CHECK_BATCH: usize = 1024;

/// Stored entries by repo and path.
/// A repo's stored index files (path in the repo to record), as the restart lists them.
type StoredFiles = HashMap<String, Arc<EntryMeta>>;
type Stored = std::collections::BTreeMap<String, StoredFiles>;

/// A blocking reader over the chunks of an async stream (a body read from a remote store).
struct ChunkReader {
    rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

impl Cache {
    /// What an index says `path` in `repo` must be. After a restart, the Release of the path's
    /// suite is read back from the cache the first time it is needed. A package index being
    /// learnt is not waited for here (see [`Cache::lookup`] and the fill's end).
    pub async fn expectation(&self, repo: &str, path: &str) -> Option<Expectation> {
        if let Some(dir) = crate::distro::class::suite_dir(path)
            && !self.indexes.knows_release(repo, dir)
        {
            self.learn_stored_release(repo, dir, None).await;
        }
        self.indexes.expected(repo, path)
    }

    /// Learns the Release of `repo`'s directory `dir` from the cache: its InRelease, else its
    /// Release; recorded as absent when neither is stored (or readable), so that it is not
    /// looked for again. `known`: the repo's stored index records when the caller has them
    /// (the restart), so that none is looked up again.
    async fn learn_stored_release(&self, repo: &str, dir: &str, known: Option<&StoredFiles>) {
        for name in ["InRelease", "Release"] {
            let path = format!("{dir}{name}");
            let key = CacheKey::new(repo, &path);
            let meta = match known {
                Some(files) => files.get(&path).cloned(),
                None => self.entry(&key).await.ok().flatten(),
            };
            if let Some(text) = self.stored_text(repo, &key, meta).await {
                self.indexes.learn_release(repo, &path, &text);
                return;
            }
        }
        self.indexes.set_release(repo, dir, None);
    }

    /// The body of a stored 200 entry as text (for small index files), within the size
    /// limit of such files; an index past it is counted and not learnt from.
    async fn stored_text(
        &self,
        repo: &str,
        key: &CacheKey,
        meta: Option<Arc<EntryMeta>>,
    ) -> Option<String> {
        let meta = meta?;
        if meta.status != 200 {
            return None;
        }
        let input = self.stored_reader(&meta).await.ok()?;
        self.index_text(repo, key, input).await
    }

    /// A blocking reader over a stored body: its file, or the store's stream through a
    /// channel (a silence of [`STORE_SILENCE`] ends it with an error).
    async fn stored_reader(
        &self,
        meta: &EntryMeta,
    ) -> Result<Box<dyn Read + Send>, crate::storage::StorageError> {
        Ok(match self.store.open(meta, 0, meta.len).await? {
            Source::File(file) => Box::new(file),
            Source::Stream(mut stream) => {
                let (tx, rx) = tokio::sync::mpsc::channel(4);
                tokio::spawn(async move {
                    use futures_util::StreamExt;
                    loop {
                        let chunk = match tokio::time::timeout(STORE_SILENCE, stream.next()).await {
                            Ok(Some(chunk)) => chunk,
                            Ok(None) => break,
                            Err(_) => Err(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "the store sent nothing for 30 s",
                            )),
                        };
                        let failed = chunk.is_err();
                        if tx.send(chunk).await.is_err() || failed {
                            break;
                        }
                    }
                });
                Box::new(ChunkReader {
                    rx,
                    current: Bytes::new(),
                })
            }
        })
    }

    /// The text of an index (a Release or repomd), read on the blocking pool within the size
    /// limit of such files; one past it, or unreadable, is counted and not learnt from.
    pub(super) async fn index_text(
        &self,
        repo: &str,
        key: &CacheKey,
        input: impl Read + Send + 'static,
    ) -> Option<String> {
        let limit = self.tuning.index_limits.release_bytes;
        let read = tokio::task::spawn_blocking(move || index::read_text(input, limit))
            .await
            .ok()?;
        read.inspect_err(|e| self.unparsed(repo, key.as_str(), e))
            .ok()
    }

    /// Counts and logs an index that is served but not learnt from.
    fn unparsed(&self, repo: &str, key: &str, error: &IndexError) {
        tracing::warn!(key, error = %error, "index not parsed: the files it lists are not verified against it");
        self.metrics
            .index_unparsed
            .get_or_create(&DistroLabel {
                distro: repo.to_string(),
            })
            .inc();
    }

    /// Learns from an index just received (`body`: its spool). A Release or repomd.xml is
    /// learnt before this returns; a package index is parsed in the background.
    pub(crate) async fn learn(
        self: &Arc<Self>,
        repo: &str,
        path: &str,
        key: &CacheKey,
        body: Arc<std::fs::File>,
    ) {
        if index::is_release(path) || index::is_repomd(path) {
            let text = self.index_text(repo, key, FileReader::new(body)).await;
            if let Some(text) = text {
                if index::is_release(path) {
                    self.indexes.learn_release(repo, path, &text);
                } else {
                    self.indexes.learn_repomd(repo, path, &text);
                }
            }
            return;
        }
        let Some(kind) = self.indexes.package_index(repo, path) else {
            return;
        };
        let learning = Arc::new(self.indexes.learning(repo));
        let cache = self.clone();
        let (repo, key) = (repo.to_string(), key.clone());
        tokio::spawn(async move {
            cache
                .learn_packages(&repo, &key, kind, FileReader::new(body))
                .await;
            drop(learning);
        });
    }

    /// Parses a package index on the blocking pool, adds what it lists to the tables, and
    /// checks the stored packages it lists against it.
    async fn learn_packages(
        self: &Arc<Self>,
        repo: &str,
        key: &CacheKey,
        kind: PackageIndex,
        input: impl Read + Send + 'static,
    ) {
        let limits = self.tuning.index_limits;
        let PackageIndex {
            format,
            compression,
            root,
        } = kind;
        let parsed = tokio::task::spawn_blocking(move || match format {
            PackageFormat::Packages => index::parse_packages(input, compression, &limits),
            PackageFormat::Primary => index::parse_primary(input, compression, &limits),
            PackageFormat::ApkIndex => index::parse_apkindex(input, &limits),
        })
        .await
        .unwrap_or_else(|e| Err(IndexError::Io(std::io::Error::other(e))));
        let learnt = parsed.and_then(|mut entries| {
            // Names relative to the index's directory become paths in the repo.
            if !root.is_empty() {
                for (name, _) in &mut entries {
                    name.insert_str(0, &root);
                }
            }
            self.indexes
                .learn_packages(repo, &entries, limits.repo_entries)
                .map(|()| entries)
        });
        match learnt {
            Ok(entries) => self.check_stored(repo, &entries),
            Err(e) => self.unparsed(repo, key.as_str(), &e),
        }
    }

    /// Checks the stored packages an index just learnt lists against it, from the digests in
    /// their records (under the index's name, or the percent-encoded spellings clients use):
    /// those it contradicts are dropped and counted; those whose record lacks the digest it
    /// names (stored before such digests were kept) are dropped too, as a request would not
    /// take them.
    fn check_stored(self: &Arc<Self>, repo: &str, entries: &[(String, Digest)]) {
        let mut contradicted = Vec::new();
        let mut unknown = Vec::new();
        for batch in entries.chunks(CHECK_BATCH) {
            let memory = self.entries();
            for (path, digest) in batch {
                for spelling in spellings(path) {
                    let key = CacheKey::new(repo, &spelling);
                    let Some(slot) = memory.peek(&key).filter(|s| s.meta.status == 200) else {
                        continue;
                    };
                    if index::recorded(&slot.meta, digest.algo).is_none() {
                        unknown.push((key, slot.meta.clone()));
                    } else if !digest.matches(&slot.meta) {
                        contradicted.push((key, slot.meta.clone(), digest.clone()));
                    }
                }
            }
        }
        for (key, meta, digest) in contradicted {
            self.drop_contradicted(repo, &key, &meta, &digest);
        }
        if !unknown.is_empty() {
            tracing::info!(
                repo,
                entries = unknown.len(),
                "stored packages without the digest their index names dropped"
            );
        }
        for (key, meta) in unknown {
            self.drop_entry(&key, &meta);
        }
    }

    /// The digest an index learnt meanwhile names for a package just stored without one to
    /// check it against, when the stored body contradicts it.
    pub(super) fn index_contradicts(
        &self,
        repo: &str,
        path: &str,
        meta: &EntryMeta,
    ) -> Option<Digest> {
        let expect = self.indexes.expected(repo, path)?;
        (meta.status == 200 && !expect.digest.matches(meta)).then_some(expect.digest)
    }

    /// Drops a stored entry that an index contradicts, counted as an integrity failure.
    fn drop_contradicted(
        self: &Arc<Self>,
        repo: &str,
        key: &CacheKey,
        meta: &Arc<EntryMeta>,
        digest: &Digest,
    ) {
        tracing::warn!(key = %key, want = %digest.hex, algo = digest.algo.name(), got = index::recorded(meta, digest.algo).unwrap_or("-"), "a stored package contradicts its index; dropped");
        self.metrics
            .integrity_failures
            .get_or_create(&DistroLabel {
                distro: repo.to_string(),
            })
            .inc();
        self.drop_entry(key, meta);
    }

    /// Learns again from the indexes in the cache, after the start-up listing: the Release
    /// files and repomd.xml (read before this returns: they are small), then in the
    /// background the package indexes they vouch for (those stored with the hash their
    /// Release names) and every APKINDEX. Package requests of a repo wait for its package
    /// indexes (at most [`SETTLE_MAX`]).
    pub async fn restore_indexes(self: &Arc<Self>) {
        let started = std::time::Instant::now();
        // repo -> path -> meta, for the entries that matter here.
        let mut stored: Stored = Default::default();
        for (key, meta) in self.entries().metas() {
            let Some((repo, path)) = key.as_str().split_once('/') else {
                continue;
            };
            let name = index::file_name(path);
            let wanted = index::is_release(path)
                || index::is_repomd(path)
                || path.contains("/by-hash/")
                || path.contains("repodata/")
                || name == "APKINDEX.tar.gz"
                || name.starts_with("Packages");
            if meta.status == 200 && wanted {
                stored
                    .entry(repo.to_string())
                    .or_default()
                    .insert(path.to_string(), meta);
            }
        }
        let mut work = Vec::new();
        for (repo, files) in stored {
            let paths = self.restore_releases(&repo, &files).await;
            if !paths.is_empty() {
                let guard = self.indexes.learning(&repo);
                work.push((repo, files, paths, guard));
            }
        }
        // One task per repo: a repo's package requests wait only for its own indexes.
        for (repo, files, paths, guard) in work {
            let cache = self.clone();
            tokio::spawn(async move {
                let read = cache.restore_packages(&repo, &files, paths).await;
                drop(guard);
                tracing::info!(
                    repo,
                    indexes = read,
                    ms = started.elapsed().as_millis() as u64,
                    "package indexes in the cache learnt again"
                );
            });
        }
    }

    /// Learns the stored Release files and repomd.xml of `repo` (InRelease before Release in
    /// each directory) and returns the stored package indexes to read.
    async fn restore_releases(self: &Arc<Self>, repo: &str, files: &StoredFiles) -> Vec<String> {
        let mut package_indexes: Vec<String> = Vec::new();
        let mut dirs: Vec<&str> = files
            .keys()
            .filter(|p| index::is_release(p))
            .map(|p| index::dir_of(p))
            .collect();
        dirs.sort_unstable();
        dirs.dedup();
        for dir in dirs {
            self.learn_stored_release(repo, dir, Some(files)).await;
            if let Some(table) = self.indexes.release(repo, dir) {
                package_indexes.extend(vouched(&table, dir, files));
            }
        }
        for path in files.keys().filter(|p| index::is_repomd(p)) {
            let root = index::repomd_root(path);
            let key = CacheKey::new(repo, path);
            match self.stored_text(repo, &key, files.get(path).cloned()).await {
                Some(text) => self.indexes.learn_repomd(repo, path, &text),
                None => self.indexes.set_release(repo, root, None),
            }
            if let Some(table) = self.indexes.release(repo, root) {
                package_indexes.extend(vouched(&table, root, files));
            }
        }
        package_indexes.extend(
            files
                .keys()
                .filter(|p| index::file_name(p) == "APKINDEX.tar.gz")
                .cloned(),
        );
        package_indexes
    }

    /// Reads the stored package indexes `paths` of `repo`; returns how many were read.
    async fn restore_packages(
        self: &Arc<Self>,
        repo: &str,
        files: &StoredFiles,
        paths: Vec<String>,
    ) -> usize {
        let mut read = 0;
        for path in paths {
            let (Some(kind), Some(meta)) =
                (self.indexes.package_index(repo, &path), files.get(&path))
            else {
                continue;
            };
            let key = CacheKey::new(repo, &path);
            let input = match self.stored_reader(meta).await {
                Ok(input) => input,
                Err(e) => {
                    tracing::warn!(key = %key, error = %e, "cannot read a stored package index");
                    continue;
                }
            };
            self.learn_packages(repo, &key, kind, input).await;
            read += 1;
        }
        read
    }
}

/// The spellings a client may use for `path`: as written, and with the characters some
/// clients percent-encode (`+`, `~`, `:`, …) encoded, in upper- and lower-case hex.
fn spellings(path: &str) -> Vec<String> {
    const ENCODED: &[char] = &[
        '+', '~', ':', '@', '=', ',', '!', '$', '&', '\'', '(', ')', '*', ';', ' ',
    ];
    let mut out = vec![path.to_string()];
    if path.contains(ENCODED) {
        for upper in [true, false] {
            let mut spelled = String::with_capacity(path.len() + 8);
            for c in path.chars() {
                if ENCODED.contains(&c) {
                    let hex = format!("%{:02X}", c as u32);
                    spelled.push_str(&if upper { hex } else { hex.to_lowercase() });
                } else {
                    spelled.push(c);
                }
            }
            out.push(spelled);
        }
    }
    out
}

/// The stored copies of the package indexes `table` (the Release of `dir`) names with the
/// hash it names: under their own name or their by-hash name.
fn vouched(table: &ReleaseTable, dir: &str, files: &StoredFiles) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = std::collections::HashSet::new();
    for (rel, digest) in table.package_indexes() {
        // One index per directory: the same list in another compression teaches nothing.
        if dirs.contains(index::dir_of(rel)) {
            continue;
        }
        let plain = format!("{dir}{rel}");
        let by_hash = format!("{dir}{}by-hash/SHA256/{}", index::dir_of(rel), digest.hex);
        if let Some(path) = [plain, by_hash]
            .into_iter()
            .find(|p| files.get(p).is_some_and(|m| digest.matches(m)))
        {
            dirs.insert(index::dir_of(rel));
            out.push(path);
        }
    }
    out
}
