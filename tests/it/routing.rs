//! URL forms, refusals, and the separation of trees.

use std::time::Duration;

use crate::{Origin, Proxy, cache_dir, raw_exchange, x_cache};

#[tokio::test]
async fn every_url_form_shares_one_entry() {
    let origin = Origin::start().await;
    origin.put("/debian/dists/stable/InRelease", "release v1");
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;

    let r = proxy.get("debian/dists/stable/InRelease").await;
    assert_eq!((r.status().as_u16(), x_cache(&r)), (200, "MISS".into()));
    assert_eq!(r.text().await.unwrap(), "release v1");

    // Forward-proxy form, to the official host and to the configured mirror itself.
    let fwd = proxy.forward_client();
    for url in [
        "http://ftp.debian.org/debian/dists/stable/InRelease".to_string(),
        "http://deb.example.debian.org/debian/dists/stable/InRelease".to_string(),
        format!("{}dists/stable/InRelease", origin.base("debian")),
    ] {
        let r = fwd.get(&url).send().await.unwrap();
        assert_eq!(
            (r.status().as_u16(), x_cache(&r)),
            (200, "HIT".into()),
            "{url}"
        );
        assert_eq!(r.text().await.unwrap(), "release v1");
    }
    // apt-cacher-ng forms.
    for path in [
        "ftp.debian.org/debian/dists/stable/InRelease",
        "HTTPS///ftp.debian.org/debian/dists/stable/InRelease",
    ] {
        let r = proxy.get(path).await;
        assert_eq!(
            (r.status().as_u16(), x_cache(&r)),
            (200, "HIT".into()),
            "{path}"
        );
    }
    let raw = raw_exchange(
        proxy.addr,
        b"GET http://HTTPS///ftp.debian.org/debian/dists/stable/InRelease HTTP/1.1\r\nHost: HTTPS\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        raw.starts_with("HTTP/1.1 200")
            && raw.contains("x-cache: HIT")
            && raw.ends_with("release v1"),
        "{raw}"
    );
    assert_eq!(origin.hits("/debian/dists/stable/InRelease"), 1);
}

#[tokio::test]
async fn refusals_never_reach_upstream() {
    let origin = Origin::start().await;
    origin.put("/debian/secret", "x");
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    let port = origin.addr.port();
    let cases: Vec<(String, &str)> = vec![
        (
            "GET /debian/../debian/secret HTTP/1.1\r\nHost: x\r\n".into(),
            "403",
        ),
        (
            "GET /debian/pool/%2e%2e/secret HTTP/1.1\r\nHost: x\r\n".into(),
            "403",
        ),
        (
            "GET /debian/pool/%2E%2e/%2e%2e/etc/passwd HTTP/1.1\r\nHost: x\r\n".into(),
            "403",
        ),
        (
            "GET /debian/pool%2f..%2fsecret HTTP/1.1\r\nHost: x\r\n".into(),
            "403",
        ),
        ("GET /nosuchdistro/x HTTP/1.1\r\nHost: x\r\n".into(), "404"),
        (
            "GET http://example.com/debian/secret HTTP/1.1\r\nHost: example.com\r\n".into(),
            "403",
        ),
        (
            "GET http://127.0.0.1/debian/secret HTTP/1.1\r\nHost: 127.0.0.1\r\n".into(),
            "403",
        ),
        (
            format!(
                "GET http://127.0.0.1:{}/debian/secret HTTP/1.1\r\nHost: x\r\n",
                port + 1
            ),
            "403",
        ),
        (
            "GET http://192.168.1.1/debian/secret HTTP/1.1\r\nHost: x\r\n".into(),
            "403",
        ),
        (
            "GET /example.com/debian/secret HTTP/1.1\r\nHost: x\r\n".into(),
            "403",
        ),
        (
            "GET http://ppa.launchpadcontent.net/ubuntu/x HTTP/1.1\r\nHost: x\r\n".into(),
            "403",
        ),
        (
            "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n".into(),
            "403",
        ),
        (
            "POST /debian/secret HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n".into(),
            "405",
        ),
        ("GET /debian/pool/ HTTP/1.1\r\nHost: x\r\n".into(), "404"),
    ];
    for (request, want) in cases {
        let raw = raw_exchange(
            proxy.addr,
            format!("{request}Connection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(5),
        )
        .await;
        assert!(
            raw.starts_with(&format!("HTTP/1.1 {want}")),
            "{request:?} -> {raw}"
        );
        // One short line saying why.
        let body = raw.split("\r\n\r\n").nth(1).unwrap_or("");
        assert!(
            !body.trim().is_empty() && body.trim().lines().count() == 1,
            "{request:?} -> {raw}"
        );
    }
    assert_eq!(origin.total(), 0);
}

#[tokio::test]
async fn security_tree_is_never_answered_from_the_main_tree() {
    let origin = Origin::start().await;
    origin.put("/debian/dists/bookworm-security/InRelease", "main archive");
    origin.put(
        "/debian-security/dists/bookworm-security/InRelease",
        "security archive",
    );
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    let get = |path: &'static str| {
        let client = proxy.client();
        let url = proxy.url(path);
        async move { client.get(url).send().await.unwrap().text().await.unwrap() }
    };
    assert_eq!(
        get("debian/dists/bookworm-security/InRelease").await,
        "main archive"
    );
    assert_eq!(
        get("debian-security/dists/bookworm-security/InRelease").await,
        "security archive"
    );
    let r = proxy
        .forward_client()
        .get("http://security.debian.org/debian-security/dists/bookworm-security/InRelease")
        .send()
        .await
        .unwrap();
    assert_eq!(x_cache(&r), "HIT");
    assert_eq!(r.text().await.unwrap(), "security archive");
}

