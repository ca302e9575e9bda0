//! The scrub: every stored body whose SHA256 is known is read back in the background, at a
//! bounded rate, and an entry whose body no longer has its length or hash (changed on disk
//! behind the proxy's back, bit rot) is dropped and counted, so it is fetched again instead of
//! being served. Hits check the length of the file they open; the scrub catches the rest.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use super::Cache;
use crate::storage::EntryMeta;

/// What one scrub found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Scrubbed {
    pub checked: usize,
    pub damaged: usize,
}

/// Whether the body in `file` has `meta`'s length and SHA256, reading at most `rate` bytes a
/// second from `since` on (`done` bytes read so far by the scrub). Blocking.
fn intact(
    mut file: std::fs::File,
    meta: &EntryMeta,
    rate: u64,
    since: Instant,
    done: &mut u64,
) -> std::io::Result<bool> {
    if file.metadata()?.len() != meta.len {
        return Ok(false);
    }
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        len += n as u64;
        *done += n as u64;
        let due = since + Duration::from_secs_f64(*done as f64 / rate.max(1) as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    Ok(len == meta.len && hex::encode(hash.finalize()) == meta.sha256)
}

impl Cache {
    /// Checks every stored 200 entry with a known hash once, at the scrub rate, dropping the
    /// damaged ones.
    pub async fn scrub(self: &Arc<Self>) -> Scrubbed {
        let rate = self.tuning.scrub_rate;
        let entries = self.entries().metas();
        let since = Instant::now();
        let mut done = 0u64;
        let mut found = Scrubbed::default();
        for (key, meta) in entries {
            if meta.status != 200 || meta.sha256.len() != 64 {
                continue;
            }
            let file = match self.store.open(&meta, 0, meta.len).await {
                Ok(crate::storage::Source::File(file)) => Ok(file),
                // Gone meanwhile (evicted, replaced): nothing to check.
                Err(crate::storage::StorageError::Missing(_)) => continue,
                Ok(crate::storage::Source::Stream(_)) => continue,
                Err(e) => Err(e),
            };
            let Ok(file) = file else {
                found.checked += 1;
                found.damaged += 1;
                tracing::error!(key = %key, "stored body does not match its entry (changed on disk?); entry dropped");
                self.drop_damaged(&key, &meta);
                continue;
            };
            let m = meta.clone();
            let checked = tokio::task::spawn_blocking(move || {
                let ok = intact(file, &m, rate, since, &mut done);
                (ok, done)
            })
            .await;
            let Ok((ok, read)) = checked else { continue };
            done = read;
            found.checked += 1;
            if !matches!(ok, Ok(true)) {
                tracing::error!(key = %key, "stored body does not match its entry (changed on disk?); entry dropped");
                found.damaged += 1;
                self.drop_damaged(&key, &meta);
            }
        }
        found
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
