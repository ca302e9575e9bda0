//! Every package verified before it is stored, in every format: a `.deb` against its Packages
//! file, an `.rpm` against the primary metadata its repomd.xml names, an `.apk` against its
//! APKINDEX (and its data segment against its own control segment). Hostile origins: the right
//! length with the wrong bytes, a package changed between two fetches, a package fetched before
//! its index, and a restart between the index and the package.

use base64::Engine as _;
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};

use apt_proxy::testkit::{apk, gzip, tar};

use crate::{Origin, Proxy, cache_dir, data, read_all, x_cache};

fn hex_of<D: Digest>(bytes: &[u8]) -> String {
    hex::encode(D::digest(bytes))
}

/// An Alpine v2 package holding `payload`, and its control segment.
fn apk_of(payload: &[u8]) -> (Vec<u8>, Vec<u8>) {
    apk(&[("usr/share/x/payload", payload)], false)
}

/// One package format: where its index and package live, and how an index naming a given
/// package body is written.
#[derive(Clone, Copy)]
enum Format {
    Deb,
    Rpm,
    Apk,
}

impl Format {
    fn repo(self) -> &'static str {
        match self {
            Format::Deb => "debian",
            Format::Rpm => "centos",
            Format::Apk => "alpine",
        }
    }

    /// The package's path in the repo.
    fn package(self) -> &'static str {
        match self {
            Format::Deb => "pool/main/x/x_1.0_all.deb",
            Format::Rpm => "9/os/x86_64/Packages/x-1.0-1.noarch.rpm",
            Format::Apk => "v3.19/main/x86_64/x-1.0-r0.apk",
        }
    }

    /// A package body; `n` makes another one of the same format and length.
    fn body(self, n: u64) -> Vec<u8> {
        match self {
            Format::Apk => apk_of(&data(40_000, n)).0,
            _ => data(40_000, n),
        }
    }

    /// The same length as `good`, other bytes: a byte in the middle flipped.
    fn tampered(self, good: &[u8]) -> Vec<u8> {
        let mut bad = good.to_vec();
        let at = match self {
            // The MTIME of the control segment's gzip header: the package still agrees with
            // itself (its data segment is the one its .PKGINFO names), so only the index's
            // `C:` hash of the control segment can catch it.
            Format::Apk => gzip_members(good)[1] + 4,
            Format::Deb | Format::Rpm => bad.len() / 2,
        };
        bad[at] ^= 0x55;
        bad
    }

    /// Puts on `origin` the indexes that name `package` (its body), with the Release file or
    /// repomd.xml that vouches for them; returns the paths a client fetches, in order.
    fn publish(self, origin: &Origin, package: &[u8]) -> Vec<String> {
        let repo = self.repo();
        let put = |path: &str, body: Vec<u8>| origin.put(&format!("/{repo}/{path}"), body);
        match self {
            Format::Deb => {
                let packages = format!(
                    "Package: x\nVersion: 1.0\nFilename: {}\nSize: {}\nSHA256: {}\n\n",
                    self.package(),
                    package.len(),
                    hex_of::<Sha256>(package)
                );
                let gz = gzip(packages.as_bytes());
                let release = format!(
                    "Origin: Test\nSuite: stable\nSHA256:\n {} {} main/binary-amd64/Packages.gz\n",
                    hex_of::<Sha256>(&gz),
                    gz.len()
                );
                put("dists/stable/main/binary-amd64/Packages.gz", gz);
                put("dists/stable/InRelease", release.into_bytes());
                vec![
                    "dists/stable/InRelease".into(),
                    "dists/stable/main/binary-amd64/Packages.gz".into(),
                ]
            }
            Format::Rpm => {
                // SHA-512 in the metadata, zstd on the wire: neither is the common case.
                let primary = format!(
                    "<?xml version=\"1.0\"?>\n<metadata packages=\"1\">\n<package type=\"rpm\">\n  <name>x</name>\n  <checksum type=\"sha512\" pkgid=\"YES\">{}</checksum>\n  <description>a &lt;b&gt; c</description>\n  <size package=\"{}\" installed=\"1\" archive=\"1\"/>\n  <location href=\"Packages/x-1.0-1.noarch.rpm\"/>\n</package>\n</metadata>\n",
                    hex_of::<Sha512>(package),
                    package.len()
                );
                let zst = ruzstd::encoding::compress_to_vec(
                    primary.as_bytes(),
                    ruzstd::encoding::CompressionLevel::Fastest,
                );
                let sha = hex_of::<Sha256>(&zst);
                let href = format!("repodata/{sha}-primary.xml.zst");
                let repomd = format!(
                    "<?xml version=\"1.0\"?>\n<repomd>\n<data type=\"primary\">\n  <checksum type=\"sha256\">{sha}</checksum>\n  <location href=\"{href}\"/>\n  <size>{}</size>\n</data>\n</repomd>\n",
                    zst.len()
                );
                put(&format!("9/os/x86_64/{href}"), zst);
                put("9/os/x86_64/repodata/repomd.xml", repomd.into_bytes());
                vec![
                    "9/os/x86_64/repodata/repomd.xml".into(),
                    format!("9/os/x86_64/{href}"),
                ]
            }
            Format::Apk => {
                let control = control_segment(package);
                let index = format!(
                    "C:Q1{}\nP:x\nV:1.0-r0\nA:x86_64\nS:{}\nT:test\n\n",
                    base64::engine::general_purpose::STANDARD.encode(Sha1::digest(&control)),
                    package.len()
                );
                let mut file = gzip(&tar(&[(".SIGN.RSA.test.rsa.pub", b"sig")], true));
                file.extend(gzip(&tar(
                    &[("DESCRIPTION", b"test"), ("APKINDEX", index.as_bytes())],
                    false,
                )));
                put("v3.19/main/x86_64/APKINDEX.tar.gz", file);
                vec!["v3.19/main/x86_64/APKINDEX.tar.gz".into()]
            }
        }
    }
}

