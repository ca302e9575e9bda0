//! The proxy on an S3 bucket (a real SeaweedFS on loopback): a fleet sharing one cache,
//! bounded upload memory, a store that fails, start-up checks, and the limits applied to the
//! bucket's content.

use std::time::Duration;

use apt_proxy::config::{Config, StorageChoice};
use apt_proxy::server::Server;
use apt_proxy::storage::s3::S3Settings;

use crate::weed::{self, Mode, Relay};
use crate::{Behavior, Origin, Proxy, cache_dir, data, metric, read_all, x_cache};

fn on_s3(settings: S3Settings) -> impl FnOnce(&mut Config) {
    move |config: &mut Config| config.storage = StorageChoice::S3(Box::new(settings))
}

/// A proxy on `settings`' bucket.
async fn proxy(
    origin: &Origin,
    settings: S3Settings,
    tune: impl FnOnce(&mut Config),
) -> (Proxy, tempfile::TempDir) {
    let dir = cache_dir();
    let proxy = Proxy::start(origin, dir.path(), |c| {
        on_s3(settings)(c);
        tune(c);
    })
    .await;
    (proxy, dir)
}

/// A body's length and SHA256, for comparisons that print short.
#[derive(Debug, PartialEq, Eq)]
struct Digest(usize, String);

fn digest(bytes: &[u8]) -> Digest {
    use sha2::Digest as _;
    Digest(bytes.len(), hex::encode(sha2::Sha256::digest(bytes)))
}

