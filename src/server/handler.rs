//! One request: management probe, or route -> cache -> response, and its access-log line.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use std::net::IpAddr;

use http::HeaderValue;
use http::header::{
    ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderName, REFERRER_POLICY,
    STRICT_TRANSPORT_SECURITY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::AppState;
use super::readahead::Connection;
use crate::cache::body::{self, Body};
use crate::cache::fill::{FillError, FillState, Head};
use crate::cache::serve::{self, Conditions, Plan, Representation};
use crate::cache::{FillRequest, Lookup, hot};
use crate::distro::class::classify;
use crate::route::route;
use crate::storage::CacheKey;
use crate::storage::EntryMeta;
use crate::storage::Source;
use crate::telemetry::activity::Activity;
use crate::telemetry::tracing::SpanRecord;
use crate::unix_now;
use crate::upstream::{Ask, UpstreamError};
use tokio::sync::watch;

/// Request headers for the debug log, credentials hidden: `name: value; …`.
struct Redacted<'a>(&'a HeaderMap);

/// Headers whose values are never logged.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "cookie",
    "set-cookie",
];

impl std::fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (name, value)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            let value = if SECRET_HEADERS.contains(&name.as_str()) {
                "[redacted]"
            } else {
                value.to_str().unwrap_or("[not text]")
            };
            write!(f, "{name}: {value}")?;
        }
        Ok(())
    }
}

