//! The connection driver for plain HTTP. It reads request heads itself (httparse) and answers
//! every GET and HEAD of a package path, hit or miss, writing the response head directly; a
//! stored file's bytes go from the file to the socket with sendfile(2), or, for a client on
//! this host, through one buffer (see [`copy_file`] for why). Requests a client pipelines
//! behind the one being answered are read as they arrive and looked up at once
//! ([`super::readahead`]), and answered strictly in order.
//!
//! Anything else (the proxy's own pages, other methods, requests with a body, upgrades,
//! CONNECT, HTTP/1.0) is handed to hyper, with the bytes read so far (given back first by
//! [`readahead::ReadAhead`]), and hyper serves the rest of the connection. TLS connections are
//! hyper's from the start.
//!
//! It is at least as strict as hyper. A head over [`MAX_HEAD`] bytes, or with more than
//! [`MAX_HEADERS`] lines, gets 431; a malformed head or target, a request with both
//! `Content-Length` and `Transfer-Encoding`, or more than one `Content-Length`, gets 400; a
//! version other than HTTP/1.x gets 505; a head not complete `Tuning::client_head_timeout`
//! (30 s) after the connection started waiting for it gets 408, and a connection that sends
//! nothing for that long is closed. Each of these closes the connection after the
//! answers to the requests before it.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::IpAddr;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::AppState;
use super::handler::{self, Asked, Start};
use super::readahead::{self, Connection};
use crate::cache::body::{Body, FileRange, next_chunk, short_file};
use crate::route::{RouteError, RouteMatch};

/// The longest request head (hyper's limit on this server too): 431 beyond.
pub const MAX_HEAD: usize = 16 * 1024;
/// Header lines per request head (hyper's default): 431 beyond.
pub const MAX_HEADERS: usize = 100;
/// Requests read and waiting behind the one being answered, at most, and the bytes of their
/// heads: reading pauses at either.
const MAX_QUEUED: usize = 64;
const MAX_QUEUED_BYTES: usize = 64 * 1024;
/// The most one sendfile(2) call sends: other connections get their turn in between.
const SENDFILE_CHUNK: u64 = 1024 * 1024;
/// The largest read of a stored body that [`copy_file`] copies to the socket (a power of two,
/// as the first, `body::next_chunk`'s 16 KiB).
const COPY_CHUNK: u64 = 512 * 1024;
/// After a refusal, how long (and how many bytes) the client's unread requests are drained
/// before the connection is closed: closing with unread bytes would reset the connection and
/// could destroy the refusal before the client reads it.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 64 * 1024;

/// What the driver needs besides the socket.
pub struct Driven<S> {
    pub state: Arc<AppState>,
    pub peer: IpAddr,
    pub connection: Arc<Connection>,
    /// A client that stops reading for this long is cut off.
    pub write_timeout: Duration,
    /// hyper, for what the driver hands on.
    pub builder: hyper::server::conn::http1::Builder,
    pub service: S,
    pub stopping: tokio::sync::watch::Receiver<bool>,
    pub open: tokio::sync::mpsc::Sender<()>,
}

/// A request read and parsed, waiting for its turn.
struct Queued {
    method: Method,
    uri: Uri,
    /// The headers its way reads.
    asked: Asked,
    /// All its headers, only while the debug log lists them.
    all: Option<HeaderMap>,
    routed: Result<RouteMatch, RouteError>,
    /// The client asked for the connection to close after it.
    close: bool,
    /// The length of its head.
    len: usize,
}

/// The reading side: bytes not yet parsed, and requests waiting for their answer.
#[derive(Default)]
struct Reader {
    buf: Vec<u8>,
    queue: VecDeque<Queued>,
    /// The bytes of the heads in `queue`.
    queued_bytes: usize,
    /// The head at the start of `buf` is hyper's to answer: nothing more is read.
    handoff: bool,
    /// Nothing more is read: end of stream, a read error, or `Connection: close`.
    done: bool,
    /// The client ended its side (end of stream): the requests read before it are still
    /// answered, as hyper answers those in its buffer.
    ended: bool,
    /// The connection failed.
    gone: bool,
    /// A refusal to send, after the answers before it, and then close.
    refusal: Option<(StatusCode, &'static str)>,
}

impl Reader {
    /// Whether to read more now.
    fn wants_more(&self) -> bool {
        !self.done && !self.handoff && self.refusal.is_none() && !self.full()
    }

