//! Mirror selection and failover, with several in-process origins: a dead one, one that
//! answers 503, one that hangs, one killed mid-transfer, a slow one, a stale one; the
//! benchmark ranks them in the background while the proxy serves.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::{Behavior, Origin, Proxy, cache_dir, data, x_cache};

/// A loopback address nothing listens on (connections are refused).
async fn dead_base(tree: &str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/{tree}/")
}

/// A proxy whose Debian mirrors are `first` then `last`, in that order (every other
/// distribution on `last`).
async fn debian_mirrors(
    first: &[&str],
    last: &Origin,
    dir: &std::path::Path,
    tune: impl FnOnce(&mut apt_proxy::config::Config),
) -> Proxy {
    let mut pins: Vec<String> = first.iter().map(|s| s.to_string()).collect();
    pins.push(last.base("debian"));
    Proxy::start(last, dir, |c| {
        c.mirrors.insert("debian".into(), pins.join(","));
        tune(c);
    })
    .await
}

/// Two origins serving `body` at `path`; the first with `behavior`.
async fn failing_then_good(path: &str, body: &[u8], behavior: Behavior) -> (Origin, Origin) {
    let failing = Origin::start().await;
    let good = Origin::start().await;
    failing.put(path, body.to_vec());
    failing.set(path, behavior);
    good.put(path, body.to_vec());
    (failing, good)
}

async fn api_mirrors(proxy: &Proxy) -> serde_json::Value {
    serde_json::from_str(&proxy.text("api/mirrors").await).unwrap()
}

fn set<'a>(sets: &'a serde_json::Value, repo: &str) -> &'a serde_json::Value {
    sets.as_array()
        .unwrap()
        .iter()
        .find(|s| s["repo"] == repo)
        .unwrap_or_else(|| panic!("no mirror set for {repo} in {sets}"))
}

async fn metrics(proxy: &Proxy) -> String {
    proxy.text("metrics").await
}