/// Answers one request (hyper's service). Never fails: every problem becomes an HTTP status with
/// a short reason.
pub async fn handle(
    state: Arc<AppState>,
    peer: IpAddr,
    connection: Arc<Connection>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let start = Start::of(
        &state,
        peer,
        request.method(),
        request.uri(),
        request.headers().get(TRACEPARENT),
        Some(request.headers()),
    );
    let (mut response, routed) = answer(&state, request, peer, &connection).await;
    let Some(finish) = start.finish(state, connection, &mut response, routed) else {
        return Ok(response);
    };
    // The line is written when the body is done (or the client gone): its duration is the
    // whole transfer's, not the time to the response head.
    let (parts, inner) = response.into_parts();
    let body = Logged {
        inner: inner.into_frames(),
        finish: Some(finish),
    };
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// A request as it arrives, before it is answered: what its log line and trace need.
pub(super) struct Start {
    id: u64,
    peer: IpAddr,
    method: Method,
    uri: http::Uri,
    traceparent: Option<String>,
    started: Instant,
    wall_start: std::time::SystemTime,
}

impl Start {
    /// Numbers the request (and logs its `headers` at debug level).
    pub(super) fn of(
        state: &AppState,
        peer: IpAddr,
        method: &Method,
        uri: &http::Uri,
        traceparent: Option<&HeaderValue>,
        headers: Option<&HeaderMap>,
    ) -> Start {
        let id = state.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(headers) = headers
            && logs_request_headers()
        {
            tracing::debug!(request_id = id, method = %method, uri = %uri, client = %peer, headers = %Redacted(headers), "request headers");
        }
        Start {
            id,
            peer,
            method: method.clone(),
            uri: uri.clone(),
            traceparent: traceparent.and_then(|v| v.to_str().ok()).map(str::to_owned),
            started: Instant::now(),
            wall_start: std::time::SystemTime::now(),
        }
    }

    /// Adds the proxy's own headers to `response`; returns what reports the request once its
    /// body is done (nothing for a probe, which is not logged).
    pub(super) fn finish(
        self,
        state: Arc<AppState>,
        connection: Arc<Connection>,
        response: &mut Response<Body>,
        routed: Option<Routed>,
    ) -> Option<Finish> {
        let headers = response.headers_mut();
        for (name, value) in OWN {
            headers.insert(name, value);
        }
        self.finish_without_own(state, connection, response, routed)
    }

    /// [`Start::finish`] for a response whose writer adds the proxy's own headers itself
    /// ([`own_lines`]): the connection driver.
    pub(super) fn finish_without_own(
        self,
        state: Arc<AppState>,
        connection: Arc<Connection>,
        response: &mut Response<Body>,
        routed: Option<Routed>,
    ) -> Option<Finish> {
        let Start {
            id,
            peer,
            method,
            uri,
            traceparent,
            started,
            wall_start,
        } = self;
        if state.tls {
            response.headers_mut().insert(
                STRICT_TRANSPORT_SECURITY,
                HeaderValue::from_static("max-age=31536000"),
            );
        }
        if uri.authority().is_none() && crate::admin::is_probe(uri.path()) {
            connection.finished.fetch_add(1, Ordering::Release);
            return None;
        }
        let headers = response.headers();
        let cache = cache_label(headers.get(serve::X_CACHE));
        let size = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        Some(Finish {
            state,
            connection,
            id,
            method,
            target: target_text(&uri),
            routed,
            peer,
            status: response.status().as_u16(),
            cache,
            size,
            started,
            wall_start,
            traceparent,
        })
    }
}

/// The headers every answer carries; names and values checked when the program is built, not
/// for every response.
const OWN: [(HeaderName, HeaderValue); 6] = [
    (
        HeaderName::from_static("x-version"),
        HeaderValue::from_static(crate::VERSION),
    ),
    (
        HeaderName::from_static("x-build-commit"),
        HeaderValue::from_static(crate::COMMIT),
    ),
    (
        HeaderName::from_static("x-build-date"),
        HeaderValue::from_static(crate::BUILD_DATE),
    ),
    (X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
    (X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    (REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
];

/// [`OWN`] as header lines (`name: value\r\n` each), written once.
pub(super) fn own_lines() -> &'static [u8] {
    static LINES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    LINES.get_or_init(|| {
        let mut lines = Vec::new();
        for (name, value) in OWN {
            lines.extend_from_slice(name.as_str().as_bytes());
            lines.extend_from_slice(b": ");
            lines.extend_from_slice(value.as_bytes());
            lines.extend_from_slice(b"\r\n");
        }
        lines
    })
}

/// The trace context header (W3C), looked up by a name checked when the program is built.
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The request headers that a package request's answer and its log read: the answer's
/// [`Conditions`] and the trace context (and, in the debug log, all of them). The plain-HTTP
/// driver keeps only these of a head ([`Asked::keep`]; it reads the framing headers itself):
/// building, probing and dropping a map of every header a client sends was about a seventh of
/// a small hit's instructions. The answer is given the conditions, not a header map, so it
/// cannot read a header the driver did not keep.
#[derive(Default)]
pub(super) struct Asked {
    pub(super) conditions: Conditions,
    pub(super) traceparent: Option<HeaderValue>,
}

impl Asked {
    /// Keeps the header `name` if it is one of those read, as [`Conditions::keep`] does.
    pub(super) fn keep(
        &mut self,
        name: &str,
        value: impl FnOnce() -> Option<HeaderValue>,
    ) -> Option<bool> {
        if name.eq_ignore_ascii_case(TRACEPARENT.as_str()) {
            serve::keep_first(&mut self.traceparent, value)
        } else {
            self.conditions.keep(name, value)
        }
    }
}

/// Whether each request's headers are logged (at debug level, by [`Start::of`]): the driver then
/// keeps them all.
pub(super) fn logs_request_headers() -> bool {
    tracing::enabled!(tracing::Level::DEBUG)
}

/// The `X-Cache` label of an answer: the labels the proxy writes are not copied.
fn cache_label(value: Option<&HeaderValue>) -> Cow<'static, str> {
    match value.and_then(|v| v.to_str().ok()) {
        None => Cow::Borrowed(""),
        Some(label) => match label {
            "HIT" => Cow::Borrowed("HIT"),
            "MISS" => Cow::Borrowed("MISS"),
            "SKIP" => Cow::Borrowed("SKIP"),
            other => Cow::Owned(other.to_owned()),
        },
    }
}

/// The request target as `Uri`'s `Display` writes it (scheme, authority, path, query), without
/// the formatting machinery.
fn target_text(uri: &http::Uri) -> String {
    let (scheme, authority, path, query) = (
        uri.scheme_str(),
        uri.authority().map(|a| a.as_str()),
        uri.path(),
        uri.query(),
    );
    let mut out = String::with_capacity(
        scheme.map_or(0, |s| s.len() + 3)
            + authority.map_or(0, str::len)
            + path.len()
            + query.map_or(0, |q| q.len() + 1),
    );
    if let Some(scheme) = scheme {
        out.push_str(scheme);
        out.push_str("://");
    }
    if let Some(authority) = authority {
        out.push_str(authority);
    }
    out.push_str(path);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// What the access log, the trace and the status page say about a request, once its body is
/// sent.
pub(super) struct Finish {
    state: Arc<AppState>,
    connection: Arc<Connection>,
    id: u64,
    method: Method,
    target: String,
    routed: Option<Routed>,
    peer: IpAddr,
    status: u16,
    cache: Cow<'static, str>,
    size: Option<u64>,
    started: Instant,
    wall_start: std::time::SystemTime,
    traceparent: Option<String>,
}

impl Finish {
    pub(super) fn done(self) {
        let Finish {
            state,
            connection,
            id,
            method,
            target,
            routed,
            peer,
            status,
            cache,
            size,
            started,
            wall_start,
            traceparent,
        } = self;
        connection.finished.fetch_add(1, Ordering::Release);
        let ms = (started.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0;
        crate::telemetry::logging::access(&crate::telemetry::logging::Access {
            request_id: id,
            method: method.as_str(),
            uri: &target,
            repo: routed.as_ref().map_or("-", |r| r.id.as_str()),
            client: peer,
            status,
            cache: &cache,
            size,
            ms,
        });
        if let Some(tracer) = &state.tracer {
            let (trace_id, span_id, parent_span_id) = tracer.ids(traceparent.as_deref());
            let mut attributes = vec![
                ("http.request.method", method.to_string()),
                ("url.full", target.clone()),
                ("http.response.status_code", status.to_string()),
                ("client.address", peer.to_string()),
                ("apt_proxy.cache", cache.to_string()),
            ];
            if let Some(r) = &routed {
                attributes.push(("apt_proxy.distro", r.distro.clone()));
                attributes.push(("apt_proxy.repo", r.id.clone()));
                let mirror = r.mirror_set.current();
                attributes.push((
                    "apt_proxy.mirror",
                    mirror.base.host_str().unwrap_or_default().to_string(),
                ));
            }
            tracer.record(SpanRecord {
                trace_id,
                span_id,
                parent_span_id,
                name: format!(
                    "{method} {}",
                    routed.as_ref().map_or("apt-proxy", |r| r.id.as_str())
                ),
                start: wall_start,
                end: std::time::SystemTime::now(),
                attributes,
                error: status >= 500,
            });
        }
        // The status page keeps the target cut to 120 characters (moved there, not copied).
        let mut target = target;
        if target.len() > 120
            && let Some((cut, _)) = target.char_indices().nth(120)
        {
            target.truncate(cut);
        }
        state.activity.push(Activity {
            at: unix_now(),
            method,
            target,
            status,
            cache,
            bytes: size,
            ms,
        });
    }
}

/// A response body that reports its request when it ends, fails or is dropped unfinished.
struct Logged {
    inner: Body,
    finish: Option<Finish>,
}

impl hyper::body::Body for Logged {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(None | Some(Err(_))) = &polled
            && let Some(finish) = self.finish.take()
        {
            finish.done();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if let Some(finish) = self.finish.take() {
            finish.done();
        }
    }
}

/// Where a package request was routed (for logs and traces): its repo, with its name, its
/// distribution and its mirrors (the one in use is looked up only for a trace).
pub(super) type Routed = Arc<crate::distro::Repo>;

/// The counter of body bytes served from the cache, or from a mirror.
fn served(state: &AppState, from_cache: bool) -> prometheus_client::metrics::counter::Counter {
    let metrics = state.cache.metrics();
    if from_cache {
        metrics.bytes_from_cache.clone()
    } else {
        metrics.bytes_from_upstream.clone()
    }
}

/// A one-line plain-text answer.
pub fn text(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut message = message.into();
    message.push('\n');
    let mut response = Response::new(body::full(message));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Whether a request is for the proxy's own pages: origin-form (`GET /metrics`), or
/// absolute-form to the proxy's port naming no mirror (`GET http://proxy:3142/`, which a
/// browser sends when the proxy is also its proxy). Nothing is fetched for such a request, so
/// any host name will do: the port and the absence of a mirror (`routed`) decide.
/// (An origin-form request is always addressed to the proxy.)
fn addressed_to_us(
    state: &AppState,
    uri: &http::Uri,
    authority: &http::uri::Authority,
    routed: bool,
) -> bool {
    let default_port = if uri.scheme_str() == Some("https") {
        443
    } else {
        80
    };
    !routed && authority.port_u16().unwrap_or(default_port) == state.port
}

async fn answer(
    state: &AppState,
    request: Request<Incoming>,
    peer: IpAddr,
    connection: &Connection,
) -> (Response<Body>, Option<Routed>) {
    if request.method() == Method::CONNECT {
        return (super::tunnel::connect(state, request, peer).await, None);
    }
    let routed = match route_package(state, request.uri()) {
        Some(routed) => routed,
        None => {
            if let Some(response) = crate::admin::management(state, &request, peer).await {
                return (response, None);
            }
            route(&state.reloader.registry.load(), request.uri())
        }
    };
    let conditions = Conditions::of(request.headers());
    package(state, request.method(), &conditions, routed, connection).await
}

/// Routes a request that is not a CONNECT; `None` when it is for the proxy's own pages, which
/// [`crate::admin::management`] answers. An origin-form request is addressed to the proxy
/// whatever it routes to: a probe or a scrape is not routed at all.
pub(super) fn route_package(
    state: &AppState,
    uri: &http::Uri,
) -> Option<Result<crate::route::RouteMatch, crate::route::RouteError>> {
    let own_page = crate::admin::is_own_page(uri.path());
    let Some(authority) = uri.authority() else {
        return (!own_page).then(|| route(&state.reloader.registry.load(), uri));
    };
    let routed = route(&state.reloader.registry.load(), uri);
    let to_us = addressed_to_us(state, uri, authority, routed.is_ok());
    (!(to_us && own_page)).then_some(routed)
}

/// A package request being answered: the response, and where it was routed.
pub(super) type Answering<'a> =
    Pin<Box<dyn Future<Output = (Response<Body>, Option<Routed>)> + Send + 'a>>;

/// Answers a routed request for a package path (any method: what is not a GET or HEAD is
/// refused). Boxed and behind a pointer: the driver and hyper's service share one copy of the
/// serving code (inlined into both, it cost about 0.4 MB of binary).
pub(super) fn package<'a>(
    state: &'a AppState,
    method: &'a Method,
    conditions: &'a Conditions,
    routed: Result<crate::route::RouteMatch, crate::route::RouteError>,
    connection: &'a Connection,
) -> Answering<'a> {
    Box::pin(answer_package(
        state, method, conditions, routed, connection,
    ))
}

async fn answer_package(
    state: &AppState,
    method: &Method,
    conditions: &Conditions,
    routed: Result<crate::route::RouteMatch, crate::route::RouteError>,
    connection: &Connection,
) -> (Response<Body>, Option<Routed>) {
    let matched = match routed {
        Ok(m) => m,
        Err(e) => return (text(e.status(), e.to_string()), None),
    };
    let repo: Routed = matched.repo.clone();
    let head_only = match *method {
        Method::GET => false,
        Method::HEAD => true,
        _ => {
            let mut r = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET and HEAD are proxied",
            );
            r.headers_mut()
                .insert(ALLOW, http::HeaderValue::from_static("GET, HEAD"));
            return (r, Some(repo));
        }
    };
    let (fill, rule_cache_control) = fill_for(state, matched).await;
    // A file whose fill a read-ahead of this connection started is this request's miss; its
    // receiver is held until the request follows the fill itself.
    let claimed = connection.take(&fill.key);
    let mut response = serve(
        state,
        fill,
        &repo.id,
        conditions,
        head_only,
        claimed.is_some(),
    )
    .await;
    drop(claimed);
    // The rule's Cache-Control replaces the mirror's on every answer about the file (a 304 or
    // a 206 says what its 200 says), not on the proxy's errors.
    if let Some(cache_control) = rule_cache_control
        && matches!(response.status().as_u16(), 200 | 206 | 304 | 404)
    {
        response
            .headers_mut()
            .insert(http::header::CACHE_CONTROL, cache_control);
    }
    (response, Some(repo))
}

/// The fill request for a routed package path (what `answer` serves and a read-ahead starts),
/// and the Cache-Control of the cache rule that matches it.
pub(super) async fn fill_for(
    state: &AppState,
    matched: crate::route::RouteMatch,
) -> (FillRequest, Option<HeaderValue>) {
    let expect = state
        .cache
        .expectation(&matched.repo.id, &matched.path)
        .await;
    let rule = matched
        .repo
        .cache_rules
        .iter()
        .find(|r| r.pattern.is_match(&matched.path));
    let fill = FillRequest {
        key: CacheKey::new(&matched.repo.id, &matched.path),
        mirrors: matched.repo.mirror_set.clone(),
        class: classify(&matched.path),
        repo: matched.repo.id.clone(),
        expect,
        rule_max_age: rule.and_then(|r| r.max_age),
        alpine: matched.repo.is_alpine(),
        speculative: None,
        path: matched.path,
    };
    (fill, rule.map(|r| r.cache_control.clone()))
}

async fn serve(
    state: &AppState,
    fill: FillRequest,
    repo: &str,
    conditions: &Conditions,
    head_only: bool,
    read_ahead: bool,
) -> Response<Body> {
    let mut response = answer_from_cache(state, fill, conditions, head_only).await;
    let mut hit = response
        .headers()
        .get(serve::X_CACHE)
        .is_some_and(|v| v == "HIT");
    if hit && read_ahead {
        // Filled by this client's own read-ahead while earlier answers were sent.
        response
            .headers_mut()
            .insert(serve::X_CACHE, HeaderValue::from_static("MISS"));
        hit = false;
    }
    state.cache.count(repo, hit);
    response
}

/// What the cache decided to send for a request. [`decide`] makes it (route and look-up are
/// done, the fill is joined, started or waited for) and [`render`] turns it into a response:
/// every way of serving goes through these two, so the answers cannot drift apart.
enum Decision {
    /// A stored entry, labelled `HIT` (from the cache, revalidated, or a stale copy) or `MISS`
    /// (just filled). `refill`: when its body turns out unreadable, the entry is dropped and the
    /// file fetched again; otherwise that is a 503.
    Stored {
        meta: Arc<EntryMeta>,
        label: &'static str,
        refill: bool,
    },
    /// A fill in progress: its body as it grows.
    Follow {
        head: Arc<Head>,
        file: Arc<std::fs::File>,
        rx: watch::Receiver<FillState>,
    },
    /// A file the fill does not store, streamed from the mirror: the fill's own response when
    /// this request is the first to take it.
    Unstored {
        head: Arc<Head>,
        response: Option<reqwest::Response>,
    },
    /// A complete, verified file the store did not take, from its spool.
    Spooled {
        meta: Arc<EntryMeta>,
        file: Arc<std::fs::File>,
    },
    /// The request as it is, to the mirror; nothing stored.
    Forward,
    /// The mirror's answer that is not cached (its own failures become 502).
    Passthrough { status: u16 },
    /// The mirrors could not give the file.
    Failed(Arc<FillError>),
    /// The cache could not be consulted.
    LookupFailed,
    /// The fill ended without an outcome.
    Abandoned,
}

async fn answer_from_cache(
    state: &AppState,
    fill: FillRequest,
    conditions: &Conditions,
    head_only: bool,
) -> Response<Body> {
    // Only a whole GET fills the cache: a HEAD or a byte range of a file not cached (nor being
    // fetched) is asked of the mirror and passed on, so that neither makes the proxy download
    // a whole file that nobody reads.
    let partial = head_only || conditions.range.is_some();
    let mut decision = decide(state, &fill, !partial).await;
    loop {
        match render(state, &fill, decision, conditions, head_only).await {
            Ok(response) => return response,
            // The entry was unreadable and dropped: fetch the file again (it was wanted, so
            // even for a range or a HEAD), once.
            Err(Refill) => {
                decision = match decide(state, &fill, true).await {
                    Decision::Stored { meta, label, .. } => Decision::Stored {
                        meta,
                        label,
                        refill: false,
                    },
                    other => other,
                }
            }
        }
    }
}

/// Looks `fill` up and, for a file being fetched, follows the fill (started when
/// `start_fill`) until it has an answer.
async fn decide(state: &AppState, fill: &FillRequest, start_fill: bool) -> Decision {
    let key = &fill.key;
    let (mut rx, stale, since) = match state.cache.lookup(fill, start_fill).await {
        Ok(Lookup::Hit(meta)) => {
            return Decision::Stored {
                meta,
                label: "HIT",
                refill: true,
            };
        }
        Ok(Lookup::Fill { rx, stale, since }) => (rx, stale, since),
        Ok(Lookup::Absent) => return Decision::Forward,
        Err(e) => {
            tracing::error!(key = %key, error = %e, "cache look-up failed");
            return Decision::LookupFailed;
        }
    };
    // With a copy in hand, a slow or hung mirror costs the client a few seconds at most: the
    // copy is served and the revalidation finishes in the background.
    let wait = async {
        rx.wait_for(|s| !matches!(s, FillState::Pending))
            .await
            .map(|s| s.clone())
    };
    let waited = match &stale {
        // A revalidation that has already kept others waiting does not make this one wait too.
        Some(_) => {
            tokio::time::timeout(
                state
                    .cache
                    .tuning()
                    .stale_wait
                    .saturating_sub(since.elapsed()),
                wait,
            )
            .await
        }
        None => Ok(wait.await),
    };
    let outcome = match waited {
        Ok(Ok(state)) => state,
        Ok(Err(_)) => FillState::Failed(Arc::new(FillError::Upstream(UpstreamError::Transfer {
            detail: "fill task ended".into(),
        }))),
        Err(_) => {
            let waited_for = state.cache.tuning().stale_wait;
            tracing::warn!(key = %key, ?waited_for, "mirror slow to revalidate; serving the cached copy");
            FillState::Failed(Arc::new(FillError::Upstream(UpstreamError::Timeout {
                detail: "revalidation still running".into(),
            })))
        }
    };
    let stale_copy = |meta| Decision::Stored {
        meta,
        label: "HIT",
        refill: false,
    };
    match outcome {
        FillState::Streaming { head, file, .. } => Decision::Follow { head, file, rx },
        FillState::Unstored { head, response } => Decision::Unstored {
            head,
            response: response.lock().unwrap_or_else(|e| e.into_inner()).take(),
        },
        FillState::Done { meta, revalidated } => Decision::Stored {
            meta,
            label: if revalidated { "HIT" } else { "MISS" },
            refill: false,
        },
        FillState::Spooled { meta, file } => Decision::Spooled { meta, file },
        FillState::Passthrough { status } => match stale.filter(|_| status >= 500) {
            Some(meta) => {
                tracing::warn!(key = %key, status, "mirror failed; serving the cached copy");
                stale_copy(meta)
            }
            None => Decision::Passthrough { status },
        },
        FillState::Failed(error) => match stale {
            Some(meta) => {
                tracing::warn!(key = %key, error = %error, "mirror failed; serving the cached copy");
                stale_copy(meta)
            }
            // The cache could not store it (a held index whose write failed): the client
            // gets the mirror's answer directly.
            None if matches!(*error, FillError::Storage(_)) => Decision::Forward,
            None => Decision::Failed(error),
        },
        FillState::Pending => Decision::Abandoned,
    }
}

/// A stored body that was unreadable: the entry is dropped, decide again.
struct Refill;

/// The response for `decision`.
async fn render(
    state: &AppState,
    fill: &FillRequest,
    decision: Decision,
    conditions: &Conditions,
    head_only: bool,
) -> Result<Response<Body>, Refill> {
    Ok(match decision {
        Decision::Stored {
            meta,
            label,
            refill,
        } => match stored(state, &fill.key, &meta, conditions, head_only, label).await {
            Ok(response) => response,
            Err(Unservable::StoreDown) => forward(state, fill, conditions, head_only).await,
            Err(Unservable::Dropped) if refill => return Err(Refill),
            Err(Unservable::Dropped) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "cached file unreadable, try again",
            ),
        },
        Decision::Follow { head, file, rx } => {
            following(state, fill, &head, file, rx, conditions, head_only)
        }
        Decision::Unstored { head, response } => {
            unstored(state, fill, head, response, conditions, head_only).await
        }
        Decision::Spooled { meta, file } => {
            spooled(state, &meta, file, conditions, head_only).await
        }
        Decision::Forward => forward(state, fill, conditions, head_only).await,
        Decision::Passthrough { status } => {
            // A mirror's own failure is ours to report as a gateway error; its other answers
            // (403, 410, …) are passed on.
            let code = match StatusCode::from_u16(status) {
                Ok(code) if status < 500 => code,
                _ => StatusCode::BAD_GATEWAY,
            };
            let mut r = text(code, format!("mirror answered {status}"));
            r.headers_mut()
                .insert(serve::X_CACHE, http::HeaderValue::from_static("SKIP"));
            r
        }
        Decision::Failed(error) => fill_error(&error),
        Decision::LookupFailed => text(StatusCode::INTERNAL_SERVER_ERROR, "cache storage failed"),
        Decision::Abandoned => text(StatusCode::BAD_GATEWAY, "fill abandoned"),
    })
}

/// Answers a HEAD or a byte range of a file that is not cached from the mirror's answer to the
/// same request (`X-Cache: MISS`), without storing anything.
async fn forward(
    state: &AppState,
    fill: &FillRequest,
    conditions: &Conditions,
    head_only: bool,
) -> Response<Body> {
    let range = if head_only { None } else { conditions.range() };
    let ask = Ask {
        head: head_only,
        range,
        if_range: range.and(conditions.if_range()),
        ..Ask::default()
    };
    let answer = crate::cache::fill::unstored_get(&state.cache, fill, &ask).await;
    let response = match answer {
        Ok(r) => r,
        Err(e) => return fill_error(&e),
    };
    // A mirror's server error was already turned into the next mirror, or an error.
    let mut builder = Response::builder()
        .status(response.status())
        .header(serve::X_CACHE, "MISS");
    for name in [
        CONTENT_TYPE,
        CONTENT_LENGTH,
        http::header::CONTENT_RANGE,
        http::header::ACCEPT_RANGES,
        http::header::ETAG,
        http::header::LAST_MODIFIED,
    ] {
        if let Some(v) = response.headers().get(&name) {
            builder = builder.header(name, v.clone());
        }
    }
    let body = if head_only {
        body::empty()
    } else {
        let served = served(state, false);
        body::unstored(response, served)
    };
    builder
        .body(body)
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "bad response head"))
}

