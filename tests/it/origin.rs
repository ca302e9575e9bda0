//! An HTTP origin in the test process: serves files from memory on 127.0.0.1:0, counts and
//! records requests, and can be made slow, cut off, gated, broken or hung.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};

type Body = BoxBody<Bytes, std::io::Error>;

/// How the origin answers for one path.
#[derive(Clone, Debug)]
pub enum Behavior {
    /// The file, whole and at once.
    Normal,
    /// The file in `chunk`-byte pieces, `delay` apart.
    Slow { chunk: usize, delay: Duration },
    /// Announces the full length, sends `n` bytes, then breaks the connection.
    CutAfter(usize),
    /// Announces `extra` more bytes than it has, sends what it has, and closes.
    LongerThanSent(u64),
    /// Sends the first `n` bytes, then waits for [`Origin::release`] before sending the rest.
    Gated(usize),
    /// Answers with this status and a short body.
    Status(u16),
    /// Accepts the request and never answers.
    Hang,
    /// Redirects to another path.
    Redirect(String),
    /// Redirects with this status (301, 303, 307, 308…) to a path or an absolute URL.
    RedirectWith(u16, String),
    /// The file in `chunk`-byte pieces, `delay` apart, without a Content-Length (chunked);
    /// byte ranges are served.
    Unsized { chunk: usize, delay: Duration },
}

#[derive(Clone, Debug)]
struct File {
    body: Bytes,
    behavior: Behavior,
    etag: String,
    last_modified: String,
    cache_control: Option<String>,
}

/// A request the origin received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub headers: HeaderMap,
}

struct Inner {
    files: Mutex<HashMap<String, File>>,
    seen: Mutex<Vec<Seen>>,
    gate: Semaphore,
    /// Set by [`Origin::kill`].
    killed: watch::Sender<bool>,
}

/// The origin server; stops when dropped.
#[derive(Clone)]
pub struct Origin {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    _task: Arc<AbortOnDrop>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Origin {
    /// Starts an empty origin.
    pub async fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(Inner {
            files: Mutex::default(),
            seen: Mutex::default(),
            gate: Semaphore::new(0),
            killed: watch::Sender::new(false),
        });
        let served = inner.clone();
        let task = tokio::spawn(async move {
            let mut killed = served.killed.subscribe();
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = killed.wait_for(|k| *k) => return,
                };
                let Ok((stream, _)) = accepted else {
                    continue;
                };
                let inner = served.clone();
                let mut killed = served.killed.subscribe();
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(inner.clone(), req));
                    let connection =
                        http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                    // A kill drops the connection mid-response.
                    tokio::select! {
                        _ = connection => {}
                        _ = killed.wait_for(|k| *k) => {}
                    }
                });
            }
        });
        Origin {
            addr,
            inner,
            _task: Arc::new(AbortOnDrop(task)),
        }
    }

    /// Base URL of a tree on this origin, e.g. `base("debian")` = `http://127.0.0.1:P/debian/`.
    pub fn base(&self, tree: &str) -> String {
        format!("http://{}/{tree}/", self.addr)
    }

    /// Publishes `body` at `path` (starting with `/`), served normally.
    pub fn put(&self, path: &str, body: impl Into<Bytes>) {
        let body = body.into();
        let n = self.inner.files.lock().unwrap().len();
        let file = File {
            etag: format!("\"{:x}-{}\"", body.len(), n),
            last_modified: httpdate::fmt_http_date(
                std::time::SystemTime::now() - Duration::from_secs(3600),
            ),
            body,
            behavior: Behavior::Normal,
            cache_control: None,
        };
        self.inner
            .files
            .lock()
            .unwrap()
            .insert(path.to_string(), file);
    }

    /// Changes how `path` is answered (the file need not exist for `Status`, `Hang`, `Redirect`).
    pub fn set(&self, path: &str, behavior: Behavior) {
        let mut files = self.inner.files.lock().unwrap();
        let file = files.entry(path.to_string()).or_insert_with(|| File {
            body: Bytes::new(),
            behavior: Behavior::Normal,
            etag: "\"empty\"".into(),
            last_modified: httpdate::fmt_http_date(std::time::SystemTime::now()),
            cache_control: None,
        });
        file.behavior = behavior;
    }

    /// Makes the answers for `path` (already put) carry this Cache-Control.
    pub fn set_cache_control(&self, path: &str, value: &str) {
        let mut files = self.inner.files.lock().unwrap();
        files
            .get_mut(path)
            .expect("a file put before")
            .cache_control = Some(value.to_string());
    }

    /// Kills the origin: every open connection is dropped, mid-body or not, and new ones are
    /// refused.
    pub fn kill(&self) {
        self.inner.killed.send_replace(true);
    }

    /// Lets every gated response send the rest of its body.
    pub fn release(&self) {
        self.inner.gate.add_permits(1000);
    }

    /// Requests received for `path`.
    pub fn hits(&self, path: &str) -> usize {
        self.inner
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == path)
            .count()
    }

    /// Every request received, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.inner.seen.lock().unwrap().clone()
    }

    /// Total requests received.
    pub fn total(&self) -> usize {
        self.inner.seen.lock().unwrap().len()
    }
}

fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

fn respond(status: u16, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r
}

