//! API-key authentication for `/api/*`: `X-API-Key: <key>` or `Authorization: Bearer <key>`,
//! compared in constant time.

use http::{HeaderMap, Response, StatusCode};

use crate::cache::body::Body;
use crate::config::Security;

/// The refusal to send, or `None` when the request may use the API.
pub fn check(security: &Security, headers: &HeaderMap) -> Option<Response<Body>> {
    if !security.api_auth {
        return None;
    }
    let Some(expected) = security.api_key.as_deref() else {
        return Some(super::error(
            StatusCode::UNAUTHORIZED,
            "ErrUnauthorized",
            "API authentication is on but no key is configured",
        ));
    };
    let given = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    // The scheme is case-insensitive (RFC 9110 §11.1): `bearer k` counts too.
                    let (scheme, key) = v.split_once(' ')?;
                    scheme.eq_ignore_ascii_case("bearer").then_some(key)
                })
        })
        .map(str::trim);
    match given {
        Some(key) if constant_time_eq(key.as_bytes(), expected.as_bytes()) => None,
        Some(_) => Some(super::error(
            StatusCode::UNAUTHORIZED,
            "ErrUnauthorized",
            "invalid API key",
        )),
        None => Some(super::error(
            StatusCode::UNAUTHORIZED,
            "ErrUnauthorized",
            "API key required (X-API-Key or Authorization: Bearer)",
        )),
    }
}

/// Equal slices, in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff));
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret1"));
        assert!(!constant_time_eq(b"", b"x"));
        let security = Security {
            api_key: Some("k".into()),
            api_auth: true,
            api_rate_limit_per_minute: 0,
            trusted_proxies: vec![],
            allow_private_upstreams: vec![],
            allowed_clients: vec![],
        };
        let mut h = HeaderMap::new();
        assert!(check(&security, &h).is_some());
        h.insert("authorization", "Bearer k".parse().unwrap());
        assert!(check(&security, &h).is_none());
        h.insert("authorization", "bEaReR k".parse().unwrap());
        assert!(
            check(&security, &h).is_none(),
            "the scheme is case-insensitive"
        );
        h.insert("authorization", "Basic k".parse().unwrap());
        assert!(check(&security, &h).is_some(), "only the Bearer scheme");
        h.insert("authorization", "Bearer k".parse().unwrap());
        h.insert("x-api-key", "wrong".parse().unwrap());
        assert!(
            check(&security, &h).is_some(),
            "X-API-Key is looked at first"
        );
    }
}
