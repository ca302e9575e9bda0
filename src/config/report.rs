//! The resolved configuration in words, for `--check-config`: one `key: value` line per setting,
//! keyed like apt-proxy.yaml, with secrets shown only as set or not.

use std::time::Duration;

use clap::ValueEnum;
use ipnet::IpNet;

use super::{Config, StorageChoice};

/// A secret's value in the report.
fn secret(value: Option<&str>) -> String {
    match value {
        Some(v) if v.contains("${") => "(an unexpanded ${VAR}: the variable is not set)".into(),
        Some(v) if !v.is_empty() => "(set, hidden)".into(),
        _ => "(not set)".into(),
    }
}

/// `url` with any `user:password@` replaced by `***@`.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme && !url[scheme + 3..at].contains('/') => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

fn path_or(path: Option<&std::path::Path>, none: &str) -> String {
    path.map_or_else(|| none.to_string(), |p| p.display().to_string())
}

fn gib(bytes: Option<u64>) -> String {
    match bytes {
        None => "0 (no limit)".into(),
        Some(b) => format!("{}", b as f64 / (1u64 << 30) as f64),
    }
}

fn every(interval: Option<Duration>, unit: u64, zero: &str) -> String {
    match interval {
        None => format!("0 ({zero})"),
        Some(d) => (d.as_secs() / unit).to_string(),
    }
}

fn cidrs(list: &[IpNet], empty: &str) -> String {
    if list.is_empty() {
        return format!("[] ({empty})");
    }
    let items: Vec<String> = list.iter().map(IpNet::to_string).collect();
    format!("[{}]", items.join(", "))
}