async fn answer(inner: Arc<Inner>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let file = inner.files.lock().unwrap().get(&path).cloned();
    let (status, response) = match file {
        None => (404, respond(404, full("not found"))),
        Some(file) => build(&inner, &file, req.headers()),
    };
    inner.seen.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        path,
        status,
        headers: req.headers().clone(),
    });
    if matches!(status, 0) {
        // Hang: never answer.
        std::future::pending::<()>().await;
    }
    Ok(response)
}

fn build(inner: &Arc<Inner>, file: &File, headers: &HeaderMap) -> (u16, Response<Body>) {
    match &file.behavior {
        Behavior::Status(code) => return (*code, respond(*code, full(format!("status {code}")))),
        Behavior::Hang => return (0, respond(500, full(""))),
        Behavior::Redirect(to) => {
            let mut r = respond(302, full(""));
            r.headers_mut().insert("location", to.parse().unwrap());
            return (302, r);
        }
        Behavior::RedirectWith(code, to) => {
            let mut r = respond(*code, full(""));
            r.headers_mut().insert("location", to.parse().unwrap());
            return (*code, r);
        }
        _ => {}
    }
    let inm = headers.get("if-none-match").and_then(|v| v.to_str().ok());
    let ims = headers
        .get("if-modified-since")
        .and_then(|v| v.to_str().ok());
    let not_modified = match (inm, ims) {
        (Some(tag), _) => tag == file.etag,
        (None, Some(since)) => match (
            httpdate::parse_http_date(since),
            httpdate::parse_http_date(&file.last_modified),
        ) {
            (Ok(since), Ok(lm)) => lm <= since,
            _ => false,
        },
        _ => false,
    };
    // `bytes=N-` or `bytes=N-M`.
    let range_from = headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (from, to) = v.strip_prefix("bytes=")?.split_once('-')?;
            let from = from.parse::<usize>().ok()?;
            let to = match to {
                "" => file.body.len(),
                to => to
                    .parse::<usize>()
                    .ok()?
                    .saturating_add(1)
                    .min(file.body.len()),
            };
            (from < to).then_some((from, to))
        })
        .filter(|&(from, _)| from < file.body.len())
        .filter(|_| {
            matches!(
                file.behavior,
                Behavior::Normal | Behavior::Slow { .. } | Behavior::Unsized { .. }
            )
        });
    let mut response = if not_modified {
        respond(304, full(""))
    } else if let Some((from, to)) = range_from {
        let len = file.body.len();
        let rest = file.body.slice(from..to);
        let body = match &file.behavior {
            Behavior::Slow { chunk, delay } | Behavior::Unsized { chunk, delay } => {
                paced(rest, *chunk, *delay, None, None)
            }
            _ => full(rest),
        };
        let mut r = respond(206, body);
        r.headers_mut()
            .insert("content-length", ((to - from) as u64).into());
        r.headers_mut().insert(
            "content-range",
            format!("bytes {from}-{}/{len}", to - 1).parse().unwrap(),
        );
        r
    } else {
        let len = file.body.len() as u64;
        let (body, announced) = match &file.behavior {
            Behavior::Slow { chunk, delay } => {
                (paced(file.body.clone(), *chunk, *delay, None, None), len)
            }
            Behavior::CutAfter(n) => (
                paced(file.body.clone(), *n, Duration::ZERO, Some(*n), None),
                len,
            ),
            Behavior::LongerThanSent(extra) => (full(file.body.clone()), len + extra),
            Behavior::Gated(n) => (
                paced(
                    file.body.clone(),
                    *n,
                    Duration::ZERO,
                    None,
                    Some(inner.clone()),
                ),
                len,
            ),
            _ => (full(file.body.clone()), len),
        };
        if let Behavior::Unsized { chunk, delay } = &file.behavior {
            let mut r = respond(200, paced(file.body.clone(), *chunk, *delay, None, None));
            r.headers_mut()
                .insert("content-type", "application/x-test".parse().unwrap());
            r.headers_mut().insert("etag", file.etag.parse().unwrap());
            return (200, r);
        }
        let mut r = respond(200, body);
        r.headers_mut().insert("content-length", announced.into());
        r.headers_mut()
            .insert("content-type", "application/x-test".parse().unwrap());
        r
    };
    let status = response.status().as_u16();
    response
        .headers_mut()
        .insert("etag", file.etag.parse().unwrap());
    response
        .headers_mut()
        .insert("last-modified", file.last_modified.parse().unwrap());
    if let Some(cc) = &file.cache_control {
        response
            .headers_mut()
            .insert("cache-control", cc.parse().unwrap());
    }
    (status, response)
}

/// A body sent in pieces: `chunk` bytes every `delay`, stopping with an error after `cut`
/// bytes, or pausing after the first piece until the gate opens.
fn paced(
    body: Bytes,
    chunk: usize,
    delay: Duration,
    cut: Option<usize>,
    gate: Option<Arc<Inner>>,
) -> Body {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
    tokio::spawn(async move {
        let mut pos = 0;
        while pos < body.len() {
            if let Some(limit) = cut
                && pos >= limit
            {
                let _ = tx.send(Err(std::io::Error::other("cut"))).await;
                return;
            }
            let end = (pos + chunk.max(1)).min(body.len());
            if tx
                .send(Ok(Frame::data(body.slice(pos..end))))
                .await
                .is_err()
            {
                return;
            }
            pos = end;
            if let Some(inner) = &gate {
                let _permit = inner.gate.acquire().await;
                // Once open, send the rest at once.
                let _ = tx.send(Ok(Frame::data(body.slice(pos..)))).await;
                return;
            }
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    StreamBody::new(stream).boxed()
}
