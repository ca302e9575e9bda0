//! Where cache bodies and metadata live. Today: a local directory ([`disk::DiskStore`]).
//!
//! The contract every backend keeps: a body is written to a temporary object and becomes an
//! entry only by [`disk::DiskStore::commit`], after it is complete and synced; an abandoned
//! temporary object is removed and never read as an entry.

pub mod disk;

/// Storage failures. Paths are included for the operator's log, never sent to clients.
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
}
