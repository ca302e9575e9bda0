//! Cache capacity: LRU eviction by size with readers in flight, files larger than the cache,
//! the free-space floor, TTL cleanup, restart keeping entries and LRU order, the stats, purge
//! and cleanup API, and the metrics text.

use std::time::Duration;

use apt_proxy::config::Tuning;
use futures_util::StreamExt;

use crate::{Behavior, Origin, Proxy, cache_dir, data, x_cache};

const MB: u64 = 1 << 20;

async fn get(proxy: &Proxy, path: &str) -> (String, Vec<u8>) {
    let r = proxy.get(path).await;
    let cache = x_cache(&r);
    (cache, r.bytes().await.unwrap().to_vec())
}

async fn api(proxy: &Proxy, method: reqwest::Method, path: &str) -> serde_json::Value {
    let r = proxy
        .client()
        .request(method, proxy.url(path))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    serde_json::from_str(&r.text().await.unwrap()).unwrap()
}

#[tokio::test]
async fn least_recently_used_is_evicted_while_its_reader_finishes() {
    let origin = Origin::start().await;
    for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
        origin.put(
            &format!("/debian/pool/{name}.deb"),
            data(3 * MB as usize, i as u64),
        );
    }
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |c| {
        c.cache_limits.max_size_bytes = Some(10 * MB)
    })
    .await;
    // b is stored and a client starts reading it, slowly; then a and c are stored and used,
    // so b is the least recently used entry while its reader is still at it.
    get(&proxy, "debian/pool/b.deb").await;
    let reader = proxy.get("debian/pool/b.deb").await;
    assert_eq!(x_cache(&reader), "HIT");
    let mut stream = reader.bytes_stream();
    let mut got = stream.next().await.unwrap().unwrap().to_vec();
    for name in ["a", "c"] {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        get(&proxy, &format!("debian/pool/{name}.deb")).await;
    }
    // d pushes the cache over 10 MB: b goes, under its reader's feet.
    get(&proxy, "debian/pool/d.deb").await;
    while let Some(chunk) = stream.next().await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert!(
        got == data(3 * MB as usize, 1),
        "the reader of an evicted entry gets the whole file"
    );
    let stats = api(&proxy, reqwest::Method::GET, "api/cache/stats").await;
    assert_eq!(stats["item_count"], 3);
    assert_eq!(stats["total_size_bytes"], 9 * MB);
    for (name, expected) in [("a", "HIT"), ("c", "HIT"), ("d", "HIT"), ("b", "MISS")] {
        assert_eq!(
            get(&proxy, &format!("debian/pool/{name}.deb")).await.0,
            expected,
            "{name}"
        );
    }
    assert_eq!(origin.hits("/debian/pool/b.deb"), 2);
}

#[tokio::test]
async fn a_file_larger_than_the_cache_is_streamed_not_kept() {
    let origin = Origin::start().await;
    let body = data(3 * MB as usize, 9);
    origin.put("/debian/pool/huge.deb", body.clone());
    origin.set(
        "/debian/pool/huge.deb",
        Behavior::Slow {
            chunk: 256 << 10,
            delay: Duration::from_millis(5),
        },
    );
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |c| {
        c.cache_limits.max_size_bytes = Some(2 * MB)
    })
    .await;
    for _ in 0..2 {
        let (cache, got) = get(&proxy, "debian/pool/huge.deb").await;
        assert_eq!(cache, "SKIP");
        assert!(got == body);
    }
    assert_eq!(origin.hits("/debian/pool/huge.deb"), 2);
    assert_eq!(
        api(&proxy, reqwest::Method::GET, "api/cache/stats").await["item_count"],
        0
    );
}

#[tokio::test]
async fn below_the_free_space_floor_nothing_new_is_stored() {
    let origin = Origin::start().await;
    origin.put("/debian/pool/a.deb", "a");
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |c| {
        c.tuning = Tuning {
            free_space_floor: Some(u64::MAX),
            ..Tuning::default()
        }
    })
    .await;
    for _ in 0..2 {
        let (cache, body) = get(&proxy, "debian/pool/a.deb").await;
        assert_eq!((cache.as_str(), body.as_slice()), ("SKIP", &b"a"[..]));
    }
    assert_eq!(origin.hits("/debian/pool/a.deb"), 2);
}