    fn full(&self) -> bool {
        self.queue.len() >= MAX_QUEUED || self.queued_bytes >= MAX_QUEUED_BYTES
    }

    /// The next request to answer.
    fn next(&mut self) -> Option<Queued> {
        let request = self.queue.pop_front()?;
        self.queued_bytes -= request.len;
        Some(request)
    }

    /// Reads what the socket has (never waits). On Linux a TCP read that leaves room in the
    /// buffer has emptied the socket's receive queue (tcp_recvmsg copies until the queue and
    /// its backlog are empty), so the socket's readiness is cleared then, as nginx does:
    /// waiting for the next request goes straight to epoll instead of first making a read that
    /// can only fail with EAGAIN (one recv per request, not two). This bends tokio's rule that
    /// the closure reports WouldBlock only when the kernel did; it is safe because bytes that
    /// arrive later raise a new edge (tokio's clear is tick-checked, so an edge seen meanwhile
    /// is kept), and an end of stream already seen stays ready (tokio never clears the closed
    /// states). The one exception, as for nginx: a read stops at TCP urgent data, which a
    /// client sending it would find unanswered until it sends more or its head times out.
    fn try_read(&mut self, stream: &TcpStream) {
        if self.buf.capacity() == 0 {
            self.buf = spare::take();
        }
        self.buf.reserve(READ_ROOM);
        let room = self.buf.capacity() - self.buf.len();
        let read = stream.try_io(Interest::READABLE, || {
            let into = rustix::buffer::spare_capacity(&mut self.buf);
            let (n, _) = rustix::net::recv(stream, into, rustix::net::RecvFlags::empty())?;
            if n == 0 || n == room {
                Ok(n)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            }
        });
        match read {
            Ok(0) => self.ended = true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => self.gone = true,
        }
        self.done |= self.gone || self.ended;
    }

    fn refuse(&mut self, status: StatusCode, reason: &'static str) {
        self.refusal = Some((status, reason));
        self.buf = Vec::new();
    }