#[tokio::test]
async fn refused_and_failing_mirrors_are_skipped_and_demoted() {
    let err = Origin::start().await;
    let good = Origin::start().await;
    for o in [&err, &good] {
        o.put("/debian/pool/main/a/a.deb", data(100_000, 1));
        o.put("/debian/pool/main/b/b.deb", data(50_000, 2));
    }
    err.set("/debian/pool/main/a/a.deb", Behavior::Status(503));
    let dead = dead_base("debian").await;
    let dir = cache_dir();
    let proxy = debian_mirrors(&[&dead, &err.base("debian")], &good, dir.path(), |_| {}).await;

    let r = proxy.get("debian/pool/main/a/a.deb").await;
    assert_eq!(r.status(), 200);
    assert_eq!(x_cache(&r), "MISS");
    assert_eq!(r.bytes().await.unwrap(), data(100_000, 1));
    assert_eq!(err.hits("/debian/pool/main/a/a.deb"), 1);
    assert_eq!(good.hits("/debian/pool/main/a/a.deb"), 1);
    assert!(
        metrics(&proxy)
            .await
            .contains(r#"apt_proxy_mirror_failovers_total{distro="debian"} 2"#)
    );

    // Both failed mirrors are demoted: the next file goes straight to the good one.
    let r = proxy.get("debian/pool/main/b/b.deb").await;
    assert_eq!(r.bytes().await.unwrap(), data(50_000, 2));
    assert_eq!(err.hits("/debian/pool/main/b/b.deb"), 0);
    assert_eq!(good.hits("/debian/pool/main/b/b.deb"), 1);

    let sets = api_mirrors(&proxy).await;
    let debian = set(&sets, "debian");
    assert_eq!(debian["pinned"], true);
    let mirrors = debian["mirrors"].as_array().unwrap();
    assert_eq!(mirrors.len(), 3, "{debian}");
    assert_eq!(mirrors[0]["url"], dead.as_str());
    assert_eq!(mirrors[0]["healthy"], false);
    assert!(
        mirrors[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("connect"),
        "{debian}"
    );
    assert_eq!(mirrors[1]["healthy"], false);
    assert_eq!(mirrors[1]["last_error"], "mirror answered 503");
    assert_eq!(mirrors[2]["healthy"], true);
    // debian-security follows the same pins, on its sibling path.
    let security = set(&sets, "debian-security");
    assert!(
        security["mirrors"][2]["url"]
            .as_str()
            .unwrap()
            .ends_with("/debian-security/")
    );
    let page = proxy.text("").await;
    assert!(
        page.contains("<h2>Mirrors</h2>") && page.contains("demoted"),
        "{page}"
    );
}

#[tokio::test]
async fn a_failed_mirror_is_probed_in_the_background_and_restored_when_it_answers() {
    let flaky = Origin::start().await;
    let good = Origin::start().await;
    for o in [&flaky, &good] {
        for name in ["a", "b", "c"] {
            o.put(
                &format!("/debian/pool/main/{name}/{name}.deb"),
                data(5_000, 20),
            );
        }
    }
    flaky.set("/debian/pool/main/a/a.deb", Behavior::Status(503));
    // The recovery probe asks for the mirror's base URL.
    flaky.set("/debian/", Behavior::Status(503));
    let dir = cache_dir();
    let proxy = debian_mirrors(&[&flaky.base("debian")], &good, dir.path(), |c| {
        c.tuning.mirror_demotion = Duration::from_millis(100);
        c.tuning.benchmark.recovery_every = Duration::from_millis(1500);
    })
    .await;
    let client = proxy.client();
    let get = |name: &str| {
        let url = proxy.url(&format!("debian/pool/main/{name}/{name}.deb"));
        let client = client.clone();
        async move {
            let r = client.get(url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap()
        }
    };
    get("a").await;
    assert_eq!(good.hits("/debian/pool/main/a/a.deb"), 1);

    // Its pause is over, no probe has run yet: it is recovering, tried after the good mirror.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sets = api_mirrors(&proxy).await;
    assert_eq!(set(&sets, "debian")["mirrors"][0]["state"], "recovering");
    get("b").await;
    assert_eq!(flaky.hits("/debian/pool/main/b/b.deb"), 0);

    // The probe fails: paused again, for longer.
    let started = Instant::now();
    while flaky.hits("/debian/") == 0 {
        assert!(started.elapsed() < Duration::from_secs(5), "no probe");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let sets = api_mirrors(&proxy).await;
    let first = &set(&sets, "debian")["mirrors"][0];
    assert_ne!(first["state"], "healthy", "{first}");
    assert_eq!(first["consecutive_failures"], 2, "{first}");
    assert_eq!(first["last_error"], "mirror answered 503", "{first}");

    // It answers again: a probe restores it, and it is first again.
    flaky.put("/debian/", "index");
    let started = Instant::now();
    loop {
        let sets = api_mirrors(&proxy).await;
        let first = set(&sets, "debian")["mirrors"][0].clone();
        if first["state"] == "healthy" {
            assert_eq!(first["consecutive_failures"], 0);
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{first}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    get("c").await;
    assert_eq!(flaky.hits("/debian/pool/main/c/c.deb"), 1);
    assert_eq!(good.hits("/debian/pool/main/c/c.deb"), 0);
}

#[tokio::test]
async fn a_hung_mirror_costs_one_head_timeout_then_the_next_answers() {
    let path = "/debian/pool/main/h/h.deb";
    let (hung, good) = failing_then_good(path, &data(10_000, 3), Behavior::Hang).await;
    let dir = cache_dir();
    let proxy = debian_mirrors(&[&hung.base("debian")], &good, dir.path(), |c| {
        c.tuning.head_timeout = Duration::from_secs(1);
    })
    .await;
    let started = Instant::now();
    let r = proxy.get(&path[1..]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), data(10_000, 3));
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(1), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn a_mirror_killed_during_a_50_mib_download_is_invisible_to_the_client() {
    const LEN: usize = 50 << 20;
    let path = "/debian/pool/main/b/big_1.0_amd64.deb";
    let body = data(LEN, 50);
    let slow = Behavior::Slow {
        chunk: 256 << 10,
        delay: Duration::from_millis(10),
    };
    let (dying, good) = failing_then_good(path, &body, slow).await;
    let dir = cache_dir();
    let proxy = debian_mirrors(&[&dying.base("debian")], &good, dir.path(), |_| {}).await;

    let r = proxy.get(&path[1..]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.content_length(), Some(LEN as u64));
    let mut stream = r.bytes_stream();
    let mut got = Vec::with_capacity(LEN);
    let mut killed = false;
    while let Some(chunk) = stream.next().await {
        got.extend_from_slice(&chunk.expect("the client sees no error"));
        if !killed && got.len() >= 8 << 20 {
            dying.kill();
            killed = true;
        }
    }
    assert!(killed);
    assert_eq!(got.len(), LEN);
    assert!(got == body, "bytes differ after the failover");

    // The good mirror was asked for the rest only.
    let seen = good.seen();
    let asked: Vec<_> = seen.iter().filter(|s| s.path == path).collect();
    assert_eq!(asked.len(), 1);
    let range = asked[0].headers["range"].to_str().unwrap().to_string();
    let from: usize = range
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .unwrap()
        .parse()
        .unwrap();
    assert!((8 << 20..LEN).contains(&from), "{range}");

    // Stored whole: the next client gets a hit with the same bytes.
    let r = proxy.get(&path[1..]).await;
    assert_eq!(x_cache(&r), "HIT");
    let again = r.bytes().await.unwrap();
    assert_eq!(
        Sha256::digest(&again).as_slice(),
        Sha256::digest(&body).as_slice()
    );
    assert!(
        metrics(&proxy)
            .await
            .contains(r#"apt_proxy_mirror_failovers_total{distro="debian"} 1"#)
    );
}

#[tokio::test]
async fn a_mirror_that_stalls_mid_body_is_left_after_the_read_timeout() {
    let path = "/debian/pool/main/s/stall_1.0_amd64.deb";
    let body = data(4 << 20, 9);
    // Sends the first MiB, then nothing (the gate is never opened).
    let (stalling, good) = failing_then_good(path, &body, Behavior::Gated(1 << 20)).await;
    let dir = cache_dir();
    let proxy = debian_mirrors(&[&stalling.base("debian")], &good, dir.path(), |c| {
        c.tuning.read_timeout = Duration::from_secs(1);
    })
    .await;
    let started = Instant::now();
    let r = proxy.get(&path[1..]).await;
    assert_eq!(r.bytes().await.unwrap(), body);
    assert!(started.elapsed() >= Duration::from_secs(1));
    let asked: Vec<_> = good.seen().into_iter().filter(|s| s.path == path).collect();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].headers["range"], "bytes=1048576-");
    let sets = api_mirrors(&proxy).await;
    let first = &set(&sets, "debian")["mirrors"][0];
    assert_eq!(first["last_error"], "mirror timed out", "{first}");
}

#[tokio::test]
async fn a_file_that_may_differ_between_mirrors_restarts_and_is_compared() {
    // Not a package: no byte range is asked; the next mirror sends it again from the start
    // and the part already sent must match.
    let path = "/debian/doc/notes.txt";
    let body = data(4 << 20, 7);
    let (cut, same) = failing_then_good(path, &body, Behavior::CutAfter(1 << 20)).await;
    let dir = cache_dir();
    let proxy = debian_mirrors(&[&cut.base("debian")], &same, dir.path(), |_| {}).await;
    let r = proxy.get(&path[1..]).await;
    assert_eq!(r.bytes().await.unwrap(), body);
    let seen = same.seen();
    assert!(seen.iter().all(|s| !s.headers.contains_key("range")));

    // A mirror whose copy differs cannot finish the transfer: the client sees a cut, and
    // nothing is stored.
    let other_path = "/debian/doc/other.txt";
    let other = Origin::start().await;
    let differs = Origin::start().await;
    other.put(other_path, body.clone());
    other.set(other_path, Behavior::CutAfter(1 << 20));
    let mut changed = body.clone();
    changed[1000] ^= 0xff;
    differs.put(other_path, changed);
    let dir = cache_dir();
    let proxy = debian_mirrors(&[&other.base("debian")], &differs, dir.path(), |_| {}).await;
    let r = proxy.get(&other_path[1..]).await;
    assert!(r.bytes().await.is_err(), "a mixed body is never completed");
    let r = proxy.get(&other_path[1..]).await;
    assert_eq!(x_cache(&r), "MISS", "nothing was stored");
    drop(r);
}

/// A Release file dated `age` ago, padded to about 256 KiB.
fn release(age: Duration) -> Vec<u8> {
    let date = httpdate::fmt_http_date(std::time::SystemTime::now() - age).replace("GMT", "UTC");
    let mut text = format!("Origin: Test\nSuite: noble\nDate: {date}\n");
    while text.len() < 256 << 10 {
        text.push_str(" 0123456789abcdef0123456789abcdef 1234 main/binary-amd64/Packages\n");
    }
    text.into_bytes()
}

#[tokio::test]
async fn the_benchmark_ranks_in_the_background_and_picks_the_fast_fresh_mirror() {
    const BENCH: &str = "/ubuntu/dists/noble/Release";
    let fast = Origin::start().await;
    let slow = Origin::start().await;
    let stale = Origin::start().await;
    let cutter = Origin::start().await;
    let lists = Origin::start().await;
    let dead = dead_base("ubuntu").await;
    let fresh = release(Duration::from_secs(60));
    for o in [&fast, &slow, &stale, &cutter] {
        o.put("/ubuntu/pool/main/x/x.deb", data(20_000, 11));
        o.put("/ubuntu/pool/main/y/y.deb", data(30_000, 12));
        o.put(BENCH, fresh.clone());
    }
    stale.put(BENCH, release(Duration::from_secs(2 * 86_400)));
    cutter.set(BENCH, Behavior::CutAfter(64 << 10));
    // The slow mirror holds its benchmark file back until the test has been served.
    slow.set(BENCH, Behavior::Gated(16 << 10));
    // The fast mirror is only in the geo list, without a scheme (https fails, http works).
    lists.put(
        "/mirrors.txt",
        format!(
            "# geo list\n{}\n\nnot a url\n",
            fast.base("ubuntu").trim_start_matches("http://")
        ),
    );
    let yaml = format!(
        "distributions:\n  - id: ubuntu\n    benchmark_url: \"dists/noble/Release\"\n    geo_mirror_api: \"http://{}/mirrors.txt\"\n    mirrors:\n      official: [\"{}\"]\n      custom: [\"{dead}\", \"{}\", \"{}\"]\n",
        lists.addr,
        slow.base("ubuntu"),
        stale.base("ubuntu"),
        cutter.base("ubuntu"),
    );
    let dir = cache_dir();
    let file = dir.path().join("distributions.yaml");
    std::fs::write(&file, yaml).unwrap();
    let proxy = Proxy::start(&fast, &dir.path().join("cache"), |c| {
        c.mode = apt_proxy::distro::Mode::Ubuntu;
        c.mirrors.clear();
        c.distributions_config = Some(file.clone());
        c.tuning.benchmark.probe_timeout = Duration::from_secs(5);
        c.tuning.benchmark.deadline = Duration::from_secs(20);
        // The geo list names a loopback mirror: the operator allows it.
        c.security.allow_private_upstreams = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let client = proxy.client();

    // Served at once, from the first configured mirror, while the benchmark runs.
    let r = proxy.get("ubuntu/pool/main/x/x.deb").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), data(20_000, 11));
    assert_eq!(slow.hits("/ubuntu/pool/main/x/x.deb"), 1);
    let sets = api_mirrors(&proxy).await;
    let ubuntu = set(&sets, "ubuntu");
    assert_eq!(ubuntu["benchmarking"], true, "{ubuntu}");
    assert!(ubuntu["last_benchmark"].is_null(), "{ubuntu}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    slow.release();

    let started = Instant::now();
    let ubuntu = loop {
        let sets = api_mirrors(&proxy).await;
        let ubuntu = set(&sets, "ubuntu").clone();
        if !ubuntu["last_benchmark"].is_null() {
            break ubuntu;
        }
        assert!(started.elapsed() < Duration::from_secs(25), "{ubuntu}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let urls: Vec<&str> = ubuntu["mirrors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["url"].as_str().unwrap())
        .collect();
    assert_eq!(urls, [fast.base("ubuntu"), slow.base("ubuntu")], "{ubuntu}");
    let fastest = &ubuntu["mirrors"][0]["measure"];
    let slower = &ubuntu["mirrors"][1]["measure"];
    assert!(
        fastest["bytes_per_sec"].as_u64() > slower["bytes_per_sec"].as_u64(),
        "{ubuntu}"
    );
    let dropped = ubuntu["last_benchmark"]["dropped"].as_array().unwrap();
    let reason = |url: &str| {
        dropped
            .iter()
            .find(|d| d["url"] == url)
            .map(|d| d["reason"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("{url} not dropped: {ubuntu}"))
    };
    assert!(reason(&dead).contains("connect"), "{}", reason(&dead));
    assert!(reason(&stale.base("ubuntu")).starts_with("stale"));
    assert!(reason(&cutter.base("ubuntu")).contains("transfer failed"));
    let https_fast = fast.base("ubuntu").replace("http://", "https://");
    reason(&https_fast);

    // The next download goes to the fastest mirror.
    let r = proxy.get("ubuntu/pool/main/y/y.deb").await;
    assert_eq!(r.bytes().await.unwrap(), data(30_000, 12));
    assert_eq!(fast.hits("/ubuntu/pool/main/y/y.deb"), 1);
    assert_eq!(slow.hits("/ubuntu/pool/main/y/y.deb"), 0);

    // A refresh benchmarks again.
    let r = client
        .post(proxy.url("api/mirrors/refresh"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let started = Instant::now();
    while !metrics(&proxy)
        .await
        .contains(r#"apt_proxy_mirror_benchmarks_total{distro="ubuntu"} 2"#)
    {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(lists.hits("/mirrors.txt"), 2);
}

/// Runs one benchmark of the ubuntu tree whose geo list (on `lists`) has `lines`, with the
/// configured mirror `official`; returns the set's view once the benchmark is done.
async fn benchmark_with_geo_list(
    official: &Origin,
    lists: &Origin,
    lines: &str,
    allow: &[&str],
) -> serde_json::Value {
    lists.put("/mirrors.txt", lines.to_string());
    let yaml = format!(
        "distributions:\n  - id: ubuntu\n    benchmark_url: \"dists/noble/Release\"\n    geo_mirror_api: \"http://{}/mirrors.txt\"\n    mirrors:\n      official: [\"{}\"]\n",
        lists.addr,
        official.base("ubuntu"),
    );
    let dir = cache_dir();
    let file = dir.path().join("distributions.yaml");
    std::fs::write(&file, yaml).unwrap();
    let allow: Vec<ipnet::IpNet> = allow.iter().map(|a| a.parse().unwrap()).collect();
    let proxy = Proxy::start(official, &dir.path().join("cache"), |c| {
        c.mode = apt_proxy::distro::Mode::Ubuntu;
        c.mirrors.clear();
        c.distributions_config = Some(file.clone());
        c.tuning.benchmark.probe_timeout = Duration::from_secs(3);
        c.tuning.benchmark.deadline = Duration::from_secs(10);
        c.security.allow_private_upstreams = allow;
    })
    .await;
    let started = Instant::now();
    loop {
        let sets = api_mirrors(&proxy).await;
        let ubuntu = set(&sets, "ubuntu").clone();
        if !ubuntu["last_benchmark"].is_null() {
            return ubuntu;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "{ubuntu}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ranked_urls(view: &serde_json::Value) -> Vec<String> {
    view["mirrors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["url"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_geo_list_cannot_point_the_proxy_at_internal_addresses() {
    const BENCH: &str = "/ubuntu/dists/noble/Release";
    let official = Origin::start().await;
    let internal = Origin::start().await;
    let lists = Origin::start().await;
    official.put(BENCH, release(Duration::from_secs(60)));
    internal.put(BENCH, release(Duration::from_secs(60)));
    let port = internal.addr.port();
    // Loopback in four spellings, a metadata address and a name that resolves to loopback.
    let lines = format!(
        "http://127.0.0.1:{port}/ubuntu/\nhttp://2130706433:{port}/ubuntu/\nhttp://0x7f.1:{port}/ubuntu/\nhttp://[::ffff:127.0.0.1]:{port}/ubuntu/\nhttp://169.254.169.254/ubuntu/\nhttp://localhost:{port}/ubuntu/\n"
    );
    let view = benchmark_with_geo_list(&official, &lists, &lines, &[]).await;
    assert_eq!(ranked_urls(&view), [official.base("ubuntu")], "{view}");
    assert_eq!(internal.total(), 0, "the internal origin was contacted");
    // The name is dropped when it resolves, with the reason.
    let dropped = view["last_benchmark"]["dropped"].to_string();
    assert!(dropped.contains("localhost"), "{dropped}");
    assert!(dropped.contains("internal address"), "{dropped}");
}

#[tokio::test]
async fn an_allowed_geo_mirror_must_still_serve_a_valid_index() {
    const BENCH: &str = "/ubuntu/dists/noble/Release";
    let official = Origin::start().await;
    let garbage = Origin::start().await;
    let good = Origin::start().await;
    let lists = Origin::start().await;
    official.put(BENCH, release(Duration::from_secs(60)));
    good.put(BENCH, release(Duration::from_secs(60)));
    // A 200 that is no index at all (a captive portal, an internal web server).
    garbage.put(BENCH, "<html>welcome</html>".repeat(100));
    let lines = format!("{}\n{}\n", garbage.base("ubuntu"), good.base("ubuntu"));
    let view = benchmark_with_geo_list(&official, &lists, &lines, &["127.0.0.0/8"]).await;
    let ranked = ranked_urls(&view);
    assert!(ranked.contains(&good.base("ubuntu")), "{view}");
    assert!(!ranked.contains(&garbage.base("ubuntu")), "{view}");
    let dropped = view["last_benchmark"]["dropped"].to_string();
    assert!(dropped.contains("no valid index"), "{dropped}");
}
