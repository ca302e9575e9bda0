//! Response bodies read from cache files: a complete entry, or the growing body of a fill in
//! progress, followed as the fill publishes how much has been written.
//!
//! Reads are positional (`pread`) in chunks of at most [`CHUNK`], so memory per transfer is
//! bounded whatever the file size, and many readers share one file handle. A stored body's
//! are made on the blocking pool, a followed fill's on the async worker (see [`growing`]).

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

use super::fill::{self, FillError, FillState};
use super::{Cache, FillRequest};
use futures_util::StreamExt as _;

/// The body of every response: frames to poll, and for a stored file's byte range, the file
/// itself, which a connection driver may send straight from the file.
pub struct Body {
    inner: UnsyncBoxBody<Bytes, io::Error>,
    file: Option<FileRange>,
}

/// Bytes `pos..end` of a stored body, after `first` (already read, and counted as served).
pub struct FileRange {
    pub first: Bytes,
    pub file: Arc<File>,
    pub pos: u64,
    pub end: u64,
    /// Counts the bytes sent from the file.
    pub served: Counter,
}

impl Body {
    /// A body of frames.
    pub fn new<B>(body: B) -> Body
    where
        B: hyper::body::Body<Data = Bytes, Error = io::Error> + Send + 'static,
    {
        Body {
            inner: body.boxed_unsync(),
            file: None,
        }
    }

    /// The file range this body reads, for a sender that copies it itself (the frames are
    /// dropped unread); the body as it is otherwise.
    pub fn into_file(self) -> Result<FileRange, Body> {
        match self.file {
            Some(file) => Ok(file),
            None => Err(self),
        }
    }

    /// The frames alone, for a sender that polls them: the file range is let go, so the file
    /// is closed with the last chunk read.
    pub fn into_frames(self) -> Body {
        Body { file: None, ..self }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Largest single read from a cache file (fewer, larger reads: 64 KiB chunks cost a third of
/// the big-hit throughput).
pub const CHUNK: u64 = 256 * 1024;

/// The first read of a stored body. Later reads are an eighth of what was already sent, from
/// this up to [`CHUNK`]: a client that asks for a file and never reads it stops taking bytes
/// once the kernel's socket buffers are full, and so holds one small chunk in the connection,
/// while one that reads reaches full-size chunks after 2 MiB.
const FIRST_CHUNK: u64 = 16 * 1024;

/// The size of the next read of a stored body of which `sent` bytes were read already, at most
/// `most` ([`CHUNK`] here; the plain-HTTP driver's copy goes further).
pub(crate) fn next_chunk(sent: u64, most: u64) -> u64 {
    (sent / 8).clamp(FIRST_CHUNK, most)
}

/// Largest single read of a client following a fill while it is written (or draining what a
/// failed one wrote). A herd of clients on one download reads close behind the writer and
/// each holds what it read until its socket takes it: 32 of them held 8 MiB with
/// [`CHUNK`]-sized reads, 2 MiB with these. Once the file is complete, reads are [`CHUNK`]s.
const FOLLOW_CHUNK: u64 = 64 * 1024;

/// Bodies up to this size are read without leaving the async worker.
const INLINE_READ: u64 = 64 * 1024;

/// An empty body.
pub fn empty() -> Body {
    Body::new(Empty::new().map_err(|never| match never {}))
}

/// A body held in memory.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Body::new(Full::new(bytes.into()).map_err(|never| match never {}))
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
        return Err(short_file());
    }
    buf.truncate(filled);
    Ok(Bytes::from(buf))
}

/// Reads up to `len` bytes (at most [`CHUNK`]) at `offset`, on the blocking pool.
async fn read_chunk(file: Arc<File>, offset: u64, len: u64) -> io::Result<Bytes> {
    tokio::task::spawn_blocking(move || read_at(&file, offset, len.min(CHUNK)))
        .await
        .map_err(io::Error::other)?
}

/// Reads all of a small stored body (`len` bytes), on the spot.
pub fn read_whole(file: &File, len: u64) -> io::Result<Bytes> {
    read_at(file, 0, len)
}

/// A stored body's bytes `start..end`: its first chunk is read before the response head is
/// sent (a small file costs one read, a body shorter than its entry is found in time).
pub async fn from_file(file: Arc<File>, start: u64, end: u64, served: Counter) -> io::Result<Body> {
    let open_and_read = move || -> io::Result<(Arc<File>, Bytes)> {
        let first = if end > start {
            read_at(&file, start, (end - start).min(FIRST_CHUNK))?
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
    let range = FileRange {
        first: first.clone(),
        file: file.clone(),
        pos: next,
        end,
        served: served.clone(),
    };
    // The file is let go with the last chunk read, not when the connection drops the body: a
    // removed body's blocks are freed only once no one holds it open.
    let rest = stream::unfold((Some(file), next), move |(file, pos)| {
        let served = served.clone();
        async move {
            let file = file.filter(|_| pos < end)?;
            let chunk = next_chunk(pos - start, CHUNK);
            match read_chunk(file.clone(), pos, (end - pos).min(chunk)).await {
                Ok(bytes) if bytes.is_empty() => Some((Err(short_file()), (None, end))),
                Ok(bytes) => {
                    let n = bytes.len() as u64;
                    served.inc_by(n);
                    let file = (pos + n < end).then_some(file);
                    Some((Ok(Frame::data(bytes)), (file, pos + n)))
                }
                Err(e) => Some((Err(e), (None, end))),
            }
        }
    });
    let head = stream::once(async move { Ok(Frame::data(first)) });
    Ok(Body {
        file: Some(range),
        ..Body::new(StreamBody::new(futures_util::StreamExt::chain(head, rest)))
    })
}

/// The error of a stored body whose file ends before its entry's length.
pub fn short_file() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "cache file shorter than its entry",
    )
}

/// How a client following a fill gets the rest of the file when the fill could not write it
/// to the cache (disk full, I/O error): it reads what was written, then asks the mirrors for
/// the remaining bytes itself. Nothing of that is stored.
pub struct Resume {
    cache: Arc<Cache>,
    request: FillRequest,
    /// `If-Range` for the request: needed when the file may differ between mirrors or over
    /// time (a file whose bytes cannot change needs none).
    if_range: Option<String>,
}

impl Resume {
    /// How readers of the fill of `request` (whose response head is `head`) continue after a
    /// storage failure: a file whose bytes cannot change by range alone, another only while
    /// the mirror's validator still matches; `None` for a file without one (cut instead).
    pub fn of(cache: &Arc<Cache>, request: &FillRequest, head: &fill::Head) -> Option<Arc<Resume>> {
        let if_range = if request.resumable() {
            None
        } else {
            Some(head.if_range()?)
        };
        Some(Arc::new(Resume {
            cache: cache.clone(),
            request: request.clone(),
            if_range,
        }))
    }

