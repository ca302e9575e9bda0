//! apt-proxy.yaml: its schema (every field optional; unknown keys and the Go program's lenient
//! spellings accepted, see [`lenient`]), `${VAR}` and
//! `${VAR:-default}` expansion, and where it is looked for.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::lenient::{self, Ignored, IgnoredKey};
use super::{ConfigError, Env};
use crate::distro::Mode;

/// The whole file. Unknown keys do not stop it from loading (the Go program ignores them):
/// each section keeps them in `ignored`, and they are reported with their line.
#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a mapping of sections (server, cache, storage, mirrors, tls, security, …)")]
pub struct FileConfig {
    pub server: Option<ServerSection>,
    pub cache: Option<CacheSection>,
    pub storage: Option<StorageSection>,
    pub mirrors: Option<MirrorsSection>,
    pub tls: Option<TlsSection>,
    pub security: Option<SecuritySection>,
    pub connect: Option<ConnectSection>,
    pub mode: Option<Mode>,
    #[serde(default, deserialize_with = "lenient::bool")]
    pub upstream_keep_alive: Option<bool>,
    #[serde(default, deserialize_with = "lenient::number")]
    pub upstream_min_rate_kib: Option<u64>,
    #[serde(default, deserialize_with = "lenient::number")]
    pub upstream_min_rate_window_s: Option<u64>,
    pub distributions_config: Option<PathBuf>,
    /// Keys no setting reads (warned about, see [`FileConfig::ignored_keys`]).
    #[serde(flatten)]
    pub ignored: Ignored,
}

#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a mapping of server settings (host, port, …)")]
pub struct ServerSection {
    pub host: Option<String>,
    #[serde(default, deserialize_with = "lenient::number")]
    pub port: Option<u16>,
    #[serde(default, deserialize_with = "lenient::bool")]
    pub debug: Option<bool>,
    #[serde(default, deserialize_with = "lenient::number")]
    pub max_connections_per_client: Option<usize>,
    /// Keys no setting reads (warned about, see [`FileConfig::ignored_keys`]).
    #[serde(flatten)]
    pub ignored: Ignored,
}

#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a mapping of cache settings (dir, max_size_gb, …)")]
pub struct CacheSection {
    pub dir: Option<PathBuf>,
    #[serde(default, deserialize_with = "lenient::number")]
    pub max_size_gb: Option<f64>,
    #[serde(default, deserialize_with = "lenient::number")]
    pub max_object_size_gb: Option<f64>,
    #[serde(default, deserialize_with = "lenient::number")]
    pub ttl_hours: Option<u64>,
    #[serde(default, deserialize_with = "lenient::number")]
    pub cleanup_interval_min: Option<u64>,
    /// Keys no setting reads (warned about, see [`FileConfig::ignored_keys`]).
    #[serde(flatten)]
    pub ignored: Ignored,
}

#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a mapping of storage settings (backend, s3)")]
pub struct StorageSection {
    pub backend: Option<String>,
    pub s3: Option<S3Section>,
    /// Keys no setting reads (warned about, see [`FileConfig::ignored_keys`]).
    #[serde(flatten)]
    pub ignored: Ignored,
}

#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a mapping of S3 settings (endpoint, bucket, …)")]
pub struct S3Section {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub bucket: Option<String>,
    pub prefix: Option<String>,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub session_token: Option<String>,
    #[serde(default, deserialize_with = "lenient::bool")]
    pub use_ssl: Option<bool>,
    #[serde(default, deserialize_with = "lenient::bool")]
    pub use_path_style: Option<bool>,
    #[serde(default, deserialize_with = "lenient::number")]
    pub inline_max_mb: Option<u64>,
    pub temp_dir: Option<PathBuf>,
    #[serde(default, deserialize_with = "lenient::number")]
    pub abandoned_upload_age_s: Option<u64>,
    #[serde(default, deserialize_with = "lenient::number")]
    pub timeout_s: Option<u64>,
    /// Keys no setting reads (warned about, see [`FileConfig::ignored_keys`]).
    #[serde(flatten)]
    pub ignored: Ignored,
}