/// The answer to a client when the mirrors could not be asked.
fn fill_error(e: &FillError) -> Response<Body> {
    let status = match e {
        FillError::Upstream(UpstreamError::Timeout { .. }) => StatusCode::GATEWAY_TIMEOUT,
        FillError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
        FillError::BadPath => StatusCode::BAD_REQUEST,
        _ => StatusCode::BAD_GATEWAY,
    };
    text(status, e.to_string())
}

/// Serves a file the cache does not store, straight from the mirror: the fill's own response
/// when this client is the first to take it, else a request of its own. Ranges are not
/// honoured (the whole file is sent), validators are.
async fn unstored(
    state: &AppState,
    fill: &FillRequest,
    head: Arc<Head>,
    taken: Option<reqwest::Response>,
    conditions: &Conditions,
    head_only: bool,
) -> Response<Body> {
    let respond = |head: &Head, response: Option<reqwest::Response>| {
        let rep = Representation::of_head(head);
        let plan = match serve::plan(&rep, conditions) {
            Plan::NotModified => Plan::NotModified,
            _ => Plan::Full,
        };
        let builder = serve::head(&rep, plan, "SKIP");
        let body = match response {
            Some(r) if plan == Plan::Full => {
                let served = served(state, false);
                body::unstored(r, served)
            }
            _ => body::empty(),
        };
        builder
            .body(body)
            .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "bad response head"))
    };
    if head_only {
        return respond(&head, None);
    }
    if let Some(response) = taken {
        return respond(&head, Some(response));
    }
    match crate::cache::fill::unstored_get(&state.cache, fill, &Ask::default()).await {
        Ok(response) if matches!(response.status().as_u16(), 200 | 404) => {
            let head = Head::of(&response);
            respond(&head, Some(response))
        }
        Ok(response) => text(
            StatusCode::BAD_GATEWAY,
            format!("mirror answered {}", response.status().as_u16()),
        ),
        Err(e) => fill_error(&e),
    }
}