    /// The mirror's body for bytes `from..end`.
    async fn rest(
        &self,
        from: u64,
        end: Option<u64>,
    ) -> io::Result<futures_util::stream::BoxStream<'static, reqwest::Result<Bytes>>> {
        let range = (from > 0 || end.is_some()).then(|| {
            let last = end.map(|e| e.saturating_sub(1).to_string());
            format!("bytes={from}-{}", last.unwrap_or_default())
        });
        let ask = crate::upstream::Ask {
            range: range.as_deref(),
            if_range: self.if_range.as_deref(),
            ..Default::default()
        };
        let response = fill::unstored_get(&self.cache, &self.request, &ask)
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        let ok = match response.status().as_u16() {
            200 => from == 0 && end.is_none(),
            206 => fill::content_range(&response).is_some_and(|(start, _)| start == from),
            _ => false,
        };
        if !ok {
            return Err(io::Error::other(format!(
                "the mirror cannot continue the download (answered {})",
                response.status().as_u16()
            )));
        }
        tracing::info!(key = %self.request.key, from, "cache write failed; the client's download continues from the mirror");
        Ok(futures_util::StreamExt::boxed(response.bytes_stream()))
    }
}

/// Where a follower stands.
enum Mode {
    /// Reading the body as the fill writes it.
    Follow,
    /// The fill failed writing the cache: reading the rest of what it wrote.
    Drain,
    /// Reading the rest from the mirror.
    Rest(futures_util::stream::BoxStream<'static, reqwest::Result<Bytes>>),
    Done,
}

struct Follower {
    file: Arc<File>,
    rx: watch::Receiver<FillState>,
    pos: u64,
    end: Option<u64>,
    to_end: bool,
    served: Counter,
    resume: Option<Arc<Resume>>,
    mode: Mode,
}

type Step = Option<(io::Result<Frame<Bytes>>, Follower)>;

impl Follower {
    fn fail(mut self, e: io::Error) -> Step {
        self.mode = Mode::Done;
        Some((Err(e), self))
    }

