//! Command-line flags (clap derive). Every flag has an `APT_PROXY_*` environment variable and a
//! YAML key; the environment and the file are read in [`super::resolve`], so that precedence
//! (flag > environment > file > default) lives in one place and can be tested without touching
//! the process environment.
//!
//! Flag names follow the interface we keep; Go-style single-dash long flags (`-port=3142`) are
//! accepted as well as `--port=3142`, because users' scripts are written both ways.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgAction, CommandFactory, Parser};

use crate::distro::Mode;

/// A caching proxy for APT, YUM/DNF and APK package managers.
///
/// Every flag can also be set by the environment variable shown, or in apt-proxy.yaml.
/// Precedence: flag, then environment, then file, then default.
#[derive(Debug, Default, Parser)]
#[command(name = "apt-proxy", version, about, long_about = None, after_help = ENVIRONMENT_HELP)]
pub struct Cli {
    /// Network interface to bind to [env: APT_PROXY_HOST] [default: 0.0.0.0]
    #[arg(long, help_heading = "Server")]
    pub host: Option<String>,
    /// Port to listen on [env: APT_PROXY_PORT] [default: 3142]
    #[arg(long, help_heading = "Server")]
    pub port: Option<u16>,
    /// Open connections allowed per client IP; more are refused at once with 503, 0 disables
    /// [env: APT_PROXY_MAX_CONNECTIONS_PER_CLIENT] [default: 1024]
    #[arg(long = "max-connections-per-client", help_heading = "Server")]
    pub max_connections_per_client: Option<usize>,
    /// Distributions to serve [env: APT_PROXY_MODE] [default: all]
    #[arg(long, value_enum, help_heading = "Server")]
    pub mode: Option<Mode>,
    /// Verbose debug logging [env: APT_PROXY_DEBUG] [default: false]
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = super::lenient::bool_flag, help_heading = "Server")]
    pub debug: Option<bool>,

    /// Ubuntu mirror URL or shortcut (cn:tsinghua, …) [env: APT_PROXY_UBUNTU]
    #[arg(long, help_heading = "Mirrors")]
    pub ubuntu: Option<String>,
    /// Ubuntu Ports mirror URL or shortcut [env: APT_PROXY_UBUNTU_PORTS]
    #[arg(long = "ubuntu-ports", help_heading = "Mirrors")]
    pub ubuntu_ports: Option<String>,
    /// Debian mirror URL or shortcut; debian-security comes from the same mirror [env: APT_PROXY_DEBIAN]
    #[arg(long, help_heading = "Mirrors")]
    pub debian: Option<String>,
    /// CentOS mirror URL or shortcut [env: APT_PROXY_CENTOS]
    #[arg(long, help_heading = "Mirrors")]
    pub centos: Option<String>,
    /// Alpine mirror URL or shortcut [env: APT_PROXY_ALPINE]
    #[arg(long, help_heading = "Mirrors")]
    pub alpine: Option<String>,
    /// HTTP keep-alive to upstream mirrors [env: APT_PROXY_UPSTREAM_KEEP_ALIVE] [default: true]
    #[arg(long = "upstream-keep-alive", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = super::lenient::bool_flag, help_heading = "Mirrors")]
    pub upstream_keep_alive: Option<bool>,
    /// Slowest transfer accepted from a mirror, in KiB/s over the window below; a slower one is
    /// left for the next mirror. 0 disables [env: APT_PROXY_UPSTREAM_MIN_RATE] [default: 10]
    #[arg(long = "upstream-min-rate", help_heading = "Mirrors")]
    pub upstream_min_rate: Option<u64>,
    /// Window of the minimum rate, in seconds [env: APT_PROXY_UPSTREAM_MIN_RATE_WINDOW] [default: 30]
    #[arg(long = "upstream-min-rate-window", help_heading = "Mirrors")]
    pub upstream_min_rate_window: Option<u64>,
    /// Path to distributions.yaml [env: APT_PROXY_DISTRIBUTIONS_CONFIG]
    #[arg(long = "distributions-config", help_heading = "Mirrors")]
    pub distributions_config: Option<PathBuf>,
    /// Minutes between mirror benchmarks, 0 benchmarks only at start and on reload [env: APT_PROXY_MIRROR_REFRESH_INTERVAL] [default: 60]
    #[arg(long = "mirror-refresh-interval", help_heading = "Mirrors")]
    pub mirror_refresh_interval: Option<u64>,

    /// Directory to store cached packages [env: APT_PROXY_CACHEDIR] [default: ./.aptcache]
    #[arg(long, help_heading = "Cache")]
    pub cachedir: Option<PathBuf>,
    /// Maximum cache size in GB, 0 disables [env: APT_PROXY_CACHE_MAX_SIZE] [default: 10]
    #[arg(long = "cache-max-size", help_heading = "Cache")]
    pub cache_max_size: Option<f64>,
    /// Largest file stored, in GB: a file that announces more is streamed without being
    /// stored, one without a length is cut there [env: APT_PROXY_MAX_OBJECT_SIZE] [default: 16]
    #[arg(long = "max-object-size", help_heading = "Cache")]
    pub max_object_size: Option<f64>,
    /// Cache TTL in hours, 0 disables [env: APT_PROXY_CACHE_TTL] [default: 168]
    #[arg(long = "cache-ttl", help_heading = "Cache")]
    pub cache_ttl: Option<u64>,
    /// Cache cleanup interval in minutes, 0 disables [env: APT_PROXY_CACHE_CLEANUP_INTERVAL] [default: 60]
    #[arg(long = "cache-cleanup-interval", help_heading = "Cache")]
    pub cache_cleanup_interval: Option<u64>,

    /// Serve HTTPS (needs --tls-cert and --tls-key) [env: APT_PROXY_TLS_ENABLED] [default: false]
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = super::lenient::bool_flag, help_heading = "TLS")]
    pub tls: Option<bool>,
    /// TLS certificate file (PEM) [env: APT_PROXY_TLS_CERT]
    #[arg(long = "tls-cert", help_heading = "TLS")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key file (PEM) [env: APT_PROXY_TLS_KEY]
    #[arg(long = "tls-key", help_heading = "TLS")]
    pub tls_key: Option<PathBuf>,

    /// API key for /api/* (enables API authentication) [env: APT_PROXY_API_KEY]
    #[arg(long = "api-key", help_heading = "Security")]
    pub api_key: Option<String>,
    /// Force API authentication on or off [env: APT_PROXY_ENABLE_API_AUTH] [default: on when an API key is set]
    #[arg(long = "enable-api-auth", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = super::lenient::bool_flag, help_heading = "Security")]
    pub enable_api_auth: Option<bool>,
    /// API requests per IP per minute, 0 disables [env: APT_PROXY_API_RATE_LIMIT_PER_MINUTE] [default: 60]
    #[arg(long = "api-rate-limit", help_heading = "Security")]
    pub api_rate_limit: Option<u32>,
    /// Comma-separated CIDRs whose X-Forwarded-For is honoured [env: APT_PROXY_TRUSTED_PROXIES]
    #[arg(long = "trusted-proxies", help_heading = "Security")]
    pub trusted_proxies: Option<String>,
    /// Comma-separated internal CIDRs that mirror redirects and geo-list mirrors may lead to
    /// (loopback, private and link-local addresses are refused otherwise) [env: APT_PROXY_ALLOW_PRIVATE_UPSTREAMS]
    #[arg(long = "allow-private-upstreams", help_heading = "Security")]
    pub allow_private_upstreams: Option<String>,
    /// Comma-separated CIDRs of the clients that may use the proxy; others get 403 [default:
    /// everyone] [env: APT_PROXY_ALLOWED_CLIENTS]
    #[arg(long = "allowed-clients", help_heading = "Security")]
    pub allowed_clients: Option<String>,

    /// Comma-separated hosts (`*.example.org`: every sub-domain) CONNECT may tunnel to, besides
    /// the mirror hosts of the served distributions [env: APT_PROXY_CONNECT_HOSTS]
    #[arg(long = "connect-hosts", help_heading = "HTTPS tunnels")]
    pub connect_hosts: Option<String>,
    /// Comma-separated ports CONNECT may tunnel to; `none` turns tunnels off
    /// [env: APT_PROXY_CONNECT_PORTS] [default: 443]
    #[arg(long = "connect-ports", help_heading = "HTTPS tunnels")]
    pub connect_ports: Option<String>,
    /// Tunnels open at once per client IP, 0 for no limit [env: APT_PROXY_CONNECT_MAX_PER_CLIENT]
    /// [default: 16]
    #[arg(long = "connect-max-per-client", help_heading = "HTTPS tunnels")]
    pub connect_max_per_client: Option<usize>,
    /// Seconds a tunnel may carry nothing either way before it is closed
    /// [env: APT_PROXY_CONNECT_IDLE_TIMEOUT] [default: 120]
    #[arg(long = "connect-idle-timeout", help_heading = "HTTPS tunnels")]
    pub connect_idle_timeout: Option<u64>,

    /// Cache storage backend: disk or s3 [env: APT_PROXY_STORAGE_BACKEND] [default: disk]
    #[arg(long = "storage-backend", help_heading = "Storage")]
    pub storage_backend: Option<String>,
    /// S3 endpoint host[:port] [env: APT_PROXY_S3_ENDPOINT]
    #[arg(long = "s3-endpoint", help_heading = "Storage")]
    pub s3_endpoint: Option<String>,
    /// S3 region [env: APT_PROXY_S3_REGION]
    #[arg(long = "s3-region", help_heading = "Storage")]
    pub s3_region: Option<String>,
    /// S3 bucket (must exist) [env: APT_PROXY_S3_BUCKET]
    #[arg(long = "s3-bucket", help_heading = "Storage")]
    pub s3_bucket: Option<String>,
    /// S3 object key prefix [env: APT_PROXY_S3_PREFIX] [default: apt-proxy/]
    #[arg(long = "s3-prefix", help_heading = "Storage")]
    pub s3_prefix: Option<String>,
    /// S3 access key [env: APT_PROXY_S3_ACCESS_KEY]
    #[arg(long = "s3-access-key", help_heading = "Storage")]
    pub s3_access_key: Option<String>,
    /// S3 secret key [env: APT_PROXY_S3_SECRET_KEY]
    #[arg(long = "s3-secret-key", help_heading = "Storage")]
    pub s3_secret_key: Option<String>,
    /// S3 session token [env: APT_PROXY_S3_SESSION_TOKEN]
    #[arg(long = "s3-session-token", help_heading = "Storage")]
    pub s3_session_token: Option<String>,
    /// Use HTTPS to the S3 endpoint [env: APT_PROXY_S3_USE_SSL] [default: true]
    #[arg(long = "s3-use-ssl", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = super::lenient::bool_flag, help_heading = "Storage")]
    pub s3_use_ssl: Option<bool>,
    /// Path-style S3 URLs [env: APT_PROXY_S3_USE_PATH_STYLE] [default: false]
    #[arg(long = "s3-use-path-style", action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", value_parser = super::lenient::bool_flag, help_heading = "Storage")]
    pub s3_use_path_style: Option<bool>,
    /// Bodies up to this many MiB are uploaded with one PUT, larger ones in 8 MiB parts [env: APT_PROXY_S3_INLINE_MAX_MB] [default: 32]
    #[arg(long = "s3-inline-max-mb", help_heading = "Storage")]
    pub s3_inline_max_mb: Option<u64>,
    /// Directory for the spools of bodies being uploaded [env: APT_PROXY_S3_TEMP_DIR] [default: the system's temp dir]
    #[arg(long = "s3-temp-dir", help_heading = "Storage")]
    pub s3_temp_dir: Option<PathBuf>,
    /// Seconds after which a multipart upload that was never completed is taken for the
    /// orphan of a killed instance and aborted [env: APT_PROXY_S3_ABANDONED_UPLOAD_AGE] [default: 3600]
    #[arg(
        long = "s3-abandoned-upload-age",
        value_name = "SECONDS",
        help_heading = "Storage"
    )]
    pub s3_abandoned_upload_age: Option<u64>,
    /// Seconds to wait for the store before answering from the mirror [env: APT_PROXY_S3_TIMEOUT] [default: 5]
    #[arg(long = "s3-timeout", value_name = "SECONDS", help_heading = "Storage")]
    pub s3_timeout: Option<u64>,

    /// Path to apt-proxy.yaml [env: APT_PROXY_CONFIG_FILE]
    #[arg(long, help_heading = "Configuration files")]
    pub config: Option<PathBuf>,
    /// Check flags, environment, apt-proxy.yaml, distributions.yaml and TLS files, print the
    /// resolved configuration and exit: 0 when it is valid, 1 when not. Starts nothing.
    #[arg(long = "check-config", help_heading = "Configuration files")]
    pub check_config: bool,
    /// Ask the proxy this configuration describes for /livez (on loopback when it listens on
    /// every interface) and exit 0 when it answers 200, else 1: a container health check
    #[arg(
        long = "health-check",
        conflicts_with = "check_config",
        help_heading = "Configuration files"
    )]
    pub health_check: bool,
}