async fn fetch(proxy: &Proxy, path: &str) -> (u16, String, Digest) {
    let r = proxy.get(path).await;
    let status = r.status().as_u16();
    let cache = x_cache(&r);
    (
        status,
        cache,
        digest(&read_all(r).await.expect("a whole body")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_one_instance_stored_is_a_hit_for_another() {
    let weed = weed::weed();
    let bucket = weed.space().await;
    let origin = Origin::start().await;
    let body = data(3 << 20, 11);
    origin.put("/debian/pool/main/f/foo/foo_1.0_amd64.deb", body.clone());
    let want = digest(&body);
    origin.put(
        "/debian/pool/main/s/small/small_1.0_all.deb",
        data(5000, 12),
    );
    let settings = weed.settings(&weed.endpoint, &bucket);
    let (a, _da) = proxy(&origin, settings.clone(), |_| {}).await;
    let (b, _db) = proxy(&origin, settings, |_| {}).await;
    // The store's counters exist from the start, even for operations not yet made.
    let zero = "apt_proxy_storage_errors_total{backend=\"s3\",op=\"abort_upload\"} 0";
    assert!(a.text("metrics").await.lines().any(|l| l == zero));

    let path = "debian/pool/main/f/foo/foo_1.0_amd64.deb";
    assert_eq!(fetch(&a, path).await, (200, "MISS".into(), digest(&body)));
    assert_eq!(fetch(&b, path).await, (200, "HIT".into(), digest(&body)));
    assert_eq!(fetch(&a, path).await, (200, "HIT".into(), want));
    // A range from the bucket.
    let r = b
        .client()
        .get(b.url(path))
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), body[1000..2000]);
    let small = "debian/pool/main/s/small/small_1.0_all.deb";
    assert_eq!(fetch(&b, small).await.1, "MISS");
    assert_eq!(fetch(&a, small).await.1, "HIT");
    assert_eq!(
        origin.hits(&format!("/{path}")),
        1,
        "the origin was asked once"
    );
    assert_eq!(origin.hits(&format!("/{small}")), 1);

    // Both instances report the bucket as healthy.
    let health: serde_json::Value = serde_json::from_str(&b.text("healthz").await).unwrap();
    assert_eq!(health["checks"]["storage"]["backend"], "s3", "{health}");
    assert_eq!(health["checks"]["storage"]["status"], "ok", "{health}");
    assert!(metric(&a, "apt_proxy_storage_operations_total").await > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_big_fills_hold_one_chunk_each_in_memory() {
    let weed = weed::weed();
    let bucket = weed.space().await;
    let origin = Origin::start().await;
    let body = bytes::Bytes::from(data(40 << 20, 21));
    let paths: Vec<String> = (0..8)
        .map(|i| format!("debian/pool/main/b/big{i}/big{i}_1.0_amd64.deb"))
        .collect();
    for p in &paths {
        origin.put(&format!("/{p}"), body.clone());
        origin.set(
            &format!("/{p}"),
            Behavior::Slow {
                chunk: 1 << 20,
                delay: Duration::from_millis(10),
            },
        );
    }
    let mut settings = weed.settings(&weed.endpoint, &bucket);
    settings.inline_max = 1 << 20;
    let (p, _d) = proxy(&origin, settings, |_| {}).await;
    let p = std::sync::Arc::new(p);
    let fills: Vec<_> = paths
        .iter()
        .map(|path| {
            let (p, path) = (p.clone(), path.clone());
            tokio::spawn(async move { fetch(&p, &path).await })
        })
        .collect();
    let mut peak = 0.0f64;
    while !fills.iter().all(|f| f.is_finished()) {
        peak = peak.max(metric(&p, "apt_proxy_storage_upload_buffered_bytes").await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for f in fills {
        let (status, _, got) = f.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(got, digest(&body), "a client got different bytes");
    }
    let part = apt_proxy::storage::s3::PART as f64;
    assert!(peak > 0.0, "parts were uploaded while the files arrived");
    assert!(
        peak <= 8.0 * part,
        "peak {peak} bytes of parts in memory for 8 uploads"
    );
    assert_eq!(
        metric(&p, "apt_proxy_storage_upload_buffered_bytes").await,
        0.0
    );
    // Whole objects, no upload left over.
    let objects = weed.objects(&bucket).await;
    let bodies: Vec<u64> = objects
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{}data/", bucket.prefix)))
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(bodies, vec![40 << 20; 8], "{objects:?}");
    assert!(weed.uploads(&bucket).await.is_empty());
    for path in &paths {
        assert_eq!(fetch(&p, path).await.1, "HIT");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_refuses_a_missing_bucket_refused_credentials_and_a_redirect() {
    let weed = weed::weed();
    let bucket = weed.space().await;
    let dir = cache_dir();
    let start = |settings: S3Settings| {
        let mut config = Config::new(dir.path());
        config.host = "127.0.0.1".into();
        config.port = 0;
        config.storage = StorageChoice::S3(Box::new(settings));
        async move { Server::bind(&config).await.err().map(|e| e.to_string()) }
    };
    let missing = start(weed.settings(
        &weed.endpoint,
        &weed::Space {
            bucket: "no-such-bucket".into(),
            prefix: bucket.prefix.clone(),
        },
    ))
    .await;
    let missing = missing.expect("a missing bucket is refused");
    assert!(
        missing.contains("no-such-bucket") && missing.contains(&weed.endpoint),
        "{missing}"
    );
    let mut wrong = weed.settings(&weed.endpoint, &bucket);
    wrong.secret_key = Some("not-the-secret".into());
    let refused = start(wrong).await.expect("wrong credentials are refused");
    assert!(
        refused.contains("credentials") && refused.contains(&bucket.bucket),
        "{refused}"
    );
    // A store that redirects (another region, a wrong endpoint) is refused, saying where to.
    let relay = Relay::start(&weed.endpoint).await;
    relay.redirect("http://127.0.0.1:9");
    let redirected = start(weed.settings(&relay.endpoint, &bucket))
        .await
        .expect("a store that redirects is refused");
    assert!(
        redirected.contains("redirects")
            && redirected.contains(&relay.endpoint)
            && redirected.contains("location: http://127.0.0.1:9/")
            && !redirected.contains('?'),
        "{redirected}"
    );
    assert!(
        start(weed.settings(&weed.endpoint, &bucket))
            .await
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_is_reported_and_the_mirror_answers() {
    let origin = Origin::start().await;
    let body = data(200_000, 31);
    origin.put("/debian/pool/main/u/u/u_1_all.deb", body.clone());
    // Nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = closed.local_addr().unwrap().to_string();
    drop(closed);
    let weed = weed::weed();
    let (p, _d) = proxy(
        &origin,
        weed.settings(
            &endpoint,
            &weed::Space {
                bucket: "b".into(),
                prefix: String::new(),
            },
        ),
        |_| {},
    )
    .await;
    for _ in 0..2 {
        let (status, _, got) = fetch(&p, "debian/pool/main/u/u/u_1_all.deb").await;
        assert_eq!(status, 200);
        assert_eq!(got, digest(&body));
    }
    let health: serde_json::Value = serde_json::from_str(&p.text("healthz").await).unwrap();
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["checks"]["storage"]["backend"], "s3", "{health}");
    assert_eq!(health["checks"]["storage"]["status"], "error", "{health}");
    assert!(metric(&p, "apt_proxy_storage_errors_total").await > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_never_fails_a_request_the_mirror_can_answer() {
    let weed = weed::weed();
    let bucket = weed.space().await;
    let relay = Relay::start(&weed.endpoint).await;
    let origin = Origin::start().await;
    let files: Vec<(String, Vec<u8>)> = (0..8)
        .map(|i| {
            let path = format!("debian/pool/main/f/f{i}/f{i}_1_all.deb");
            let body = data(300_000 + i * 100_000, 40 + i as u64);
            origin.put(&format!("/{path}"), body.clone());
            (path, body)
        })
        .collect();
    let mut settings = weed.settings(&relay.endpoint, &bucket);
    settings.timeout = Duration::from_secs(1);
    // Warm the bucket up (the store's first write allocates its volume), then check hits.
    let warm = weed.settings(&weed.endpoint, &bucket);
    let (w, _dw) = proxy(&origin, warm, |_| {}).await;
    assert_eq!(fetch(&w, &files[0].0).await.1, "MISS");
    let (p, _d) = proxy(&origin, settings, |_| {}).await;
    assert_eq!(fetch(&p, &files[0].0).await.1, "HIT");

    // An index its Release names is held until verified; when the store then refuses it, its
    // client gets the verified copy from the spool.
    let packages = b"Package: a\nVersion: 1\n".to_vec();
    let release = {
        use sha2::Digest as _;
        format!(
            "Origin: Test\nSuite: stable\nSHA256:\n {} {} main/binary-amd64/Packages\n",
            hex::encode(sha2::Sha256::digest(&packages)),
            packages.len()
        )
    };
    origin.put("/debian/dists/stable/InRelease", release.clone());
    origin.put(
        "/debian/dists/stable/main/binary-amd64/Packages",
        packages.clone(),
    );
    relay.set(Mode::Unavailable);
    let (status, _, got) = fetch(&p, "debian/dists/stable/InRelease").await;
    assert_eq!((status, got), (200, digest(release.as_bytes())));
    let (status, _, got) = fetch(&p, "debian/dists/stable/main/binary-amd64/Packages").await;
    assert_eq!((status, got), (200, digest(&packages)));
    relay.set(Mode::Pass);

    for (next, mode) in [Mode::Hang, Mode::Unavailable, Mode::Refuse]
        .into_iter()
        .enumerate()
    {
        let next = next + 1;
        relay.set(mode);
        let started = std::time::Instant::now();
        // A hit falls back to the mirror.
        let (status, _, got) = fetch(&p, &files[0].0).await;
        assert_eq!(status, 200, "{mode:?}");
        assert_eq!(got, digest(&files[0].1), "{mode:?}");
        // A miss is streamed from the mirror, whole, though it cannot be stored.
        let (path, body) = &files[next];
        let (status, _, got) = fetch(&p, path).await;
        assert_eq!(status, 200, "{mode:?}");
        assert_eq!(got, digest(body), "{mode:?}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{mode:?}: the storage timeout bounds the wait ({:?})",
            started.elapsed()
        );
    }
    assert!(metric(&p, "apt_proxy_storage_errors_total").await >= 3.0);
    let health: serde_json::Value = serde_json::from_str(&p.text("healthz").await).unwrap();
    assert_eq!(health["checks"]["storage"]["status"], "error", "{health}");

    // The store is back: what could not be stored is fetched and stored now.
    relay.set(Mode::Pass);
    let (path, body) = &files[1];
    let (status, cache, got) = fetch(&p, path).await;
    assert_eq!((status, cache.as_str()), (200, "MISS"));
    assert_eq!(got, digest(body));
    assert_eq!(fetch(&p, path).await.1, "HIT");
    assert_eq!(fetch(&p, &files[0].0).await.1, "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_redirects_is_not_followed_and_the_mirror_answers() {
    let weed = weed::weed();
    let bucket = weed.space().await;
    let relay = Relay::start(&weed.endpoint).await;
    let origin = Origin::start().await;
    // Where the store points: it must never see a request, a signed one or an upload.
    let elsewhere = Origin::start().await;
    let (stored, fresh) = (
        "debian/pool/main/r/r/r_1_all.deb",
        "debian/pool/main/n/n/n_1_all.deb",
    );
    let (stored_body, fresh_body) = (data(300_000, 51), data(200_000, 52));
    origin.put(&format!("/{stored}"), stored_body.clone());
    origin.put(&format!("/{fresh}"), fresh_body.clone());
    // Stored through the store itself first (its first write allocates a volume, which may
    // take longer than the timeout below).
    let (w, _dw) = proxy(&origin, weed.settings(&weed.endpoint, &bucket), |_| {}).await;
    assert_eq!(fetch(&w, stored).await.1, "MISS");
    let mut settings = weed.settings(&relay.endpoint, &bucket);
    settings.timeout = Duration::from_secs(2);
    let (p, _d) = proxy(&origin, settings, |_| {}).await;
    assert_eq!(fetch(&p, stored).await.1, "HIT");

    relay.redirect(&format!("http://{}", elsewhere.addr));
    relay.settled().await;
    // The bucket round trip of /healthz fails, is counted as a store error and says where the
    // store pointed. (A round trip may first meet a pooled connection the switch closed: that
    // fails too, without a location, so a few are allowed.)
    let location = format!("location: http://{}/", elsewhere.addr);
    let mut checks = 0;
    let health = loop {
        let health: serde_json::Value = serde_json::from_str(&p.text("healthz").await).unwrap();
        checks += 1;
        assert_eq!(health["checks"]["storage"]["status"], "error", "{health}");
        if checks == 3
            || health["checks"]["storage"]["error"]
                .to_string()
                .contains(&location)
        {
            break health;
        }
    };
    let problem = health["checks"]["storage"]["error"].to_string();
    assert!(problem.contains(&location), "{health}");
    // /healthz is the only bucket round trip: each of them was an error, the redirect too.
    let check = r#"apt_proxy_storage_errors_total{backend="s3",op="check"}"#;
    assert_eq!(metric(&p, check).await, f64::from(checks));
    // A hit whose body the store redirects is answered from the mirror.
    let (status, _, got) = fetch(&p, stored).await;
    assert_eq!((status, got), (200, digest(&stored_body)));
    // A miss is streamed from the mirror whole; the store redirects its upload, so it is not
    // stored. (Its last byte is held until the commit, upload included, has ended.)
    let (status, _, got) = fetch(&p, fresh).await;
    assert_eq!((status, got), (200, digest(&fresh_body)));
    assert_eq!(elsewhere.total(), 0, "{:?}", elsewhere.seen());
    assert!(metric(&p, "apt_proxy_storage_errors_total").await >= 1.0);

    // The store is back: the miss is stored now.
    relay.set(Mode::Pass);
    assert_eq!(fetch(&p, fresh).await.1, "MISS");
    assert_eq!(fetch(&p, fresh).await.1, "HIT");
    assert_eq!(elsewhere.total(), 0, "{:?}", elsewhere.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_size_limit_purge_and_ttl_act_on_the_bucket_for_the_whole_fleet() {
    let weed = weed::weed();
    let bucket = weed.space().await;
    let origin = Origin::start().await;
    let paths: Vec<String> = (0..4)
        .map(|i| format!("debian/pool/main/s/s{i}/s{i}_1_all.deb"))
        .collect();
    for (i, p) in paths.iter().enumerate() {
        origin.put(&format!("/{p}"), data(3 << 20, 60 + i as u64));
    }
    let settings = weed.settings(&weed.endpoint, &bucket);
    // The size limit: 10 MiB hold three files of 3 MiB, not four.
    let (a, _da) = proxy(&origin, settings.clone(), |c| {
        c.cache_limits.max_size_bytes = Some(10 << 20);
    })
    .await;
    for p in &paths {
        assert_eq!(fetch(&a, p).await.1, "MISS");
    }
    let mut metas = Vec::new();
    for _ in 0..50 {
        metas = weed.names(&bucket, "meta").await;
        if metas.len() <= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        metas.len() <= 3,
        "the bucket holds at most the size limit: {metas:?}"
    );
    let data_names = weed.names(&bucket, "data").await;
    assert_eq!(data_names.len(), metas.len(), "evicted bodies are gone too");

    // Purge empties the bucket, including what another instance stored.
    let (b, _db) = proxy(&origin, settings.clone(), |_| {}).await;
    let (status, _, _) = fetch(&b, &paths[0]).await;
    assert_eq!(status, 200);
    let r = a
        .client()
        .post(a.url("api/cache/purge"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(weed.names(&bucket, "meta").await.is_empty());
    assert!(weed.names(&bucket, "data").await.is_empty());

    // The TTL counts from the last access through any instance: x is read through b, y is
    // not; a's cleanup removes y only.
    let ttl = |c: &mut Config| {
        c.cache_limits.ttl = Some(Duration::from_secs(2));
        c.tuning.access_persist_interval = Duration::from_secs(1);
    };
    let (a, _da) = proxy(&origin, settings.clone(), ttl).await;
    let (b, _db) = proxy(&origin, settings, ttl).await;
    assert_eq!(fetch(&a, &paths[0]).await.1, "MISS");
    assert_eq!(fetch(&a, &paths[1]).await.1, "MISS");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(fetch(&b, &paths[0]).await.1, "HIT");
    // The access is recorded in the background.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = a
        .client()
        .post(a.url("api/cache/cleanup"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let removal: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(
        removal["removed_items"], 1,
        "the entry kept is not counted: {removal}"
    );
    let metas = weed.names(&bucket, "meta").await;
    assert_eq!(metas.len(), 1, "{metas:?}");
    assert_eq!(fetch(&a, &paths[0]).await.1, "HIT");
    assert_eq!(fetch(&b, &paths[1]).await.1, "MISS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_filling_one_key_at_once_leave_one_whole_object() {
    let weed = weed::weed();
    let bucket = weed.space().await;
    let origin = Origin::start().await;
    let path = "debian/pool/main/t/twin/twin_1_amd64.deb";
    let body = data(12 << 20, 71);
    origin.put(&format!("/{path}"), body.clone());
    origin.set(
        &format!("/{path}"),
        Behavior::Slow {
            chunk: 1 << 20,
            delay: Duration::from_millis(20),
        },
    );
    let mut settings = weed.settings(&weed.endpoint, &bucket);
    settings.inline_max = 4 << 20;
    let (a, _da) = proxy(&origin, settings.clone(), |_| {}).await;
    let (b, _db) = proxy(&origin, settings.clone(), |_| {}).await;
    let (ra, rb) = tokio::join!(fetch(&a, path), fetch(&b, path));
    assert_eq!((ra.0, rb.0), (200, 200));
    assert_eq!(ra.2, digest(&body));
    assert_eq!(rb.2, digest(&body));
    assert_eq!(
        origin.hits(&format!("/{path}")),
        2,
        "each instance filled it"
    );
    let (c, _dc) = proxy(&origin, settings, |_| {}).await;
    let (status, cache, got) = fetch(&c, path).await;
    assert_eq!((status, cache.as_str()), (200, "HIT"));
    assert_eq!(got, digest(&body), "the object is one whole version");
    assert!(weed.uploads(&bucket).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_leaves_no_object_and_the_sweep_aborts_its_upload_only() {
    let weed = weed::weed();
    let space = weed.space().await;
    let origin = Origin::start().await;
    let (first, second) = (
        "debian/pool/main/k/killed/killed_1_amd64.deb",
        "debian/pool/main/l/live/live_1_amd64.deb",
    );
    let (body1, body2) = (data(24 << 20, 81), data(20 << 20, 82));
    origin.put(&format!("/{first}"), body1.clone());
    origin.put(&format!("/{second}"), body2.clone());
    // Each sends 10 MiB (one part and more), then waits.
    origin.set(&format!("/{first}"), Behavior::Gated(10 << 20));
    origin.set(&format!("/{second}"), Behavior::Gated(10 << 20));
    let wait_uploads = |n: usize| {
        let space = space.clone();
        async move {
            for _ in 0..200 {
                let uploads = weed.uploads(&space).await;
                if uploads.len() >= n {
                    return uploads;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("{n} uploads expected in {}", space.prefix);
        }
    };

    // Instance A, the real binary, is killed in mid-upload.
    let cache = cache_dir();
    let base = origin.base("debian");
    let mut a = crate::crash::Binary::start_with(
        cache.path(),
        &[
            "--mode",
            "debian",
            "--debian",
            &base,
            "--storage-backend",
            "s3",
            "--s3-endpoint",
            &weed.endpoint,
            "--s3-bucket",
            &space.bucket,
            "--s3-prefix",
            &space.prefix,
            "--s3-use-ssl",
            "false",
            "--s3-use-path-style",
            "--s3-inline-max-mb",
            "1",
        ],
        &[
            ("APT_PROXY_S3_ACCESS_KEY", weed::KEY),
            ("APT_PROXY_S3_SECRET_KEY", weed::SECRET),
        ],
    );
    let url = a.url(first);
    let client = crate::client_builder().build().unwrap();
    let cut = tokio::spawn(async move { read_all(client.get(url).send().await?).await });
    let orphan = wait_uploads(1).await;
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    assert!(cut.await.unwrap().is_err(), "the client's transfer was cut");
    assert!(weed.names(&space, "meta").await.is_empty(), "no entry");
    assert!(weed.names(&space, "data").await.is_empty(), "no object");
    tokio::time::sleep(Duration::from_millis(3000)).await;

    // Instance C has an upload running when B starts and sweeps with a 2 s age.
    let settings = weed.settings(&weed.endpoint, &space);
    let mut small_parts = settings.clone();
    small_parts.inline_max = 1 << 20;
    let (c, _dc) = proxy(&origin, small_parts, |_| {}).await;
    let c = std::sync::Arc::new(c);
    let live = {
        let c = c.clone();
        tokio::spawn(async move { fetch(&c, second).await })
    };
    let both = wait_uploads(2).await;
    let mut sweeping = settings.clone();
    sweeping.abandoned_upload_age = Duration::from_secs(2);
    let (b, _db) = proxy(&origin, sweeping, |_| {}).await;
    let mut left = both.clone();
    for _ in 0..100 {
        left = weed.uploads(&space).await;
        if !left.contains(&orphan[0]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!left.contains(&orphan[0]), "the orphan upload was aborted");
    assert_eq!(
        left.len(),
        1,
        "the live upload survives the sweep: {left:?}"
    );

    // The live fill ends whole; the killed one is fetched again whole.
    origin.release();
    let (status, _, got) = live.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(got, digest(&body2));
    assert_eq!(fetch(&b, second).await, (200, "HIT".into(), digest(&body2)));
    assert_eq!(fetch(&b, first).await, (200, "MISS".into(), digest(&body1)));
    assert_eq!(fetch(&c, first).await, (200, "HIT".into(), digest(&body1)));
    assert!(weed.uploads(&space).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_never_serves_an_index_its_release_contradicts_even_when_another_replaced_it() {
    use sha2::Digest as _;
    let sha = |b: &[u8]| hex::encode(sha2::Sha256::digest(b));
    let release = |packages: &[u8]| {
        format!(
            "Origin: Test\nSuite: stable\nAcquire-By-Hash: yes\nSHA256:\n {} {} main/binary-amd64/Packages\n",
            sha(packages),
            packages.len()
        )
    };
    const PACKAGES: &str = "debian/dists/stable/main/binary-amd64/Packages";
    const RELEASE: &str = "debian/dists/stable/InRelease";
    let (v1, v2): (&[u8], &[u8]) = (b"Package: a\nVersion: 1\n", b"Package: a\nVersion: 2\n");
    let weed = weed::weed();
    let space = weed.space().await;
    let origin = Origin::start().await;
    origin.put(&format!("/{RELEASE}"), release(v1));
    origin.put(&format!("/{PACKAGES}"), v1.to_vec());
    for v in [v1, v2] {
        origin.put(
            &format!(
                "/debian/dists/stable/main/binary-amd64/by-hash/SHA256/{}",
                sha(v)
            ),
            v.to_vec(),
        );
    }
    let settings = weed.settings(&weed.endpoint, &space);
    // Indexes are fresh for a second (the window is written in the record, for the fleet).
    let fresh = |c: &mut Config| c.tuning.index_fresh = Duration::from_secs(1);
    let (a, _da) = proxy(&origin, settings.clone(), fresh).await;
    let (b, _db) = proxy(&origin, settings, fresh).await;
    let body = |p: &Proxy, path: &'static str| {
        let (client, url) = (p.client(), p.url(path));
        async move {
            let r = client.get(url).send().await.unwrap();
            assert_eq!(r.status(), 200, "{path}");
            r.bytes().await.unwrap().to_vec()
        }
    };
    // A's clients get the Release of version 1.
    assert!(body(&a, RELEASE).await == release(v1).as_bytes());
    // The mirror publishes version 2; B's clients get it, and B stores it in the bucket.
    origin.put(&format!("/{RELEASE}"), release(v2));
    origin.put(&format!("/{PACKAGES}"), v2.to_vec());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(body(&b, RELEASE).await == release(v2).as_bytes());
    assert_eq!(body(&b, PACKAGES).await, v2);
    // A's clients, holding version 1's Release, get version 1's Packages, not B's.
    assert_eq!(
        body(&a, PACKAGES).await,
        v1,
        "A serves what its Release names"
    );
    assert_eq!(body(&b, PACKAGES).await, v2, "B too");
}