impl Config {
    /// Every setting as `(apt-proxy.yaml key, value)`, in the file's order.
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let mode = self
            .mode
            .to_possible_value()
            .map_or_else(String::new, |v| v.get_name().to_string());
        let mut out: Vec<(&'static str, String)> = vec![
            ("server.host", self.host.clone()),
            ("server.port", self.port.to_string()),
            ("server.debug", self.debug.to_string()),
            (
                "server.max_connections_per_client",
                self.max_connections_per_client
                    .map_or_else(|| "0 (no limit)".into(), |n| n.to_string()),
            ),
            ("mode", mode),
            ("cache.dir", self.cache_dir.display().to_string()),
            ("cache.max_size_gb", gib(self.cache_limits.max_size_bytes)),
            (
                "cache.max_object_size_gb",
                gib(Some(self.cache_limits.max_object_bytes)),
            ),
            (
                "cache.ttl_hours",
                every(self.cache_limits.ttl, 3600, "entries never expire"),
            ),
            (
                "cache.cleanup_interval_min",
                every(self.cache_limits.cleanup_interval, 60, "no cleanup"),
            ),
        ];
        match &self.storage {
            StorageChoice::Disk => out.push(("storage.backend", "disk".into())),
            StorageChoice::S3(s3) => out.extend([
                ("storage.backend", "s3".into()),
                ("storage.s3.endpoint", s3.endpoint.clone()),
                ("storage.s3.region", s3.region.clone()),
                ("storage.s3.bucket", s3.bucket.clone()),
                ("storage.s3.prefix", s3.prefix.clone()),
                ("storage.s3.access_key", secret(s3.access_key.as_deref())),
                ("storage.s3.secret_key", secret(s3.secret_key.as_deref())),
                (
                    "storage.s3.session_token",
                    secret(s3.session_token.as_deref()),
                ),
                ("storage.s3.use_ssl", s3.use_ssl.to_string()),
                ("storage.s3.use_path_style", s3.path_style.to_string()),
                (
                    "storage.s3.inline_max_mb",
                    (s3.inline_max >> 20).to_string(),
                ),
                ("storage.s3.temp_dir", s3.temp_dir.display().to_string()),
                (
                    "storage.s3.abandoned_upload_age_s",
                    s3.abandoned_upload_age.as_secs().to_string(),
                ),
                ("storage.s3.timeout_s", s3.timeout.as_secs().to_string()),
            ]),
        }
        for (id, key) in [
            ("ubuntu", "mirrors.ubuntu"),
            ("ubuntu-ports", "mirrors.ubuntu_ports"),
            ("debian", "mirrors.debian"),
            ("centos", "mirrors.centos"),
            ("alpine", "mirrors.alpine"),
        ] {
            let value = self.mirrors.get(id).map_or_else(
                || "(fastest, benchmarked)".into(),
                |pins| pins.split(',').map(redact).collect::<Vec<_>>().join(","),
            );
            out.push((key, value));
        }
        out.extend([
            (
                "mirrors.refresh_interval_min",
                every(
                    self.tuning.mirror_refresh,
                    60,
                    "benchmark at start and on reload only",
                ),
            ),
            ("upstream_keep_alive", self.upstream_keep_alive.to_string()),
            (
                "upstream_min_rate_kib",
                self.tuning.min_rate.map_or_else(
                    || "0 (no minimum)".into(),
                    |(bytes, window)| (bytes / 1024 / window.as_secs().max(1)).to_string(),
                ),
            ),
            (
                "upstream_min_rate_window_s",
                self.tuning
                    .min_rate
                    .map_or_else(|| "-".into(), |(_, window)| window.as_secs().to_string()),
            ),
            ("tls.enabled", self.tls.is_some().to_string()),
        ]);
        if let Some(tls) = &self.tls {
            out.push(("tls.cert_file", tls.cert.display().to_string()));
            out.push(("tls.key_file", tls.key.display().to_string()));
        }
        let s = &self.security;
        out.extend([
            ("security.api_key", secret(s.api_key.as_deref())),
            ("security.enable_api_auth", s.api_auth.to_string()),
            (
                "security.api_rate_limit_per_minute",
                match s.api_rate_limit_per_minute {
                    0 => "0 (no limit)".into(),
                    n => n.to_string(),
                },
            ),
            (
                "security.trusted_proxies",
                cidrs(&s.trusted_proxies, "X-Forwarded-For ignored"),
            ),
            (
                "security.allow_private_upstreams",
                cidrs(&s.allow_private_upstreams, "none"),
            ),
            (
                "security.allowed_clients",
                cidrs(&s.allowed_clients, "everyone"),
            ),
            (
                "connect.hosts",
                if self.connect.hosts.is_empty() {
                    "(the mirror hosts of served distributions)".into()
                } else {
                    format!(
                        "{} and the mirror hosts of served distributions",
                        self.connect.hosts.join(", ")
                    )
                },
            ),
            (
                "connect.ports",
                if self.connect.ports.is_empty() {
                    "none (CONNECT refused)".into()
                } else {
                    let ports: Vec<String> =
                        self.connect.ports.iter().map(u16::to_string).collect();
                    ports.join(", ")
                },
            ),
            (
                "connect.max_per_client",
                self.connect
                    .max_per_client
                    .map_or("no limit".into(), |n| n.to_string()),
            ),
            (
                "connect.idle_timeout_s",
                self.connect.idle_timeout.as_secs().to_string(),
            ),
            (
                "distributions_config",
                path_or(self.distributions_config.as_deref(), "(built-in only)"),
            ),
            (
                "tracing (OTEL_EXPORTER_OTLP_*)",
                match self.otlp_traces_url.as_deref() {
                    None => "(off)".into(),
                    Some(url) => format!("{} ({})", redact(url), self.otlp_protocol.name()),
                },
            ),
        ]);
        out
    }

    /// What `--check-config` refuses although the server would start: a secret that still
    /// holds a `${VAR}` because the variable was not set (the literal text would become the
    /// key). One message per setting.
    pub fn check_problems(&self) -> Vec<String> {
        let mut secrets = vec![("security.api_key", self.security.api_key.as_deref())];
        if let StorageChoice::S3(s3) = &self.storage {
            secrets.extend([
                ("storage.s3.access_key", s3.access_key.as_deref()),
                ("storage.s3.secret_key", s3.secret_key.as_deref()),
                ("storage.s3.session_token", s3.session_token.as_deref()),
            ]);
        }
        secrets
            .into_iter()
            .filter(|(_, v)| v.is_some_and(|v| v.contains("${")))
            .map(|(key, _)| {
                format!("{key}: holds an unexpanded ${{VAR}}: the variable it names is not set")
            })
            .collect()
    }

    /// Remarks on a valid configuration worth an operator's attention.
    pub fn check_notes(&self) -> Vec<String> {
        let loopback: [std::net::IpAddr; 2] = [
            std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::Ipv6Addr::LOCALHOST.into(),
        ];
        let allowed = &self.security.allowed_clients;
        let mut notes = Vec::new();
        if !allowed.is_empty()
            && !loopback
                .iter()
                .any(|ip| allowed.iter().any(|n| n.contains(ip)))
        {
            notes.push("security.allowed_clients does not admit loopback: --health-check (the image's health check) will be refused".to_string());
        }
        notes
    }

    /// [`Config::describe`] as aligned lines, headed by the file that was read.
    pub fn report(&self) -> String {
        let mut text = format!(
            "configuration file: {}\n",
            path_or(
                self.config_file.as_deref(),
                "(none: flags, environment, defaults)"
            )
        );
        let settings = self.describe();
        let width = settings.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (key, value) in settings {
            text.push_str(&format!("{key:width$}  {value}\n"));
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_and_every_section_is_there() {
        let mut config = Config::new("/var/cache/apt-proxy");
        config.security.api_key = Some("sekrit-key".into());
        config.security.api_auth = true;
        let text = config.report();
        assert!(!text.contains("sekrit"), "{text}");
        assert!(text.contains("security.api_key"), "{text}");
        assert!(text.contains("(set, hidden)"), "{text}");
        for key in [
            "server.port",
            "cache.dir",
            "storage.backend",
            "mirrors.debian",
            "security.allowed_clients",
        ] {
            assert!(text.lines().any(|l| l.starts_with(key)), "{key}: {text}");
        }
        assert!(text.contains("/var/cache/apt-proxy"));
        assert!(!text.contains("Some("), "{text}");
    }

    #[test]
    fn credentials_in_urls_and_unexpanded_secrets_are_caught() {
        let mut config = Config::new("/c");
        config.mirrors.insert(
            "debian".into(),
            "http://u:pw@m1/debian/,http://m2/debian/".into(),
        );
        config.otlp_traces_url = Some("https://tok@collector:4318/v1/traces".into());
        config.security.api_key = Some("${API_KEY}".into());
        let text = config.report();
        assert!(!text.contains("pw") && !text.contains("tok@"), "{text}");
        assert!(
            text.contains("http://***@m1/debian/,http://m2/debian/"),
            "{text}"
        );
        assert_eq!(config.check_problems().len(), 1);
        assert!(config.check_problems()[0].starts_with("security.api_key"));
        config.security.allowed_clients = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(config.check_notes().len(), 1);
        config
            .security
            .allowed_clients
            .push("127.0.0.0/8".parse().unwrap());
        assert!(config.check_notes().is_empty());
    }
}
