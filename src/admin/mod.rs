//! The management API under `/api/`. Reached only by origin-form paths starting with `/api/`:
//! no repository can be named `api`, so package traffic never arrives here.

pub mod auth;
pub mod client_ip;
pub mod health;
pub mod ratelimit;
pub(crate) mod status_page;

use std::net::IpAddr;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::cache::body::{self, Body};
use crate::server::AppState;

/// A JSON answer.
pub fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    let mut text = value.to_string();
    text.push('\n');
    let mut response = Response::new(body::full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// A JSON error in the form the interface we keep uses: `{"error": {"code", "message"}}`.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json(
        status,
        serde_json::json!({ "error": { "code": code, "message": message } }),
    )
}

fn to_value(value: impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(body::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Whether an origin-form path belongs to the management plane (and must not be logged as
/// package traffic when it is a probe).
pub fn is_probe(path: &str) -> bool {
    matches!(path, "/healthz" | "/livez" | "/readyz")
        || path == "/_/ping"
        || path.starts_with("/_/ping/")
}

/// Whether a path addressed to the proxy is one of its own pages ([`management`] answers it).
pub fn is_own_page(path: &str) -> bool {
    is_probe(path)
        || matches!(path, "/" | "/version" | "/metrics" | "/api")
        || path.starts_with("/api/")
}

/// Answers a request addressed to the proxy itself (origin-form, or absolute-form to its port
/// naming no mirror: the caller decides) for one of its own pages; `None` for any other.
pub async fn management(
    state: &AppState,
    request: &Request<Incoming>,
    peer: IpAddr,
) -> Option<Response<Body>> {
    let uri = request.uri();
    let path = uri.path();
    if request.method() == Method::CONNECT || !is_own_page(path) {
        return None;
    }
    let response = match path {
        "/_/ping" => text(StatusCode::OK, "pong"),
        p if p.starts_with("/_/ping/") => text(StatusCode::OK, "pong"),
        "/livez" => text(StatusCode::OK, "ok"),
        "/healthz" => health::healthz(state).await,
        "/readyz" => health::readyz(state).await,
        "/version" => json(
            StatusCode::OK,
            serde_json::json!({ "version": crate::VERSION, "commit": crate::COMMIT, "build_date": crate::BUILD_DATE }),
        ),
        "/metrics" => {
            let mut r = Response::new(body::full(state.cache.metrics().encode()));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                ),
            );
            r
        }
        "/" if request.method() == Method::GET || request.method() == Method::HEAD => {
            // The address the browser used, for the client set-up snippets.
            let host = uri
                .authority()
                .map(|a| a.as_str())
                .or_else(|| request.headers().get(http::header::HOST)?.to_str().ok());
            let mut r = Response::new(body::full(status_page::render(state, host)));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r.headers_mut().insert(
                http::header::CACHE_CONTROL,
                http::HeaderValue::from_static("no-store"),
            );
            r
        }
        p if p == "/api" || p.starts_with("/api/") => api(state, request, peer).await,
        _ => return None,
    };
    Some(response)
}

/// A request that only a browser sends on another site's behalf: a state-changing call must
/// not be one (a web page could otherwise make a visitor's browser purge the cache). Plain
/// clients (`curl -X POST`) send none of these. Form content types are refused only when the
/// API has no key: a browser cannot add the key header to a cross-site form.
fn cross_site(request: &Request<Incoming>, keyless: bool) -> Option<&'static str> {
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return None;
    }
    let headers = request.headers();
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = value("sec-fetch-site")
        && !matches!(site, "same-origin" | "none")
    {
        return Some("a cross-site browser request (Sec-Fetch-Site)");
    }
    if let Some(origin) = value("origin") {
        let host = value("host").unwrap_or("");
        let origin_host = origin
            .split_once("://")
            .map(|(_, rest)| rest.trim_end_matches('/'));
        if origin_host.is_none_or(|o| !o.eq_ignore_ascii_case(host)) {
            return Some("a request from another origin (Origin)");
        }
    }
    let form = value("content-type").map(|t| {
        t.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    if let Some(t) = form.filter(|_| keyless)
        && matches!(
            t.as_str(),
            "application/x-www-form-urlencoded" | "multipart/form-data" | "text/plain"
        )
    {
        return Some("a form submission (Content-Type)");
    }
    None
}

fn rate_limited(retry_after: u64) -> Response<Body> {
    let mut r = error(
        StatusCode::TOO_MANY_REQUESTS,
        "ErrRateLimited",
        "too many API requests; try again later",
    );
    r.headers_mut()
        .insert(http::header::RETRY_AFTER, retry_after.into());
    r
}

/// Answers a request for `/api/...`: cross-site check, authentication, rate limit, then the
/// endpoint. Refused keys count against their own limit, so that guessing cannot use up the
/// limit of the client that holds the key.
async fn api(state: &AppState, request: &Request<Incoming>, peer: IpAddr) -> Response<Body> {
    if let Some(why) = cross_site(request, !state.security.api_auth) {
        return error(
            StatusCode::FORBIDDEN,
            "ErrCrossSite",
            &format!("refused {why}: call the API from a script or the command line"),
        );
    }
    let client = client_ip::client_ip(peer, request.headers(), &state.security.trusted_proxies);
    let now = std::time::Instant::now();
    if let Some(denied) = auth::check(&state.security, request.headers()) {
        if let Err(retry_after) = state.auth_failures.check(client, now) {
            return rate_limited(retry_after);
        }
        return denied;
    }
    if let Err(retry_after) = state.limiter.check(client, now) {
        return rate_limited(retry_after);
    }
    match (request.method(), request.uri().path()) {
        (&Method::POST, "/api/mirrors/refresh") => match state.reloader.reload().await {
            Ok(repos) => json(
                StatusCode::OK,
                serde_json::json!({ "status": "ok", "repos": repos }),
            ),
            Err(e) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "ErrReloadFailed",
                &e.to_string(),
            ),
        },
        (&Method::GET, "/api/mirrors") => {
            let sets: Vec<_> = state
                .reloader
                .mirror_sets()
                .iter()
                .map(|s| s.view())
                .collect();
            json(StatusCode::OK, to_value(sets))
        }
        (&Method::GET, "/api/cache/stats") => json(StatusCode::OK, to_value(state.cache.stats())),
        (&Method::POST, "/api/cache/purge") => {
            json(StatusCode::OK, to_value(state.cache.purge().await))
        }
        (&Method::POST, "/api/cache/cleanup") => {
            json(StatusCode::OK, to_value(state.cache.cleanup().await))
        }
        (_, "/api/mirrors/refresh" | "/api/cache/purge" | "/api/cache/cleanup") => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "ErrMethodNotAllowed",
            "use POST",
        ),
        (_, "/api/cache/stats" | "/api/mirrors") => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "ErrMethodNotAllowed",
            "use GET",
        ),
        _ => error(StatusCode::NOT_FOUND, "ErrNotFound", "no such API endpoint"),
    }
}
