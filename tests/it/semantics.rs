//! HTTP semantics of answers and freshness rules.

use std::time::Duration;

use apt_proxy::config::Tuning;

use crate::{Behavior, Origin, Proxy, cache_dir, data, x_cache};

#[tokio::test]
async fn head_range_and_conditionals_on_hits() {
    let origin = Origin::start().await;
    let body = data(100_000, 5);
    let path = "/debian/pool/main/s/sem.deb";
    origin.put(path, body.clone());
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    let client = proxy.client();
    let url = proxy.url(&path[1..]);

    let full = client.get(&url).send().await.unwrap();
    let etag = full.headers()["etag"].to_str().unwrap().to_string();
    let last_modified = full.headers()["last-modified"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(full.headers()["content-type"], "application/x-test");
    assert_eq!(full.headers()["accept-ranges"], "bytes");
    assert!(full.headers().contains_key("x-version"));
    assert!(full.bytes().await.unwrap() == body);

    let head = client.head(&url).send().await.unwrap();
    assert_eq!(
        (head.status().as_u16(), x_cache(&head)),
        (200, "HIT".into())
    );
    assert_eq!(head.headers()["content-length"], "100000");
    assert_eq!(head.headers()["etag"], etag.as_str());
    assert!(head.bytes().await.unwrap().is_empty());

    let part = client
        .get(&url)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()["content-range"], "bytes 10-19/100000");
    assert_eq!(part.bytes().await.unwrap(), &body[10..20]);

    let tail = client
        .get(&url)
        .header("range", "bytes=-5")
        .send()
        .await
        .unwrap();
    assert_eq!(tail.bytes().await.unwrap(), &body[99_995..]);

    let bad = client
        .get(&url)
        .header("range", "bytes=100000-")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 416);
    assert_eq!(bad.headers()["content-range"], "bytes */100000");

    let stale_range = client
        .get(&url)
        .header("range", "bytes=0-9")
        .header("if-range", "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale_range.status(), 200);
    assert_eq!(stale_range.bytes().await.unwrap().len(), 100_000);
    let good_range = client
        .get(&url)
        .header("range", "bytes=0-9")
        .header("if-range", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(good_range.status(), 206);

    let inm = client
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(inm.status(), 304);
    let ims = client
        .get(&url)
        .header("if-modified-since", &last_modified)
        .send()
        .await
        .unwrap();
    assert_eq!(ims.status(), 304);
    let older = client
        .get(&url)
        .header("if-modified-since", "Thu, 01 Jan 1998 00:00:00 GMT")
        .send()
        .await
        .unwrap();
    assert_eq!(older.status(), 200);
    assert_eq!(origin.hits(path), 1);
}

#[tokio::test]
async fn head_on_a_miss_is_asked_of_the_mirror_and_stores_nothing() {
    let origin = Origin::start().await;
    origin.put("/debian/pool/main/h/head.deb", "0123456789");
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    let client = proxy.client();
    let head = client
        .head(proxy.url("debian/pool/main/h/head.deb"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (head.status().as_u16(), x_cache(&head)),
        (200, "MISS".into())
    );
    assert_eq!(head.headers()["content-length"], "10");
    assert_eq!(origin.seen()[0].method, "HEAD");
    let get = proxy.get("debian/pool/main/h/head.deb").await;
    assert_eq!(x_cache(&get), "MISS");
    assert_eq!(get.text().await.unwrap(), "0123456789");
    assert_eq!(origin.hits("/debian/pool/main/h/head.deb"), 2);
    // Once stored, a HEAD is a hit.
    let head = client
        .head(proxy.url("debian/pool/main/h/head.deb"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (head.status().as_u16(), x_cache(&head)),
        (200, "HIT".into())
    );
    assert_eq!(origin.hits("/debian/pool/main/h/head.deb"), 2);
}

#[tokio::test]
async fn indexes_are_fresh_briefly_whatever_the_client_asks() {
    let origin = Origin::start().await;
    let path = "/debian/dists/stable/main/binary-amd64/Packages.gz";
    origin.put(path, "index");
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    let client = proxy.client();
    for expected in ["MISS", "HIT", "HIT"] {
        let r = client
            .get(proxy.url(&path[1..]))
            .header("cache-control", "max-age=0")
            .header("pragma", "no-cache")
            .send()
            .await
            .unwrap();
        assert_eq!(x_cache(&r), expected);
        assert_eq!(r.text().await.unwrap(), "index");
    }
    assert_eq!(origin.hits(path), 1);
}

#[tokio::test]
async fn stale_indexes_are_revalidated_and_packages_never_are() {
    let origin = Origin::start().await;
    let index = "/debian/dists/stable/InRelease";
    let package = "/debian/pool/main/p/pkg.deb";
    origin.put(index, "release");
    origin.put(package, "package");
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |c| {
        c.tuning = Tuning {
            index_fresh: Duration::ZERO,
            ..Tuning::default()
        }
    })
    .await;
    for _ in 0..3 {
        assert_eq!(proxy.text(&index[1..]).await, "release");
        assert_eq!(proxy.text(&package[1..]).await, "package");
    }
    let seen = origin.seen();
    let index_requests: Vec<_> = seen.iter().filter(|s| s.path == index).collect();
    assert_eq!(index_requests.len(), 3);
    assert_eq!(index_requests[0].status, 200);
    for revalidation in &index_requests[1..] {
        assert_eq!(revalidation.status, 304);
        assert!(revalidation.headers.contains_key("if-none-match"));
    }
    assert_eq!(origin.hits(package), 1);

    // A new version upstream replaces the cached copy on the next revalidation.
    origin.put(index, "release v2");
    let r = proxy.get(&index[1..]).await;
    assert_eq!(x_cache(&r), "MISS");
    assert_eq!(r.text().await.unwrap(), "release v2");
}

#[tokio::test]
async fn not_found_is_remembered_briefly() {
    let origin = Origin::start().await;
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    for _ in 0..2 {
        let r = proxy.get("debian/dists/stable/Release").await;
        assert_eq!(r.status(), 404);
        assert_eq!(r.text().await.unwrap(), "not found");
    }
    assert_eq!(origin.hits("/debian/dists/stable/Release"), 1);

    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |c| {
        c.tuning = Tuning {
            negative_ttl: Duration::ZERO,
            ..Tuning::default()
        }
    })
    .await;
    for _ in 0..2 {
        let r = proxy.get("debian/dists/stable/Release").await;
        assert_eq!(r.status(), 404);
        assert_eq!(r.text().await.unwrap(), "not found");
    }

    assert_eq!(origin.hits("/debian/dists/stable/Release"), 3);
}

#[tokio::test]
async fn redirects_are_followed() {
    let origin = Origin::start().await;
    origin.put("/debian/pool/real.deb", "moved here");
    origin.set(
        "/debian/pool/moved.deb",
        Behavior::Redirect("/debian/pool/real.deb".into()),
    );
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    let r = proxy.get("debian/pool/moved.deb").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "moved here");
}
