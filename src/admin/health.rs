//! `/healthz` (aggregated) and `/readyz` (ready to serve).
//!
//! Health: the cache storage must be writable (checked by writing a probe file); mirror
//! failures make the answer `degraded` but keep it 200, since restarting the proxy does not
//! bring a mirror back. Ready: the cache index is loaded and the storage is writable.

use http::{Response, StatusCode};
use serde_json::json;

use super::json;
use crate::cache::body::Body;
use crate::server::AppState;

async fn storage_ok(state: &AppState) -> Result<(), String> {
    state
        .cache
        .store()
        .check_writable()
        .await
        .map_err(|e| e.to_string())
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
    let (code, status) = match (&storage, degraded) {
        (Err(_), _) => (StatusCode::SERVICE_UNAVAILABLE, "unhealthy"),
        (Ok(()), true) => (StatusCode::OK, "degraded"),
        (Ok(()), false) => (StatusCode::OK, "ok"),
    };
    let storage = match storage {
        Ok(()) => json!({ "status": "ok", "backend": "disk" }),
        Err(e) => json!({ "status": "error", "backend": "disk", "error": e }),
    };
    json(
        code,
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
    let ready = storage.is_ok() && loaded;
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
