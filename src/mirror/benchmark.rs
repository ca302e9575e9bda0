//! The mirror benchmark: probes every candidate concurrently by downloading the distribution's
//! benchmark file, drops those that fail or serve an index older than the newest seen, and
//! ranks the rest by the time they would take to deliver 1 MiB (latency plus transfer).

use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use futures_util::StreamExt;
use reqwest::header::RANGE;
use url::Url;

use super::{Candidate, Dropped, Measure, url_in};
use crate::distro::class::suite_dir;
use crate::units::human_duration;
use crate::unix_now;
use crate::upstream::error_chain;
use crate::upstream::policy::{AddressPolicy, GuardedResolver};

/// Bounds of one benchmark run.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Probes in flight at once.
    pub parallel: usize,
    /// Longest one probe may take (a slow mirror is measured on what it sent by then).
    pub probe_timeout: Duration,
    /// Longest the whole run may take; probes unfinished by then count as failed.
    pub deadline: Duration,
    /// Bytes of the benchmark file read at most.
    pub max_bytes: u64,
    /// Longest wait for the geo mirror list.
    pub geo_timeout: Duration,
    /// How often failed mirrors whose pause is over are probed (a HEAD of their base URL).
    pub recovery_every: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            parallel: 8,
            probe_timeout: Duration::from_secs(8),
            deadline: Duration::from_secs(30),
            max_bytes: 4 << 20,
            geo_timeout: Duration::from_secs(5),
            recovery_every: Duration::from_secs(5),
        }
    }
}

/// Below this many bytes, a transfer rate is not measured but guessed from noise.
const RATE_MIN_BYTES: u64 = 64 << 10;

/// Most mirrors taken from a geo list.
const GEO_LIST_MAX: usize = 64;

/// The outcome of probing one URL.
#[derive(Debug)]
pub struct Probe {
    pub base: Url,
    pub outcome: Result<Measure, String>,
}

/// The client used for probes: its own connections (latency includes connecting, as for a
/// mirror not used lately), no proxy, rustls; redirects and names checked against `policy`.
pub fn client(limits: &Limits, policy: &Arc<AddressPolicy>) -> Result<reqwest::Client, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(limits.probe_timeout)
        .pool_max_idle_per_host(0)
        .redirect(policy.redirects())
        .dns_resolver(GuardedResolver(policy.clone()))
        .user_agent(concat!(
            "apt-proxy/",
            env!("CARGO_PKG_VERSION"),
            " (benchmark)"
        ))
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())
}

/// Reads a geo mirror list: one mirror base URL per line (`#` comments and blank lines
/// skipped). Lines without a scheme are tried over https and http. Lines naming an internal
/// address that `policy` refuses are dropped (host names are checked when resolved).
pub async fn geo_list(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
    policy: &AddressPolicy,
) -> Result<Vec<Candidate>, String> {
    let fetch = async {
        let response = client.get(url).send().await.map_err(|e| error_chain(&e))?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status().as_u16()));
        }
        let mut text = Vec::new();
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            text.extend_from_slice(&chunk.map_err(|e| error_chain(&e))?);
            if text.len() > 256 << 10 {
                return Err("list longer than 256 KiB".into());
            }
        }
        Ok(String::from_utf8_lossy(&text).into_owned())
    };
    let text = tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))??;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(parse_candidate)
        .filter(|c| match policy.check_url(&c.url) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(mirror = %c.url, reason = %e, "geo-list mirror refused");
                false
            }
        })
        .take(GEO_LIST_MAX)
        .collect())
}

/// A mirror base URL from a list line; `None` when it is not an http(s) URL with a host.
fn parse_candidate(line: &str) -> Option<Candidate> {
    let any_scheme = !line.contains("://");
    let text = if any_scheme {
        format!("https://{line}")
    } else {
        line.to_string()
    };
    let mut url = Url::parse(&text).ok()?;
    if !matches!(url.scheme(), "http" | "https")
        || url.host_str().is_none_or(str::is_empty)
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return None;
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Some(Candidate { url, any_scheme })
}

/// The URLs to probe: each candidate once, and over http too when written without a scheme.
pub fn probe_urls(candidates: &[Candidate]) -> Vec<Url> {
    let mut urls: Vec<Url> = Vec::new();
    for c in candidates {
        let mut variants = vec![c.url.clone()];
        if c.any_scheme {
            let mut other = c.url.clone();
            let scheme = if c.url.scheme() == "https" {
                "http"
            } else {
                "https"
            };
            if other.set_scheme(scheme).is_ok() {
                variants.push(other);
            }
        }
        for v in variants {
            if !urls.contains(&v) {
                urls.push(v);
            }
        }
    }
    urls
}

