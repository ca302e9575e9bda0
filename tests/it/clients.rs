//! Careless or hostile clients of the proxy itself: cross-site requests to the API, key
//! guessing, addresses outside the allow-list, and IPv4 clients of a dual-stack listener.

use std::time::Duration;

use crate::crash::Binary;
use crate::{Origin, Proxy, cache_dir};

async fn stats(proxy: &Proxy) -> serde_json::Value {
    serde_json::from_str(&proxy.text("api/cache/stats").await).unwrap()
}

#[tokio::test]
async fn the_api_refuses_what_only_a_cross_site_browser_sends() {
    let origin = Origin::start().await;
    origin.put("/debian/pool/a.deb", "a");
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    assert_eq!(proxy.text("debian/pool/a.deb").await, "a");
    assert_eq!(stats(&proxy).await["item_count"], 1);
    let purge = proxy.url("api/cache/purge");
    let client = proxy.client();
    let refused: [(&str, &str); 5] = [
        ("origin", "http://evil.example"),
        ("origin", "null"),
        ("sec-fetch-site", "cross-site"),
        ("content-type", "application/x-www-form-urlencoded"),
        ("content-type", "text/plain;charset=UTF-8"),
    ];
    for (name, value) in refused {
        let r = client
            .post(&purge)
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{name}: {value}");
        assert!(r.text().await.unwrap().contains("ErrCrossSite"));
        assert_eq!(
            stats(&proxy).await["item_count"],
            1,
            "{name}: nothing purged"
        );
    }
    // The same origin (the status page's own), and the spec's bare curl -X POST, work.
    let r = client
        .post(&purge)
        .header("origin", format!("http://{}", proxy.addr))
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let raw = crate::raw_exchange(
        proxy.addr,
        b"POST /api/cache/purge HTTP/1.1\r\nHost: localhost:3142\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
}

#[tokio::test]
async fn refused_keys_do_not_use_up_the_rate_limit_of_the_valid_key() {
    let origin = Origin::start().await;
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |c| {
        c.security.api_key = Some("right".into());
        c.security.api_auth = true;
        c.security.api_rate_limit_per_minute = 3;
    })
    .await;
    let client = proxy.client();
    let url = proxy.url("api/cache/stats");
    let mut codes = Vec::new();
    for _ in 0..5 {
        let r = client
            .get(&url)
            .header("x-api-key", "guess")
            .send()
            .await
            .unwrap();
        codes.push(r.status().as_u16());
    }
    assert_eq!(codes, [401, 401, 401, 429, 429]);
    for _ in 0..3 {
        let r = client
            .get(&url)
            .header("x-api-key", "right")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "the key holder is not locked out");
    }
    let r = client
        .get(&url)
        .header("x-api-key", "right")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429, "the valid key has its own limit");
}

#[tokio::test]
async fn only_allowed_clients_may_use_the_proxy() {
    let origin = Origin::start().await;
    origin.put("/debian/pool/a.deb", "a");
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |c| {
        c.security.allowed_clients = vec!["10.0.0.0/8".parse().unwrap()];
    })
    .await;
    for path in ["debian/pool/a.deb", "api/cache/stats"] {
        let r = proxy.get(path).await;
        assert_eq!(r.status(), 403, "{path}");
        assert!(r.text().await.unwrap().contains("--allowed-clients"));
    }
    assert_eq!(origin.total(), 0);
    proxy.stop().await;
    let proxy = Proxy::start(&origin, dir.path(), |c| {
        c.security.allowed_clients = vec![
            "10.0.0.0/8".parse().unwrap(),
            "127.0.0.1/32".parse().unwrap(),
        ];
    })
    .await;
    assert_eq!(proxy.text("debian/pool/a.deb").await, "a");
}

#[tokio::test]
async fn ipv4_clients_of_a_dual_stack_listener_match_ipv4_rules() {
    let origin = Origin::start().await;
    origin.put("/debian/pool/a.deb", "a");
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |c| {
        c.host = "::".into();
        c.security.allowed_clients = vec!["127.0.0.0/8".parse().unwrap()];
        c.security.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
        c.security.api_rate_limit_per_minute = 1;
    })
    .await;
    // Over IPv4: the peer is ::ffff:127.0.0.1 on the socket.
    let base = format!("http://127.0.0.1:{}", proxy.addr.port());
    let client = crate::client_builder().build().unwrap();
    let r = client
        .get(format!("{base}/debian/pool/a.deb"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "allowed as 127.0.0.1");
    // Behind a trusted proxy, the limit is per forwarded client: each gets its own.
    let stats = format!("{base}/api/cache/stats");
    let get = |xff: &'static str| client.get(&stats).header("x-forwarded-for", xff).send();
    assert_eq!(get("203.0.113.1").await.unwrap().status(), 200);
    assert_eq!(get("203.0.113.2").await.unwrap().status(), 200);
    assert_eq!(get("203.0.113.1").await.unwrap().status(), 429);
}

