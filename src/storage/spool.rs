//! A spool: the local file a body is written to as it arrives. Readers of a fill in progress
//! read it while it grows (one shared handle, positional reads); the disk backend commits it by
//! renaming it into place, the S3 backend uploads it from there.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use super::{StorageError, io};

/// A body being written.
#[derive(Debug)]
pub struct Spool {
    /// The file's name while it has one (the S3 backend unlinks its spools at once: nothing
    /// is left behind by a crash); removed on drop unless [`Spool::keep`] was called.
    path: Option<PathBuf>,
    writer: tokio::fs::File,
    reader: Arc<File>,
    written: u64,
}

impl Spool {
    /// Creates `dir/name`; with `named` false the name is removed at once and the file lives
    /// only as long as its handles.
    pub(super) async fn create(
        dir: &Path,
        name: String,
        named: bool,
    ) -> Result<Spool, StorageError> {
        let path = dir.join(name);
        let p = path.clone();
        let (writer, reader) =
            tokio::task::spawn_blocking(move || -> Result<(File, File), StorageError> {
                let writer = File::options()
                    .write(true)
                    .create_new(true)
                    .open(&p)
                    .map_err(io("create", &p))?;
                let reader = File::open(&p).map_err(io("open", &p))?;
                if !named {
                    fs::remove_file(&p).map_err(io("unlink", &p))?;
                }
                Ok((writer, reader))
            })
            .await??;
        Ok(Spool {
            path: named.then_some(path),
            writer: tokio::fs::File::from_std(writer),
            reader: Arc::new(reader),
            written: 0,
        })
    }

    /// The read handle: stays valid after a commit renames or uploads the file.
    pub fn reader(&self) -> Arc<File> {
        self.reader.clone()
    }

    /// Bytes appended so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    pub(super) async fn write(&mut self, data: &[u8]) -> Result<(), StorageError> {
        self.writer
            .write_all(data)
            .await
            .map_err(|e| io("write", Path::new("spool"))(e))?;
        self.written += data.len() as u64;
        Ok(())
    }

    /// Hands what was written to the file, so that readers see it.
    pub(super) async fn flush(&mut self) -> Result<(), StorageError> {
        self.writer
            .flush()
            .await
            .map_err(|e| io("write", Path::new("spool"))(e))
    }

    pub(super) async fn sync(&mut self) -> Result<(), StorageError> {
        self.writer
            .sync_all()
            .await
            .map_err(|e| io("sync", Path::new("spool"))(e))
    }

    /// The file's name, which the caller takes over (it is no longer removed on drop).
    pub(super) fn keep(&mut self) -> Option<PathBuf> {
        self.path.take()
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            let _ = fs::remove_file(path);
        }
    }
}

/// Reads a shared file from the start with positional reads (the handle's offset, shared with
/// other readers, is left alone).
#[derive(Debug)]
pub struct FileReader {
    file: Arc<File>,
    pos: u64,
}

impl FileReader {
    pub fn new(file: Arc<File>) -> FileReader {
        FileReader { file, pos: 0 }
    }
}

impl std::io::Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}