/// Serves the body of a fill in progress as it grows.
fn following(
    state: &AppState,
    fill: &FillRequest,
    head: &Head,
    file: Arc<std::fs::File>,
    rx: watch::Receiver<FillState>,
    conditions: &Conditions,
    head_only: bool,
) -> Response<Body> {
    let rep = Representation::of_head(head);
    let plan = serve::plan(&rep, conditions);
    let builder = serve::head(&rep, plan, "MISS");
    let served = served(state, false);
    let body = match plan.body_range(rep.len) {
        Some((start, end)) if !head_only => {
            let resume = body::Resume::of(&state.cache, fill, head);
            body::growing(file, rx, (start, end, end == rep.len), served, resume)
        }
        _ => body::empty(),
    };
    builder
        .body(body)
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "bad response head"))
}

/// A stored body that cannot be read: the entry is dropped, from memory and storage, and
/// counted; the file is fetched again.
fn unreadable(state: &AppState, key: &CacheKey, meta: &Arc<EntryMeta>, error: &str) -> Unservable {
    tracing::error!(key = %key, error, "cached body unreadable or damaged; entry dropped");
    state.cache.drop_damaged(key, meta);
    Unservable::Dropped
}

/// Why a stored entry could not be served.
enum Unservable {
    /// Its body could not be read, or no longer has its entry's length (truncated or replaced
    /// behind the proxy's back): the entry was dropped.
    Dropped,
    /// The store failed to answer (an unreachable bucket): the entry is kept, the client is
    /// answered from the mirror.
    StoreDown,
}

