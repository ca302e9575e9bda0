//! The management API under `/api/`. Reached only by origin-form paths starting with `/api/`:
//! no repository can be named `api`, so package traffic never arrives here.

pub mod auth;

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

/// Answers a request for `/api/...`.
pub async fn handle(state: &AppState, request: &Request<Incoming>) -> Response<Body> {
    if let Some(denied) = auth::check(&state.security, request.headers()) {
        return denied;
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
        (_, "/api/cache/stats") => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "ErrMethodNotAllowed",
            "use GET",
        ),
        _ => error(StatusCode::NOT_FOUND, "ErrNotFound", "no such API endpoint"),
    }
}
