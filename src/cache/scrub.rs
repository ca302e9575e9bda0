//! The scrub: every stored body whose SHA256 is known is read back in the background, at a
//! bounded rate, and an entry whose body no longer has its length or hash (changed on disk
//! behind the proxy's back, bit rot) is dropped and counted, so it is fetched again instead of
//! being served. Hits check the length of the file they open; the scrub catches the rest.
//!
//! A body is opened again for each chunk and closed before the pause that keeps the rate: an
//! entry evicted while it is being checked frees its blocks at once (a full disk is waiting
//! for them), not when a slow read of the whole file ends, and no blocking thread sleeps.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use super::Cache;
use super::body::CHUNK;
use crate::storage::{EntryMeta, Source, StorageError};

/// What one scrub found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Scrubbed {
    pub checked: usize,
    pub damaged: usize,
}

/// What reading one body back found.
enum Check {
    Intact,
    Damaged,
    /// Removed or replaced meanwhile: nothing to check.
    Gone,
    /// The file could not be opened (out of file handles, no permission): it says nothing of
    /// the body, which is left for the next scrub.
    Unopened,
}

/// Reads up to `buf.len()` bytes at `offset` into `buf` (fewer only at the end of the file).
fn read_chunk(file: &std::fs::File, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl Cache {
    /// Checks every stored 200 entry with a known hash once, at the scrub rate, dropping the
    /// damaged ones.
    pub async fn scrub(self: &Arc<Self>) -> Scrubbed {
        let rate = self.tuning.scrub_rate.max(1);
        let entries = self.entries().metas();
        let since = tokio::time::Instant::now();
        let mut done = 0u64;
        let mut found = Scrubbed::default();
        for (key, meta) in entries {
            if meta.status != 200 || meta.sha256.len() != 64 {
                continue;
            }
            match self.check_body(&meta, rate, since, &mut done).await {
                Check::Gone => continue,
                Check::Unopened => {
                    tracing::warn!(key = %key, "the scrub could not open a stored body; left for the next scrub");
                }
                Check::Intact => found.checked += 1,
                Check::Damaged => {
                    found.checked += 1;
                    found.damaged += 1;
                    tracing::error!(key = %key, "stored body does not match its entry (changed on disk?); entry dropped");
                    self.drop_damaged(&key, &meta);
                }
            }
        }
        found
    }

    /// Whether `meta`'s body still has its length and SHA256, read a chunk at a time on the
    /// blocking pool, pausing so that the scrub reads at most `rate` bytes a second from
    /// `since` on (`done`: bytes it read so far).
    async fn check_body(
        &self,
        meta: &Arc<EntryMeta>,
        rate: u64,
        since: tokio::time::Instant,
        done: &mut u64,
    ) -> Check {
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; CHUNK as usize];
        let mut pos = 0u64;
        loop {
            // Opened for each chunk, as a hit opens it (its length checked against the entry),
            // and closed before the pause; once more at the end, so that an empty body is
            // looked at too.
            let file = match self.store.open(meta, pos, meta.len).await {
                Ok(Source::File(file)) => file,
                Err(StorageError::Missing(_)) | Ok(Source::Stream(_)) => return Check::Gone,
                // The length differs from the entry's (`DiskStore::open_checked`).
                Err(StorageError::Io { op: "check", .. }) => return Check::Damaged,
                Err(_) => return Check::Unopened,
            };
            if pos >= meta.len {
                break;
            }
            // Read and hashed off the async workers; the file is closed when this ends.
            let read = tokio::task::spawn_blocking(move || {
                let n = read_chunk(&file, pos, &mut buf);
                if let Ok(n) = n {
                    hash.update(&buf[..n]);
                }
                (n, buf, hash)
            })
            .await;
            let Ok((n, back, h)) = read else {
                return Check::Gone;
            };
            (buf, hash) = (back, h);
            match n {
                Ok(n) if n > 0 => {
                    pos += n as u64;
                    *done += n as u64;
                }
                _ => return Check::Damaged,
            }
            let due = since + Duration::from_secs_f64(*done as f64 / rate as f64);
            tokio::time::sleep_until(due).await;
        }
        if hex::encode(hash.finalize()) == meta.sha256 {
            Check::Intact
        } else {
            Check::Damaged
        }
    }

    /// Scrubs once the start-up scan is done, then every scrub interval, until the process
    /// ends (not at all when the rate is 0).
    pub async fn run_scrubs(self: Arc<Self>) {
        // Only local bodies are read back: a bucket keeps its own checksums, and reading all
        // of it through the network would cost more than it finds.
        if self.tuning.scrub_rate == 0 || !self.store.capabilities().local_files {
            return;
        }
        while !self.index_loaded() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        loop {
            let started = Instant::now();
            let found = self.scrub().await;
            tracing::info!(
                checked = found.checked,
                damaged = found.damaged,
                ms = started.elapsed().as_millis() as u64,
                "cache scrub done"
            );
            match self.tuning.scrub_interval {
                Some(every) => tokio::time::sleep(every).await,
                None => return,
            }
        }
    }
}