    fn send(mut self, bytes: Bytes) -> Step {
        let n = bytes.len() as u64;
        self.pos += n;
        self.served.inc_by(n);
        Some((Ok(Frame::data(bytes)), self))
    }

    /// How far the body can be read now: `Ok(Some((n, most)))` up to `n`, at most `most` bytes
    /// per read (close behind a running fill [`FOLLOW_CHUNK`], a finished file [`CHUNK`]),
    /// `Ok(None)` wait for the fill, `Err` the fill ended without a body for this client.
    fn available(&mut self) -> Result<Option<(u64, u64)>, io::Error> {
        let state = self.rx.borrow_and_update().clone();
        let (pos, end, to_end) = (self.pos, self.end, self.to_end);
        Ok(match state {
            FillState::Streaming { written, .. } => {
                // Until the fill is verified and committed, the last byte of a body that runs
                // to the end is held back: HTTP clients take the body as complete at its last
                // byte, not at the end of the stream.
                let cap = match end {
                    Some(e) if to_end => e.saturating_sub(1),
                    Some(e) => e,
                    None => u64::MAX,
                };
                let available = written.min(cap);
                if available > pos {
                    Some((available, FOLLOW_CHUNK))
                } else if !to_end && end.is_some_and(|e| pos >= e) {
                    Some((pos, FOLLOW_CHUNK))
                } else {
                    None
                }
            }
            FillState::Done { meta, .. } | FillState::Spooled { meta, .. } => {
                Some((meta.len, CHUNK))
            }
            FillState::Pending => None,
            FillState::Passthrough { .. } | FillState::Unstored { .. } => {
                return Err(io::Error::other("fill ended without a body"));
            }
            FillState::Failed(e) => {
                if matches!(*e, FillError::Storage(_)) && self.resume.is_some() {
                    self.mode = Mode::Drain;
                    return Ok(None);
                }
                return Err(io::Error::other(e.to_string()));
            }
        })
    }

    async fn step(mut self) -> Step {
        loop {
            match &mut self.mode {
                Mode::Done => return None,
                Mode::Rest(stream) => {
                    return match stream.next().await {
                        Some(Ok(mut bytes)) => {
                            if let Some(e) = self.end {
                                bytes.truncate(e.saturating_sub(self.pos) as usize);
                            }
                            if bytes.is_empty() {
                                continue;
                            }
                            self.send(bytes)
                        }
                        Some(Err(e)) => self.fail(io::Error::other(e)),
                        None if self.end.is_some_and(|e| self.pos < e) => self.fail(
                            io::Error::other("the mirror sent less than the rest of the file"),
                        ),
                        None => None,
                    };
                }
                Mode::Drain => {
                    let want = self.end.map_or(FOLLOW_CHUNK, |e| {
                        e.saturating_sub(self.pos).min(FOLLOW_CHUNK)
                    });
                    if want == 0 {
                        return None;
                    }
                    match read_chunk(self.file.clone(), self.pos, want).await {
                        Ok(bytes) if !bytes.is_empty() => return self.send(bytes),
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {}
                        Err(e) => return self.fail(e),
                    }
                    let resume = self.resume.clone().expect("drain has a resume");
                    match resume.rest(self.pos, self.end).await {
                        Ok(stream) => self.mode = Mode::Rest(stream),
                        Err(e) => return self.fail(e),
                    }
                }
                Mode::Follow => {
                    let (limit, most) = match self.available() {
                        Ok(Some((n, most))) => (self.end.map_or(n, |e| e.min(n)), most),
                        Ok(None) if matches!(self.mode, Mode::Drain) => continue,
                        Ok(None) => {
                            if self.rx.changed().await.is_err() {
                                return self.fail(io::Error::other("fill abandoned"));
                            }
                            continue;
                        }
                        Err(e) => return self.fail(e),
                    };
                    if self.pos >= limit {
                        // Everything wanted was sent, or the completed file is exhausted.
                        return None;
                    }
                    // Read on the worker: the fill wrote these bytes moments ago, so they are in
                    // the page cache and the read is a copy (once the file is complete too, as
                    // the driver's `copy_file` reads a stored body: a page evicted meanwhile
                    // makes the worker wait for the disk, one chunk at a time). On the blocking
                    // pool, a herd of 32 followers on one download kept 150 threads busy
                    // handing chunks over: their stacks and arenas took 6.7 MiB of peak RSS.
                    let want = (limit - self.pos).min(most);
                    return match read_at(&self.file, self.pos, want) {
                        Ok(bytes) if bytes.is_empty() => self.fail(short_file()),
                        Ok(bytes) => self.send(bytes),
                        Err(e) => self.fail(e),
                    };
                }
            }
        }
    }
}

/// A body that follows a fill in progress from `start` to `end` (exclusive; `None`: to the end
/// of the download, whatever its length). Ends with an error if the fill fails, so the client
/// sees a cut transfer, never a short body taken for a whole one; except that when the fill
/// fails writing the cache and `resume` is given, the client gets the rest from the mirror. A
/// body that runs to the end of the file (`to_end`) sends its last byte only once the fill is
/// verified and committed: a client that got everything got a checked file, and its next
/// request is a hit.
pub fn growing(
    file: Arc<File>,
    rx: watch::Receiver<FillState>,
    (start, end, to_end): (u64, Option<u64>, bool),
    served: Counter,
    resume: Option<Arc<Resume>>,
) -> Body {
    let follower = Follower {
        file,
        rx,
        pos: start,
        end,
        to_end,
        served,
        resume,
        mode: Mode::Follow,
    };
    Body::new(StreamBody::new(stream::unfold(follower, Follower::step)))
}

/// Reads a whole small body from a stream (at most `len` bytes are kept).
pub async fn collect(
    mut stream: futures_util::stream::BoxStream<'static, io::Result<Bytes>>,
    len: u64,
) -> io::Result<Bytes> {
    let mut out = Vec::with_capacity(len as usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if (out.len() + chunk.len()) as u64 > len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "stored body longer than its entry",
            ));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(out))
}