    /// Parses the complete heads in `buf`. `busy`: a response is being answered, so every new
    /// request is queued behind it and is read ahead.
    fn parse(&mut self, state: &Arc<AppState>, connection: &Arc<Connection>, busy: bool) {
        while self.refusal.is_none() && !self.handoff && !self.full() {
            let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut head = httparse::Request::new(&mut lines);
            let len = match head.parse(&self.buf) {
                Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
                Ok(httparse::Status::Complete(_)) => {
                    return self.refuse(
                        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        "request head too large",
                    );
                }
                Ok(httparse::Status::Partial) => {
                    if self.buf.len() > MAX_HEAD {
                        self.refuse(
                            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                            "request head too large",
                        );
                    }
                    return;
                }
                Err(httparse::Error::TooManyHeaders) => {
                    return self.refuse(
                        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        "too many header lines",
                    );
                }
                Err(httparse::Error::Version) => {
                    return self.refuse(
                        StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                        "only HTTP/1.x is served",
                    );
                }
                Err(_) => {
                    return self.refuse(StatusCode::BAD_REQUEST, "malformed request head");
                }
            };
            match classify(&head) {
                Err(reason) => return self.refuse(StatusCode::BAD_REQUEST, reason),
                Ok(Kind::Hyper) => {
                    self.handoff = true;
                    return;
                }
                Ok(Kind::Ours { close }) => {
                    let Some(queued) = queued(state, &head, &self.buf[..len], close) else {
                        return self.refuse(StatusCode::BAD_REQUEST, "malformed request");
                    };
                    let Some(queued) = queued else {
                        // One of the proxy's own pages.
                        self.handoff = true;
                        return;
                    };
                    if (busy || !self.queue.is_empty())
                        && queued.method == Method::GET
                        && queued.asked.conditions.range.is_none()
                        && let Ok(matched) = &queued.routed
                    {
                        connection.read_ahead(state, matched.clone());
                    }
                    self.queue.push_back(queued);
                    self.queued_bytes += len;
                    self.buf.drain(..len);
                    if close {
                        self.done = true;
                        self.buf = Vec::new();
                        return;
                    }
                }
            }
        }
    }
}

/// Who answers a request.
enum Kind {
    /// The driver, if it is for a package path; `close`: the client asked to close after it.
    Ours { close: bool },
    /// hyper: a body, an upgrade, another method or version.
    Hyper,
}

/// What a request head says of its body and its connection.
pub(super) struct Framing {
    /// A body follows (a non-zero Content-Length, or Transfer-Encoding).
    pub body: bool,
    /// A protocol switch is asked for.
    pub upgrade: bool,
    /// The client asked for the connection to close after it.
    pub close: bool,
    /// A byte range is asked for.
    pub range: bool,
}

/// Reads the framing of `head`, refusing what could make two parsers disagree on where the
/// request ends: Content-Length with Transfer-Encoding, a repeated or malformed
/// Content-Length. The driver and read-ahead both judge heads by it.
pub(super) fn framing(head: &httparse::Request<'_, '_>) -> Result<Framing, &'static str> {
    let mut length = None;
    let (mut chunked, mut close, mut upgrade, mut range) = (false, false, false, false);
    for line in head.headers.iter() {
        let name = line.name;
        if name.eq_ignore_ascii_case("content-length") {
            if length.is_some() {
                return Err("more than one Content-Length");
            }
            let digits = std::str::from_utf8(line.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()));
            length = Some(
                digits
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or("malformed Content-Length")?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        } else if name.eq_ignore_ascii_case("range") {
            range = true;
        } else if name.eq_ignore_ascii_case("connection") {
            close |= line
                .value
                .split(|&b| b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
    }
    if chunked && length.is_some() {
        return Err("both Content-Length and Transfer-Encoding");
    }
    Ok(Framing {
        body: chunked || length.unwrap_or(0) > 0,
        upgrade,
        close,
        range,
    })
}

/// Decides who answers `head`, refusing what a request must not be ([`framing`]): the checks
/// are made here for every request, whoever answers it.
fn classify(head: &httparse::Request<'_, '_>) -> Result<Kind, &'static str> {
    let framing = framing(head)?;
    let ours = matches!(head.method, Some("GET" | "HEAD"))
        && head.version == Some(1)
        && !framing.body
        && !framing.upgrade;
    Ok(if ours {
        Kind::Ours {
            close: framing.close,
        }
    } else {
        Kind::Hyper
    })
}

/// The request in `head` (a GET or HEAD), parsed from `text`: `None` when it is malformed,
/// `Some(None)` when it is for one of the proxy's own pages.
fn queued(
    state: &AppState,
    head: &httparse::Request<'_, '_>,
    text: &[u8],
    close: bool,
) -> Option<Option<Queued>> {
    let method = if head.method == Some("HEAD") {
        Method::HEAD
    } else {
        Method::GET
    };
    // The head is copied once; the target and the header values are parts of that copy.
    let shared = Bytes::copy_from_slice(text);
    let part = |within: &[u8]| {
        let start = (within.as_ptr() as usize).checked_sub(text.as_ptr() as usize)?;
        shared.get(start..start + within.len())?;
        Some(shared.slice(start..start + within.len()))
    };
    // Origin-form, or absolute-form (the forward-proxy request).
    let target = head.path?;
    let uri = Uri::from_maybe_shared(part(target.as_bytes())?).ok()?;
    if !target.starts_with('/') && (uri.scheme().is_none() || uri.authority().is_none()) {
        return None;
    }
    // Only the headers the answer and the log read (`Asked::keep`: the first of each name, as
    // hyper's path reads them; every value of those names must be valid), and all of them
    // while the debug log lists them.
    let mut asked = Asked::default();
    let mut all = handler::logs_request_headers().then(HeaderMap::new);
    for line in head.headers.iter() {
        let value = || HeaderValue::from_maybe_shared(part(line.value)?).ok();
        let Some(all) = &mut all else {
            asked.keep(line.name, value)?;
            continue;
        };
        let value = value()?;
        all.append(
            HeaderName::from_bytes(line.name.as_bytes()).ok()?,
            value.clone(),
        );
        asked.keep(line.name, || Some(value))?;
    }
    let Some(routed) = handler::route_package(state, &uri) else {
        return Some(None);
    };
    Some(Some(Queued {
        method,
        uri,
        asked,
        all,
        routed,
        close,
        len: text.len(),
    }))
}

/// Serves a plain-HTTP connection until it ends (or the server stops).
pub async fn drive<S>(stream: TcpStream, driven: Driven<S>)
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = Body>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Driven {
        state,
        peer,
        connection,
        write_timeout,
        builder,
        service,
        stopping,
        open,
    } = driven;
    // Stored files go to a client on this host through a buffer (see [`copy_file`]), kept
    // while the socket takes nothing for this long.
    let tuning = state.cache.tuning();
    let copy = (tuning.copy_to_local_clients && on_this_host(&stream, peer))
        .then_some(tuning.copy_buffer_hold);
    let head_timeout = tuning.client_head_timeout;
    let mut reader = Reader::default();
    // One timer and one shutdown watch for the connection's life: setting the timer later
    // again for each request is one atomic store, where a timer and a watch made for each wait
    // were registered and removed again (about 3 % of a small hit's instructions). An answer
    // that outlasts the head timeout lets the timer fire once meanwhile: a spurious wake-up,
    // and the next reset registers it again.
    let head_due = tokio::time::sleep_until(Instant::now() + head_timeout);
    tokio::pin!(head_due);
    let mut shutdown = stopping.clone();
    let shutdown = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    tokio::pin!(shutdown);
    loop {
        if *stopping.borrow() {
            // Shutting down: no new request is started (as hyper's graceful shutdown).
            return;
        }
        if !reader.buf.is_empty() {
            // Heads read while the queue was full.
            reader.parse(&state, &connection, false);
        }
        let Some(request) = reader.next() else {
            if let Some((status, reason)) = reader.refusal.take() {
                tracing::debug!(client = %peer, status = status.as_u16(), reason, "request refused");
                let page = refusal(status, "", reason);
                if write_all(&stream, &mut [IoSlice::new(&page)], write_timeout)
                    .await
                    .is_ok()
                {
                    linger(&stream, LINGER).await;
                }
                return;
            }
            if reader.handoff {
                let io = super::stall::WriteTimeout::new(stream, write_timeout);
                let prefix = std::mem::take(&mut reader.buf);
                let io = readahead::ReadAhead::new(io, prefix, state, connection);
                Box::pin(super::serve(&builder, io, service, stopping, open)).await;
                return;
            }
            if reader.done {
                return;
            }
            // The next request is often there already: read it without a timer or a wait.
            let had = reader.buf.len();
            reader.try_read(&stream);
            if reader.gone || reader.ended {
                return;
            }
            if reader.buf.len() > had {
                reader.parse(&state, &connection, false);
                continue;
            }
            if reader.buf.is_empty() {
                // An idle connection holds no buffer.
                spare::give(std::mem::take(&mut reader.buf));
            }
            tokio::select! {
                biased;
                ready = stream.readable() => match ready {
                    Ok(()) => {
                        reader.try_read(&stream);
                        reader.parse(&state, &connection, false);
                    }
                    Err(_) => return,
                },
                () = &mut head_due => {
                    if reader.buf.is_empty() {
                        return;
                    }
                    reader.refuse(StatusCode::REQUEST_TIMEOUT, "request head not received in time");
                }
                () = &mut shutdown => return,
            }
            continue;
        };
        let start = Start::of(
            &state,
            peer,
            &request.method,
            &request.uri,
            request.asked.traceparent.as_ref(),
            request.all.as_ref(),
        );
        let head_only = request.method == Method::HEAD;
        let answer = handler::package(
            &state,
            &request.method,
            &request.asked.conditions,
            request.routed,
            &connection,
        );
        let Some((mut response, routed)) =
            while_reading(&stream, &mut reader, &state, &connection, answer).await
        else {
            return;
        };
        // The proxy's own headers are written by `send`.
        let finish =
            start.finish_without_own(state.clone(), connection.clone(), &mut response, routed);
        let last = request.close || *stopping.borrow();
        let send = Box::pin(send(
            &stream,
            response,
            head_only,
            last,
            write_timeout,
            copy,
        ));
        let sent = while_reading(&stream, &mut reader, &state, &connection, send).await;
        if let Some(finish) = finish {
            finish.done();
        }
        match sent {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                tracing::debug!(client = %peer, error = %e, "response not sent whole; connection closed");
                return;
            }
            None => return,
        }
        if last {
            return;
        }
        head_due.as_mut().reset(Instant::now() + head_timeout);
    }
}