/// The control segment of a package built by [`apk`] (the second gzip member).
fn control_segment(package: &[u8]) -> Vec<u8> {
    let members = gzip_members(package);
    package[members[1]..members[2]].to_vec()
}

/// The start offsets of the gzip members of `bytes`, and its length.
fn gzip_members(bytes: &[u8]) -> Vec<usize> {
    let mut starts = vec![0];
    let mut at = 0;
    while at < bytes.len() {
        let mut decoder = flate2::bufread::GzDecoder::new(&bytes[at..]);
        std::io::copy(&mut decoder, &mut std::io::sink()).unwrap();
        let rest = decoder.into_inner().len();
        at = bytes.len() - rest;
        starts.push(at);
    }
    starts
}

async fn failures(proxy: &Proxy, repo: &str) -> u64 {
    let text = proxy.text("metrics").await;
    let name = format!("apt_proxy_integrity_failures_total{{distro=\"{repo}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&name))
        .map_or(0, |v| v.trim().parse().unwrap())
}

async fn fetch_all(proxy: &Proxy, repo: &str, paths: &[String]) {
    for path in paths {
        let r = proxy.get(&format!("{repo}/{path}")).await;
        assert_eq!(r.status(), 200, "{path}");
        read_all(r).await.unwrap();
    }
}

/// A GET of the package: (complete body, or None when refused or cut).
async fn get_package(proxy: &Proxy, format: Format) -> (Option<Vec<u8>>, String) {
    let r = proxy
        .get(&format!("{}/{}", format.repo(), format.package()))
        .await;
    let cache = x_cache(&r);
    if r.status() != 200 {
        return (None, cache);
    }
    (read_all(r).await.ok(), cache)
}

/// The right length and the wrong bytes, from a mirror whose index the proxy has read: the
/// client never gets it whole, the failure is counted once, nothing is kept, and the right
/// file is fetched and kept once the mirror serves it.
async fn tampered_with_index(format: Format) {
    let origin = Origin::start().await;
    let good = format.body(1);
    let indexes = format.publish(&origin, &good);
    let bad = format.tampered(&good);
    assert_eq!(bad.len(), good.len());
    let upstream = format!("/{}/{}", format.repo(), format.package());
    origin.put(&upstream, bad);
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    fetch_all(&proxy, format.repo(), &indexes).await;

    let (body, _) = get_package(&proxy, format).await;
    assert!(
        body.is_none(),
        "a package that contradicts its index is never handed out whole"
    );
    assert_eq!(failures(&proxy, format.repo()).await, 1);

    origin.put(&upstream, good.clone());
    let (body, cache) = get_package(&proxy, format).await;
    assert_eq!(
        (body.as_deref(), cache.as_str()),
        (Some(&good[..]), "MISS"),
        "nothing was kept"
    );
    let (body, cache) = get_package(&proxy, format).await;
    assert_eq!((body.as_deref(), cache.as_str()), (Some(&good[..]), "HIT"));
    assert_eq!(origin.hits(&upstream), 2);
    assert_eq!(failures(&proxy, format.repo()).await, 1);
}

/// A package fetched before its index is kept (it was checked against nothing); when the
/// index arrives and names other bytes (the mirror changed the package between two fetches),
/// the stored copy is dropped without being read again, counted, and the next request gets
/// the new one.
async fn changed_after_it_was_fetched_before_its_index(format: Format) {
    let origin = Origin::start().await;
    let first = format.body(1);
    let second = format.body(2);
    let upstream = format!("/{}/{}", format.repo(), format.package());
    origin.put(&upstream, first.clone());
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    let (body, _) = get_package(&proxy, format).await;
    assert_eq!(body.as_deref(), Some(&first[..]));
    let (_, cache) = get_package(&proxy, format).await;
    assert_eq!(cache, "HIT");

    origin.put(&upstream, second.clone());
    let indexes = format.publish(&origin, &second);
    fetch_all(&proxy, format.repo(), &indexes).await;
    let (body, cache) = get_package(&proxy, format).await;
    assert_eq!(
        (body.as_deref(), cache.as_str()),
        (Some(&second[..]), "MISS")
    );
    assert_eq!(failures(&proxy, format.repo()).await, 1);
    assert_eq!(origin.hits(&upstream), 2);
    let (_, cache) = get_package(&proxy, format).await;
    assert_eq!(cache, "HIT");

    // A package that agrees with the index it was fetched before is kept as it is.
    let origin = Origin::start().await;
    origin.put(&upstream, first.clone());
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    get_package(&proxy, format).await;
    let indexes = format.publish(&origin, &first);
    fetch_all(&proxy, format.repo(), &indexes).await;
    let (body, cache) = get_package(&proxy, format).await;
    assert_eq!((body.as_deref(), cache.as_str()), (Some(&first[..]), "HIT"));
    assert_eq!(failures(&proxy, format.repo()).await, 0);
}

/// What the proxy learnt survives a restart: the indexes in the cache are read again, and a
/// tampered package is refused without the client fetching the index again.
async fn learnt_before_a_restart(format: Format) {
    let origin = Origin::start().await;
    let good = format.body(1);
    let indexes = format.publish(&origin, &good);
    let upstream = format!("/{}/{}", format.repo(), format.package());
    // Another well-formed package: only the index can tell.
    origin.put(&upstream, format.body(2));
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    fetch_all(&proxy, format.repo(), &indexes).await;
    proxy.stop().await;

    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    let (body, _) = get_package(&proxy, format).await;
    assert!(body.is_none(), "refused after a restart");
    assert_eq!(failures(&proxy, format.repo()).await, 1);
    for index in &indexes {
        assert_eq!(
            origin.hits(&format!("/{}/{index}", format.repo())),
            1,
            "{index} was not fetched again"
        );
    }
}

/// The three hostile cases for one format.
async fn every_case(format: Format) {
    tampered_with_index(format).await;
    changed_after_it_was_fetched_before_its_index(format).await;
    learnt_before_a_restart(format).await;
}

#[tokio::test]
async fn rpm_packages_are_checked_against_their_primary_metadata() {
    every_case(Format::Rpm).await;
}

#[tokio::test]
async fn apk_packages_are_checked_against_their_apkindex() {
    every_case(Format::Apk).await;
}

#[tokio::test]
async fn deb_packages_are_checked_before_and_after_a_restart() {
    every_case(Format::Deb).await;
}

/// An `.apk` is checked against itself even without an index: a data segment that is not the
/// one its control segment names, or bytes that are no package, are never stored.
#[tokio::test]
async fn an_apk_that_contradicts_itself_is_never_stored() {
    let origin = Origin::start().await;
    let (good, _) = apk_of(&data(30_000, 5));
    let members = gzip_members(&good);
    let mut bad = good.clone();
    // A byte inside the data segment's deflate stream.
    bad[(members[2] + members[3]) / 2] ^= 0x01;
    let path = "/alpine/v3.19/main/x86_64/y-2.0-r0.apk";
    origin.put(path, bad);
    origin.put(
        "/alpine/v3.19/main/x86_64/z-1-r0.apk",
        "<html>not found</html>",
    );
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    let r = proxy.get(&path[1..]).await;
    assert!(r.status() != 200 || read_all(r).await.is_err());
    let r = proxy.get("alpine/v3.19/main/x86_64/z-1-r0.apk").await;
    assert!(r.status() != 200 || read_all(r).await.is_err());
    assert_eq!(failures(&proxy, "alpine").await, 2);

    origin.put(path, good.clone());
    let r = proxy.get(&path[1..]).await;
    assert_eq!(x_cache(&r), "MISS");
    assert_eq!(read_all(r).await.unwrap(), good);
    assert_eq!(x_cache(&proxy.get(&path[1..]).await), "HIT");

    // An apk v3 package carries no hash the proxy can check: stored on its length, counted.
    let v3 = "/alpine/v3.19/main/x86_64/w-3.0-r0.apk";
    origin.put(v3, [b"ADB.pckg".as_slice(), &data(2000, 6)].concat());
    let r = proxy.get(&v3[1..]).await;
    assert_eq!(r.status(), 200);
    read_all(r).await.unwrap();
    assert_eq!(x_cache(&proxy.get(&v3[1..]).await), "HIT");
    let text = proxy.text("metrics").await;
    assert!(
        text.contains(r#"apt_proxy_integrity_unchecked_total{distro="alpine"} 1"#),
        "{text}"
    );
    assert_eq!(failures(&proxy, "alpine").await, 2);
}

/// A tampered package from the first mirror is answered from the next one on the client's
/// retry: the mirror that sent it is demoted.
#[tokio::test]
async fn the_mirror_that_sent_a_tampered_package_is_left_for_the_next_one() {
    let bad_mirror = Origin::start().await;
    let good_mirror = Origin::start().await;
    let format = Format::Rpm;
    let good = format.body(1);
    let indexes = format.publish(&bad_mirror, &good);
    format.publish(&good_mirror, &good);
    let upstream = format!("/{}/{}", format.repo(), format.package());
    bad_mirror.put(&upstream, format.tampered(&good));
    good_mirror.put(&upstream, good.clone());
    let dir = cache_dir();
    let proxy = Proxy::start(&good_mirror, dir.path(), |c| {
        let pins = format!(
            "{},{}",
            bad_mirror.base("centos"),
            good_mirror.base("centos")
        );
        c.mirrors.insert("centos".into(), pins);
    })
    .await;
    fetch_all(&proxy, format.repo(), &indexes).await;
    let (body, _) = get_package(&proxy, format).await;
    assert!(body.is_none());
    let (body, _) = get_package(&proxy, format).await;
    assert_eq!(
        body.as_deref(),
        Some(&good[..]),
        "the retry gets the good copy"
    );
    assert_eq!(good_mirror.hits(&upstream), 1);
    assert_eq!(bad_mirror.hits(&upstream), 1);
    assert_eq!(failures(&proxy, "centos").await, 1);
}

/// Clients percent-encode some characters of package names (`+` as `%2B` or `%2b`); the index
/// writes them plainly. Both the check of a download and the check of a stored package when
/// its index arrives find the package under either spelling.
#[tokio::test]
async fn percent_encoded_package_names_are_checked_too() {
    for plus in ["%2B", "%2b"] {
        encoded_package_name_checked(plus).await;
    }
}

/// [`percent_encoded_package_names_are_checked_too`] with `+` written as `plus`.
async fn encoded_package_name_checked(plus: &str) {
    let origin = Origin::start().await;
    let plain = "pool/main/l/libx++/libx++1_1.0_all.deb";
    let spelled = &plain.replace('+', plus);
    let first = data(3000, 1);
    let second = data(3000, 2);
    origin.put(&format!("/debian/{spelled}"), first.clone());
    // The test origin matches paths as sent: it keeps the file under the client's spelling.
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    let r = proxy.get(&format!("debian/{spelled}")).await;
    assert_eq!(read_all(r).await.unwrap(), first);

    // The index names other bytes: the stored copy is dropped when the index arrives.
    let packages = format!(
        "Package: libx++1\nFilename: {plain}\nSize: {}\nSHA256: {}\n\n",
        second.len(),
        hex_of::<Sha256>(&second)
    );
    origin.put("/debian/dists/stable/main/binary-amd64/Packages", packages);
    fetch_all(
        &proxy,
        "debian",
        &["dists/stable/main/binary-amd64/Packages".to_string()],
    )
    .await;
    origin.put(&format!("/debian/{spelled}"), first.clone());
    let r = proxy.get(&format!("debian/{spelled}")).await;
    // Refused: a 502 when the check fails before the head goes out, else a cut transfer.
    let status = r.status();
    let body = read_all(r).await.ok();
    assert!(
        status != 200 || body.is_none(),
        "the old bytes are not served"
    );
    // One failure for the stored copy, one for the download that still has the old bytes.
    assert_eq!(failures(&proxy, "debian").await, 2);
    origin.put(&format!("/debian/{spelled}"), second.clone());
    let r = proxy.get(&format!("debian/{spelled}")).await;
    assert_eq!(read_all(r).await.unwrap(), second);
}