/// Serves a stored entry; `Err` when its body could not be read.
async fn stored(
    state: &AppState,
    key: &CacheKey,
    meta: &Arc<EntryMeta>,
    conditions: &Conditions,
    head_only: bool,
    cache_status: &'static str,
) -> Result<Response<Body>, Unservable> {
    let rep = Representation::of_entry(meta);
    if cache_status == "HIT" {
        state.cache.served_from_cache(key);
    }
    let plan = serve::plan(&rep, conditions);
    let builder = serve::head(&rep, plan, cache_status);
    let respond = |body: Body| {
        builder
            .body(body)
            .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "bad response head"))
    };
    let (start, end) = match plan.body_range(Some(meta.len)) {
        Some((start, end)) if !head_only && plan != Plan::NotModified => {
            (start, end.unwrap_or(meta.len))
        }
        _ => return Ok(respond(body::empty())),
    };
    let served = served(state, cache_status == "HIT");
    // Small bodies are answered from memory once read.
    let small = meta.len <= hot::MAX_BODY;
    if small && let Some(bytes) = state.cache.hot.get(&meta.body) {
        served.inc_by(end - start);
        return Ok(respond(body::full(
            bytes.slice(start as usize..end as usize),
        )));
    }
    let (from, to) = if small { (0, meta.len) } else { (start, end) };
    let source = match state.cache.store().open(meta, from, to).await {
        Ok(source) => source,
        Err(e) if e.is_remote() => {
            tracing::warn!(key = %key, error = %e, "cache storage unavailable; answering from the mirror");
            return Err(Unservable::StoreDown);
        }
        Err(e) => return Err(unreadable(state, key, meta, &e.to_string())),
    };
    if small {
        let bytes = match source {
            Source::File(file) => body::read_whole(&file, meta.len),
            Source::Stream(stream) => body::collect(stream, meta.len).await,
        };
        return match bytes {
            Ok(bytes) if bytes.len() as u64 == meta.len => {
                state.cache.hot.insert(&meta.body, bytes.clone());
                served.inc_by(end - start);
                Ok(respond(body::full(
                    bytes.slice(start as usize..end as usize),
                )))
            }
            Ok(bytes) => Err(unreadable(
                state,
                key,
                meta,
                &format!("{} bytes, expected {}", bytes.len(), meta.len),
            )),
            Err(e) => Err(unreadable(state, key, meta, &e.to_string())),
        };
    }
    match source {
        Source::File(file) => match body::from_file(Arc::new(file), start, end, served).await {
            Ok(b) => Ok(respond(b)),
            Err(e) => Err(unreadable(state, key, meta, &e.to_string())),
        },
        Source::Stream(stream) => Ok(respond(body::from_stream(stream, end - start, served))),
    }
}