/// A stored body read from the store as a stream (`len` bytes expected; fewer cut the
/// transfer).
pub fn from_stream(
    stream: futures_util::stream::BoxStream<'static, io::Result<Bytes>>,
    len: u64,
    served: Counter,
) -> Body {
    let counted = stream::unfold((stream, 0u64), move |(mut stream, sent)| {
        let served = served.clone();
        async move {
            match stream.next().await {
                Some(Ok(bytes)) => {
                    served.inc_by(bytes.len() as u64);
                    let sent = sent + bytes.len() as u64;
                    Some((Ok(Frame::data(bytes)), (stream, sent)))
                }
                Some(Err(e)) => Some((Err(e), (futures_util::stream::empty().boxed(), len))),
                None if sent < len => Some((
                    Err(short_file()),
                    (futures_util::stream::empty().boxed(), len),
                )),
                None => None,
            }
        }
    });
    Body::new(StreamBody::new(counted))
}

/// A mirror's response body passed straight through (a file the cache does not store).
pub fn unstored(response: reqwest::Response, served: Counter) -> Body {
    let s = futures_util::StreamExt::map(response.bytes_stream(), move |item| {
        item.map(|bytes| {
            served.inc_by(bytes.len() as u64);
            Frame::data(bytes)
        })
        .map_err(io::Error::other)
    });
    Body::new(StreamBody::new(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_follower_reads_at_most_a_follow_chunk_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("body");
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = Arc::new(File::open(&path).unwrap());
        let head = Arc::new(fill::Head {
            status: 200,
            len: None,
            content_type: None,
            last_modified: None,
            etag: None,
            cache_control: None,
        });
        let (tx, rx) = watch::channel(FillState::Streaming {
            head,
            file: file.clone(),
            written: data.len() as u64,
        });
        let served = Counter::default();
        let body = growing(file, rx, (0, None, false), served.clone(), None);
        let mut frames = Vec::new();
        let mut got = Vec::new();
        let mut body = std::pin::pin!(body);
        while got.len() < data.len() {
            let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
            frames.push(frame.len());
            got.extend_from_slice(&frame);
        }
        drop(tx);
        assert!(got == data);
        assert!(
            frames.iter().all(|&n| n as u64 <= FOLLOW_CHUNK),
            "{frames:?}"
        );
        assert_eq!(served.get(), data.len() as u64);
    }
}