/// Runs `work`, reading (and reading ahead) the requests that arrive meanwhile; `None` when
/// the connection fails first, or when the client ends its side with no request waiting
/// behind this one: the work is dropped then, as hyper drops it (a client that hung up is not
/// sent the rest). An end of stream read behind queued requests leaves them all to be answered
/// (hyper answers those in its buffer but drops the last one if it is still pending then): a
/// client may half-close after pipelining. A client that in fact left is found out by the first
/// write that fails; until then its read-aheads are bounded as for any connection.
async fn while_reading<F: Future + Unpin>(
    stream: &TcpStream,
    reader: &mut Reader,
    state: &Arc<AppState>,
    connection: &Arc<Connection>,
    mut work: F,
) -> Option<F::Output> {
    loop {
        tokio::select! {
            biased;
            out = &mut work => return Some(out),
            // (While reading pauses, a client that leaves is noticed by the next write.)
            ready = stream.readable(), if reader.wants_more() => {
                if ready.is_err() {
                    return None;
                }
                reader.try_read(stream);
                reader.parse(state, connection, true);
                if reader.gone || (reader.ended && reader.queue.is_empty()) {
                    return None;
                }
            }
        }
    }
}

/// A refusal page: the status, `extra` header lines, a one-line reason, and the connection
/// closed (the driver's refusals, and `limits::refuse`).
pub(super) fn refusal(status: StatusCode, extra: &str, reason: &str) -> Vec<u8> {
    let mut page = Vec::with_capacity(256);
    status_line(&mut page, status);
    page.extend_from_slice(b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\n");
    page.extend_from_slice(extra.as_bytes());
    page.extend_from_slice(format!("content-length: {}\r\n", reason.len() + 1).as_bytes());
    date(&mut page);
    page.extend_from_slice(b"\r\n");
    page.extend_from_slice(reason.as_bytes());
    page.push(b'\n');
    page
}

fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// What one read of request heads asks room for.
const READ_ROOM: usize = 4096;

/// Read buffers that idle connections gave back, kept for the next one that has something
/// to read: a keep-alive connection lets go of its buffer between requests (5,000 idle
/// connections hold none), and taking it from here costs less than allocating it again
/// (an allocation of this size makes the allocator consolidate its small free chunks).
mod spare {
    use std::cell::RefCell;

    /// At most this many per thread (256 KiB).
    const KEPT: usize = 64;

    thread_local! {
        static BUFFERS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    }

    /// An empty buffer with room for one read.
    pub(super) fn take() -> Vec<u8> {
        BUFFERS
            .with_borrow_mut(Vec::pop)
            .unwrap_or_else(|| Vec::with_capacity(super::READ_ROOM))
    }

    /// Keeps `buf` for another connection, if it is of the usual size and there is room.
    pub(super) fn give(mut buf: Vec<u8>) {
        if buf.capacity() != super::READ_ROOM {
            return;
        }
        buf.clear();
        BUFFERS.with_borrow_mut(|kept| {
            if kept.len() < KEPT {
                kept.push(buf);
            }
        });
    }
}

thread_local! {
    /// The `date` header line of the current second, as hyper keeps it.
    static DATE: std::cell::RefCell<(u64, Vec<u8>)> = const { std::cell::RefCell::new((0, Vec::new())) };
}

/// Appends the `date` header line.
fn date(out: &mut Vec<u8>) {
    let now = std::time::SystemTime::now();
    let second = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, line)| {
        if *at != second || line.is_empty() {
            *at = second;
            *line = format!("date: {}\r\n", httpdate::fmt_http_date(now)).into_bytes();
        }
        out.extend_from_slice(line);
    });
}

