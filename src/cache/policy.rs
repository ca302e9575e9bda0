//! Freshness: how long a stored answer is served before the mirror is asked again.

use http::HeaderMap;
use http::header::{CACHE_CONTROL, LAST_MODIFIED};

use crate::config::Tuning;
use crate::distro::class::FileClass;

/// Unix second until which an answer with `status` and upstream `headers` for a file of
/// `class`, stored at `now`, is fresh. The client's own Cache-Control never enters here:
/// apt sends `max-age=0` for every index and the cache applies its own policy instead.
pub fn fresh_until(
    class: FileClass,
    status: u16,
    headers: &HeaderMap,
    now: u64,
    tuning: &Tuning,
) -> u64 {
    if status == 404 {
        return now + tuning.negative_ttl.as_secs();
    }
    match class {
        FileClass::Immutable => u64::MAX,
        FileClass::Volatile => now + tuning.index_fresh.as_secs(),
        FileClass::Other => now + other_lifetime(headers, now, tuning),
    }
}

/// Upstream's `max-age`/`s-maxage` (0 for no-cache/no-store), else a tenth of the time since
/// Last-Modified, capped at the configured default.
fn other_lifetime(headers: &HeaderMap, now: u64, tuning: &Tuning) -> u64 {
    let cap = tuning.other_ttl.as_secs();
    if let Some(cc) = headers.get(CACHE_CONTROL).and_then(|v| v.to_str().ok()) {
        let mut max_age = None;
        for directive in cc.split(',').map(str::trim) {
            let lower = directive.to_ascii_lowercase();
            if lower == "no-cache" || lower == "no-store" || lower == "private" {
                return 0;
            }
            if let Some(v) = lower
                .strip_prefix("s-maxage=")
                .or_else(|| lower.strip_prefix("max-age="))
            {
                max_age = v.trim_matches('"').parse::<u64>().ok().or(max_age);
            }
        }
        if let Some(age) = max_age {
            return age;
        }
    }
    let modified = headers
        .get(LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
    match modified {
        Some(lm) if lm < now => ((now - lm) / 10).min(cap),
        _ => cap,
    }
}

/// [`fresh_until`], unless a distributions.yaml cache rule sets the lifetime of the file:
/// rules apply to every class but immutable files, which never change under their name.
pub fn fresh_until_with_rule(
    class: FileClass,
    status: u16,
    headers: &HeaderMap,
    now: u64,
    tuning: &Tuning,
    rule_max_age: Option<u64>,
) -> u64 {
    match rule_max_age {
        Some(age) if class != FileClass::Immutable && matches!(status, 200 | 404) => {
            now.saturating_add(age)
        }
        _ => fresh_until(class, status, headers, now, tuning),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(list: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in list {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn classes_and_statuses() {
        let t = Tuning::default();
        let none = HeaderMap::new();
        assert_eq!(
            fresh_until(FileClass::Immutable, 200, &none, 1000, &t),
            u64::MAX
        );
        assert_eq!(fresh_until(FileClass::Volatile, 200, &none, 1000, &t), 1030);
        assert_eq!(
            fresh_until(FileClass::Immutable, 404, &none, 1000, &t),
            1030
        );
        assert_eq!(fresh_until(FileClass::Other, 200, &none, 1000, &t), 4600);
    }

    #[test]
    fn other_files_follow_upstream() {
        let t = Tuning::default();
        let now = 2_000_000_000;
        assert_eq!(
            fresh_until(
                FileClass::Other,
                200,
                &headers(&[("cache-control", "public, max-age=120")]),
                now,
                &t
            ),
            now + 120
        );
        assert_eq!(
            fresh_until(
                FileClass::Other,
                200,
                &headers(&[("cache-control", "no-cache")]),
                now,
                &t
            ),
            now
        );
        let lm = httpdate::fmt_http_date(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(now - 5000),
        );
        assert_eq!(
            fresh_until(
                FileClass::Other,
                200,
                &headers(&[("last-modified", &lm)]),
                now,
                &t
            ),
            now + 500
        );
    }
}
