//! Precedence (flag > environment > file > default) for every group of settings, and the
//! errors a user sees for bad values.

use std::collections::HashMap;
use std::ffi::OsString;
use std::time::Duration;

use clap::Parser;

use super::cli::{Cli, normalize_args};
use super::*;

fn cli(args: &[&str]) -> Cli {
    let argv = std::iter::once("apt-proxy")
        .chain(args.iter().copied())
        .map(OsString::from);
    Cli::try_parse_from(normalize_args(argv)).unwrap()
}

struct Case {
    dir: tempfile::TempDir,
    env: HashMap<String, String>,
}

impl Case {
    fn new(yaml: &str) -> Case {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("apt-proxy.yaml"), yaml).unwrap();
        Case {
            dir,
            env: HashMap::new(),
        }
    }

    fn env(mut self, k: &str, v: &str) -> Case {
        self.env.insert(k.into(), v.into());
        self
    }

    fn resolve(&self, args: &[&str]) -> Result<Config, ConfigError> {
        let path = self.dir.path().join("apt-proxy.yaml");
        let mut all = vec!["--config".to_string(), path.display().to_string()];
        all.extend(args.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let env = |k: &str| self.env.get(k).cloned();
        Config::resolve(cli(&refs), &env, Some(self.dir.path()))
    }
}

#[test]
fn defaults_without_anything() {
    let env = |_: &str| None;
    let home = tempfile::tempdir().unwrap();
    let c = Config::resolve(cli(&[]), &env, Some(home.path())).unwrap();
    assert_eq!(
        (c.host.as_str(), c.port, c.mode, c.debug),
        ("0.0.0.0", 3142, Mode::All, false)
    );
    assert_eq!(c.cache_dir, PathBuf::from("./.aptcache"));
    assert!(c.upstream_keep_alive && c.mirrors.is_empty() && c.tls.is_none());
    assert_eq!(c.cache_limits.max_size_bytes, Some(10 * GIB));
    assert_eq!(c.cache_limits.ttl, Some(Duration::from_secs(168 * 3600)));
    assert_eq!(
        c.cache_limits.cleanup_interval,
        Some(Duration::from_secs(3600))
    );
    assert_eq!(
        c.security,
        Security {
            api_key: None,
            api_auth: false,
            api_rate_limit_per_minute: 60,
            trusted_proxies: vec![],
            allow_private_upstreams: vec![],
            allowed_clients: vec![],
        }
    );
    assert_eq!(c.config_file, None);
}

#[test]
fn server_group() {
    let case = Case::new("server:\n  host: 10.1.1.1\n  port: 1111\n  debug: true\nmode: debian\n");
    let c = case.resolve(&[]).unwrap();
    assert_eq!(
        (c.host.as_str(), c.port, c.debug, c.mode),
        ("10.1.1.1", 1111, true, Mode::Debian)
    );
    let case = case
        .env("APT_PROXY_HOST", "10.2.2.2")
        .env("APT_PROXY_PORT", "2222")
        .env("APT_PROXY_DEBUG", "0")
        .env("APT_PROXY_MODE", "alpine");
    let c = case.resolve(&[]).unwrap();
    assert_eq!(
        (c.host.as_str(), c.port, c.debug, c.mode),
        ("10.2.2.2", 2222, false, Mode::Alpine)
    );
    let c = case
        .resolve(&[
            "--host=10.3.3.3",
            "-port",
            "3333",
            "-debug",
            "--mode",
            "centos",
        ])
        .unwrap();
    assert_eq!(
        (c.host.as_str(), c.port, c.debug, c.mode),
        ("10.3.3.3", 3333, true, Mode::Centos)
    );
}

