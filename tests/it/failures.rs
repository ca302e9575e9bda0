//! A mirror that lies, breaks or disappears: nothing wrong is ever cached, and a cached copy
//! is served when the mirror fails.

use std::time::{Duration, Instant};

use apt_proxy::config::Tuning;
use sha2::{Digest, Sha256};

use crate::{Behavior, Origin, Proxy, cache_dir, data, read_all, x_cache};

fn leftover_bodies(dir: &std::path::Path) -> usize {
    walk(&dir.join("data"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "body"))
        .count()
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn truncated_and_overlong_announcements_are_never_cached() {
    let origin = Origin::start().await;
    let body = data(600_000, 6);
    let cut = "/debian/pool/main/c/cut.deb";
    let long = "/debian/pool/main/l/long.deb";
    origin.put(cut, body.clone());
    origin.put(long, body.clone());
    origin.set(cut, Behavior::CutAfter(200_000));
    origin.set(long, Behavior::LongerThanSent(1000));
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;

    for path in [cut, long] {
        let r = proxy.get(&path[1..]).await;
        // The failure shows as a gateway error, or as a cut transfer once bytes have flowed;
        // never as a complete 200.
        let status = r.status().as_u16();
        let outcome = read_all(r).await;
        assert!(
            status == 502 || (status == 200 && outcome.is_err()),
            "{path}: {status}, {:?} bytes",
            outcome.map(|b| b.len())
        );
    }
    assert_eq!(leftover_bodies(dir.path()), 0);

    // Once the mirror behaves, the next request downloads again and gets the right bytes.
    origin.set(cut, Behavior::Normal);
    origin.set(long, Behavior::Normal);
    for path in [cut, long] {
        let r = proxy.get(&path[1..]).await;
        assert_eq!(x_cache(&r), "MISS", "{path}");
        assert!(read_all(r).await.unwrap() == body);
        assert_eq!(origin.hits(path), 2, "{path}");
    }
}

#[tokio::test]
async fn by_hash_content_must_match_its_name() {
    let origin = Origin::start().await;
    let good = b"Package: hello\n".to_vec();
    let hash = hex::encode(Sha256::digest(&good));
    let path = format!("/debian/dists/stable/main/binary-amd64/by-hash/SHA256/{hash}");
    origin.put(&path, b"Package: tampered\n".to_vec());
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    let r = proxy.get(&path[1..]).await;
    let status = r.status().as_u16();
    let outcome = read_all(r).await;
    assert!(
        status == 502 || (status == 200 && outcome.is_err()),
        "a body that does not match its by-hash name must not look complete"
    );

    assert_eq!(leftover_bodies(dir.path()), 0);

    origin.put(&path, good.clone());
    let r = proxy.get(&path[1..]).await;
    assert_eq!(read_all(r).await.unwrap(), good);
    let r = proxy.get(&path[1..]).await;
    assert_eq!(x_cache(&r), "HIT");
}

#[tokio::test]
async fn cached_copy_is_served_when_the_mirror_fails() {
    let origin = Origin::start().await;
    let index = "/debian/dists/stable/InRelease";
    origin.put(index, "release");
    let dir = cache_dir();
    let tuning = Tuning {
        index_fresh: Duration::ZERO,
        read_timeout: Duration::from_millis(500),
        ..Tuning::default()
    };
    let proxy = Proxy::start(&origin, dir.path(), |c| c.tuning = tuning.clone()).await;
    assert_eq!(proxy.text(&index[1..]).await, "release");

    for behavior in [Behavior::Status(500), Behavior::Status(503), Behavior::Hang] {
        origin.set(index, behavior.clone());
        let started = Instant::now();
        let r = proxy.get(&index[1..]).await;
        assert_eq!(
            (r.status().as_u16(), x_cache(&r)),
            (200, "HIT".into()),
            "{behavior:?}"
        );
        assert_eq!(r.text().await.unwrap(), "release");
        assert!(started.elapsed() < Duration::from_secs(10), "{behavior:?}");
    }
}

#[tokio::test]
async fn uncached_files_fail_fast_with_a_reason() {
    let origin = Origin::start().await;
    origin.set("/debian/pool/a.deb", Behavior::Status(500));
    origin.set("/debian/pool/b.deb", Behavior::Hang);
    origin.set("/debian/pool/c.deb", Behavior::Status(403));
    let dir = cache_dir();
    let tuning = Tuning {
        read_timeout: Duration::from_millis(500),
        ..Tuning::default()
    };
    let proxy = Proxy::start(&origin, dir.path(), |c| c.tuning = tuning.clone()).await;
    for (path, status) in [
        ("debian/pool/a.deb", 502),
        ("debian/pool/b.deb", 504),
        ("debian/pool/c.deb", 403),
    ] {
        let r = proxy.get(path).await;
        assert_eq!(r.status().as_u16(), status, "{path}");
        assert!(
            !r.text().await.unwrap().trim().is_empty(),
            "{path}: a reason is given"
        );
    }
    // Nothing was cached: the mirror is asked again.
    proxy.get("debian/pool/a.deb").await;
    assert_eq!(origin.hits("/debian/pool/a.deb"), 2);

    // A mirror that is gone entirely.
    let port = {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        closed.local_addr().unwrap().port()
    };
    let gone = Origin::start().await;
    let dir = cache_dir();
    let proxy = Proxy::start(&gone, dir.path(), |c| {
        c.mirrors
            .insert("debian".into(), format!("http://127.0.0.1:{port}/debian/"));
    })
    .await;
    let started = Instant::now();
    let r = proxy.get("debian/pool/a.deb").await;
    assert_eq!(r.status(), 502);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_hung_mirror_delays_a_stale_copy_by_seconds_not_minutes() {
    let origin = Origin::start().await;
    let index = "/debian/dists/stable/InRelease";
    origin.put(index, "release");
    let dir = cache_dir();
    let tuning = Tuning {
        index_fresh: Duration::ZERO,
        stale_wait: Duration::from_millis(300),
        ..Tuning::default()
    };
    let proxy = Proxy::start(&origin, dir.path(), |c| c.tuning = tuning.clone()).await;
    assert_eq!(proxy.text(&index[1..]).await, "release");

    origin.set(index, Behavior::Hang);
    for _ in 0..2 {
        let started = Instant::now();
        let r = proxy.get(&index[1..]).await;
        assert_eq!((r.status().as_u16(), x_cache(&r)), (200, "HIT".into()));
        assert_eq!(r.text().await.unwrap(), "release");
        // The default read timeout is a minute; the stale copy comes after the stale wait.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
    // The second request joined the revalidation still hanging; only one went upstream.
    assert_eq!(origin.hits(index), 2);
}

/// The body file of the only stored entry.
pub fn only_body(dir: &std::path::Path) -> std::path::PathBuf {
    let bodies: Vec<_> = walk(&dir.join("data"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "body"))
        .collect();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    bodies[0].clone()
}

async fn damaged_count(proxy: &Proxy) -> String {
    proxy
        .text("metrics")
        .await
        .lines()
        .find(|l| l.starts_with("apt_proxy_cache_damaged_entries_total"))
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn a_body_truncated_on_disk_is_never_served_but_fetched_again() {
    let origin = Origin::start().await;
    let body = data(300_000, 21);
    origin.put("/debian/pool/main/t/t.deb", body.clone());
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    assert!(
        read_all(proxy.get("debian/pool/main/t/t.deb").await)
            .await
            .unwrap()
            == body
    );
    let file = only_body(dir.path());
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(100_000)
        .unwrap();
    let r = proxy.get("debian/pool/main/t/t.deb").await;
    assert_eq!(r.status(), 200);
    assert_eq!(x_cache(&r), "MISS", "fetched again, not served short");
    assert!(read_all(r).await.unwrap() == body);
    assert_eq!(origin.hits("/debian/pool/main/t/t.deb"), 2);
    assert_eq!(
        damaged_count(&proxy).await,
        "apt_proxy_cache_damaged_entries_total 1"
    );
    assert_eq!(x_cache(&proxy.get("debian/pool/main/t/t.deb").await), "HIT");
}

#[tokio::test]
async fn the_scrub_drops_a_body_changed_on_disk() {
    let origin = Origin::start().await;
    let body = data(300_000, 22);
    origin.put("/debian/pool/main/s/s.deb", body.clone());
    let dir = cache_dir();
    // This one only stores the file (its background tasks outlive its stop in this process).
    let proxy = Proxy::start(&origin, dir.path(), |c| c.tuning.scrub_rate = 0).await;
    assert!(
        read_all(proxy.get("debian/pool/main/s/s.deb").await)
            .await
            .unwrap()
            == body
    );
    proxy.stop().await;
    // One byte flipped, same length: only its hash tells.
    let file = only_body(dir.path());
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[150_000] ^= 0xff;
    std::fs::write(&file, bytes).unwrap();

    let proxy = Proxy::start(&origin, dir.path(), |c| {
        c.tuning.scrub_rate = 64 << 20;
    })
    .await;
    let started = Instant::now();
    while damaged_count(&proxy).await != "apt_proxy_cache_damaged_entries_total 1" {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the scrub found nothing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = proxy.get("debian/pool/main/s/s.deb").await;
    assert_eq!(x_cache(&r), "MISS");
    assert!(read_all(r).await.unwrap() == body);
    assert_eq!(origin.hits("/debian/pool/main/s/s.deb"), 2);
}

/// The open files of this process whose target is `path` (removed or not).
fn held_open(path: &std::path::Path) -> usize {
    let path = path.to_string_lossy().into_owned();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with(&path))
        .count()
}

#[tokio::test]
async fn a_body_removed_while_the_scrub_reads_it_is_let_go_at_once() {
    let origin = Origin::start().await;
    let body = data(4 << 20, 23);
    origin.put("/debian/pool/main/r/r.deb", body.clone());
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |c| c.tuning.scrub_rate = 0).await;
    assert!(
        read_all(proxy.get("debian/pool/main/r/r.deb").await)
            .await
            .unwrap()
            == body
    );
    proxy.stop().await;
    let file = only_body(dir.path());

    // At 1 MiB/s the scrub needs 4 s for this body; it starts once the index is loaded (at
    // most 200 ms after the start), so it is part way through when the purge comes. (Before
    // it held the file for the whole read, and this test failed.)
    let proxy = Proxy::start(&origin, dir.path(), |c| c.tuning.scrub_rate = 1 << 20).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let purged = proxy
        .client()
        .post(proxy.url("api/cache/purge"))
        .send()
        .await
        .unwrap();
    assert_eq!(purged.status(), 200);
    assert!(!file.exists(), "the purge removed the body");
    // A removed file's blocks are freed only when the last handle on it is closed: the scrub
    // holds one only while it reads a chunk, never for the rest of its slow read.
    let started = Instant::now();
    while held_open(&file) > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the scrub still holds the removed body open"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Its next chunk is due within 250 ms: it finds the body gone and stops.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        damaged_count(&proxy).await,
        "apt_proxy_cache_damaged_entries_total 0",
        "a body removed during its check is not damaged"
    );
}