/// Probes every URL (at most `limits.parallel` at once) for `path`; those not done by the
/// deadline are reported as such.
pub async fn run(
    client: &reqwest::Client,
    urls: Vec<Url>,
    path: &str,
    limits: &Limits,
) -> Vec<Probe> {
    let done = std::sync::Mutex::new(Vec::new());
    let probes = futures_util::stream::iter(urls.iter().cloned())
        .map(|base| async move {
            let outcome = probe(client, &base, path, limits).await;
            Probe { base, outcome }
        })
        .buffer_unordered(limits.parallel.max(1))
        .for_each(|p| {
            done.lock().unwrap_or_else(|e| e.into_inner()).push(p);
            async {}
        });
    let _ = tokio::time::timeout(limits.deadline, probes).await;
    let mut done = done.into_inner().unwrap_or_else(|e| e.into_inner());
    for base in urls {
        if !done.iter().any(|p| p.base == base) {
            done.push(Probe {
                base,
                outcome: Err(format!(
                    "not measured within the benchmark's {:?}",
                    limits.deadline
                )),
            });
        }
    }
    done
}

/// Downloads `path` from one mirror and measures it.
async fn probe(
    client: &reqwest::Client,
    base: &Url,
    path: &str,
    limits: &Limits,
) -> Result<Measure, String> {
    let url = url_in(base, path).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let deadline = tokio::time::Instant::from_std(start + limits.probe_timeout);
    let response = tokio::time::timeout_at(deadline, client.get(url).send())
        .await
        .map_err(|_| format!("no answer within {:?}", limits.probe_timeout))?
        .map_err(|e| error_chain(&e))?;
    let status = response.status().as_u16();
    if status != 200 {
        return Err(format!("answered {status}"));
    }
    let latency = start.elapsed();
    let mut body = response.bytes_stream();
    let mut head = Vec::new();
    let mut bytes = 0u64;
    loop {
        match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(Some(Ok(chunk))) => {
                bytes += chunk.len() as u64;
                if head.len() < 64 << 10 {
                    head.extend_from_slice(&chunk[..chunk.len().min((64 << 10) - head.len())]);
                }
                if bytes >= limits.max_bytes {
                    break;
                }
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(format!("transfer failed: {}", error_chain(&e))),
            // Slow: measured on what arrived.
            Err(_) if bytes > 0 => break,
            Err(_) => {
                return Err(format!("no body within {:?}", limits.probe_timeout));
            }
        }
    }
    let transfer = (start.elapsed().saturating_sub(latency)).max(Duration::from_millis(1));
    let bytes_per_sec = (bytes as f64 / transfer.as_secs_f64()).max(1.0);
    let mut published = published_in(&String::from_utf8_lossy(&head));
    if published.is_none()
        && let Some(suite) = suite_dir(path)
    {
        published = suite_date(client, base, suite, deadline).await;
    }
    let latency_ms = latency.as_millis() as u64;
    // A small file's transfer time is noise: such mirrors are compared on their whole time.
    // Every candidate fetches the same file, so all are scored the same way.
    let score_ms = if bytes >= RATE_MIN_BYTES {
        latency_ms + (1_048_576.0 / bytes_per_sec * 1000.0) as u64
    } else {
        (latency + transfer).as_millis() as u64
    };
    Ok(Measure {
        latency_ms,
        bytes_per_sec: bytes_per_sec as u64,
        bytes,
        score_ms,
        published,
        at: unix_now(),
    })
}

/// The `Date:` of a suite's InRelease (its head only, asked by Range).
async fn suite_date(
    client: &reqwest::Client,
    base: &Url,
    suite: &str,
    deadline: tokio::time::Instant,
) -> Option<i64> {
    let url = url_in(base, &format!("{suite}InRelease")).ok()?;
    let fetch = async {
        let response = client
            .get(url)
            .header(RANGE, "bytes=0-4095")
            .send()
            .await
            .ok()?;
        if !matches!(response.status().as_u16(), 200 | 206) {
            return None;
        }
        let mut head = Vec::new();
        let mut body = response.bytes_stream();
        while let Some(Ok(chunk)) = body.next().await {
            head.extend_from_slice(&chunk);
            if head.len() >= 4096 {
                break;
            }
        }
        published_in(&String::from_utf8_lossy(&head))
    };
    tokio::time::timeout_at(deadline, fetch).await.ok()?
}

/// When an index was published, from its own text: a Release `Date:` field or a repomd
/// `<revision>` (unix seconds).
pub fn published_in(text: &str) -> Option<i64> {
    for line in text.lines() {
        if let Some(date) = line.strip_prefix("Date:") {
            return release_date(date.trim());
        }
    }
    let start = text.find("<revision>")? + "<revision>".len();
    let end = start + text[start..].find("</revision>")?;
    text[start..end].trim().parse().ok()
}

/// A Release date (`Sat, 06 Jan 2024 10:00:00 UTC`) as unix seconds.
fn release_date(text: &str) -> Option<i64> {
    let gmt = ["UTC", "+0000", "Z", "GMT"]
        .iter()
        .find_map(|zone| text.strip_suffix(zone))
        .map(|t| format!("{} GMT", t.trim_end()))?;
    let time = httpdate::parse_http_date(&gmt).ok()?;
    time.duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs() as i64)
}

