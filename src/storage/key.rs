//! Cache keys: the repository tree and the path inside it, never the mirror host, so a change
//! of mirror keeps every cached file.

use sha2::{Digest, Sha256};

/// Identifies one cached file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(String);

impl CacheKey {
    /// The key of `path` (as the client encoded it) in repo `repo`.
    pub fn new(repo: &str, path: &str) -> CacheKey {
        let mut text = String::with_capacity(repo.len() + 1 + path.len());
        text.push_str(repo);
        text.push('/');
        text.push_str(path);
        CacheKey(text)
    }

    /// The key whose full text (as stored in an entry's metadata) is `text`.
    pub fn from_stored(text: String) -> CacheKey {
        CacheKey(text)
    }

    /// The full key text, as stored in the entry's metadata.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Lower-case hex SHA256 of the key: the entry's storage name.
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }
}

impl std::fmt::Display for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
