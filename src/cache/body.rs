//! Response bodies read from cache files: a complete entry, or the growing body of a fill in
//! progress, followed as the fill publishes how much has been written.
//!
//! Reads are positional (`pread`) in chunks of [`CHUNK`] on the blocking pool, so memory per
//! transfer is bounded whatever the file size, and many readers share one file handle.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use tokio::sync::watch;

use prometheus_client::metrics::counter::Counter;

use super::fill::FillState;

/// The body type of every response.
pub type Body = UnsyncBoxBody<Bytes, io::Error>;

/// Largest single read from a cache file.
pub const CHUNK: u64 = 256 * 1024;

/// Bodies up to this size are read without leaving the async worker.
const INLINE_READ: u64 = 64 * 1024;

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body held in memory.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Reads `len` bytes at `offset` (fewer only at end of file).
fn read_at(file: &File, offset: u64, len: u64) -> io::Result<Bytes> {
    let mut buf = vec![0u8; len as usize];
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if filled == 0 && len > 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "cache file shorter than its entry",
        ));
    }
    buf.truncate(filled);
    Ok(Bytes::from(buf))
}

async fn read_chunk(file: Arc<File>, offset: u64, len: u64) -> io::Result<Bytes> {
    tokio::task::spawn_blocking(move || read_at(&file, offset, len.min(CHUNK)))
        .await
        .map_err(io::Error::other)?
}

/// Opens a small stored body and reads all of it (`len` bytes), on the spot.
pub fn read_whole(open: impl FnOnce() -> io::Result<File>, len: u64) -> io::Result<Bytes> {
    let file = open()?;
    read_at(&file, 0, len)
}

/// Opens a stored body and reads its first chunk from `start`, in one trip to the blocking
/// pool, so a small file costs one hop and a vanished body is found before the response head
/// is sent.
pub async fn open_stored(
    open: impl FnOnce() -> io::Result<File> + Send + 'static,
    start: u64,
    end: u64,
    served: Counter,
) -> io::Result<Body> {
    let open_and_read = move || -> io::Result<(File, Bytes)> {
        let file = open()?;
        let first = if end > start {
            read_at(&file, start, (end - start).min(CHUNK))?
        } else {
            Bytes::new()
        };
        Ok((file, first))
    };
    // A small file is read on the spot: from the page cache that costs a few microseconds,
    // less than a trip to the blocking pool and back. Larger reads go to the blocking pool.
    let (file, first) = if end.saturating_sub(start) <= INLINE_READ {
        open_and_read()?
    } else {
        tokio::task::spawn_blocking(open_and_read)
            .await
            .map_err(io::Error::other)??
    };
    let next = start + first.len() as u64;
    served.inc_by(first.len() as u64);
    if next >= end {
        return Ok(full(first));
    }
    let rest = stream::unfold((Arc::new(file), next), move |(file, pos)| {
        let served = served.clone();
        async move {
            if pos >= end {
                return None;
            }
            match read_chunk(file.clone(), pos, end - pos).await {
                Ok(bytes) if bytes.is_empty() => Some((Err(short()), (file, end))),
                Ok(bytes) => {
                    let n = bytes.len() as u64;
                    served.inc_by(n);
                    Some((Ok(Frame::data(bytes)), (file, pos + n)))
                }
                Err(e) => Some((Err(e), (file, end))),
            }
        }
    });
    let head = stream::once(async move { Ok(Frame::data(first)) });
    Ok(StreamBody::new(futures_util::StreamExt::chain(head, rest)).boxed_unsync())
}

fn short() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "cache file shorter than its entry",
    )
}

/// A body that follows a fill in progress from `start` to `end` (exclusive; `None`: to the end
/// of the download, whatever its length). Ends with an error if the fill fails, so the client
/// sees a cut transfer, never a short body taken for a whole one. A body that runs to the end
/// of the file (`to_end`) sends its last byte only once the fill is verified and committed:
/// a client that got everything got a checked file, and its next request is a hit.
pub fn growing(
    file: Arc<File>,
    rx: watch::Receiver<FillState>,
    start: u64,
    end: Option<u64>,
    to_end: bool,
    served: Counter,
) -> Body {
    let s = stream::unfold(
        (file, rx, start, false),
        move |(file, mut rx, pos, done)| {
            let served = served.clone();
            async move {
                if done {
                    return None;
                }
                let limit = loop {
                    let state = rx.borrow_and_update().clone();
                    let available = match state {
                        FillState::Streaming { written, .. } => {
                            // Until the fill is verified and committed, the last byte of a body
                            // that runs to the end is held back: HTTP clients take the body as
                            // complete at its last byte, not at the end of the stream.
                            let cap = match end {
                                Some(e) if to_end => e.saturating_sub(1),
                                Some(e) => e,
                                None => u64::MAX,
                            };
                            let available = written.min(cap);
                            if available > pos {
                                Some(available)
                            } else if !to_end && end.is_some_and(|e| pos >= e) {
                                Some(pos)
                            } else {
                                None
                            }
                        }
                        FillState::Done { meta, .. } => Some(meta.len),
                        FillState::Streamed { len, .. } => Some(len),
                        FillState::Pending => None,
                        FillState::Passthrough { .. } => {
                            return Some((
                                Err(io::Error::other("fill ended without a body")),
                                (file, rx, pos, true),
                            ));
                        }
                        FillState::Failed(e) => {
                            return Some((
                                Err(io::Error::other(e.to_string())),
                                (file, rx, pos, true),
                            ));
                        }
                    };
                    match available {
                        Some(n) => break end.map_or(n, |e| e.min(n)),
                        None => {
                            if rx.changed().await.is_err() {
                                return Some((
                                    Err(io::Error::other("fill abandoned")),
                                    (file, rx, pos, true),
                                ));
                            }
                        }
                    }
                };
                if pos >= limit {
                    // Everything wanted was sent, or the completed file is exhausted.
                    return None;
                }
                match read_chunk(file.clone(), pos, limit - pos).await {
                    Ok(bytes) if bytes.is_empty() => Some((Err(short()), (file, rx, pos, true))),
                    Ok(bytes) => {
                        let n = bytes.len() as u64;
                        served.inc_by(n);
                        Some((Ok(Frame::data(bytes)), (file, rx, pos + n, false)))
                    }
                    Err(e) => Some((Err(e), (file, rx, pos, true))),
                }
            }
        },
    );
    StreamBody::new(s).boxed_unsync()
}