#[test]
fn cache_group() {
    let case = Case::new(
        "cache:\n  dir: /from/file\n  max_size_gb: 20\n  ttl_hours: 24\n  cleanup_interval_min: 5\n",
    );
    let c = case.resolve(&[]).unwrap();
    assert_eq!(c.cache_dir, PathBuf::from("/from/file"));
    assert_eq!(c.cache_limits.max_size_bytes, Some(20 * GIB));
    assert_eq!(c.cache_limits.ttl, Some(Duration::from_secs(24 * 3600)));
    assert_eq!(
        c.cache_limits.cleanup_interval,
        Some(Duration::from_secs(300))
    );
    let case = case
        .env("APT_PROXY_CACHEDIR", "/from/env")
        .env("APT_PROXY_CACHE_MAX_SIZE", "0")
        .env("APT_PROXY_CACHE_TTL", "0");
    let c = case.resolve(&[]).unwrap();
    assert_eq!(c.cache_dir, PathBuf::from("/from/env"));
    assert_eq!(
        (c.cache_limits.max_size_bytes, c.cache_limits.ttl),
        (None, None)
    );
    let c = case
        .resolve(&[
            "--cachedir",
            "/from/flag",
            "--cache-max-size",
            "0.5",
            "--cache-cleanup-interval",
            "0",
        ])
        .unwrap();
    assert_eq!(c.cache_dir, PathBuf::from("/from/flag"));
    assert_eq!(c.cache_limits.max_size_bytes, Some(GIB / 2));
    assert_eq!(c.cache_limits.cleanup_interval, None);
    assert!(case.resolve(&["--cache-max-size=-1"]).is_err());
}

#[test]
fn mirror_refresh_interval() {
    let case = Case::new("mirrors:\n  refresh_interval_min: 15\n");
    assert_eq!(
        case.resolve(&[]).unwrap().tuning.mirror_refresh,
        Some(Duration::from_secs(900))
    );
    let case = case.env("APT_PROXY_MIRROR_REFRESH_INTERVAL", "0");
    assert_eq!(case.resolve(&[]).unwrap().tuning.mirror_refresh, None);
    let c = case.resolve(&["--mirror-refresh-interval", "120"]).unwrap();
    assert_eq!(c.tuning.mirror_refresh, Some(Duration::from_secs(7200)));
    assert_eq!(
        Case::new("").resolve(&[]).unwrap().tuning.mirror_refresh,
        Some(Duration::from_secs(3600)),
        "hourly by default"
    );
}

#[test]
fn mirrors_group() {
    let case = Case::new(
        "mirrors:\n  ubuntu: cn:tsinghua\n  debian: cn:ustc\n  centos: \"\"\nupstream_keep_alive: false\n",
    );
    let c = case.resolve(&[]).unwrap();
    assert_eq!(
        c.mirrors.get("ubuntu").map(String::as_str),
        Some("cn:tsinghua")
    );
    assert_eq!(c.mirrors.get("debian").map(String::as_str), Some("cn:ustc"));
    assert!(
        !c.mirrors.contains_key("centos"),
        "an empty mirror means the default"
    );
    assert!(!c.upstream_keep_alive);
    let case = case
        .env("APT_PROXY_DEBIAN", "cn:163")
        .env("APT_PROXY_UPSTREAM_KEEP_ALIVE", "true");
    let c = case.resolve(&[]).unwrap();
    assert_eq!(c.mirrors.get("debian").map(String::as_str), Some("cn:163"));
    assert!(c.upstream_keep_alive);
    let c = case
        .resolve(&[
            "--debian=https://example.org/debian/",
            "--upstream-keep-alive=false",
            "--alpine",
            "cn:aliyun",
        ])
        .unwrap();
    assert_eq!(
        c.mirrors.get("debian").map(String::as_str),
        Some("https://example.org/debian/")
    );
    assert_eq!(
        c.mirrors.get("alpine").map(String::as_str),
        Some("cn:aliyun")
    );
    assert!(!c.upstream_keep_alive);
}

