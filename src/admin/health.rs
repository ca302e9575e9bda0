//! `/healthz` (aggregated) and `/readyz` (ready to serve).
//!
//! Health: a cache storage that cannot be written (the probe file fails, the bucket does not
//! answer its round trip, or a recent fill
//! could not store its file: disk full, read-only, I/O errors) and mirror failures make the
//! answer `degraded` but keep it 200: the proxy still serves (cached files, and new ones
//! streamed from the mirror without being stored), and restarting it fixes neither a disk nor
//! a mirror. Ready: the cache index is loaded; a storage problem does not make the proxy
//! unready, since it can still serve.

use http::{Response, StatusCode};
use serde_json::json;

use super::json;
use crate::cache::body::Body;
use crate::server::AppState;

/// The storage problem, if any: the probe write, else the last problem a fill met (until a
/// commit succeeds).
async fn storage_ok(state: &AppState) -> Result<(), String> {
    state.cache.store().check().await.map_err(|e| {
        match state.cache.store().capabilities().name {
            "disk" => format!("cache directory not writable: {e}"),
            _ => format!("bucket unreachable: {e}"),
        }
    })?;
    match state.cache.storage_problem() {
        Some((at, problem)) => Err(format!("{problem} (at {at})")),
        None => Ok(()),
    }
}

pub async fn healthz(state: &AppState) -> Response<Body> {
    let storage = storage_ok(state).await;
    let health = state.cache.mirror_health();
    let mut mirrors = serde_json::Map::new();
    let mut degraded = false;
    for repo in state.reloader.registry.load().repos() {
        let current = repo.mirror_set.current();
        let mirror = current.base.as_str();
        let entry = match health.get(&repo.id) {
            Some(h) if h.ok => {
                json!({ "status": "ok", "mirror": mirror, "checked_at": h.at })
            }
            Some(h) => {
                degraded = true;
                json!({ "status": "error", "mirror": mirror, "checked_at": h.at, "error": h.error })
            }
            None => json!({ "status": "unknown", "mirror": mirror }),
        };
        mirrors.insert(repo.id.clone(), entry);
    }
    let status = if storage.is_err() || degraded {
        "degraded"
    } else {
        "ok"
    };
    let backend = state.cache.store().capabilities().name;
    let storage = match storage {
        Ok(()) => json!({ "status": "ok", "backend": backend }),
        Err(e) => json!({ "status": "error", "backend": backend, "error": e }),
    };
    json(
        StatusCode::OK,
        json!({
            "status": status,
            "checks": {
                "storage": storage,
                "index": { "status": if state.cache.index_loaded() { "ok" } else { "loading" } },
                "upstream": mirrors,
            }
        }),
    )
}

pub async fn readyz(state: &AppState) -> Response<Body> {
    let storage = storage_ok(state).await;
    let loaded = state.cache.index_loaded();
    let ready = loaded;
    json(
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        json!({
            "status": if ready { "ready" } else { "not ready" },
            "index_loaded": loaded,
            "storage": storage.err().unwrap_or_else(|| "ok".into()),
        }),
    )
}