#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a mapping of mirror settings (ubuntu, debian, …)")]
pub struct MirrorsSection {
    pub ubuntu: Option<String>,
    pub ubuntu_ports: Option<String>,
    pub debian: Option<String>,
    pub centos: Option<String>,
    pub alpine: Option<String>,
    #[serde(default, deserialize_with = "lenient::number")]
    pub refresh_interval_min: Option<u64>,
    /// Keys no setting reads (warned about, see [`FileConfig::ignored_keys`]).
    #[serde(flatten)]
    pub ignored: Ignored,
}

#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a mapping of TLS settings (enabled, cert_file, key_file)")]
pub struct TlsSection {
    #[serde(default, deserialize_with = "lenient::bool")]
    pub enabled: Option<bool>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Keys no setting reads (warned about, see [`FileConfig::ignored_keys`]).
    #[serde(flatten)]
    pub ignored: Ignored,
}

#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a mapping of security settings (api_key, …)")]
pub struct SecuritySection {
    pub api_key: Option<String>,
    #[serde(default, deserialize_with = "lenient::bool")]
    pub enable_api_auth: Option<bool>,
    #[serde(default, deserialize_with = "lenient::number")]
    pub api_rate_limit_per_minute: Option<u32>,
    pub trusted_proxies: Option<Vec<String>>,
    pub allow_private_upstreams: Option<Vec<String>>,
    pub allowed_clients: Option<Vec<String>>,
    /// Keys no setting reads (warned about, see [`FileConfig::ignored_keys`]).
    #[serde(flatten)]
    pub ignored: Ignored,
}

impl FileConfig {
    /// Every key of the file that no setting reads, in file order, with its line in `text`.
    pub fn ignored_keys(&self, text: &str) -> Vec<IgnoredKey> {
        let mut out = Vec::new();
        let mut add = |section: Option<&str>, ignored: Option<&Ignored>| {
            if let Some(ignored) = ignored {
                lenient::collect(text, section, ignored, &mut out);
            }
        };
        add(None, Some(&self.ignored));
        add(Some("server"), self.server.as_ref().map(|s| &s.ignored));
        add(Some("cache"), self.cache.as_ref().map(|s| &s.ignored));
        let storage = self.storage.as_ref();
        add(Some("storage"), storage.map(|s| &s.ignored));
        add(
            Some("storage.s3"),
            storage.and_then(|s| s.s3.as_ref()).map(|s| &s.ignored),
        );
        add(Some("mirrors"), self.mirrors.as_ref().map(|s| &s.ignored));
        add(Some("tls"), self.tls.as_ref().map(|s| &s.ignored));
        add(Some("security"), self.security.as_ref().map(|s| &s.ignored));
        add(Some("connect"), self.connect.as_ref().map(|s| &s.ignored));
        out.sort_by_key(|k| k.line);
        out
    }

