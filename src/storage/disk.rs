//! The disk backend.
//!
//! Layout under the cache directory:
//! - `tmp/`: bodies being downloaded and metadata being written. Emptied at start: whatever is
//!   there was left by a process that died.
//! - `data/<aa>/<digest>.meta`: an entry's metadata (JSON); `<aa>` is the first two hex digits
//!   of the key's digest.
//! - `data/<aa>/<digest>-<nonce>.body`: its body. Each commit gives the body a new name and the
//!   metadata, renamed into place last, points at it: readers holding the old body keep reading
//!   it, and a crash between the two renames leaves an orphan body that the listing
//!   removes, never an entry whose metadata and body disagree.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use futures_util::stream::BoxStream;

use super::{CacheKey, EntryMeta, Listed, META_VERSION, Spool, StorageError, io};

/// A cache directory on local disk.
#[derive(Debug)]
pub struct DiskStore {
    data: PathBuf,
    tmp: PathBuf,
    nonce: AtomicU64,
}

impl DiskStore {
    /// Opens (creating it if needed) the cache directory `root` and empties its `tmp/`. A
    /// directory that exists but cannot be written (a read-only mount, a full disk) still
    /// opens, with an error in the log: what it holds is served, and new files are streamed
    /// without being stored. One that cannot be created is an error. Blocking: call at
    /// start-up.
    pub fn open(root: &Path) -> Result<DiskStore, StorageError> {
        let data = root.join("data");
        let tmp = root.join("tmp");
        if let Err(e) = fs::create_dir_all(&data)
            && !data.is_dir()
        {
            return Err(io("create", &data)(e));
        }
        let writable = (|| -> Result<(), StorageError> {
            if tmp.exists() {
                fs::remove_dir_all(&tmp).map_err(io("clear", &tmp))?;
            }
            fs::create_dir_all(&tmp).map_err(io("create", &tmp))?;
            write_probe(&tmp.join("write-check"))
        })();
        if let Err(e) = writable {
            tracing::error!(error = %e, "cache directory not writable: cached files are served, new files are streamed without being stored");
        }
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Ok(DiskStore {
            data,
            tmp,
            nonce: AtomicU64::new(seed ^ (u64::from(std::process::id()) << 40)),
        })
    }

    fn shard(&self, digest: &str) -> PathBuf {
        self.data.join(&digest[..2])
    }

    fn next_nonce(&self) -> String {
        format!("{:016x}", self.nonce.fetch_add(1, Ordering::Relaxed))
    }