/// Serves a file that arrived whole and verified but could not be stored, from its spool.
async fn spooled(
    state: &AppState,
    meta: &EntryMeta,
    file: Arc<std::fs::File>,
    conditions: &Conditions,
    head_only: bool,
) -> Response<Body> {
    let rep = Representation::of_entry(meta);
    let plan = serve::plan(&rep, conditions);
    let builder = serve::head(&rep, plan, "MISS");
    let body = match plan.body_range(Some(meta.len)) {
        Some((start, end)) if !head_only && plan != Plan::NotModified => {
            let end = end.unwrap_or(meta.len);
            match body::from_file(file, start, end, served(state, false)).await {
                Ok(body) => body,
                Err(e) => {
                    tracing::error!(key = %meta.key, error = %e, "spooled download unreadable");
                    return text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "download unreadable, try again",
                    );
                }
            }
        }
        _ => body::empty(),
    };
    builder
        .body(body)
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "bad response head"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_headers_a_package_request_reads_are_kept_whatever_their_case() {
        for (sent, known) in [
            ("Range", Some(http::header::RANGE)),
            ("IF-RANGE", Some(http::header::IF_RANGE)),
            ("If-None-Match", Some(http::header::IF_NONE_MATCH)),
            ("if-modified-since", Some(http::header::IF_MODIFIED_SINCE)),
            ("TraceParent", Some(TRACEPARENT)),
            ("User-Agent", None),
            ("Host", None),
            ("Ranges", None),
            ("", None),
        ] {
            let mut asked = Asked::default();
            let value = HeaderValue::from_static("v");
            let known = match (asked.keep(sent, || Some(value.clone())), known) {
                (Some(true), Some(known)) => known,
                (Some(false), None) => continue,
                (kept, _) => panic!("{sent}: kept {kept:?}"),
            };
            // Kept where hyper's path finds it.
            let mut map = HeaderMap::new();
            map.insert(known.clone(), value);
            assert_eq!(asked.conditions, Conditions::of(&map), "{sent}");
            assert_eq!(asked.traceparent.as_ref(), map.get(TRACEPARENT), "{sent}");
        }
        // A repeated trace context: the first counts, as on hyper's path.
        let mut asked = Asked::default();
        for value in ["00-a", "00-b"] {
            let kept = asked.keep("traceparent", || Some(HeaderValue::from_static(value)));
            assert_eq!(kept, Some(true));
        }
        assert_eq!(asked.traceparent, Some(HeaderValue::from_static("00-a")));
    }

    #[test]
    fn the_logged_target_is_what_display_writes() {
        for text in [
            "/debian/pool/main/a/a_1.0_all.deb",
            "/centos/7/os/x86_64/repodata/repomd.xml?arch=x86_64",
            "http://deb.example/debian/dists/stable/InRelease",
            "http://127.0.0.1:8080/debian/x.deb?a=b&c",
            "http://HTTPS///mirror.example/debian/x.deb",
            "http://user@host.example:81",
            "*",
            "host.example:443",
        ] {
            let uri: http::Uri = text.parse().unwrap();
            assert_eq!(target_text(&uri), uri.to_string(), "{text}");
        }
    }

    #[test]
    fn cache_labels_are_kept_as_sent() {
        for label in ["HIT", "MISS", "SKIP", "STALE"] {
            let value = HeaderValue::from_static(label);
            assert_eq!(cache_label(Some(&value)), label);
        }
        assert_eq!(cache_label(None), "");
        let binary = HeaderValue::from_bytes(b"\xffx").unwrap();
        assert_eq!(cache_label(Some(&binary)), "");
    }
}