/// Ranks the probes: failures and mirrors older than the newest index seen are dropped, the
/// rest sorted by score (the same host and path over two schemes counts once, the better).
pub fn rank(probes: Vec<Probe>) -> (Vec<(Url, Measure)>, Vec<Dropped>) {
    let newest = probes
        .iter()
        .filter_map(|p| p.outcome.as_ref().ok()?.published)
        .max();
    let mut dropped = Vec::new();
    let mut usable = Vec::new();
    for p in probes {
        match p.outcome {
            Err(reason) => dropped.push(Dropped {
                url: p.base.to_string(),
                reason,
            }),
            Ok(m) => match (m.published, newest) {
                (Some(date), Some(newest)) if date < newest => dropped.push(Dropped {
                    url: p.base.to_string(),
                    reason: format!(
                        "stale: its index is {} older than the newest mirror's",
                        human_duration((newest - date) as u64)
                    ),
                }),
                _ => usable.push((p.base, m)),
            },
        }
    }
    usable.sort_by_key(|(url, m)| (m.score_ms, url.scheme() != "https"));
    let mut ranked: Vec<(Url, Measure)> = Vec::new();
    for (url, m) in usable {
        let same_place = |u: &Url| {
            u.host_str() == url.host_str() && u.port() == url.port() && u.path() == url.path()
        };
        if !ranked.iter().any(|(u, _)| same_place(u)) {
            ranked.push((url, m));
        }
    }
    (ranked, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measure(score_ms: u64, published: Option<i64>) -> Measure {
        Measure {
            latency_ms: 1,
            bytes_per_sec: 1,
            bytes: 1,
            score_ms,
            published,
            at: 0,
        }
    }

    fn probe(url: &str, outcome: Result<Measure, String>) -> Probe {
        Probe {
            base: Url::parse(url).unwrap(),
            outcome,
        }
    }

    #[test]
    fn dates_and_revisions_are_read() {
        assert_eq!(
            published_in("Origin: Debian\nDate: Sat, 06 Jan 2024 10:00:00 UTC\nValid-Until: x\n"),
            Some(1_704_535_200)
        );
        assert_eq!(
            published_in(
                "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\nOrigin: x\nDate: Sat, 06 Jan 2024 10:00:00 +0000\n"
            ),
            Some(1_704_535_200)
        );
        assert_eq!(
            published_in("<repomd><revision>1700000000</revision></repomd>"),
            Some(1_700_000_000)
        );
        assert_eq!(published_in("Archive: noble\nComponent: main\n"), None);
        assert_eq!(published_in("Date: yesterday\n"), None);
    }

    #[test]
    fn geo_list_lines() {
        let c = parse_candidate("mirror.example.org/ubuntu").unwrap();
        assert!(c.any_scheme);
        assert_eq!(c.url.as_str(), "https://mirror.example.org/ubuntu/");
        let c = parse_candidate("http://m.example.net/ubuntu/").unwrap();
        assert!(!c.any_scheme);
        assert!(parse_candidate("ftp://m.example.net/ubuntu/").is_none());
        assert!(parse_candidate("not a url at all").is_none());
        let urls = probe_urls(&[
            parse_candidate("m.example.org/u/").unwrap(),
            parse_candidate("http://m.example.org/u/").unwrap(),
        ]);
        let urls: Vec<&str> = urls.iter().map(Url::as_str).collect();
        assert_eq!(
            urls,
            ["https://m.example.org/u/", "http://m.example.org/u/"]
        );
    }

    #[test]
    fn ranking_drops_failures_and_stale_mirrors() {
        let (ranked, dropped) = rank(vec![
            probe("http://slow/u/", Ok(measure(900, Some(100)))),
            probe("http://dead/u/", Err("refused".into())),
            probe("http://fast/u/", Ok(measure(10, Some(100)))),
            probe("http://old/u/", Ok(measure(1, Some(40)))),
            probe("http://nodate/u/", Ok(measure(50, None))),
            probe("https://fast/u/", Ok(measure(10, Some(100)))),
        ]);
        let order: Vec<&str> = ranked.iter().map(|(u, _)| u.as_str()).collect();
        assert_eq!(
            order,
            ["https://fast/u/", "http://nodate/u/", "http://slow/u/"]
        );
        let dropped: Vec<(&str, &str)> = dropped
            .iter()
            .map(|d| (d.url.as_str(), d.reason.as_str()))
            .collect();
        assert_eq!(dropped[0], ("http://dead/u/", "refused"));
        assert_eq!(dropped[1].0, "http://old/u/");
        assert!(dropped[1].1.starts_with("stale"), "{}", dropped[1].1);
    }
}