#[tokio::test]
async fn cleanup_removes_what_was_not_used_within_the_ttl() {
    let origin = Origin::start().await;
    origin.put("/debian/pool/used.deb", "used");
    origin.put("/debian/pool/idle.deb", "idle");
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |c| {
        c.cache_limits.ttl = Some(Duration::from_secs(2))
    })
    .await;
    get(&proxy, "debian/pool/used.deb").await;
    get(&proxy, "debian/pool/idle.deb").await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(get(&proxy, "debian/pool/used.deb").await.0, "HIT");
    }
    let removed = api(&proxy, reqwest::Method::POST, "api/cache/cleanup").await;
    assert_eq!(
        (
            removed["removed_items"].as_u64(),
            removed["removed_bytes"].as_u64()
        ),
        (Some(1), Some(4))
    );
    assert_eq!(get(&proxy, "debian/pool/used.deb").await.0, "HIT");
    assert_eq!(get(&proxy, "debian/pool/idle.deb").await.0, "MISS");
}

#[tokio::test]
async fn a_restart_keeps_entries_and_their_order() {
    let origin = Origin::start().await;
    for name in ["a", "b", "c"] {
        origin.put(&format!("/debian/pool/{name}.deb"), data(MB as usize, 3));
    }
    let dir = cache_dir();
    let every_access = |c: &mut apt_proxy::config::Config| {
        c.tuning = Tuning {
            access_persist_interval: Duration::ZERO,
            ..Tuning::default()
        }
    };
    let proxy = Proxy::start(&origin, dir.path(), every_access).await;
    for name in ["a", "b", "c"] {
        get(&proxy, &format!("debian/pool/{name}.deb")).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    assert_eq!(get(&proxy, "debian/pool/a.deb").await.0, "HIT");
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.stop().await;

    // After the restart the index is rebuilt from disk; a 2.5 MB limit keeps the two most
    // recently used entries: a (read last) and c.
    let proxy = Proxy::start(&origin, dir.path(), |c| {
        every_access(c);
        c.cache_limits.max_size_bytes = Some(5 * MB / 2);
    })
    .await;
    let stats = api(&proxy, reqwest::Method::GET, "api/cache/stats").await;
    assert_eq!(stats["item_count"], 2, "{stats}");
    assert_eq!(get(&proxy, "debian/pool/a.deb").await.0, "HIT");
    assert_eq!(get(&proxy, "debian/pool/c.deb").await.0, "HIT");
    assert_eq!(
        origin.hits("/debian/pool/a.deb") + origin.hits("/debian/pool/c.deb"),
        2
    );
}

#[tokio::test]
async fn stats_purge_and_metrics() {
    let origin = Origin::start().await;
    origin.put("/debian/pool/a.deb", "aaaa");
    origin.put("/ubuntu/pool/b.deb", "bb");
    let slow = data(2 * MB as usize, 5);
    origin.put("/debian/pool/slow.deb", slow.clone());
    origin.set(
        "/debian/pool/slow.deb",
        Behavior::Slow {
            chunk: 128 << 10,
            delay: Duration::from_millis(10),
        },
    );
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    get(&proxy, "debian/pool/a.deb").await;
    get(&proxy, "debian/pool/a.deb").await;
    get(&proxy, "ubuntu/pool/b.deb").await;
    let stats = api(&proxy, reqwest::Method::GET, "api/cache/stats").await;
    assert_eq!(stats["total_size_bytes"], 6);
    assert_eq!(stats["total_size_human"], "6 B");
    assert_eq!(stats["item_count"], 2);
    assert_eq!(stats["stale_count"], 0);
    assert_eq!(
        (stats["hit_count"].as_u64(), stats["miss_count"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(stats["hit_rate"], 0.333);

    // A purge in the middle of a download: the download finishes, and then everything is gone
    // but what was stored after the purge.
    let r = proxy.get("debian/pool/slow.deb").await;
    let mut stream = r.bytes_stream();
    let mut got = stream.next().await.unwrap().unwrap().to_vec();
    let purged = api(&proxy, reqwest::Method::POST, "api/cache/purge").await;
    assert_eq!(
        (
            purged["removed_items"].as_u64(),
            purged["removed_bytes"].as_u64()
        ),
        (Some(2), Some(6))
    );
    while let Some(chunk) = stream.next().await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert!(got == slow);
    assert_eq!(get(&proxy, "debian/pool/a.deb").await.0, "MISS");

    let text = proxy.text("metrics").await;
    let samples = parse_prometheus_text(&text);
    let value = |name: &str| samples.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    assert_eq!(
        value("apt_proxy_cache_hits_total{distro=\"debian\"}"),
        Some(1.0)
    );
    assert_eq!(
        value("apt_proxy_cache_misses_total{distro=\"debian\"}"),
        Some(3.0)
    );
    assert_eq!(
        value("apt_proxy_cache_misses_total{distro=\"ubuntu\"}"),
        Some(1.0)
    );
    assert_eq!(value("apt_proxy_cache_items"), Some(2.0));
    assert_eq!(
        value("apt_proxy_cache_size_bytes"),
        Some((4 + slow.len()) as f64)
    );
    assert_eq!(
        value("apt_proxy_bytes_served_total{source=\"cache\"}"),
        Some(4.0)
    );
    assert!(
        value("apt_proxy_bytes_served_total{source=\"upstream\"}").unwrap()
            >= (4 + 2 + 4 + slow.len()) as f64
    );
    for name in [
        "apt_proxy_cache_evictions_total",
        "apt_proxy_cache_cleanup_duration_seconds_count",
        "apt_proxy_cache_upstream_request_duration_seconds_count{method=\"GET\",status=\"200\"}",
    ] {
        assert!(value(name).is_some(), "{name} missing from\n{text}");
    }
}

/// A strict reader of the Prometheus text format: every line is a comment (`# HELP`, `# TYPE`)
/// or `name{labels} value`, every sample's family has a TYPE line before it. Returns
/// `(name{labels}, value)` pairs.
pub fn parse_prometheus_text(text: &str) -> Vec<(String, f64)> {
    let mut typed = std::collections::HashSet::new();
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap();
            let kind = parts.next().unwrap();
            assert!(
                [
                    "counter",
                    "gauge",
                    "histogram",
                    "summary",
                    "untyped",
                    "info",
                    "unknown"
                ]
                .contains(&kind),
                "{line}"
            );
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# EOF") {
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment: {line}");
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name: {line}"
        );
        let family = ["_bucket", "_count", "_sum", "_total"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(
            typed.contains(family) || typed.contains(name),
            "sample before its TYPE: {line}"
        );
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            assert!(
                labels.starts_with('{') && labels.ends_with('}'),
                "bad labels: {line}"
            );
        }
        samples.push((series.to_string(), value));
    }
    samples
}

/// Every family the interface lists has a sample before the first request, each repo its own
/// series (debian-security apart from debian), and a request moves only its repo's series.
#[tokio::test]
async fn every_series_exists_at_zero_from_start_and_counts_by_repo() {
    let origin = Origin::start().await;
    origin.put("/debian-security/pool/s.deb", "sec");
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    let text = proxy.text("metrics").await;
    let samples = parse_prometheus_text(&text);
    let value = |name: &str| samples.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    let mut want: Vec<String> = [
        "apt_proxy_cache_size_bytes",
        "apt_proxy_cache_items",
        "apt_proxy_cache_evictions_total",
        "apt_proxy_cache_cleanup_duration_seconds_count",
        "apt_proxy_cache_upstream_request_duration_seconds_count{method=\"GET\",status=\"200\"}",
        "apt_proxy_bytes_served_total{source=\"cache\"}",
        "apt_proxy_bytes_served_total{source=\"upstream\"}",
        "apt_proxy_cache_damaged_entries_total",
    ]
    .map(String::from)
    .into();
    for repo in [
        "debian",
        "debian-security",
        "ubuntu",
        "ubuntu-ports",
        "centos",
        "alpine",
    ] {
        for family in [
            "cache_hits",
            "cache_misses",
            "cache_upstream_errors",
            "integrity_failures",
            "mirror_failovers",
            "mirror_benchmarks",
            "index_unparsed",
            "integrity_unchecked",
        ] {
            want.push(format!("apt_proxy_{family}_total{{distro=\"{repo}\"}}"));
        }
    }
    for name in &want {
        assert_eq!(value(name), Some(0.0), "{name} at start:\n{text}");
    }

    assert_eq!(get(&proxy, "debian-security/pool/s.deb").await.0, "MISS");
    assert_eq!(get(&proxy, "debian-security/pool/s.deb").await.0, "HIT");
    let text = proxy.text("metrics").await;
    let samples = parse_prometheus_text(&text);
    let value = |name: &str| samples.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    for (name, n) in [
        (
            "apt_proxy_cache_misses_total{distro=\"debian-security\"}",
            1.0,
        ),
        (
            "apt_proxy_cache_hits_total{distro=\"debian-security\"}",
            1.0,
        ),
        ("apt_proxy_cache_misses_total{distro=\"debian\"}", 0.0),
        ("apt_proxy_cache_hits_total{distro=\"debian\"}", 0.0),
    ] {
        assert_eq!(value(name), Some(n), "{name}:\n{text}");
    }
}
