//! Pipelined read-ahead. apt sends up to ten requests on a connection before the first answer;
//! HTTP/1.1 answers them in order, so without read-ahead each cold file would wait a whole
//! round trip to the mirror after the previous one. [`Connection::read_ahead`] starts the
//! look-up (and fill) of a request head queued behind the one being answered. The plain-HTTP
//! driver calls it for the heads it queues itself; for the connections hyper serves (TLS, and
//! those the driver handed over), [`ReadAhead`] sits between the socket and hyper, sees the
//! bytes hyper reads and finds the queued heads in them (hyper calls the handler for one only
//! once the previous response is sent). Either way the answers still go out one by one, in
//! order; a read-ahead only makes the fill it joins older.
//!
//! Bounds: at most [`MAX_AHEAD`] read-aheads per connection not yet claimed by their request
//! (a slot is taken before the look-up starts), request heads of at most [`MAX_HEAD`] bytes.
//! Anything the scanner cannot follow as hyper will (a larger or unparsable head or target, a
//! body, an upgrade or CONNECT, HTTP/1.0, `Connection: close`) stops read-ahead for the
//! connection: hyper judges it. A fill started by a read-ahead is speculative until its
//! request claims it: if no one waits for it before that (the client left, no other client
//! joined), it stops at its next chunk and stores nothing.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use super::AppState;
use super::driver::{MAX_HEAD, MAX_HEADERS};
use crate::cache::Lookup;
use crate::cache::fill::FillState;
use crate::route::RouteMatch;
use crate::storage::CacheKey;

/// Read-aheads outstanding per connection, at most.
pub const MAX_AHEAD: usize = 32;

/// What a connection's read-aheads and its requests share.
#[derive(Debug, Default)]
pub struct Connection {
    /// Responses whose body is done (sent or abandoned).
    pub finished: AtomicUsize,
    /// Fills that read-aheads started, by key, with their claim flag, until their request
    /// takes them.
    started: Mutex<HashMap<CacheKey, Started>>,
    /// Read-aheads begun and not yet claimed (or found to need nothing): at most MAX_AHEAD.
    slots: AtomicUsize,
}

type Started = (watch::Receiver<FillState>, Arc<AtomicBool>);

impl Connection {
    /// The receiver of the fill a read-ahead of this connection started for `key`, if any;
    /// the fill is then the request's own (no longer speculative).
    pub fn take(&self, key: &CacheKey) -> Option<watch::Receiver<FillState>> {
        let mut started = self.started.lock().unwrap_or_else(PoisonError::into_inner);
        // Most connections never read ahead: no key is hashed for them.
        if started.is_empty() {
            return None;
        }
        let (rx, claimed) = started.remove(key)?;
        drop(started);
        claimed.store(true, Ordering::Release);
        self.slots.fetch_sub(1, Ordering::AcqRel);
        Some(rx)
    }

    /// Starts the look-up (and fill) of a queued GET of `matched`, if a slot is free.
    pub(super) fn read_ahead(self: &Arc<Self>, state: &Arc<AppState>, matched: RouteMatch) {
        let free = self
            .slots
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_AHEAD).then_some(n + 1)
            })
            .is_ok();
        if free {
            tokio::spawn(start(state.clone(), self.clone(), matched));
        }
    }
}

/// The socket as hyper sees it, read-ahead on the side.
pub struct ReadAhead<I> {
    io: I,
    /// Bytes read from the socket before hyper took it (the driver's), given to hyper first.
    prefix: Vec<u8>,
    /// How much of `prefix` hyper has read.
    at: usize,
    state: Arc<AppState>,
    connection: Arc<Connection>,
    /// Bytes of a request head not complete yet.
    pending: Vec<u8>,
    /// Request heads seen on this connection.
    heads: usize,
    /// Read-ahead stopped for this connection.
    off: bool,
}

impl<I> ReadAhead<I> {
    /// The connection's requests answered so far (by the driver, before it handed the
    /// connection on) count as heads seen; `prefix` is what the driver read and did not answer.
    pub fn new(
        io: I,
        prefix: Vec<u8>,
        state: Arc<AppState>,
        connection: Arc<Connection>,
    ) -> ReadAhead<I> {
        ReadAhead {
            io,
            prefix,
            at: 0,
            state,
            heads: connection.finished.load(Ordering::Acquire),
            connection,
            pending: Vec::new(),
            off: false,
        }
    }

    /// Looks at bytes hyper just read.
    fn scan(&mut self, data: &[u8]) {
        if self.off {
            return;
        }
        self.pending.extend_from_slice(data);
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut request = httparse::Request::new(&mut headers);
            let len = match request.parse(&self.pending) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => {
                    if self.pending.len() > MAX_HEAD {
                        self.stop();
                    }
                    return;
                }
                Err(_) => return self.stop(),
            };
            let Ok(framing) = super::driver::framing(&request) else {
                return self.stop();
            };
            if request.method == Some("CONNECT")
                || request.version != Some(1)
                || framing.body
                || framing.upgrade
            {
                // A tunnel follows, HTTP/1.0 (one request unless keep-alive is asked for), or
                // a body or a protocol switch: the next head cannot be found without reading
                // the connection as hyper does.
                return self.stop();
            }
            let index = self.heads;
            self.heads += 1;
            // The head hyper answers next (every earlier response is done) needs no help: a
            // client that does not pipeline costs the parse of its heads, nothing more.
            let queued = index > self.connection.finished.load(Ordering::Acquire);
            if request.method == Some("GET") && !framing.range && queued {
                let Some(Ok(uri)) = request.path.map(str::parse::<http::Uri>) else {
                    return self.stop();
                };
                if let Some(Ok(matched)) = super::handler::route_package(&self.state, &uri) {
                    self.connection.read_ahead(&self.state, matched);
                }
            }
            self.pending.drain(..len);
            if framing.close {
                // Hyper answers this one and closes: nothing after it is answered.
                return self.stop();
            }
        }
    }

    fn stop(&mut self) {
        self.off = true;
        self.pending = Vec::new();
    }
}

/// Looks the request up as its turn would, starting its fill (speculative) when it is not
/// stored; remembers a fill it started for the request to claim, else gives its slot back.
async fn start(state: Arc<AppState>, connection: Arc<Connection>, matched: RouteMatch) {
    let claimed = Arc::new(AtomicBool::new(false));
    let fill = crate::cache::FillRequest {
        speculative: Some(claimed.clone()),
        ..super::handler::fill_for(&state, matched).await.0
    };
    let asked = std::time::Instant::now();
    let started = match state.cache.lookup(&fill, true).await {
        Ok(Lookup::Fill { rx, since, .. }) if since >= asked => Some((fill.key, rx)),
        _ => None,
    };
    let mut map = connection
        .started
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    match started {
        // A second read-ahead of the same file on this connection: the first holds its slot.
        Some((key, rx)) if !map.contains_key(&key) => {
            map.insert(key, (rx, claimed));
        }
        _ => {
            drop(map);
            connection.slots.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ReadAhead<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = if this.at < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.at);
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                (this.prefix, this.at) = (Vec::new(), 0);
            }
            Poll::Ready(Ok(()))
        } else {
            Pin::new(&mut this.io).poll_read(cx, buf)
        };
        if let Poll::Ready(Ok(())) = polled
            && buf.filled().len() > before
        {
            let filled = &buf.filled()[before..];
            this.scan(filled);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ReadAhead<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