#[test]
fn tls_group() {
    let case = Case::new("");
    let cert = case.dir.path().join("c.pem");
    let key = case.dir.path().join("k.pem");
    std::fs::write(&cert, "x").unwrap();
    std::fs::write(&key, "x").unwrap();
    std::fs::write(
        case.dir.path().join("apt-proxy.yaml"),
        format!(
            "tls:\n  enabled: true\n  cert_file: {}\n  key_file: {}\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let c = case.resolve(&[]).unwrap();
    assert_eq!(
        c.tls,
        Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone()
        })
    );
    let case = case.env("APT_PROXY_TLS_ENABLED", "false");
    assert_eq!(case.resolve(&[]).unwrap().tls, None);
    assert!(case.resolve(&["--tls"]).unwrap().tls.is_some());
    let err = case
        .resolve(&["--tls", "--tls-key", "/nonexistent/key.pem"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/nonexistent/key.pem") && err.contains("tls-key"),
        "{err}"
    );
}

#[test]
fn security_group() {
    let case = Case::new(
        "security:\n  api_key: from-file\n  api_rate_limit_per_minute: 10\n  trusted_proxies:\n    - 10.0.0.0/8\n",
    );
    let c = case.resolve(&[]).unwrap();
    assert_eq!(c.security.api_key.as_deref(), Some("from-file"));
    assert!(c.security.api_auth, "a key turns authentication on");
    assert_eq!(c.security.api_rate_limit_per_minute, 10);
    assert_eq!(
        c.security.trusted_proxies,
        vec!["10.0.0.0/8".parse::<IpNet>().unwrap()]
    );
    let case = case
        .env("APT_PROXY_API_KEY", "from-env")
        .env("APT_PROXY_API_RATE_LIMIT_PER_MINUTE", "0")
        .env("APT_PROXY_TRUSTED_PROXIES", "192.168.0.0/16, 127.0.0.1");
    let c = case.resolve(&[]).unwrap();
    assert_eq!(c.security.api_key.as_deref(), Some("from-env"));
    assert_eq!(c.security.api_rate_limit_per_minute, 0);
    assert_eq!(c.security.trusted_proxies.len(), 2);
    let c = case
        .resolve(&[
            "--api-key=from-flag",
            "--enable-api-auth=false",
            "--api-rate-limit",
            "5",
            "--trusted-proxies",
            "172.16.0.0/12",
        ])
        .unwrap();
    assert_eq!(c.security.api_key.as_deref(), Some("from-flag"));
    assert!(
        !c.security.api_auth,
        "--enable-api-auth=false forces authentication off"
    );
    assert_eq!(c.security.api_rate_limit_per_minute, 5);
    assert_eq!(
        c.security.trusted_proxies,
        vec!["172.16.0.0/12".parse::<IpNet>().unwrap()]
    );
    assert!(
        case.resolve(&["--trusted-proxies", "not-a-net"])
            .unwrap_err()
            .to_string()
            .contains("not-a-net")
    );
}

#[test]
fn storage_and_files_group() {
    let case = Case::new("storage:\n  backend: disk\n  s3:\n    bucket: b\n");
    assert!(case.resolve(&[]).is_ok());
    // s3 needs an endpoint, named with its setting.
    let err = case
        .resolve(&["--storage-backend", "s3"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("APT_PROXY_S3_ENDPOINT"), "{err}");
    let err = case
        .resolve(&["--storage-backend", "s3", "--s3-endpoint", "http://h:9000"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("without a scheme"), "{err}");
    let err = case
        .resolve(&[
            "--storage-backend",
            "s3",
            "--s3-endpoint",
            "h:9000",
            "--s3-access-key",
            "k",
        ])
        .unwrap_err()
        .to_string();
    assert!(err.contains("secret key"), "{err}");
    // Every setting from the file, flags and environment, with the spec's defaults.
    let s3 = Case::new("storage:\n  backend: s3\n  s3:\n    endpoint: store:9000\n    bucket: b\n    prefix: cache\n    use_path_style: true\n    inline_max_mb: 8\n")
        .env("APT_PROXY_S3_ACCESS_KEY", "ak")
        .env("APT_PROXY_S3_SECRET_KEY", "sk");
    let resolved = s3
        .resolve(&["--s3-region", "eu-1", "--s3-timeout", "2"])
        .unwrap();
    let crate::config::StorageChoice::S3(settings) = resolved.storage else {
        panic!("s3 expected");
    };
    assert_eq!(settings.endpoint, "store:9000");
    assert_eq!(settings.bucket, "b");
    assert_eq!(settings.prefix, "cache/");
    assert_eq!(settings.region, "eu-1");
    assert!(settings.use_ssl && settings.path_style);
    assert_eq!(settings.inline_max, 8 << 20);
    assert_eq!(settings.access_key.as_deref(), Some("ak"));
    assert_eq!(settings.secret_key.as_deref(), Some("sk"));
    assert_eq!(settings.timeout, std::time::Duration::from_secs(2));
    assert_eq!(
        settings.abandoned_upload_age,
        std::time::Duration::from_secs(3600)
    );
    let defaults =
        Case::new("storage:\n  backend: s3\n  s3:\n    endpoint: store\n    bucket: b\n")
            .resolve(&[])
            .unwrap();
    let crate::config::StorageChoice::S3(settings) = defaults.storage else {
        panic!("s3 expected");
    };
    assert_eq!(
        (
            settings.prefix.as_str(),
            settings.region.as_str(),
            settings.inline_max
        ),
        ("apt-proxy/", "us-east-1", 32 << 20)
    );
    let case = case.env("APT_PROXY_STORAGE_BACKEND", "tape");
    assert!(case.resolve(&[]).unwrap_err().to_string().contains("tape"));

    let dist = Case::new("");
    let file = dist.dir.path().join("d.yaml");
    std::fs::write(&file, "distributions: []\n").unwrap();
    assert_eq!(
        dist.resolve(&["--distributions-config", file.to_str().unwrap()])
            .unwrap()
            .distributions_config,
        Some(file.clone())
    );
    let err = dist
        .resolve(&["--distributions-config", "/nonexistent.yaml"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent.yaml"), "{err}");
}

#[test]
fn bad_values_name_their_source() {
    let case = Case::new("server:\n  port: 99999\n");
    let err = case.resolve(&[]).unwrap_err().to_string();
    assert!(
        err.contains("apt-proxy.yaml") && err.contains("port"),
        "{err}"
    );
    let case = Case::new("").env("APT_PROXY_PORT", "eighty");
    let err = case.resolve(&[]).unwrap_err().to_string();
    assert!(
        err.contains("APT_PROXY_PORT") && err.contains("eighty"),
        "{err}"
    );
    let case = Case::new("").env("APT_PROXY_DEBUG", "maybe");
    assert!(
        case.resolve(&[])
            .unwrap_err()
            .to_string()
            .contains("APT_PROXY_DEBUG")
    );
    let case = Case::new("").env("APT_PROXY_MODE", "fedora");
    assert!(
        case.resolve(&[])
            .unwrap_err()
            .to_string()
            .contains("APT_PROXY_MODE")
    );
    let env = |_: &str| None;
    let err = Config::resolve(
        cli(&["--config", "/nonexistent/apt-proxy.yaml"]),
        &env,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("/nonexistent/apt-proxy.yaml"), "{err}");
}

#[test]
fn a_go_users_file_starts_with_its_ignored_keys_named() {
    let case = Case::new(
        "server:\n  host: 127.0.0.1\n  port: \"3150\"\n  debug: yes\ncache:\n  dir: /tmp/c\n  max_size_gb: \"2\"\n  max_size: 1073741824\n  ttl: 1h\n  cleanup_interval: 10m\ntls:\n  enabled: off\nsecurity:\n  enable_api_auth: On\n  api_key: k\nstorage:\n  s3:\n    use_ssl: NO\n    colour: blue\nupstream_keep_alive: n\nlegacy_option: 1\n",
    );
    let c = case.resolve(&[]).unwrap();
    assert_eq!(
        (c.port, c.debug, c.upstream_keep_alive),
        (3150, true, false)
    );
    assert_eq!(c.cache_limits.max_size_bytes, Some(2 * GIB));
    assert!(c.tls.is_none() && c.security.api_auth);
    let file = case.dir.path().join("apt-proxy.yaml").display().to_string();
    let want = [
        format!(
            "{file}:8: cache.max_size is an internal field that is not read from the file (use cache.max_size_gb); ignored"
        ),
        format!(
            "{file}:9: cache.ttl is an internal field that is not read from the file (use cache.ttl_hours); ignored"
        ),
        format!(
            "{file}:10: cache.cleanup_interval is an internal field that is not read from the file (use cache.cleanup_interval_min); ignored"
        ),
        format!("{file}:19: storage.s3.colour is not a setting; ignored"),
        format!("{file}:21: legacy_option is not a setting; ignored"),
    ];
    assert_eq!(c.file_warnings, want);
    // Flags take Go's spellings too.
    let c = Case::new("")
        .resolve(&["--debug=1", "--tls=FALSE"])
        .unwrap();
    assert!(c.debug && c.tls.is_none());
    assert!(Case::new("").resolve(&["--debug=TRUE"]).unwrap().debug);
    // Still refused: a value no spelling makes sense of, naming the key.
    for (text, key) in [
        ("server:\n  debug: maybe\n", "server.debug"),
        ("server:\n  port: \"80a\"\n", "server.port"),
        ("server:\n  port: 70000\n", "server.port"),
        ("cache:\n  max_size_gb: lots\n", "cache.max_size_gb"),
    ] {
        let err = Case::new(text).resolve(&[]).unwrap_err().to_string();
        assert!(
            err.contains("apt-proxy.yaml") && err.contains(key),
            "{text}: {err}"
        );
    }
}

#[test]
fn search_order_finds_the_home_file() {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join(".config/apt-proxy")).unwrap();
    std::fs::write(home.path().join(".apt-proxy.yaml"), "server:\n  port: 2\n").unwrap();
    let env = |_: &str| None;
    let c = Config::resolve(cli(&[]), &env, Some(home.path())).unwrap();
    assert_eq!(c.port, 2);
    assert_eq!(c.config_file, Some(home.path().join(".apt-proxy.yaml")));
    std::fs::write(
        home.path().join(".config/apt-proxy/apt-proxy.yaml"),
        "server:\n  port: 1\n",
    )
    .unwrap();
    let c = Config::resolve(cli(&[]), &env, Some(home.path())).unwrap();
    assert_eq!(
        c.port, 1,
        "~/.config/apt-proxy/apt-proxy.yaml comes before ~/.apt-proxy.yaml"
    );
}

#[test]
fn largest_file_and_slowest_mirror() {
    let c = Case::new("cache:\n  max_object_size_gb: 2\nupstream_min_rate_kib: 20\n");
    let got = c.resolve(&[]).unwrap();
    assert_eq!(got.cache_limits.max_object_bytes, 2 * GIB);
    assert_eq!(
        got.tuning.min_rate,
        Some((20 * 1024 * 30, Duration::from_secs(30)))
    );
    let got = c
        .env("APT_PROXY_UPSTREAM_MIN_RATE", "0")
        .resolve(&["--max-object-size", "0.5"])
        .unwrap();
    assert_eq!(got.cache_limits.max_object_bytes, GIB / 2);
    assert_eq!(got.tuning.min_rate, None);
    let defaults = Case::new("").resolve(&[]).unwrap();
    assert_eq!(defaults.cache_limits.max_object_bytes, 16 * GIB);
    assert_eq!(
        defaults.tuning.min_rate,
        Some((10 * 1024 * 30, Duration::from_secs(30)))
    );
    let err = Case::new("")
        .resolve(&["--max-object-size", "0"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("--max-object-size"), "{err}");
    let err = Case::new("")
        .resolve(&["--upstream-min-rate-window", "0"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("--upstream-min-rate-window"), "{err}");
}
