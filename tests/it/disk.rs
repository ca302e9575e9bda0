//! A real full or read-only cache disk: the binary runs in a private mount namespace on a
//! small tmpfs or a read-only bind mount (made by the test, as root; a test that cannot make
//! them fails). Nothing it cannot store stops a download, nothing half-written is committed,
//! and /healthz says what is wrong while /readyz stays ready.

use std::time::Duration;

use futures_util::StreamExt;

use crate::crash::Binary;
use crate::{Behavior, Origin, Proxy, cache_dir, data};

fn client() -> reqwest::Client {
    crate::client_builder().build().unwrap()
}

/// GET through the binary: X-Cache and the whole body (`Err` when the transfer was cut).
async fn fetch(proxy: &Binary, path: &str) -> (String, Result<Vec<u8>, String>) {
    let r = client().get(proxy.url(path)).send().await.unwrap();
    let cache = crate::x_cache(&r);
    let mut body = Vec::new();
    let mut stream = r.bytes_stream();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => body.extend_from_slice(&c),
            Err(e) => return (cache, Err(e.to_string())),
        }
    }
    (cache, Ok(body))
}

async fn json(proxy: &Binary, path: &str) -> (u16, serde_json::Value) {
    let r = client().get(proxy.url(path)).send().await.unwrap();
    let status = r.status().as_u16();
    (
        status,
        serde_json::from_str(&r.text().await.unwrap()).unwrap(),
    )
}

/// Asserts that /healthz says `degraded` (still 200) with a storage error containing `why`.
async fn assert_storage_degraded(proxy: &Binary, why: &str) {
    let (code, health) = json(proxy, "healthz").await;
    assert_eq!(
        (code, &health["status"]),
        (200, &"degraded".into()),
        "{health}"
    );
    assert!(
        health["checks"]["storage"]["error"]
            .to_string()
            .contains(why),
        "{health}"
    );
}

/// Waits until the binary logged the end of its start-up scrub.
async fn scrub_done(proxy: &Binary) {
    let started = std::time::Instant::now();
    while !proxy
        .lines
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("cache scrub done"))
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no scrub after the start-up scan"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn on_tmpfs(size: &str, cache: &std::path::Path, origin: &Origin) -> Binary {
    Binary::start_in_namespace(
        &format!("mount -t tmpfs -o size={size} tmpfs '{}'", cache.display()),
        cache,
        &["--mode", "debian", "--debian", &origin.base("debian")],
        &[],
    )
}

#[tokio::test]
async fn a_full_disk_streams_what_it_cannot_store_and_evicts_to_make_room() {
    let origin = Origin::start().await;
    let big = data(12 << 20, 1);
    origin.put("/debian/pool/big.deb", big.clone());
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        origin.put(
            &format!("/debian/pool/{name}.deb"),
            data(3 << 20, 10 + i as u64),
        );
    }
    let dir = cache_dir();
    let proxy = on_tmpfs("8m", dir.path(), &origin);
    // The scrub that follows the start-up scan reads each body back; one it is reading when
    // it is evicted frees its blocks a chunk later, and a fill that writes in that moment
    // finds the disk still full. Started on an empty cache, it is over before the first file.
    scrub_done(&proxy).await;

    // Larger than the whole file system: streamed to every client, not stored.
    for _ in 0..2 {
        let (cache, body) = fetch(&proxy, "debian/pool/big.deb").await;
        assert_eq!(cache, "SKIP");
        assert!(body.unwrap() == big, "the client got the whole file");
    }
    assert_eq!(origin.hits("/debian/pool/big.deb"), 2);
    let (code, health) = json(&proxy, "healthz").await;
    assert_eq!(code, 200);
    assert_eq!(health["status"], "degraded", "{health}");
    let problem = health["checks"]["storage"]["error"].to_string();
    assert!(problem.contains("nearly full"), "{health}");
    let (code, ready) = json(&proxy, "readyz").await;
    assert_eq!(code, 200, "{ready}");

    // Two 3 MiB files fit; the third makes room by evicting the least recently used.
    for name in ["a", "b"] {
        let path = format!("debian/pool/{name}.deb");
        assert_eq!(fetch(&proxy, &path).await.0, "MISS");
        assert_eq!(fetch(&proxy, &path).await.0, "HIT");
    }
    let (cache, body) = fetch(&proxy, "debian/pool/c.deb").await;
    assert_eq!(cache, "MISS");
    assert!(body.unwrap() == data(3 << 20, 12));
    // The commit (and the eviction before it) may end just after the client's last byte; a
    // request in that window joins the fill and is a MISS, served from it without asking the
    // origin again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (mut cache, mut body) = fetch(&proxy, "debian/pool/c.deb").await;
    while cache == "MISS" && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        (cache, body) = fetch(&proxy, "debian/pool/c.deb").await;
    }
    assert_eq!(origin.hits("/debian/pool/c.deb"), 1, "c was fetched once");
    assert_eq!(cache, "HIT", "c was stored after making room");
    assert!(body.unwrap() == data(3 << 20, 12));
    let (_, stats) = json(&proxy, "api/cache/stats").await;
    assert_eq!(stats["item_count"], 2, "{stats}");
    // The commit cleared the storage problem.
    let (_, health) = json(&proxy, "healthz").await;
    assert_eq!(health["checks"]["storage"]["status"], "ok", "{health}");
    // On disk: exactly the two entries, nothing left in tmp/.
    let listing = proxy.inside(&format!("find '{}' -type f | sort", dir.path().display()));
    assert_eq!(listing.matches(".meta").count(), 2, "{listing}");
    assert_eq!(listing.matches(".body").count(), 2, "{listing}");
    let tmp = format!("{}/tmp/", dir.path().display());
    assert_eq!(listing.matches(&tmp).count(), 0, "{listing}");
}