    /// Reads apt-proxy.yaml at `path`: the settings and the keys it ignored.
    pub fn load(path: &Path, env: &Env<'_>) -> Result<(FileConfig, Vec<IgnoredKey>), ConfigError> {
        let text = read(path)?;
        let file: FileConfig = parse(&text, path, env)?;
        let ignored = file.ignored_keys(&text);
        Ok((file, ignored))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(expecting = "a mapping of HTTPS tunnel settings (hosts, ports, …)")]
pub struct ConnectSection {
    pub hosts: Option<Vec<String>>,
    pub ports: Option<Vec<u16>>,
    #[serde(default, deserialize_with = "lenient::number")]
    pub max_per_client: Option<usize>,
    #[serde(default, deserialize_with = "lenient::number")]
    pub idle_timeout_s: Option<u64>,
    /// Keys no setting reads (warned about, see [`FileConfig::ignored_keys`]).
    #[serde(flatten)]
    pub ignored: Ignored,
}

/// Expands `${VAR}` and `${VAR:-default}`. A bare `$VAR` is left alone, and so is `${VAR}`
/// when VAR is not set, so that a typo shows up instead of silently becoming empty.
pub fn expand(text: &str, env: &Env<'_>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        match (valid, env(name), default) {
            (true, Some(value), _) => out.push_str(&value),
            (true, None, Some(d)) => out.push_str(d),
            _ => out.push_str(&rest[start..start + 2 + end + 1]),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Parses YAML text (after expansion) read from `path`. Errors name the file, the key and what
/// was expected.
pub fn parse<T: serde::de::DeserializeOwned + Default>(
    text: &str,
    path: &Path,
    env: &Env<'_>,
) -> Result<T, ConfigError> {
    let expanded = expand(text, env);
    if expanded.trim().is_empty() {
        return Ok(T::default());
    }
    serde_norway::from_str(&expanded).map_err(|e| ConfigError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Reads and parses the YAML file at `path`.
pub fn load<T: serde::de::DeserializeOwned + Default>(
    path: &Path,
    env: &Env<'_>,
) -> Result<T, ConfigError> {
    parse(&read(path)?, path, env)
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The first existing file among the search locations for `name` (`apt-proxy.yaml` or
/// `distributions.yaml`), given `home` for the `~` entries.
pub fn search(candidates: &[PathBuf]) -> Option<PathBuf> {
    candidates.iter().find(|p| p.is_file()).cloned()
}

/// Where apt-proxy.yaml is looked for when no path is given.
pub fn main_candidates(home: Option<&Path>) -> Vec<PathBuf> {
    let mut list = vec![
        PathBuf::from("./apt-proxy.yaml"),
        PathBuf::from("/etc/apt-proxy/apt-proxy.yaml"),
    ];
    if let Some(home) = home {
        list.push(home.join(".config/apt-proxy/apt-proxy.yaml"));
        list.push(home.join(".apt-proxy.yaml"));
    }
    list
}

/// Where distributions.yaml is looked for when no path is given.
pub fn distributions_candidates(home: Option<&Path>) -> Vec<PathBuf> {
    let mut list = vec![
        PathBuf::from("./config/distributions.yaml"),
        PathBuf::from("./distributions.yaml"),
        PathBuf::from("/etc/apt-proxy/distributions.yaml"),
    ];
    if let Some(home) = home {
        list.push(home.join(".config/apt-proxy/distributions.yaml"));
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "KEY" => Some("secret".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expansion() {
        assert_eq!(expand("a ${KEY} b", &env), "a secret b");
        assert_eq!(expand("${MISSING:-fallback}", &env), "fallback");
        assert_eq!(expand("${KEY:-fallback}", &env), "secret");
        assert_eq!(expand("${MISSING}", &env), "${MISSING}");
        assert_eq!(expand("$KEY stays", &env), "$KEY stays");
        assert_eq!(expand("x${EMPTY}y", &env), "xy");
        assert_eq!(expand("${bad name}", &env), "${bad name}");
        assert_eq!(expand("tail ${open", &env), "tail ${open");
    }

    #[test]
    fn errors_name_file_and_key() {
        let p = Path::new("/etc/apt-proxy/apt-proxy.yaml");
        let text = "server:\n  hots: x\n";
        let f = parse::<FileConfig>(text, p, &env).unwrap();
        let ignored = f.ignored_keys(text);
        assert_eq!(
            (ignored[0].key.as_str(), ignored[0].line),
            ("server.hots", Some(2))
        );
        let err = parse::<FileConfig>("server:\n  port: lots\n", p, &env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("server.port") && err.contains("0 to 65535"),
            "{err}"
        );
        let err = parse::<FileConfig>("mode: fedora\n", p, &env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("mode") && err.contains("fedora"), "{err}");
    }

    #[test]
    fn spec_example_loads() {
        let text = "server:\n  host: 0.0.0.0\n  port: 3142\n  debug: false\ncache:\n  dir: /var/cache/apt-proxy\n  max_size_gb: 20\n  ttl_hours: 168\n  cleanup_interval_min: 60\nstorage:\n  backend: disk\n  s3:\n    endpoint: \"\"\n    prefix: apt-proxy/\n    use_ssl: true\n    inline_max_mb: 32\n    temp_dir: \"\"\nmirrors:\n  ubuntu: cn:tsinghua\n  debian: cn:ustc\n  centos: \"\"\ntls:\n  enabled: false\n  cert_file: /etc/ssl/certs/apt-proxy.crt\nsecurity:\n  api_key: ${KEY}\n  enable_api_auth: true\n  api_rate_limit_per_minute: 60\n  trusted_proxies:\n    - 10.0.0.0/8\nmode: all\nupstream_keep_alive: true\ndistributions_config: ./config/distributions.yaml\n";
        let f: FileConfig = parse(text, Path::new("x.yaml"), &env).unwrap();
        assert_eq!(f.server.unwrap().port, Some(3142));
        assert_eq!(f.security.unwrap().api_key.as_deref(), Some("secret"));
        assert_eq!(f.mode, Some(Mode::All));
    }
}
