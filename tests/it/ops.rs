//! The operations plane: probes, version, headers, status page, API rate limit and the
//! client address behind trusted proxies.

use std::time::Duration;

use crate::{Behavior, Origin, Proxy, cache_dir, raw_exchange};

async fn json(r: reqwest::Response) -> serde_json::Value {
    serde_json::from_str(&r.text().await.unwrap()).unwrap()
}

#[tokio::test]
async fn probes_version_and_headers() {
    let origin = Origin::start().await;
    origin.put("/debian/pool/a.deb", "a");
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;

    for method in ["GET", "POST", "DELETE"] {
        let raw = raw_exchange(proxy.addr, format!("{method} /_/ping/anything HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(), Duration::from_secs(5)).await;
        assert!(
            raw.starts_with("HTTP/1.1 200") && raw.ends_with("pong"),
            "{raw}"
        );
    }
    assert_eq!(proxy.text("livez").await, "ok");
    let ready = proxy.get("readyz").await;
    assert_eq!(ready.status(), 200);
    assert_eq!(json(ready).await["index_loaded"], true);
    let version = json(proxy.get("version").await).await;
    assert_eq!(version["version"], env!("CARGO_PKG_VERSION"));
    // The build date: RFC 3339 UTC, from the commit (or SOURCE_DATE_EPOCH).
    let date = version["build_date"].as_str().unwrap().to_string();
    assert!(
        date.len() == 20 && date.ends_with('Z') && date.as_bytes()[10] == b'T',
        "{date}"
    );

    let health = proxy.get("healthz").await;
    assert_eq!(health.status(), 200);
    let health = json(health).await;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["checks"]["storage"]["status"], "ok");
    assert_eq!(health["checks"]["upstream"]["debian"]["status"], "unknown");
    // A mirror failure shows as degraded, and the probe stays 200.
    origin.set("/debian/pool/b.deb", Behavior::Status(503));
    proxy.get("debian/pool/b.deb").await;
    let health = json(proxy.get("healthz").await).await;
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["checks"]["upstream"]["debian"]["status"], "error");

    for path in [
        "debian/pool/a.deb",
        "healthz",
        "",
        "api/cache/stats",
        "nosuch/x",
    ] {
        let r = proxy.get(path).await;
        let h = r.headers();
        assert_eq!(h["x-version"], env!("CARGO_PKG_VERSION"), "{path}");
        assert!(h.contains_key("x-build-commit"), "{path}");
        assert_eq!(h["x-build-date"], date.as_str(), "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        assert!(
            !h.contains_key("strict-transport-security"),
            "no HSTS without TLS"
        );
    }
}

#[tokio::test]
async fn status_page_shows_the_figures_and_escapes_paths() {
    let origin = Origin::start().await;
    origin.put("/debian/pool/a.deb", "aaaa");
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    for _ in 0..2 {
        proxy.get("debian/pool/a.deb").await.bytes().await.unwrap();
    }
    // A hostile-looking name is a legitimate path: the mirror's 404 is remembered (an entry)
    // and counted as a miss; its body is read so that the entry is stored before the page.
    let r = proxy.get("debian/pool/%3Cscript%3Ex.deb").await;
    assert_eq!(r.status(), 404);
    r.bytes().await.unwrap();
    let r = proxy.get("").await;
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    let page = r.text().await.unwrap();
    for needle in [
        "id=\"items\">2<",
        "id=\"hits\">1<",
        "id=\"misses\">2<",
        "id=\"hit-rate\">33.3%<",
        "%3Cscript%3Ex.deb",
        "<code>/debian-security/</code>",
        "http-equiv=\"refresh\"",
        "name=\"viewport\"",
    ] {
        assert!(
            page.contains(needle),
            "{needle} missing: {}",
            &page[page.find("Hit rate").unwrap_or(0)..][..300]
        );
    }
    assert!(!page.contains("<script"), "client paths are escaped");
    assert!(
        !page.contains("src=\"http") && !page.contains("href=\"http"),
        "no external asset"
    );
}