/// The variables that have no flag, listed after the flags in `--help`.
const ENVIRONMENT_HELP: &str = "\
Environment (no flag):
  APT_PROXY_LOG_LEVEL    debug, info, warn or error [default: info; --debug forces debug]
                         (legacy name: LOG_LEVEL)
  APT_PROXY_LOG_FORMAT   json, console, or auto: console on a terminal [default: auto]
                         (legacy name: LOG_FORMAT)
  OTEL_EXPORTER_OTLP_ENDPOINT         OTLP collector: http(s)://host:4317 for grpc; for http/*
                                      a base URL, spans go to <url>/v1/traces
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT  traces endpoint, used as it is (wins over the above)
  OTEL_EXPORTER_OTLP_PROTOCOL         grpc, http/protobuf or http/json [default: grpc]
  OTEL_EXPORTER_OTLP_TRACES_PROTOCOL  the same, for traces (wins over the above)";

impl Cli {
    /// Parses the process arguments, accepting Go-style `-flag` spellings.
    pub fn parse_args() -> Cli {
        let args = normalize_args(std::env::args_os());
        let one_shot = args
            .iter()
            .any(|a| a == "--check-config" || a == "--health-check");
        Cli::try_parse_from(args).unwrap_or_else(|e| {
            // `--check-config` promises exit status 1 for any invalid setting, flags included;
            // for `--health-check` 2 would be a status container runtimes reserve.
            if one_shot && e.use_stderr() {
                let _ = e.print();
                std::process::exit(1);
            }
            e.exit()
        })
    }
}

