//! A hostile or broken mirror side: redirects into the proxy's own network, index bombs,
//! endless and trickling bodies. Nothing it sends may reach an internal address, exhaust
//! memory or disk, or end up stored.

use crate::{Behavior, Origin, Proxy, cache_dir, data, read_all, x_cache};

/// Files under the cache's `data/` directory.
fn stored_files(dir: &std::path::Path) -> usize {
    fn walk(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| {
                let p = e.path();
                if p.is_dir() { walk(&p) } else { 1 }
            })
            .sum()
    }
    walk(&dir.join("data"))
}

#[tokio::test]
async fn mirror_redirects_to_internal_addresses_are_refused_and_nothing_is_stored() {
    let mirror = Origin::start().await;
    // An internal service the mirror tries to reach through the proxy.
    let internal = Origin::start().await;
    internal.put("/secret", "internal data");
    let port = internal.addr.port();
    let targets = [
        (301, format!("http://127.0.0.1:{port}/secret")),
        (302, format!("http://2130706433:{port}/secret")),
        (303, format!("http://0x7f000001:{port}/secret")),
        (307, format!("http://[::ffff:127.0.0.1]:{port}/secret")),
        (308, format!("http://localhost:{port}/secret")),
        (302, "http://169.254.169.254/latest/meta-data/".to_string()),
        (302, "http://[fd00::1]/x".to_string()),
        (302, format!("http://0.0.0.0:{port}/secret")),
    ];
    for (i, (code, to)) in targets.iter().enumerate() {
        mirror.set(
            &format!("/debian/pool/main/r/r{i}.deb"),
            Behavior::RedirectWith(*code, to.clone()),
        );
    }
    let dir = cache_dir();
    let proxy = Proxy::start(&mirror, dir.path(), |_| {}).await;
    for (i, (_, to)) in targets.iter().enumerate() {
        let path = format!("debian/pool/main/r/r{i}.deb");
        for _ in 0..2 {
            let r = proxy.get(&path).await;
            assert_eq!(r.status(), 502, "{to}");
            assert_ne!(x_cache(&r), "HIT");
            let text = r.text().await.unwrap();
            assert!(text.contains("address"), "{to}: {text}");
            assert!(!text.contains("internal data"));
        }
        // Nothing was stored: the second request asked the mirror again.
        assert_eq!(mirror.hits(&format!("/{path}")), 2, "{to}");
    }
    assert_eq!(internal.total(), 0, "the internal origin was reached");
    assert_eq!(stored_files(dir.path()), 0);
}

#[tokio::test]
async fn redirects_within_the_mirror_or_to_allowed_networks_are_followed() {
    let mirror = Origin::start().await;
    let lan = Origin::start().await;
    lan.put("/pool/x.deb", data(5000, 3));
    mirror.put("/debian/pool/real.deb", "moved here");
    mirror.set(
        "/debian/pool/moved.deb",
        Behavior::RedirectWith(301, format!("http://{}/debian/pool/real.deb", mirror.addr)),
    );
    mirror.set(
        "/debian/pool/x.deb",
        Behavior::Redirect(format!("http://{}/pool/x.deb", lan.addr)),
    );
    // A redirect loop on the mirror itself ends after a few hops.
    mirror.set(
        "/debian/pool/loop.deb",
        Behavior::Redirect("/debian/pool/loop.deb".into()),
    );

    // Without an allow-list the LAN origin is refused; with one it is followed.
    let dir = cache_dir();
    let proxy = Proxy::start(&mirror, dir.path(), |_| {}).await;
    assert_eq!(proxy.text("debian/pool/moved.deb").await, "moved here");
    assert_eq!(proxy.get("debian/pool/x.deb").await.status(), 502);
    let r = proxy.get("debian/pool/loop.deb").await;
    assert_eq!(r.status(), 502);
    assert!(mirror.hits("/debian/pool/loop.deb") <= 7);
    proxy.stop().await;

    let dir = cache_dir();
    let proxy = Proxy::start(&mirror, dir.path(), |c| {
        c.security.allow_private_upstreams = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let r = proxy.get("debian/pool/x.deb").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), data(5000, 3));
}

async fn metrics(proxy: &Proxy) -> String {
    proxy.text("metrics").await
}

/// Gzip members of 4 MiB of newlines each, `n` of them concatenated: a valid gzip file that
/// expands `n` × 4 MiB from a few KiB per member.
fn gzip_bomb(n: usize) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![b'\n'; 4 << 20]).unwrap();
    let member = gz.finish().unwrap();
    member
        .iter()
        .copied()
        .cycle()
        .take(member.len() * n)
        .collect()
}