#[tokio::test]
async fn path_encoding_goes_upstream_as_received() {
    let origin = Origin::start().await;
    let path = "/debian/pool/main/e/erlang/erlang-doc_1%253a25.2.3+dfsg-1_all.deb";
    origin.put(path, "erlang");
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    let raw = raw_exchange(
        proxy.addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(
        raw.starts_with("HTTP/1.1 200") && raw.ends_with("erlang"),
        "{raw}"
    );
    assert_eq!(
        origin
            .seen()
            .iter()
            .map(|s| s.path.clone())
            .collect::<Vec<_>>(),
        [path]
    );
}

#[tokio::test]
async fn mode_limits_what_is_served() {
    let origin = Origin::start().await;
    origin.put("/ubuntu/dists/noble/InRelease", "ubuntu");
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |c| {
        c.mode = apt_proxy::distro::Mode::Debian
    })
    .await;
    let r = proxy.get("ubuntu/dists/noble/InRelease").await;
    assert_eq!(r.status(), 404);
    let r = proxy
        .forward_client()
        .get("http://archive.ubuntu.com/ubuntu/dists/noble/InRelease")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(origin.total(), 0);
}

#[tokio::test]
async fn keep_alive_and_pipelining_answer_in_order() {
    let origin = Origin::start().await;
    origin.put("/debian/a", "first");
    origin.put("/debian/b", "second");
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    let raw = raw_exchange(
        proxy.addr,
        b"GET /debian/a HTTP/1.1\r\nHost: x\r\n\r\nGET /debian/b HTTP/1.1\r\nHost: x\r\n\r\nGET /debian/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let a1 = raw.find("first").expect(&raw);
    let b = raw.find("second").expect(&raw);
    let a2 = raw.rfind("first").unwrap();
    assert!(a1 < b && b < a2, "{raw}");
    assert_eq!(raw.matches("HTTP/1.1 200").count(), 3, "{raw}");
}

#[tokio::test]
async fn mirror_change_keeps_the_cache() {
    let first = Origin::start().await;
    first.put("/debian/pool/main/h/hello.deb", "hello");
    let dir = cache_dir();
    let proxy = Proxy::start(&first, dir.path(), |_| {}).await;
    assert_eq!(proxy.text("debian/pool/main/h/hello.deb").await, "hello");
    proxy.stop().await;

    let second = Origin::start().await;
    let proxy = Proxy::start(&second, dir.path(), |_| {}).await;
    let r = proxy.get("debian/pool/main/h/hello.deb").await;
    assert_eq!(x_cache(&r), "HIT");
    assert_eq!(r.text().await.unwrap(), "hello");
    assert_eq!(second.total(), 0);
}