/// Rewrites `-name[=value]` to `--name[=value]` when `name` is one of our long flags, so that
/// command lines written for the Go program keep working. Short flags (`-h`, `-V`) are left alone.
pub fn normalize_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let command = Cli::command();
    let longs: Vec<&str> = command
        .get_arguments()
        .filter_map(|a| a.get_long())
        .chain(["help", "version"])
        .collect();
    let mut out = Vec::new();
    let mut rest_are_values = false;
    for arg in args {
        let rewritten = match arg.to_str() {
            Some("--") => {
                rest_are_values = true;
                None
            }
            Some(text) if !rest_are_values && text.starts_with('-') && !text.starts_with("--") => {
                let name = text[1..].split('=').next().unwrap_or_default();
                longs
                    .contains(&name)
                    .then(|| OsString::from(format!("-{text}")))
            }
            _ => None,
        };
        out.push(rewritten.unwrap_or(arg));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn parse(args: &[&str]) -> Cli {
        let argv = std::iter::once("apt-proxy")
            .chain(args.iter().copied())
            .map(OsString::from);
        Cli::try_parse_from(normalize_args(argv)).unwrap()
    }

    #[test]
    fn go_style_flags() {
        let cli = parse(&[
            "-port=8080",
            "-host",
            "127.0.0.1",
            "-debug",
            "--ubuntu-ports=cn:ustc",
            "-upstream-keep-alive=false",
            "-tls",
        ]);
        assert_eq!(cli.port, Some(8080));
        assert_eq!(cli.host.as_deref(), Some("127.0.0.1"));
        assert_eq!(cli.debug, Some(true));
        assert_eq!(cli.ubuntu_ports.as_deref(), Some("cn:ustc"));
        assert_eq!(cli.upstream_keep_alive, Some(false));
        assert_eq!(cli.tls, Some(true));
    }

    #[test]
    fn nothing_given_is_none() {
        let cli = parse(&[]);
        assert!(
            cli.host.is_none()
                && cli.port.is_none()
                && cli.debug.is_none()
                && cli.cachedir.is_none()
        );
    }

    #[test]
    fn cli_contract() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_names_the_variables_without_a_flag() {
        let help = Cli::command().render_help().to_string();
        for var in [
            "APT_PROXY_LOG_LEVEL",
            "APT_PROXY_LOG_FORMAT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ] {
            assert!(help.contains(var), "{var} missing from --help");
        }
    }
}