#[tokio::test]
async fn index_bombs_are_served_as_received_but_not_parsed() {
    let origin = Origin::start().await;
    let packages = "/debian/dists/stable/main/binary-amd64/Packages.gz";
    let release = "/debian/dists/stable/Release";
    let bomb = gzip_bomb(16); // 64 MiB unpacked
    origin.put(packages, bomb.clone());
    // A Release past its size limit (a real one is a few hundred KiB).
    let big_release = format!(
        "Origin: Test\nSHA256:\n{}",
        " 0000000000000000000000000000000000000000000000000000000000000000 1 x\n".repeat(20_000)
    );
    origin.put(release, big_release.clone());
    origin.put("/debian/pool/main/a/a.deb", data(1000, 1));
    let dir = cache_dir();
    let tune = |c: &mut apt_proxy::config::Config| {
        c.tuning.index_limits.unpacked_bytes = 16 << 20;
        c.tuning.index_limits.release_bytes = 256 << 10;
    };
    let proxy = Proxy::start(&origin, dir.path(), tune).await;
    let r = proxy.get(&packages[1..]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), bomb, "served as received");
    let r = proxy.get(&release[1..]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), big_release);
    // Still serving. A package request waits for the repo's package index to be parsed (off
    // the index's own path), so the metric is read after it.
    let r = proxy.get("debian/pool/main/a/a.deb").await;
    assert_eq!(r.bytes().await.unwrap(), data(1000, 1));
    let text = metrics(&proxy).await;
    assert!(
        text.contains(r#"apt_proxy_index_unparsed_total{distro="debian"} 2"#),
        "{text}"
    );
    // A hit on the bomb costs no parse.
    assert_eq!(x_cache(&proxy.get(&packages[1..]).await), "HIT");
    proxy.stop().await;

    // After a restart the cached Release is read back when a file of its suite is asked for:
    // it is over the limit again, and counted again, not loaded whole.
    let proxy = Proxy::start(&origin, dir.path(), tune).await;
    let r = proxy.get(&packages[1..]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(x_cache(&r), "HIT");
    let text = metrics(&proxy).await;
    assert!(
        text.contains(r#"apt_proxy_index_unparsed_total{distro="debian"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_trickling_mirror_is_left_for_the_next_one() {
    let trickle = Origin::start().await;
    let good = Origin::start().await;
    let path = "/debian/pool/main/t/trickle.deb";
    let body = data(60_000, 4);
    trickle.put(path, body.clone());
    good.put(path, body.clone());
    // 100 bytes every 100 ms: about 1 KB/s, under a floor of 5,000 bytes a second.
    trickle.set(
        path,
        Behavior::Slow {
            chunk: 100,
            delay: std::time::Duration::from_millis(100),
        },
    );
    let dir = cache_dir();
    let proxy = Proxy::start(&good, dir.path(), |c| {
        let pins = format!("{},{}", trickle.base("debian"), good.base("debian"));
        c.mirrors.insert("debian".into(), pins);
        c.tuning.min_rate = Some((5_000, std::time::Duration::from_secs(1)));
    })
    .await;
    let started = std::time::Instant::now();
    let r = proxy.get(&path[1..]).await;
    assert_eq!(read_all(r).await.unwrap(), body);
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    let ranged = good.seen();
    assert_eq!(ranged.len(), 1);
    assert!(ranged[0].headers.contains_key("range"), "{ranged:?}");
    let text = metrics(&proxy).await;
    assert!(
        text.contains(r#"apt_proxy_mirror_failovers_total{distro="debian"} 1"#),
        "{text}"
    );
    assert_eq!(x_cache(&proxy.get(&path[1..]).await), "HIT");
}

#[tokio::test]
async fn bodies_past_the_largest_file_stored_are_streamed_or_cut() {
    let origin = Origin::start().await;
    let body = data(3 << 20, 5);
    origin.put("/debian/pool/announced.deb", body.clone());
    origin.put("/debian/pool/endless.deb", body.clone());
    origin.set(
        "/debian/pool/endless.deb",
        Behavior::Unsized {
            chunk: 64 << 10,
            delay: std::time::Duration::ZERO,
        },
    );
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |c| {
        c.cache_limits.max_object_bytes = 1 << 20;
    })
    .await;
    // Announced larger: streamed whole, not stored.
    for _ in 0..2 {
        let r = proxy.get("debian/pool/announced.deb").await;
        assert_eq!(x_cache(&r), "SKIP");
        assert_eq!(read_all(r).await.unwrap(), body);
    }
    // Without a length: cut at the limit, nothing stored.
    let r = proxy.get("debian/pool/endless.deb").await;
    let got = read_all(r).await;
    assert!(
        got.is_err(),
        "the transfer is cut, not ended as if complete"
    );
    assert_eq!(stored_files(dir.path()), 0);
    assert_eq!(proxy.get("debian/pool/endless.deb").await.status(), 200);
    assert_eq!(origin.hits("/debian/pool/endless.deb"), 2);
}
