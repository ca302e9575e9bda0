//! distributions.yaml served like built-ins, hot reload (API and SIGHUP), API keys, and the
//! HTTPS listener.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::crash::Binary;
use crate::{Behavior, Origin, Proxy, cache_dir, x_cache};

fn cache_control(r: &reqwest::Response) -> String {
    r.headers()
        .get("cache-control")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

fn fedora_file(origin: &Origin, extra: &str) -> String {
    format!(
        "distributions:\n  - id: fedora\n    name: Fedora\n    cache_rules:\n      - pattern: \"repomd\\\\.xml$\"\n        cache_control: \"max-age=0\"\n    mirrors:\n      official: [\"{}\"]\n{extra}",
        origin.base("fedora")
    )
}

/// The file with a second distribution, `extra`, added.
fn with_extra(origin: &Origin) -> String {
    let extra = format!(
        "  - id: extra\n    mirrors:\n      official: [\"{}\"]\n",
        origin.base("extra")
    );
    fedora_file(origin, &extra)
}

#[tokio::test]
async fn a_distribution_from_the_file_is_routed_cached_and_ruled() {
    let origin = Origin::start().await;
    origin.put("/fedora/41/x86_64/os/Packages/a.rpm", "rpm");
    origin.put("/fedora/41/x86_64/os/repodata/repomd.xml", "<repomd/>");
    origin.set_cache_control(
        "/fedora/41/x86_64/os/Packages/a.rpm",
        "public, max-age=86400",
    );
    origin.set_cache_control("/fedora/41/x86_64/os/repodata/repomd.xml", "max-age=3600");
    let dir = cache_dir();
    let file = dir.path().join("distributions.yaml");
    std::fs::write(&file, fedora_file(&origin, "")).unwrap();
    let cache = dir.path().join("cache");
    let proxy = Proxy::start(&origin, &cache, |c| {
        c.distributions_config = Some(file.clone())
    })
    .await;
    // No rule matches a package: the mirror's Cache-Control is passed on, stored or not.
    for expected in ["MISS", "HIT"] {
        let r = proxy.get("fedora/41/x86_64/os/Packages/a.rpm").await;
        assert_eq!(x_cache(&r), expected);
        assert_eq!(cache_control(&r), "public, max-age=86400");
        assert_eq!(r.text().await.unwrap(), "rpm");
    }
    // A header longer than the proxy keeps (1 KiB) is dropped, not stored.
    origin.put("/fedora/41/x86_64/os/Packages/b.rpm", "b");
    let long = format!("max-age=1, x=\"{}\"", "y".repeat(1100));
    origin.set_cache_control("/fedora/41/x86_64/os/Packages/b.rpm", &long);
    let r = proxy.get("fedora/41/x86_64/os/Packages/b.rpm").await;
    assert_eq!(
        (r.status().as_u16(), cache_control(&r)),
        (200, String::new())
    );
    let r = proxy
        .forward_client()
        .get(format!(
            "{}41/x86_64/os/Packages/a.rpm",
            origin.base("fedora")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(x_cache(&r), "HIT");
    // The rule makes repomd.xml stale at once: every request revalidates.
    // The rule's Cache-Control replaces the mirror's, on 200s and on 404s, but not on a 502.
    for _ in 0..3 {
        let r = proxy.get("fedora/41/x86_64/os/repodata/repomd.xml").await;
        assert_eq!(cache_control(&r), "max-age=0");
        assert_eq!(r.text().await.unwrap(), "<repomd/>");
    }
    assert_eq!(origin.hits("/fedora/41/x86_64/os/repodata/repomd.xml"), 3);
    // A 304 says what its 200 says.
    let etag = proxy
        .get("fedora/41/x86_64/os/repodata/repomd.xml")
        .await
        .headers()["etag"]
        .clone();
    let r = proxy
        .client()
        .get(proxy.url("fedora/41/x86_64/os/repodata/repomd.xml"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), cache_control(&r)),
        (304, "max-age=0".into())
    );
    let r = proxy.get("fedora/42/repodata/repomd.xml").await;
    assert_eq!(r.status(), 404);
    assert_eq!(cache_control(&r), "max-age=0");
    origin.set("/fedora/43/repodata/repomd.xml", Behavior::Status(500));
    let r = proxy.get("fedora/43/repodata/repomd.xml").await;
    assert_eq!(r.status(), 502);
    assert_eq!(cache_control(&r), "");
    assert_eq!(origin.hits("/fedora/41/x86_64/os/Packages/a.rpm"), 1);
}

#[tokio::test]
async fn reload_by_api_swaps_distributions_and_keeps_them_on_a_broken_file() {
    let origin = Origin::start().await;
    origin.put("/extra/x.dat", "extra");
    let dir = cache_dir();
    let file = dir.path().join("distributions.yaml");
    std::fs::write(&file, fedora_file(&origin, "")).unwrap();
    let cache = dir.path().join("cache");
    let proxy = Proxy::start(&origin, &cache, |c| {
        c.distributions_config = Some(file.clone())
    })
    .await;
    let client = proxy.client();
    assert_eq!(proxy.get("extra/x.dat").await.status(), 404);

    std::fs::write(&file, with_extra(&origin)).unwrap();
    let r = client
        .post(proxy.url("api/mirrors/refresh"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(proxy.text("extra/x.dat").await, "extra");

    std::fs::write(&file, "distributions:\n  - id: extra\n    mirrorz: []\n").unwrap();
    let r = client
        .post(proxy.url("api/mirrors/refresh"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("mirrorz"),
        "{body}"
    );
    assert_eq!(
        proxy.get("extra/x.dat").await.status(),
        200,
        "the previous configuration stays"
    );
    assert_eq!(proxy.get("api/mirrors/refresh").await.status(), 405);
}

#[tokio::test]
async fn an_api_key_guards_the_api_and_only_the_api() {
    let origin = Origin::start().await;
    origin.put("/debian/pool/a.deb", "a");
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |c| {
        c.security.api_key = Some("s3cret".into());
        c.security.api_auth = true;
    })
    .await;
    let client = proxy.client();
    let url = proxy.url("api/mirrors/refresh");
    let r = client.post(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "ErrUnauthorized");
    assert_eq!(
        client
            .post(&url)
            .header("x-api-key", "wrong")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        client
            .post(&url)
            .header("x-api-key", "s3cret")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client
            .post(&url)
            .bearer_auth("s3cret")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(proxy.get("debian/pool/a.deb").await.status(), 200);
    // A forward-proxy request for a path named /api/ is package traffic, never the API.
    let r = proxy
        .forward_client()
        .get("http://ftp.debian.org/api/mirrors/refresh")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn sighup_reloads_and_coalesces() {
    let origin = Origin::start().await;
    origin.put("/extra/x.dat", "extra");
    let dir = cache_dir();
    let file = dir.path().join("distributions.yaml");
    std::fs::write(&file, fedora_file(&origin, "")).unwrap();
    let proxy = Binary::start_with(
        &dir.path().join("cache"),
        &["--distributions-config", file.to_str().unwrap()],
        &[],
    );
    let client = crate::client_builder().build().unwrap();
    assert_eq!(
        client
            .get(proxy.url("extra/x.dat"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    std::fs::write(&file, with_extra(&origin)).unwrap();
    let pid = proxy.child.id().to_string();
    for _ in 0..4 {
        assert!(
            Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .unwrap()
                .success()
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if client
            .get(proxy.url("extra/x.dat"))
            .send()
            .await
            .unwrap()
            .status()
            == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let reloads = proxy
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("reload done"))
        .count();
    assert!(
        (1..=2).contains(&reloads),
        "4 quick SIGHUPs gave {reloads} reloads"
    );
    assert!(
        proxy
            .lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("need a restart"))
    );
}

#[tokio::test]
async fn https_listener_serves_with_its_certificate() {
    let origin = Origin::start().await;
    origin.put("/debian/pool/t.deb", "over https");
    let dir = cache_dir();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, leaf.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();

    let args = [
        "--tls",
        "--tls-cert",
        cert_file.to_str().unwrap(),
        "--tls-key",
        key_file.to_str().unwrap(),
        "--debian",
        &origin.base("debian"),
    ];
    let proxy = Binary::start_with(&dir.path().join("cache"), &args, &[]);
    let port = proxy.addr.rsplit(':').next().unwrap().to_string();
    let client = crate::client_builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    let r = client
        .get(format!("https://localhost:{port}/debian/pool/t.deb"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "over https");
    assert!(
        proxy
            .lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("\"protocol\":\"https\""))
    );

    let out = Command::new(env!("CARGO_BIN_EXE_apt-proxy"))
        .args([
            "--port",
            "0",
            "--tls",
            "--tls-key",
            key_file.to_str().unwrap(),
            "--tls-cert",
            "/nonexistent/cert.pem",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/cert.pem"));
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_apt-proxy"))
        .args([
            "--port",
            "0",
            "--tls",
            "--tls-key",
            key_file.to_str().unwrap(),
            "--tls-cert",
            garbage.to_str().unwrap(),
        ])
        .arg("--cachedir")
        .arg(dir.path().join("cache3"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("garbage.pem"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs the binary with `args` and `env` only (none of the caller's APT_PROXY_* variables), in
/// `dir`, and returns (exit code, stdout, stderr).
fn one_shot(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_apt-proxy"));
    command.current_dir(dir).args(args).env_clear();
    command.env("HOME", dir);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_prints_the_resolved_settings_and_names_each_broken_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cache = d.join("never-created");
    let yaml = d.join("apt-proxy.yaml");
    std::fs::write(
        &yaml,
        "server:\n  port: 4000\nsecurity:\n  api_key: ${KEY}\nmirrors:\n  debian: http://127.0.0.1:9/debian/\n",
    )
    .unwrap();
    let config = yaml.to_str().unwrap();
    let cachedir = cache.to_str().unwrap();

    let (code, out, err) = one_shot(
        d,
        &["--check-config", "--config", config, "--cachedir", cachedir],
        &[("KEY", "very-secret-key"), ("APT_PROXY_MODE", "debian")],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(config), "{out}");
    let line = |key: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or_else(|| panic!("no {key} in {out}"))
            .to_string()
    };
    assert!(line("server.port").ends_with(" 4000"), "{out}");
    assert!(line("mode").ends_with(" debian"), "{out}");
    assert!(line("security.enable_api_auth").ends_with(" true"), "{out}");
    assert!(line("mirrors.debian").ends_with(" http://127.0.0.1:9/debian/"));
    assert!(
        !out.contains("very-secret-key"),
        "a secret was printed: {out}"
    );
    assert!(
        out.contains("/debian/ -> http://127.0.0.1:9/debian/ (pinned"),
        "{out}"
    );
    assert!(
        !out.contains("/ubuntu/"),
        "mode debian serves only debian: {out}"
    );
    assert!(out.trim_end().ends_with("configuration OK"), "{out}");
    assert!(
        !cache.exists(),
        "--check-config created the cache directory"
    );

    // Each kind of bad input: exit 1 and a message that names what is wrong.
    std::fs::write(d.join("typo.yaml"), "server:\n  prot: 4000\n").unwrap();
    let broken_dist = d.join("broken-distributions.yaml");
    std::fs::write(&broken_dist, "distributions:\n  - id: x\n    mirrors: 5\n").unwrap();
    let garbage = d.join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let typo = d.join("typo.yaml");
    // (flags, environment, words the message must contain)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            vec!["--config", typo.to_str().unwrap()],
            vec![],
            vec!["typo.yaml:2:", "server.prot is not a setting"],
        ),
        (vec!["--port", "http"], vec![], vec!["--port"]),
        (
            vec![],
            vec![("APT_PROXY_PORT", "eighty")],
            vec!["APT_PROXY_PORT", "eighty"],
        ),
        (
            vec!["--distributions-config", broken_dist.to_str().unwrap()],
            vec![],
            vec![
                "broken-distributions.yaml",
                "distributions[0].mirrors",
                "expected a mapping with `official` and `custom`",
            ],
        ),
        (vec!["--debian", "cn:nowhere"], vec![], vec!["cn:nowhere"]),
        (
            vec![
                "--tls",
                "--tls-cert",
                garbage.to_str().unwrap(),
                "--tls-key",
                garbage.to_str().unwrap(),
            ],
            vec![],
            vec!["garbage.pem"],
        ),
        (vec!["--storage-backend", "s3"], vec![], vec!["S3 endpoint"]),
        // The server would start with the literal text as its key: the check refuses it.
        (
            vec!["--config", yaml.to_str().unwrap()],
            vec![],
            vec!["security.api_key", "unexpanded"],
        ),
    ];
    // Each case in an empty directory with an explicit file (an empty one unless the case
    // names its own), so that nothing is picked up from a search path.
    let empty_dir = tempfile::tempdir().unwrap();
    let empty = d.join("empty.yaml");
    std::fs::write(&empty, "").unwrap();
    for (args, env, named) in cases {
        let mut argv = vec!["--check-config"];
        if !args.contains(&"--config") {
            argv.extend(["--config", empty.to_str().unwrap()]);
        }
        argv.extend(&args);
        let (code, out, err) = one_shot(empty_dir.path(), &argv, &env);
        assert_eq!(code, 1, "{args:?} {env:?}: {out}{err}");
        assert!(!out.contains("configuration OK"), "{args:?}: {out}");
        for word in named {
            assert!(err.contains(word), "{args:?} {env:?}: {word} not in {err}");
        }
        // No Rust type names or debug formatting reach the user.
        for rust in ["struct ", "Some(", "Option<", "(os error", "Error {"] {
            assert!(!err.contains(rust), "{args:?} {env:?}: {rust} in {err}");
        }
    }
}

#[test]
fn the_shipped_templates_pass_the_check_and_name_every_flag() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let template = root.join("config/apt-proxy.yaml");
    let (code, out, err) = one_shot(
        dir.path(),
        &[
            "--check-config",
            "--config",
            template.to_str().unwrap(),
            "--distributions-config",
            root.join("config/distributions.yaml").to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    // Each key in the template names its flag; a flag missing there is a key the template lacks.
    let text = std::fs::read_to_string(&template).unwrap();
    let (_, help, _) = one_shot(dir.path(), &["--help"], &[]);
    let flags: Vec<&str> = help
        .split_whitespace()
        .filter(|w| w.starts_with("--"))
        .map(|w| w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-'))
        .collect();
    assert!(flags.len() > 30, "{help}");
    for flag in flags {
        if matches!(
            flag,
            "--help" | "--version" | "--config" | "--check-config" | "--health-check"
        ) {
            continue;
        }
        let named = text.match_indices(flag).any(|(at, _)| {
            text[at + flag.len()..]
                .chars()
                .next()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-'))
        });
        assert!(named, "config/apt-proxy.yaml has no key for {flag}");
    }
}

#[tokio::test]
async fn health_check_asks_livez_of_the_configured_proxy() {
    let origin = Origin::start().await;
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    let port = proxy.addr.port().to_string();
    let work = tempfile::tempdir().unwrap();
    let empty = work.path().join("empty.yaml");
    std::fs::write(&empty, "").unwrap();
    // An explicit empty file: no apt-proxy.yaml of the machine's is read.
    let probe = |args: Vec<String>| {
        let path = work.path().to_path_buf();
        let empty = empty.clone();
        tokio::task::spawn_blocking(move || {
            let mut argv = vec!["--config", empty.to_str().unwrap()];
            argv.extend(args.iter().map(String::as_str));
            one_shot(&path, &argv, &[])
        })
    };
    let (code, out, err) = probe(vec!["--health-check".into(), "--port".into(), port.clone()])
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("http://127.0.0.1:{port}/livez")),
        "{out}"
    );
    proxy.stop().await;
    let (code, out, err) = probe(vec!["--health-check".into(), "--port".into(), port])
        .await
        .unwrap();
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("health check failed"), "{err}");

    // Something on the port that redirects /livez to a server that answers 200 is not the
    // proxy alive: the probe does not follow the redirect.
    let elsewhere = Origin::start().await;
    elsewhere.put("/livez", "ok");
    let squatter = Origin::start().await;
    squatter.set(
        "/livez",
        Behavior::RedirectWith(302, format!("http://{}/livez", elsewhere.addr)),
    );
    let port = squatter.addr.port().to_string();
    let (code, out, err) = probe(vec!["--health-check".into(), "--port".into(), port])
        .await
        .unwrap();
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("answered 302"), "{err}");
    assert_eq!(elsewhere.total(), 0, "the probe followed the redirect");
}

#[tokio::test]
async fn a_go_users_file_starts_and_its_ignored_keys_are_logged_with_their_line() {
    let origin = Origin::start().await;
    origin.put("/debian/pool/a.deb", "deb");
    let dir = cache_dir();
    let file = dir.path().join("apt-proxy.yaml");
    std::fs::write(
        &file,
        "server:\n  port: \"3142\"\n  debug: \"no\"\ncache:\n  ttl: 168h\nupstream_keep_alive: on\n",
    )
    .unwrap();
    let cache = dir.path().join("cache");
    let binary = crate::crash::Binary::start_with(
        &cache,
        &[
            "--config",
            file.to_str().unwrap(),
            "--mode",
            "debian",
            "--debian",
            &origin.base("debian"),
        ],
        &[],
    );
    let r = reqwest::get(binary.url("debian/pool/a.deb")).await.unwrap();
    assert_eq!(r.text().await.unwrap(), "deb");
    let lines = binary.lines.lock().unwrap().clone();
    let want = format!("{}:5: cache.ttl is an internal field", file.display());
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&want) && l.to_ascii_lowercase().contains("warn")),
        "{lines:#?}"
    );
}