    /// The entry stored for `key`, if there is a complete one. A metadata file that does not
    /// parse, belongs to another key or version, or whose body is missing or of the wrong size
    /// is treated as absent.
    pub async fn load(&self, key: &CacheKey) -> Result<Option<EntryMeta>, StorageError> {
        let digest = key.digest();
        let dir = self.shard(&digest);
        let key_text = key.as_str().to_string();
        tokio::task::spawn_blocking(move || {
            let path = dir.join(format!("{digest}.meta"));
            let bytes = match fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io("read", &path)(e)),
            };
            let Ok(meta) = serde_json::from_slice::<EntryMeta>(&bytes) else {
                tracing::warn!(path = %path.display(), "unreadable cache metadata ignored");
                return Ok(None);
            };
            if meta.v != META_VERSION || meta.key != key_text {
                return Ok(None);
            }
            match fs::metadata(dir.join(&meta.body)) {
                Ok(m) if m.len() == meta.len => Ok(Some(meta)),
                _ => {
                    tracing::warn!(key = %key_text, "cache entry without a matching body ignored");
                    Ok(None)
                }
            }
        })
        .await?
    }

    /// Where an entry's body lives. Its name starts with the key's digest, which names the
    /// shard: no need to hash the key again.
    fn body_path(&self, meta: &EntryMeta) -> Result<PathBuf, StorageError> {
        match meta.body.get(..2) {
            Some(shard) => Ok(self.data.join(shard).join(&meta.body)),
            None => Err(StorageError::Io {
                op: "open",
                path: self.data.join(&meta.body),
                source: std::io::Error::other("malformed body name in the entry's metadata"),
            }),
        }
    }

    /// Opens the body of an entry returned by [`DiskStore::load`] or [`DiskStore::commit`],
    /// checking that the file still has the record's length: a body truncated or grown behind
    /// the proxy's back is never served.
    pub fn open_checked(&self, meta: &EntryMeta) -> Result<File, StorageError> {
        let path = self.body_path(meta)?;
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StorageError::Missing(path.display().to_string()));
            }
            Err(e) => return Err(io("open", &path)(e)),
        };
        let len = file.metadata().map_err(io("stat", &path))?.len();
        if len != meta.len {
            return Err(io("check", &path)(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("body file has {len} bytes, its entry {}", meta.len),
            )));
        }
        Ok(file)
    }

    /// Starts a new body in `tmp/`.
    pub(super) async fn create_spool(&self) -> Result<Spool, StorageError> {
        Spool::create(&self.tmp, format!("{}.part", self.next_nonce()), true).await
    }

    /// Makes `spool` the body of `key`'s entry described by `meta` (whose `body` field is set
    /// here): syncs the body, renames it into place, then writes the metadata atomically and
    /// removes the body of the entry it replaces.
    pub(super) async fn commit(
        &self,
        key: &CacheKey,
        mut spool: Spool,
        mut meta: EntryMeta,
    ) -> Result<EntryMeta, StorageError> {
        spool.sync().await?;
        let digest = key.digest();
        let dir = self.shard(&digest);
        meta.body = format!("{digest}-{}.body", self.next_nonce());
        let from = spool
            .keep()
            .ok_or_else(|| StorageError::Missing("spool without a name".into()))?;
        let to = dir.join(&meta.body);
        let meta_tmp = self.tmp.join(format!("{}.meta", self.next_nonce()));
        let meta_path = dir.join(format!("{digest}.meta"));
        let written = meta.clone();
        tokio::task::spawn_blocking(move || -> Result<(), StorageError> {
            let moved = fs::create_dir_all(&dir)
                .map_err(io("create", &dir))
                .and_then(|()| fs::rename(&from, &to).map_err(io("rename", &from)));
            if let Err(e) = moved {
                let _ = fs::remove_file(&from);
                return Err(e);
            }
            let previous = read_body_name(&meta_path);
            write_meta_file(&meta_tmp, &meta_path, &written)?;
            sync_dir(&dir);
            if let Some(old) = previous.filter(|old| *old != written.body) {
                let _ = fs::remove_file(dir.join(old));
            }
            Ok(())
        })
        .await??;
        Ok(meta)
    }

    /// Replaces the metadata of an existing entry (after a 304 revalidation), body unchanged.
    pub async fn update_meta(&self, key: &CacheKey, meta: &EntryMeta) -> Result<(), StorageError> {
        let digest = key.digest();
        let meta_path = self.shard(&digest).join(format!("{digest}.meta"));
        let meta_tmp = self.tmp.join(format!("{}.meta", self.next_nonce()));
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || write_meta_file(&meta_tmp, &meta_path, &meta)).await?
    }

    /// Removes an entry: its metadata first (the entry is gone from then on), then its body.
    /// A client still reading the body keeps reading it: the file lives until it is closed.
    pub async fn remove(&self, key: &CacheKey, meta: &EntryMeta) -> Result<(), StorageError> {
        let digest = key.digest();
        let dir = self.shard(&digest);
        let meta_path = dir.join(format!("{digest}.meta"));
        let body = dir.join(&meta.body);
        let expected_body = meta.body.clone();
        tokio::task::spawn_blocking(move || {
            // Only if the metadata still describes this body: a newer commit must not be undone.
            if read_body_name(&meta_path).is_some_and(|b| b == expected_body) {
                fs::remove_file(&meta_path).map_err(io("remove", &meta_path))?;
            }
            match fs::remove_file(&body) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", &body)(e)),
                _ => Ok(()),
            }
        })
        .await?
    }

    /// Records `when` (unix seconds) as the entry's last access: the body's modification time,
    /// read back by the listing after a restart.
    pub async fn touch(&self, meta: &EntryMeta, when: u64) {
        let Ok(body) = self.body_path(meta) else {
            return;
        };
        let _ = tokio::task::spawn_blocking(move || {
            let time = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(when);
            File::options()
                .write(true)
                .open(&body)
                .and_then(|f| f.set_modified(time))
        })
        .await;
    }

    /// Every complete entry on disk with its last access (the body's modification time), one
    /// page per shard directory. The same walk removes the bodies no metadata points at and
    /// older than `before` (left by a crash between a body's rename and its metadata's).
    pub(super) fn list(
        &self,
        before: SystemTime,
    ) -> BoxStream<'_, Result<Vec<Listed>, StorageError>> {
        let shards = match fs::read_dir(&self.data) {
            Ok(rd) => rd.flatten().map(|e| e.path()).collect::<Vec<_>>(),
            Err(e) => {
                let e = io("list", &self.data)(e);
                return Box::pin(futures_util::stream::once(async move { Err(e) }));
            }
        };
        Box::pin(futures_util::stream::unfold(
            shards.into_iter(),
            move |mut shards| async move {
                let dir = shards.next()?;
                let page = tokio::task::spawn_blocking(move || scan_shard(&dir, before))
                    .await
                    .map_err(StorageError::from);
                Some((page, shards))
            },
        ))
    }

    /// Writes and removes a probe file: the health check of the storage.
    pub async fn check_writable(&self) -> Result<(), StorageError> {
        let probe = self.tmp.join(format!("health-{}", self.next_nonce()));
        tokio::task::spawn_blocking(move || write_probe(&probe)).await?
    }

    /// Free and total bytes of the file system holding the cache.
    pub fn space(&self) -> Option<(u64, u64)> {
        let st = rustix::fs::statvfs(&self.data).ok()?;
        Some((
            st.f_bavail.saturating_mul(st.f_frsize),
            st.f_blocks.saturating_mul(st.f_frsize),
        ))
    }
}