#[tokio::test]
async fn api_rate_limit_per_client_and_forwarded_for() {
    let origin = Origin::start().await;
    origin.put("/debian/pool/a.deb", "a");
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |c| {
        c.security.api_rate_limit_per_minute = 3;
        c.security.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let client = proxy.client();
    let stats = |xff: &'static str| {
        client
            .get(proxy.url("api/cache/stats"))
            .header("x-forwarded-for", xff)
            .send()
    };
    for _ in 0..3 {
        assert_eq!(stats("198.51.100.1").await.unwrap().status(), 200);
    }
    let limited = stats("198.51.100.1").await.unwrap();
    assert_eq!(limited.status(), 429);
    assert!(
        limited.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(json(limited).await["error"]["code"], "ErrRateLimited");
    // Another client behind the same trusted proxy has its own budget; a forged leftmost hop
    // does not buy a new one.
    assert_eq!(stats("198.51.100.2").await.unwrap().status(), 200);
    assert_eq!(stats("10.9.9.9, 198.51.100.1").await.unwrap().status(), 429);
    // Package traffic and probes are never limited.
    for _ in 0..10 {
        assert_eq!(
            client
                .get(proxy.url("debian/pool/a.deb"))
                .header("x-forwarded-for", "198.51.100.1")
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        assert_eq!(proxy.get("healthz").await.status(), 200);
    }

    // Without trusted proxies, X-Forwarded-For is ignored: the peer is the client.
    let dir = cache_dir();
    let untrusting = Proxy::start(&origin, dir.path(), |c| {
        c.security.api_rate_limit_per_minute = 2
    })
    .await;
    let client = untrusting.client();
    for (xff, want) in [
        ("198.51.100.7", 200),
        ("198.51.100.8", 200),
        ("198.51.100.9", 429),
    ] {
        let r = client
            .get(untrusting.url("api/cache/stats"))
            .header("x-forwarded-for", xff)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want, "{xff}");
    }
}

/// A browser whose proxy is apt-proxy asks for the proxy's own pages in absolute form: they
/// are served whatever name it uses, as long as the port is the proxy's and no mirror is named;
/// another port, or a CONNECT, still gets the forward proxy's refusal.
#[tokio::test]
async fn the_status_page_answers_a_browser_that_uses_the_proxy_as_its_proxy() {
    let origin = Origin::start().await;
    origin.put("/debian/pool/a.deb", "a");
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    let port = proxy.addr.port();
    let browser = proxy.forward_client();
    for host in [
        proxy.addr.to_string(),
        format!("apt-cache.invalid:{port}"),
        format!("localhost:{port}"),
    ] {
        let r = browser.get(format!("http://{host}/")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{host}");
        assert!(
            r.text().await.unwrap().contains("id=\"hit-rate\""),
            "{host}"
        );
        let r = browser
            .get(format!("http://{host}/metrics"))
            .send()
            .await
            .unwrap();
        assert!(
            r.text()
                .await
                .unwrap()
                .contains("apt_proxy_cache_hits_total")
        );
    }
    // A mirror named through the proxy is still package traffic.
    let r = browser
        .get(format!("{}pool/a.deb", origin.base("debian")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "a");
    // Another port is another server: refused, not answered with the proxy's page.
    let other = if port == 3142 { 3143 } else { 3142 };
    let r = browser
        .get(format!("http://apt-cache.invalid:{other}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let answer = raw_exchange(
        proxy.addr,
        format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
}

/// `--host localhost` listens on both loopback addresses, on one port.
#[tokio::test]
async fn localhost_listens_on_both_loopback_families() {
    let origin = Origin::start().await;
    let dir = cache_dir();
    let mut config = apt_proxy::config::Config::new(dir.path());
    config.host = "localhost".into();
    config.port = 0;
    config
        .mirrors
        .insert("debian".into(), origin.base("debian"));
    config.mode = apt_proxy::distro::Mode::Debian;
    let server = apt_proxy::server::Server::bind(&config).await.unwrap();
    let addrs = server.local_addrs();
    let port = addrs[0].port();
    assert_eq!(
        addrs,
        [
            format!("127.0.0.1:{port}").parse().unwrap(),
            format!("[::1]:{port}")
                .parse::<std::net::SocketAddr>()
                .unwrap()
        ]
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    for base in [
        format!("http://127.0.0.1:{port}"),
        format!("http://[::1]:{port}"),
    ] {
        for _ in 0..3 {
            let r = client.get(format!("{base}/livez")).send().await.unwrap();
            assert_eq!(r.text().await.unwrap(), "ok", "{base}");
        }
    }
    drop(client);
    let _ = tx.send(());
    task.await.unwrap();
}

/// The status page tells a newcomer how to point each client at the proxy, with the address
/// the browser used, and charts the traffic of the last hours in inline SVG.
#[tokio::test]
async fn status_page_shows_client_setup_and_traffic_charts() {
    let origin = Origin::start().await;
    origin.put("/debian/pool/a.deb", "aaaa");
    origin.put("/alpine/MIRRORS.txt", "bb");
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    for path in [
        "debian/pool/a.deb",
        "debian/pool/a.deb",
        "alpine/MIRRORS.txt",
    ] {
        proxy.get(path).await.bytes().await.unwrap();
    }
    let page = proxy
        .client()
        .get(proxy.url(""))
        .header("host", "apt-cache.example:3142")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "Acquire::http::Proxy \"http://apt-cache.example:3142/\";",
        "deb http://apt-cache.example:3142/debian bookworm main",
        "proxy=http://apt-cache.example:3142/",
        "http://apt-cache.example:3142/alpine/",
        "<svg id=\"chart-requests\"",
        "<svg id=\"chart-bytes\"",
        "<title>debian: 2</title>",
        "<title>alpine: 1</title>",
        "<title>from cache: 4 B</title>",
    ] {
        assert!(page.contains(needle), "{needle} missing");
    }
    assert!(!page.contains("<script") && !page.contains("src=\"http"));
    // A Host header that is not a plain name gives a placeholder, never markup.
    let port = proxy.addr.port();
    let answer = raw_exchange(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: x\"><script>alert(1)</script>\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "{}",
        &answer[..answer.len().min(200)]
    );
    assert!(!answer.contains("<script>alert"));
    assert!(answer.contains(&format!("http://apt-proxy-host:{port}/debian")));
}
