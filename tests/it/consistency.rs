//! Index consistency: the proxy never hands out an index its Release contradicts, nor a
//! package its Packages index contradicts.

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::origin::Behavior;
use crate::{Origin, Proxy, cache_dir, x_cache};

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// An unsigned Release listing `files` (path relative to `dists/stable/`, content).
fn release(files: &[(&str, &[u8])]) -> String {
    let mut text = "Origin: Test\nSuite: stable\nAcquire-By-Hash: yes\nSHA256:\n".to_string();
    for (path, body) in files {
        text.push_str(&format!(" {} {} {}\n", sha(body), body.len(), path));
    }
    text
}

const PACKAGES: &str = "dists/stable/main/binary-amd64/Packages";

/// Fetches each of `paths` (under debian/) through the proxy, whole.
async fn warm(proxy: &Proxy, paths: &[&str]) {
    for path in paths {
        proxy
            .get(&format!("debian/{path}"))
            .await
            .bytes()
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn an_index_the_new_release_contradicts_is_refetched() {
    let origin = Origin::start().await;
    let v1: &[u8] = b"Package: a\nVersion: 1\n";
    let v2: &[u8] = b"Package: a\nVersion: 2\n";
    origin.put(
        "/debian/dists/stable/InRelease",
        release(&[("main/binary-amd64/Packages", v1)]),
    );
    origin.put(&format!("/debian/{PACKAGES}"), v1.to_vec());
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    let client = proxy.client();
    let get = |path: String| {
        let (client, url) = (client.clone(), proxy.url(&path));
        async move {
            let r = client.get(url).send().await.unwrap();
            let cache = x_cache(&r);
            (
                r.status().as_u16(),
                cache,
                r.bytes().await.unwrap().to_vec(),
            )
        }
    };
    get("debian/dists/stable/InRelease".into()).await;
    assert_eq!(get(format!("debian/{PACKAGES}")).await.2, v1);

    // The mirror publishes a new version; the proxy learns it through the Release file while
    // its cached Packages is still within its freshness window.
    origin.put(
        "/debian/dists/stable/Release",
        release(&[("main/binary-amd64/Packages", v2)]),
    );
    origin.put(&format!("/debian/{PACKAGES}"), v2.to_vec());
    get("debian/dists/stable/Release".into()).await;
    let (status, cache, body) = get(format!("debian/{PACKAGES}")).await;
    assert_eq!((status, cache.as_str(), body.as_slice()), (200, "MISS", v2));
    assert_eq!(origin.hits(&format!("/debian/{PACKAGES}")), 2);
}

#[tokio::test]
async fn a_mirror_caught_mid_sync_still_gives_a_set_that_verifies() {
    let origin = Origin::start().await;
    let old: &[u8] = b"Package: a\nVersion: 1\n";
    let new: &[u8] = b"Package: a\nVersion: 2\n";
    // New InRelease, old Packages under the plain name, the new one under its by-hash name.
    origin.put(
        "/debian/dists/stable/InRelease",
        release(&[("main/binary-amd64/Packages", new)]),
    );
    origin.put(&format!("/debian/{PACKAGES}"), old.to_vec());
    let by_hash = format!(
        "/debian/dists/stable/main/binary-amd64/by-hash/SHA256/{}",
        sha(new)
    );
    origin.put(&by_hash, new.to_vec());
    // A second index whose by-hash copy is missing: fetched under its plain name, streamed (it
    // arrives slowly, so the client is reading it when it turns out wrong), and cut at its end:
    // the client never takes the wrong version as complete.
    let broken = "dists/stable/main/binary-i386/Packages";
    let new_i386: &[u8] = b"Package: b\n";
    origin.put(
        "/debian/dists/stable/InRelease",
        release(&[
            ("main/binary-amd64/Packages", new),
            ("main/binary-i386/Packages", new_i386),
        ]),
    );
    origin.put(
        &format!("/debian/{broken}"),
        "Package: old-b\n\n".repeat(10_000).into_bytes(),
    );
    origin.set(
        &format!("/debian/{broken}"),
        Behavior::Slow {
            chunk: 16_384,
            delay: Duration::from_millis(20),
        },
    );

    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    warm(&proxy, &["dists/stable/InRelease"]).await;
    let r = proxy.get(&format!("debian/{PACKAGES}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), new);
    assert_eq!(origin.hits(&by_hash), 1);
    // The Release allows by-hash names: the plain one, which the mirror may not have updated
    // yet, was not even asked for.
    assert_eq!(origin.hits(&format!("/debian/{PACKAGES}")), 0);
    // And it is cached as the verified version.
    let r = proxy.get(&format!("debian/{PACKAGES}")).await;
    assert_eq!(x_cache(&r), "HIT");
    assert_eq!(r.bytes().await.unwrap(), new);

    for attempt in 1..=2 {
        let r = proxy.get(&format!("debian/{broken}")).await;
        assert_eq!(x_cache(&r), "MISS", "nothing was stored");
        assert!(
            r.bytes().await.is_err(),
            "a body its Release contradicts must not look complete"
        );
        assert_eq!(origin.hits(&format!("/debian/{broken}")), attempt);
    }
}

/// An index its Release vouches for streams like any file: the client has its first bytes
/// while the mirror is still sending (the by-hash copy); it is checked at its end and stored.
#[tokio::test]
async fn a_verified_index_streams_as_it_arrives() {
    let origin = Origin::start().await;
    let packages: Vec<u8> = (0..4000)
        .map(|i| {
            format!(
                "Package: p{i}\nFilename: pool/main/p/p{i}_1_all.deb\nSize: 1\nSHA256: {}\n\n",
                sha(&[i as u8])
            )
        })
        .collect::<String>()
        .into_bytes();
    origin.put(
        "/debian/dists/stable/InRelease",
        release(&[("main/binary-amd64/Packages", &packages)]),
    );
    let by_hash = format!(
        "/debian/dists/stable/main/binary-amd64/by-hash/SHA256/{}",
        sha(&packages)
    );
    origin.put(&by_hash, packages.clone());
    origin.set(&by_hash, Behavior::Gated(100_000));
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    warm(&proxy, &["dists/stable/InRelease"]).await;
    let mut r = proxy.get(&format!("debian/{PACKAGES}")).await;
    assert_eq!(r.status(), 200);
    let mut got = Vec::new();
    while got.len() < 100_000 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), r.chunk())
            .await
            .expect("the start of the index was held back until its end")
            .unwrap()
            .expect("the body ended early");
        got.extend_from_slice(&chunk);
    }
    origin.release();
    while let Some(chunk) = r.chunk().await.unwrap() {
        got.extend_from_slice(&chunk);
    }
    assert!(got == packages, "the index arrived altered");
    let r = proxy.get(&format!("debian/{PACKAGES}")).await;
    assert_eq!(x_cache(&r), "HIT");
    assert_eq!(origin.hits(&format!("/debian/{PACKAGES}")), 0);
}

#[tokio::test]
async fn packages_must_match_their_index() {
    let origin = Origin::start().await;
    let good: &[u8] = b"the real package";
    let path = "pool/main/a/a_1_all.deb";
    let packages = format!(
        "Package: a\nFilename: {path}\nSize: {}\nSHA256: {}\n\n",
        good.len(),
        sha(good)
    );
    origin.put(
        "/debian/dists/stable/InRelease",
        release(&[("main/binary-amd64/Packages", packages.as_bytes())]),
    );
    origin.put(&format!("/debian/{PACKAGES}"), packages.clone());
    // Tampered with, its length kept, and sent slowly: the answer has begun when the hash
    // is found wrong at the end.
    let tampered: &[u8] = b"the fake package";
    assert_eq!(tampered.len(), good.len());
    origin.put(&format!("/debian/{path}"), tampered.to_vec());
    origin.set(
        &format!("/debian/{path}"),
        Behavior::Slow {
            chunk: 4,
            delay: Duration::from_millis(20),
        },
    );
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    warm(&proxy, &["dists/stable/InRelease", PACKAGES]).await;
    let r = proxy.get(&format!("debian/{path}")).await;
    assert_eq!((r.status().as_u16(), x_cache(&r)), (200, "MISS".into()));
    assert!(
        r.bytes().await.is_err(),
        "a package that contradicts its index is never handed out whole"
    );

    // Once the mirror serves the right file, it is fetched again and kept.
    origin.put(&format!("/debian/{path}"), good.to_vec());
    let r = proxy.get(&format!("debian/{path}")).await;
    assert_eq!(r.bytes().await.unwrap(), good);
    let r = proxy.get(&format!("debian/{path}")).await;
    assert_eq!(x_cache(&r), "HIT");
    assert_eq!(origin.hits(&format!("/debian/{path}")), 2);
}

#[tokio::test]
async fn a_republished_package_is_not_served_from_the_old_copy() {
    let origin = Origin::start().await;
    let path = "pool/main/a/a_1_all.deb";
    let index = |body: &[u8]| {
        format!(
            "Package: a\nFilename: {path}\nSize: {}\nSHA256: {}\n",
            body.len(),
            sha(body)
        )
    };
    let v1: &[u8] = b"first build";
    let v2: &[u8] = b"second build, same name";
    origin.put(&format!("/debian/{path}"), v1.to_vec());
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    assert_eq!(
        proxy
            .get(&format!("debian/{path}"))
            .await
            .bytes()
            .await
            .unwrap(),
        v1
    );

    // The archive republishes the file; the new Packages names the new hash.
    origin.put(&format!("/debian/{path}"), v2.to_vec());
    origin.put(&format!("/debian/{PACKAGES}"), index(v2));
    proxy
        .get(&format!("debian/{PACKAGES}"))
        .await
        .bytes()
        .await
        .unwrap();
    let r = proxy.get(&format!("debian/{path}")).await;
    assert_eq!(x_cache(&r), "MISS");
    assert_eq!(r.bytes().await.unwrap(), v2);
}