#[tokio::test]
async fn a_disk_that_fills_mid_download_lets_every_reader_finish() {
    let origin = Origin::start().await;
    let body = data(12 << 20, 2);
    let path = "/debian/pool/main/u/unsized.deb";
    origin.put(path, body.clone());
    // No Content-Length: admitted on the free space there is, then the disk fills.
    origin.set(
        path,
        Behavior::Unsized {
            chunk: 256 << 10,
            delay: Duration::from_millis(5),
        },
    );
    let dir = cache_dir();
    let proxy = on_tmpfs("8m", dir.path(), &origin);
    let first = fetch(&proxy, &path[1..]);
    let second = async {
        tokio::time::sleep(Duration::from_millis(40)).await;
        fetch(&proxy, &path[1..]).await
    };
    let ((_, a), (_, b)) = tokio::join!(first, second);
    assert!(a.unwrap() == body, "the first reader got the whole file");
    assert!(b.unwrap() == body, "the second reader got the whole file");
    // The readers fetched the rest themselves, by range.
    let ranged = origin
        .seen()
        .iter()
        .filter(|s| s.path == path && s.headers.contains_key("range"))
        .count();
    assert!(ranged >= 1, "{:?}", origin.seen());
    let (_, stats) = json(&proxy, "api/cache/stats").await;
    assert_eq!(stats["item_count"], 0, "{stats}");
    assert_storage_degraded(&proxy, "cannot write").await;
    let listing = proxy.inside(&format!("find '{}' -type f", dir.path().display()));
    assert_eq!(listing.matches(".meta").count(), 0, "{listing}");
    assert_eq!(listing.matches(".part").count(), 0, "{listing}");
}

#[tokio::test]
async fn a_read_only_cache_serves_what_it_has_and_streams_the_rest() {
    let origin = Origin::start().await;
    origin.put("/debian/pool/old.deb", data(500_000, 3));
    origin.put("/debian/pool/new.deb", data(700_000, 4));
    let dir = cache_dir();
    // Stored by a proxy with a writable cache.
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    let stored = proxy
        .get("debian/pool/old.deb")
        .await
        .bytes()
        .await
        .unwrap();
    assert!(stored == data(500_000, 3));
    proxy.stop().await;

    let d = dir.path().display();
    let proxy = Binary::start_in_namespace(
        &format!("mount --bind '{d}' '{d}'; mount -o remount,bind,ro '{d}'"),
        dir.path(),
        &["--mode", "debian", "--debian", &origin.base("debian")],
        &[],
    );
    assert!(
        proxy
            .inside(&format!("touch '{d}/x' 2>&1 || true"))
            .contains("Read-only"),
        "the cache is mounted read-only"
    );
    let (cache, body) = fetch(&proxy, "debian/pool/old.deb").await;
    assert_eq!(cache, "HIT");
    assert!(body.unwrap() == data(500_000, 3));
    for _ in 0..2 {
        let (cache, body) = fetch(&proxy, "debian/pool/new.deb").await;
        assert_eq!(cache, "SKIP");
        assert!(body.unwrap() == data(700_000, 4));
    }
    assert_eq!(origin.hits("/debian/pool/new.deb"), 2);
    assert_storage_degraded(&proxy, "not writable").await;
    assert_eq!(json(&proxy, "readyz").await.0, 200);
}

#[tokio::test]
async fn an_index_held_for_verification_is_still_served_when_the_disk_fills() {
    use sha2::{Digest, Sha256};
    let origin = Origin::start().await;
    // A Packages file the Release names: held until verified, and larger than the disk.
    let packages = data(12 << 20, 6);
    let release = format!(
        "Origin: Test\nSuite: stable\nSHA256:\n {} {} main/binary-amd64/Packages\n",
        hex::encode(Sha256::digest(&packages)),
        packages.len()
    );
    origin.put("/debian/dists/stable/Release", release);
    let path = "/debian/dists/stable/main/binary-amd64/Packages";
    origin.put(path, packages.clone());
    origin.set(
        path,
        Behavior::Unsized {
            chunk: 256 << 10,
            delay: Duration::ZERO,
        },
    );
    let dir = cache_dir();
    let proxy = on_tmpfs("8m", dir.path(), &origin);
    let (_, release) = fetch(&proxy, "debian/dists/stable/Release").await;
    assert!(release.is_ok());
    let (_, body) = fetch(&proxy, &path[1..]).await;
    assert!(body.unwrap() == packages, "the client got the whole index");
    assert_storage_degraded(&proxy, "cannot write").await;
}
