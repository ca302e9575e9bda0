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

/// The address `--health-check` probes: the configured host, or loopback when the proxy
/// listens on every interface (or on `localhost`).
fn probe_url(config: &crate::config::Config) -> String {
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let host = match config.host.parse::<std::net::IpAddr>() {
        Ok(ip) if ip.is_unspecified() && ip.is_ipv6() => "[::1]".to_string(),
        Ok(ip) if ip.is_unspecified() => "127.0.0.1".to_string(),
        Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]"),
        Ok(ip) => ip.to_string(),
        Err(_) if config.host.is_empty() || config.host == "localhost" => "127.0.0.1".into(),
        Err(_) => config.host.clone(),
    };
    format!("{scheme}://{host}:{}/livez", config.port)
}

/// `--health-check`: asks the proxy configured by `config` for `/livez` (5 s at most, any
/// certificate accepted since the proxy's own is often self-signed, no redirect followed:
/// the answer must come from the proxy itself) and returns the URL it asked, or why the proxy
/// is not alive.
pub async fn probe(config: &crate::config::Config) -> Result<String, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = probe_url(config);
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(5))
        .danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build the probe: {e}"))?;
    let response = client.get(&url).send().await.map_err(|e| {
        let mut cause: &dyn std::error::Error = &e;
        while let Some(inner) = cause.source() {
            cause = inner;
        }
        format!("{url}: no answer ({cause})")
    })?;
    match response.status() {
        StatusCode::OK => Ok(url),
        status => Err(format!("{url}: answered {status}")),
    }
}

#[cfg(test)]
mod probe_tests {
    use super::probe_url;
    use crate::config::Config;

    #[test]
    fn the_probe_asks_loopback_for_a_wildcard_listener() {
        let mut c = Config::new("/tmp/x");
        c.port = 8080;
        assert_eq!(probe_url(&c), "http://127.0.0.1:8080/livez");
        c.host = "::".into();
        assert_eq!(probe_url(&c), "http://[::1]:8080/livez");
        c.host = "10.1.2.3".into();
        assert_eq!(probe_url(&c), "http://10.1.2.3:8080/livez");
        c.host = "fd00::5".into();
        assert_eq!(probe_url(&c), "http://[fd00::5]:8080/livez");
        c.host = "localhost".into();
        assert_eq!(probe_url(&c), "http://127.0.0.1:8080/livez");
    }
}