/// Writes `response`: its head, then its body (none for a HEAD, a 304 or a 204), straight from
/// the file when the body is a stored file's range (`copy`: through a buffer held that long
/// while the socket takes nothing, see [`copy_file`]). `Err` when the connection cannot go on
/// (the client left or stopped reading, or the body failed part way: the client sees a cut
/// transfer, never a short body taken for a whole one).
async fn send(
    stream: &TcpStream,
    response: Response<Body>,
    head_only: bool,
    close: bool,
    timeout: Duration,
    copy: Option<Duration>,
) -> io::Result<()> {
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let no_body = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let mut head = Vec::with_capacity(512);
    status_line(&mut head, status);
    for (name, value) in &parts.headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    let (length, chunked) = match (declared, body.size_hint().exact()) {
        (Some(n), _) => (Some(n), false),
        (None, _) if no_body => (None, false),
        // A HEAD answer whose body is empty says nothing of the length (as hyper).
        (None, Some(0)) if head_only => (None, false),
        (None, Some(n)) => {
            head.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
            (Some(n), false)
        }
        (None, None) if head_only => (None, false),
        (None, None) => {
            head.extend_from_slice(b"transfer-encoding: chunked\r\n");
            (None, true)
        }
    };
    head.extend_from_slice(handler::own_lines());
    if close {
        head.extend_from_slice(b"connection: close\r\n");
    }
    date(&mut head);
    head.extend_from_slice(b"\r\n");
    if head_only || no_body {
        return write_all(stream, &mut [IoSlice::new(&head)], timeout).await;
    }
    body = match body.into_file() {
        Ok(range) if length == Some(range.first.len() as u64 + (range.end - range.pos)) => {
            return send_file(stream, &head, range, timeout, copy).await;
        }
        Ok(_) => return Err(io::Error::other("file range and Content-Length differ")),
        Err(body) => body,
    };
    // The head goes out with the first bytes when they are at hand, else at once: a client
    // waiting on a fill sees its answer begin.
    let mut head = Some(head);
    let mut sent = 0u64;
    loop {
        let next = match futures_util::FutureExt::now_or_never(body.frame()) {
            Some(next) => next,
            None => {
                if let Some(prefix) = head.take() {
                    write_all(stream, &mut [IoSlice::new(&prefix)], timeout).await?;
                }
                body.frame().await
            }
        };
        let Some(frame) = next else {
            break;
        };
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        if length.is_some_and(|n| sent > n) {
            return Err(io::Error::other("body longer than its Content-Length"));
        }
        let prefix = head.take().unwrap_or_default();
        // The body's first bytes (its head may have gone out alone, before any were written).
        let first = sent == data.len() as u64;
        if chunked {
            let size = format!("{:x}\r\n", data.len());
            let mut bufs = [
                IoSlice::new(&prefix),
                IoSlice::new(size.as_bytes()),
                IoSlice::new(&data),
                IoSlice::new(b"\r\n"),
            ];
            write_all(stream, &mut bufs, timeout).await?;
        } else {
            write_all(
                stream,
                &mut [IoSlice::new(&prefix), IoSlice::new(&data)],
                timeout,
            )
            .await?;
        }
        // Neither a body whose frames are ready at once (a followed fill, read on the worker)
        // nor a socket that takes them makes this wait: the worker is given up by budget, as
        // in `send_file`. After its first bytes, a body with more to come gives the worker up
        // at once: a herd of clients woken together by one fill each get their head and first
        // bytes before any of them sends the rest of what the fill has written (else the
        // last one's first byte waited for every other one's catching up, 0.7 ms each).
        if first && !body.is_end_stream() {
            tokio::task::yield_now().await;
        } else {
            tokio::task::coop::consume_budget().await;
        }
    }
    if length.is_some_and(|n| sent != n) {
        return Err(io::Error::other("body shorter than its Content-Length"));
    }
    let prefix = head.take().unwrap_or_default();
    let end: &[u8] = if chunked { b"0\r\n\r\n" } else { b"" };
    write_all(
        stream,
        &mut [IoSlice::new(&prefix), IoSlice::new(end)],
        timeout,
    )
    .await
}