/// Writes and removes a small file at `path`: whether the directory takes writes.
fn write_probe(path: &Path) -> Result<(), StorageError> {
    fs::write(path, b"ok").map_err(io("write", path))?;
    fs::remove_file(path).map_err(io("remove", path))
}

fn read_body_name(meta_path: &Path) -> Option<String> {
    let bytes = fs::read(meta_path).ok()?;
    serde_json::from_slice::<EntryMeta>(&bytes)
        .ok()
        .map(|m| m.body)
}

fn write_meta_file(tmp: &Path, dest: &Path, meta: &EntryMeta) -> Result<(), StorageError> {
    let bytes =
        serde_json::to_vec(meta).map_err(|e| io("encode", dest)(std::io::Error::other(e)))?;
    let mut file = File::create(tmp).map_err(io("create", tmp))?;
    file.write_all(&bytes).map_err(io("write", tmp))?;
    file.sync_all().map_err(io("sync", tmp))?;
    fs::rename(tmp, dest).map_err(io("rename", tmp))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// The entries of one shard directory; removes the orphan bodies older than `before`.
fn scan_shard(dir: &Path, before: SystemTime) -> Vec<Listed> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    let names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    let mut referenced = HashSet::new();
    for name in names.iter().filter(|n| n.ends_with(".meta")) {
        let Ok(bytes) = fs::read(dir.join(name)) else {
            continue;
        };
        let Ok(meta) = serde_json::from_slice::<EntryMeta>(&bytes) else {
            continue;
        };
        referenced.insert(meta.body.clone());
        if meta.v != META_VERSION {
            continue;
        }
        let Ok(body) = fs::metadata(dir.join(&meta.body)) else {
            continue;
        };
        if body.len() != meta.len {
            continue;
        }
        let accessed = body
            .modified()
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(meta.stored_at, |d| d.as_secs());
        out.push(Listed { meta, accessed });
    }
    let mut removed = 0;
    for name in names
        .iter()
        .filter(|n| n.ends_with(".body") && !referenced.contains(*n))
    {
        let path = dir.join(name);
        let old = fs::metadata(&path)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < before);
        if old && fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(removed, dir = %dir.display(), "removed bodies left by an interrupted run");
    }
    out
}
