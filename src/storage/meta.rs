//! What is stored about a cached response besides its body.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Metadata format version; an entry written by another version is treated as absent.
pub const META_VERSION: u32 = 1;

/// The stored description of one cache entry. The entry exists when its metadata file does;
/// the metadata is written after the body is complete and synced, so it never describes a
/// partial body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EntryMeta {
    /// Format version, [`META_VERSION`].
    pub v: u32,
    /// The full cache key (`repo/path`), checked on read so that a hash collision can never
    /// answer one file with another.
    pub key: String,
    /// File name of the body next to the metadata file.
    pub body: String,
    /// Upstream status: 200, or 404 for a remembered absence.
    pub status: u16,
    /// Body length in bytes.
    pub len: u64,
    pub content_type: Option<String>,
    pub last_modified: Option<String>,
    pub etag: Option<String>,
    /// The mirror's Cache-Control, passed on to clients. Absent in records written before it
    /// was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<String>,
    /// Lower-case hex SHA256 of the body.
    pub sha256: String,
    /// Other digests computed while the body was written, by name (lower-case hex): those an
    /// index may name later (`sha1`, `sha512`), or digests of a part of the body. The cache
    /// decides which; storage only keeps them. Absent in records written before they existed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub digests: BTreeMap<String, String>,
    /// Unix seconds when the body was stored.
    pub stored_at: u64,
    /// Unix seconds until which the entry is served without asking upstream
    /// (`u64::MAX`: immutable, never revalidated).
    pub fresh_until: u64,
}

impl EntryMeta {
    /// Whether the entry may be served at `now` without revalidation.
    pub fn is_fresh(&self, now: u64) -> bool {
        now < self.fresh_until
    }
}