#[test]
fn an_open_api_beyond_loopback_is_warned_about() {
    let dir = cache_dir();
    let proxy = Binary::start_with(
        dir.path(),
        &[
            "--host",
            "0.0.0.0",
            "--mode",
            "debian",
            "--debian",
            "http://127.0.0.1:9/debian/",
        ],
        &[],
    );
    let lines = proxy.lines.lock().unwrap().join("\n");
    assert!(
        lines.contains("has no key and listens beyond loopback"),
        "{lines}"
    );
    drop(proxy);
    let proxy = Binary::start_with(
        dir.path(),
        &["--mode", "debian", "--debian", "http://127.0.0.1:9/debian/"],
        &[],
    );
    let lines = proxy.lines.lock().unwrap().join("\n");
    assert!(!lines.contains("listens beyond loopback"), "{lines}");
}

#[tokio::test]
async fn heads_ranges_and_query_strings_cannot_make_the_proxy_download_whole_files() {
    let origin = Origin::start().await;
    let big = crate::data(20 << 20, 7);
    origin.put("/debian/pool/big.deb", big.clone());
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    let client = proxy.client();
    let url = proxy.url("debian/pool/big.deb");
    for _ in 0..5 {
        let r = client.head(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["content-length"],
            (20u64 << 20).to_string().as_str()
        );
        assert_eq!(crate::x_cache(&r), "MISS");
    }
    let r = client
        .get(&url)
        .header("range", "bytes=0-0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 0-0/{}", 20 << 20).as_str()
    );
    assert_eq!(r.bytes().await.unwrap()[..], big[..1]);
    let seen = origin.seen();
    assert_eq!(seen.iter().filter(|s| s.method == "HEAD").count(), 5);
    let get: Vec<_> = seen.iter().filter(|s| s.method == "GET").collect();
    assert_eq!(get.len(), 1);
    assert_eq!(get[0].headers["range"], "bytes=0-0");
    assert_eq!(stats(&proxy).await["item_count"], 0, "nothing stored");

    // A whole GET fills; then HEAD and ranges are hits.
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(crate::x_cache(&r), "MISS");
    assert!(r.bytes().await.unwrap() == big);
    let r = client.head(&url).send().await.unwrap();
    assert_eq!(crate::x_cache(&r), "HIT");
    let r = client
        .get(&url)
        .header("range", "bytes=-10")
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), crate::x_cache(&r)),
        (206, "HIT".to_string())
    );
    assert_eq!(origin.total(), 7);

    // Query strings name the same file: one download, no query sent upstream.
    origin.put("/debian/pool/q.deb", "q");
    for (i, query) in ["?a=1", "?a=2", "?cachebust=3"].iter().enumerate() {
        let r = proxy.get(&format!("debian/pool/q.deb{query}")).await;
        assert_eq!(crate::x_cache(&r), if i == 0 { "MISS" } else { "HIT" });
        assert_eq!(r.text().await.unwrap(), "q");
    }
    assert_eq!(origin.hits("/debian/pool/q.deb"), 1);
}

/// A connection to `to` from the loopback address `from`.
async fn connect_from(from: &str, to: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

async fn exchange(mut stream: tokio::net::TcpStream, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = stream.write_all(request.as_bytes()).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn one_client_cannot_take_every_connection() {
    let origin = Origin::start().await;
    origin.put("/debian/pool/a.deb", "a");
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |c| {
        c.max_connections_per_client = Some(5);
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(connect_from("127.0.0.1", proxy.addr).await);
    }
    // The sixth from the same address is refused at once.
    let started = std::time::Instant::now();
    let refused = exchange(
        connect_from("127.0.0.1", proxy.addr).await,
        "GET /debian/pool/a.deb HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("too many open connections"), "{refused}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // Another client is served meanwhile.
    let other = exchange(
        connect_from("127.0.0.2", proxy.addr).await,
        "GET /debian/pool/a.deb HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(other.starts_with("HTTP/1.1 200"), "{other}");
    // A connection closed frees its place.
    held.pop();
    let again = async {
        loop {
            let answer = exchange(
                connect_from("127.0.0.1", proxy.addr).await,
                "GET /debian/pool/a.deb HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .await;
            if answer.starts_with("HTTP/1.1 200") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), again)
        .await
        .expect("a place frees up");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected() {
    use tokio::io::AsyncReadExt;
    let origin = Origin::start().await;
    let body = crate::data(16 << 20, 9);
    origin.put("/debian/pool/big.deb", body.clone());
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |c| {
        c.tuning.client_write_timeout = Duration::from_secs(1);
    })
    .await;
    assert!(
        proxy
            .get("debian/pool/big.deb")
            .await
            .bytes()
            .await
            .unwrap()
            == body
    );

    let mut stream = crate::slow_get(proxy.addr, "debian/pool/big.deb").await;
    // Not reading for a while: the proxy gives up on the connection.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the connection was closed, not left open");
    assert!(
        got.len() < 16 << 20,
        "the proxy stopped sending ({} bytes)",
        got.len()
    );
    // A client that reads gets everything, however long the transfer takes.
    assert!(
        proxy
            .get("debian/pool/big.deb")
            .await
            .bytes()
            .await
            .unwrap()
            == body
    );
}