/// Sends the head, the range's first bytes (already read), then the rest of the range: to a
/// client on this host copied through a buffer ([`copy_file`]), to any other with sendfile(2)
/// (no copy, no buffer).
async fn send_file(
    stream: &TcpStream,
    head: &[u8],
    range: FileRange,
    timeout: Duration,
    copy: Option<Duration>,
) -> io::Result<()> {
    let FileRange {
        first,
        file,
        mut pos,
        end,
        served,
    } = range;
    write_all(
        stream,
        &mut [IoSlice::new(head), IoSlice::new(&first)],
        timeout,
    )
    .await?;
    let sent = first.len() as u64;
    drop(first);
    if let Some(hold) = copy {
        return copy_file(stream, &file, (pos, end, sent), &served, (timeout, hold)).await;
    }
    // sendfile runs on the worker, inside try_io so that a full socket's readiness is cleared
    // without losing a wake-up. A file not in the page cache makes it wait for the disk there
    // (at most 1 MiB per call; the kernel reads ahead of a sequential sender). Run on the
    // blocking pool instead, the readiness hand-over between threads lost wake-ups and cost
    // 95 % of the 8-client throughput.
    while pos < end {
        let count = (end - pos).min(SENDFILE_CHUNK) as usize;
        let sent = stream.try_io(Interest::WRITABLE, || {
            let mut offset = pos;
            rustix::fs::sendfile(stream, &*file, Some(&mut offset), count).map_err(io::Error::from)
        });
        match sent {
            Ok(0) => return Err(short_file()),
            Ok(n) => {
                pos += n as u64;
                served.inc_by(n as u64);
                tokio::task::coop::consume_budget().await;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => writable(stream, timeout).await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sends bytes `pos..end` of `file` (`sent` bytes of the body are out already), read into a
/// buffer and written from it.
///
/// For a client on this host, not sendfile(2): over loopback the receiver copies the bytes out
/// of its socket, and it does that about 35 % faster from the compact buffers a write fills
/// than from the page-cache pages sendfile hands over (8 curl clients: 3,740 against 2,820
/// MiB/s, one client 3,280 against 2,370, in the shared harness side by side; varnish, which
/// writes from memory, 3,620 and 3,100), for about 10 % more of the proxy's CPU per GiB (0.22
/// against 0.20 s). Over a network card sendfile has no such cost and saves the copy.
///
/// Writing from a mapping of the file instead of reading it into the buffer (mmap(2) of each
/// 512 KiB window, then write, as varnish writes from its mapped storage) was measured and
/// dropped. With the proxy pinned to one core and 8 curl loops on the other for 8 s, on a
/// 200 MiB hit, it cost 0.34-0.39 CPU seconds per GiB against 0.28-0.30 for this copy, and
/// fetched 5-17 % less: setting up and tearing down the page tables of every page costs more
/// than the copy it saves. Varnish avoids that by keeping its storage mapped, which its
/// resident memory shows (620-920 MiB in the shared harness).
///
/// Reading each stretch into a small buffer and forgetting it, just before sendfile(2) sends
/// the same pages (one copy instead of two, and the receiver still finds the bytes in the
/// CPU's caches), was measured and dropped too. In the shared harness, three rounds side by
/// side with this copy (path form, 1 MiB stretches read 64 KiB at a time; 2026-12-03, a
/// slower machine than in the run above): one client 1,807-1,873 MiB/s against 1,350-1,880,
/// eight clients 1,751-2,170 against 2,345-2,858, CPU per GiB 0.317-0.358 against
/// 0.305-0.385. A loop of one client alone had shown it 25 % ahead; with eight it loses a
/// quarter.
///
/// The buffer grows with what was sent ([`next_chunk`]), from 16 KiB to [`COPY_CHUNK`] by
/// powers of two (512 KiB measured fastest: it stays in the core's cache between the read and
/// the write), and it is freed when the body is out, or when the socket has taken nothing for
/// `hold` (`Tuning::copy_buffer_hold`, 250 ms): a client that stops reading holds none. Reads
/// run on the worker: a file not in the page cache makes it wait for the disk, one chunk at a
/// time (the kernel reads ahead of a sequential reader).
async fn copy_file(
    stream: &TcpStream,
    file: &std::fs::File,
    (mut pos, end, mut sent): (u64, u64, u64),
    served: &prometheus_client::metrics::counter::Counter,
    (timeout, hold): (Duration, Duration),
) -> io::Result<()> {
    let mut buf = Vec::new();
    let (mut lo, mut hi) = (0, 0);
    loop {
        if lo == hi {
            if pos == end {
                return Ok(());
            }
            let size = next_chunk(sent, COPY_CHUNK).min(end - pos) as usize;
            if buf.len() < size {
                buf = vec![0; size.next_power_of_two()];
            }
            let n = loop {
                match file.read_at(&mut buf[..size], pos) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    read => break read?,
                }
            };
            if n == 0 {
                return Err(short_file());
            }
            pos += n as u64;
            (lo, hi) = (0, n);
        }
        match stream.try_write(&buf[lo..hi]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                lo += n;
                sent += n as u64;
                served.inc_by(n as u64);
                tokio::task::coop::consume_budget().await;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if tokio::time::timeout(hold, stream.writable()).await.is_err() {
                    // A client that stopped reading holds no buffer while it waits: what was
                    // read and not sent is read again.
                    pos -= (hi - lo) as u64;
                    (lo, hi) = (0, 0);
                    buf = Vec::new();
                    writable(stream, timeout.saturating_sub(hold)).await?;
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether `peer` is this host: a loopback address, or the address it connected to.
fn on_this_host(stream: &TcpStream, peer: IpAddr) -> bool {
    peer.is_loopback() || stream.local_addr().is_ok_and(|local| local.ip() == peer)
}

/// Waits until the socket takes bytes again, at most `timeout`.
async fn writable(stream: &TcpStream, timeout: Duration) -> io::Result<()> {
    match tokio::time::timeout(timeout, stream.writable()).await {
        Ok(ready) => ready,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client stopped reading",
        )),
    }
}

/// Writes all of `bufs`.
async fn write_all(
    stream: &TcpStream,
    mut bufs: &mut [IoSlice<'_>],
    timeout: Duration,
) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match stream.try_write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => writable(stream, timeout).await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Closes gracefully after a refusal: no more writes, and what the client still sends is read
/// and dropped for at most `within` (and [`LINGER_BYTES`]), so the refusal reaches it.
pub(super) async fn linger(stream: &TcpStream, within: Duration) {
    let _ = rustix::net::shutdown(stream, rustix::net::Shutdown::Write);
    let drain = async {
        let mut drained = 0;
        let mut scratch = vec![0u8; 4096];
        while drained < LINGER_BYTES {
            if stream.readable().await.is_err() {
                return;
            }
            match stream.try_read(&mut scratch) {
                Ok(0) => return,
                Ok(n) => drained += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(within, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(head: &str) -> Result<Kind, &'static str> {
        let mut lines = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut lines);
        assert!(request.parse(head.as_bytes()).unwrap().is_complete());
        classify(&request)
    }

    #[test]
    fn framing_that_could_smuggle_a_request_is_refused() {
        let both = "GET /a HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            kind(both).err(),
            Some("both Content-Length and Transfer-Encoding")
        );
        let twice = "POST /a HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(kind(twice).err(), Some("more than one Content-Length"));
        for bad in ["+5", "5 5", "", "0x5", "99999999999999999999999"] {
            let head = format!("POST /a HTTP/1.1\r\nContent-Length: {bad}\r\n\r\n");
            assert_eq!(
                kind(&head).err(),
                Some("malformed Content-Length"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn what_the_driver_answers_and_what_it_hands_on() {
        let ours = |head| matches!(kind(head), Ok(Kind::Ours { .. }));
        assert!(ours("GET /a HTTP/1.1\r\n\r\n"));
        assert!(ours("HEAD /a HTTP/1.1\r\nContent-Length: 0\r\n\r\n"));
        assert!(matches!(
            kind("GET /a HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n"),
            Ok(Kind::Ours { close: true })
        ));
        for hyper in [
            "POST /api/purge HTTP/1.1\r\n\r\n",
            "GET /a HTTP/1.0\r\n\r\n",
            "GET /a HTTP/1.1\r\nContent-Length: 3\r\n\r\n",
            "GET /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /a HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            "CONNECT example.org:443 HTTP/1.1\r\n\r\n",
        ] {
            assert!(matches!(kind(hyper), Ok(Kind::Hyper)), "{hyper}");
        }
    }
}
