//! apt-proxy.yaml: its schema (every field optional, unknown keys refused), `${VAR}` and
//! `${VAR:-default}` expansion, and where it is looked for.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{ConfigError, Env};
use crate::distro::Mode;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub server: Option<ServerSection>,
    pub cache: Option<CacheSection>,
    pub storage: Option<StorageSection>,
    pub mirrors: Option<MirrorsSection>,
    pub tls: Option<TlsSection>,
    pub security: Option<SecuritySection>,
    pub mode: Option<Mode>,
    pub upstream_keep_alive: Option<bool>,
    pub upstream_min_rate_kib: Option<u64>,
    pub upstream_min_rate_window_s: Option<u64>,
    pub distributions_config: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub debug: Option<bool>,
    pub max_connections_per_client: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSection {
    pub dir: Option<PathBuf>,
    pub max_size_gb: Option<f64>,
    pub max_object_size_gb: Option<f64>,
    pub ttl_hours: Option<u64>,
    pub cleanup_interval_min: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    pub backend: Option<String>,
    pub s3: Option<S3Section>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Section {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub bucket: Option<String>,
    pub prefix: Option<String>,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub session_token: Option<String>,
    pub use_ssl: Option<bool>,
    pub use_path_style: Option<bool>,
    pub inline_max_mb: Option<u64>,
    pub temp_dir: Option<PathBuf>,
    pub abandoned_upload_age_s: Option<u64>,
    pub timeout_s: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorsSection {
    pub ubuntu: Option<String>,
    pub ubuntu_ports: Option<String>,
    pub debian: Option<String>,
    pub centos: Option<String>,
    pub alpine: Option<String>,
    pub refresh_interval_min: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub enabled: Option<bool>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySection {
    pub api_key: Option<String>,
    pub enable_api_auth: Option<bool>,
    pub api_rate_limit_per_minute: Option<u32>,
    pub trusted_proxies: Option<Vec<String>>,
    pub allow_private_upstreams: Option<Vec<String>>,
    pub allowed_clients: Option<Vec<String>>,
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
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    parse(&text, path, env)
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
        let err = parse::<FileConfig>("server:\n  hots: x\n", p, &env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("apt-proxy.yaml") && err.contains("hots") && err.contains("host"),
            "{err}"
        );
        let err = parse::<FileConfig>("server:\n  port: lots\n", p, &env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("port") && err.contains("u16"), "{err}");
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
