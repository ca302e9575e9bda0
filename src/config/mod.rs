//! Resolved configuration: flags, environment, apt-proxy.yaml and defaults merged into one
//! [`Config`], in that order of precedence, with every value checked before the server starts.

pub mod cli;
pub mod file;
pub mod lenient;
mod report;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;

use crate::distro::{MirrorPins, Mode};
use cli::Cli;
use file::FileConfig;

/// Looks up an environment variable; injected so that precedence can be tested.
pub type Env<'a> = dyn Fn(&str) -> Option<String> + 'a;

/// A configuration that cannot be used. Each names the file, variable or flag at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("environment variable {var}={value:?}: {expected}")]
    Env {
        var: String,
        value: String,
        expected: String,
    },
    #[error("{setting}: {message}")]
    Invalid {
        setting: &'static str,
        message: String,
    },
}

/// Everything the server needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: String,
    pub port: u16,
    /// Open connections per client IP (`None`: no limit).
    pub max_connections_per_client: Option<usize>,
    pub mode: Mode,
    pub cache_dir: PathBuf,
    /// Where entries are stored: `cache_dir` (disk) or a bucket.
    pub storage: StorageChoice,
    /// Mirror choice per distribution id.
    pub mirrors: MirrorPins,
    pub upstream_keep_alive: bool,
    pub debug: bool,
    /// The apt-proxy.yaml that was loaded, if any.
    pub config_file: Option<PathBuf>,
    /// CONNECT tunnels.
    pub connect: ConnectSettings,
    /// Keys of `config_file` that no setting reads, as `file:line: key …; ignored` warnings.
    pub file_warnings: Vec<String>,
    /// The distributions.yaml to load (given, or found in the search path).
    pub distributions_config: Option<PathBuf>,
    pub cache_limits: CacheLimits,
    /// Certificate and key when the listener serves HTTPS.
    pub tls: Option<TlsFiles>,
    pub security: Security,
    /// Where spans go (OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT).
    pub otlp_traces_url: Option<String>,
    /// How they travel (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL / OTEL_EXPORTER_OTLP_PROTOCOL).
    pub otlp_protocol: crate::telemetry::tracing::Protocol,
    pub tuning: Tuning,
}

/// Bounds on what the proxy reads of an index to learn from it. An index past any of them is
/// still served as received, but not learnt from (its files are then not pre-verified).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexLimits {
    /// Largest Release, InRelease or repomd.xml read (they are read whole).
    pub release_bytes: u64,
    /// Most bytes a Packages index may expand to.
    pub unpacked_bytes: u64,
    /// Longest line kept; longer lines (no field the proxy reads is that long) are skipped.
    pub line_bytes: usize,
    /// Most packages learnt from one index.
    pub entries: usize,
    /// Most packages known per repo (all its indexes together).
    pub repo_entries: usize,
    /// Most memory an xz decoder may use (its dictionary), in KiB.
    pub xz_memory_kib: u32,
}

impl Default for IndexLimits {
    fn default() -> Self {
        IndexLimits {
            release_bytes: 16 << 20,
            unpacked_bytes: 1 << 30,
            line_bytes: 64 << 10,
            entries: 1_000_000,
            repo_entries: 4_000_000,
            // xz -9 uses a 64 MiB dictionary: every real index decodes within this.
            xz_memory_kib: 96 << 10,
        }
    }
}

/// The storage backend.
#[derive(Debug, Clone)]
pub enum StorageChoice {
    Disk,
    S3(Box<crate::storage::s3::S3Settings>),
}

/// Cache capacity settings (`--cache-max-size`, `--cache-ttl`, `--cache-cleanup-interval`).
#[derive(Debug, Clone, PartialEq)]
pub struct CacheLimits {
    /// `None`: no size limit.
    pub max_size_bytes: Option<u64>,
    /// `None`: entries do not expire by age.
    pub ttl: Option<Duration>,
    /// `None`: no periodic cleanup.
    pub cleanup_interval: Option<Duration>,
    /// Largest file stored; larger ones are streamed, one without a length is cut there.
    pub max_object_bytes: u64,
}

/// PEM files of the HTTPS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Management API protection.
#[derive(Debug, Clone, PartialEq)]
pub struct Security {
    pub api_key: Option<String>,
    /// Whether `/api/*` requires the key.
    pub api_auth: bool,
    /// Requests per IP per minute; 0 disables the limit.
    pub api_rate_limit_per_minute: u32,
    /// Peers whose X-Forwarded-For is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Internal networks that upstream URLs the operator did not write (redirect targets,
    /// geo-list mirrors) may still lead to.
    pub allow_private_upstreams: Vec<IpNet>,
    /// Clients that may use the proxy (the TCP peer); empty: everyone.
    pub allowed_clients: Vec<IpNet>,
}

/// CONNECT tunnels (HTTPS sources through the proxy, not cached).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectSettings {
    /// Hosts tunnelled to besides the mirror hosts of served distributions (lower case;
    /// `*.suffix` for every sub-domain).
    pub hosts: Vec<String>,
    /// Ports tunnelled to; empty: no tunnels.
    pub ports: Vec<u16>,
    /// Tunnels open at once per client IP (`None`: no limit).
    pub max_per_client: Option<usize>,
    /// A tunnel that carries nothing either way for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for ConnectSettings {
    fn default() -> Self {
        ConnectSettings {
            hosts: Vec::new(),
            ports: vec![443],
            max_per_client: Some(16),
            idle_timeout: Duration::from_secs(120),
        }
    }
}

/// Timeouts and freshness windows. Defaults suit production; tests shorten them.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// How long a volatile index (InRelease, Packages, repomd.xml…) is served without asking
    /// the mirror again; bursts of `apt update` within it cost one upstream request.
    pub index_fresh: Duration,
    /// How long an upstream 404 is remembered.
    pub negative_ttl: Duration,
    /// Freshness of "other" files when upstream says nothing usable.
    pub other_ttl: Duration,
    /// TCP connect timeout to a mirror.
    pub connect_timeout: Duration,
    /// Longest silence while reading from a mirror; there is no total-transfer timeout.
    pub read_timeout: Duration,
    /// Longest wait for a mirror's response head.
    pub head_timeout: Duration,
    /// How long a client connection may take to send its next request head, the idle time
    /// before it included. Past it the connection is closed; the plain-HTTP driver first
    /// answers 408 to a head begun and not finished (hyper, which serves TLS and what the
    /// driver hands on, closes without a word: its header read timeout).
    pub client_head_timeout: Duration,
    /// Longest a write to a client may stay blocked (the client stopped reading) before its
    /// connection is closed.
    pub client_write_timeout: Duration,
    /// Whether, over plain HTTP, a stored file goes to a client on this host through a buffer
    /// rather than with sendfile(2): faster for that client (see `server::driver::copy_file`).
    /// Clients elsewhere always get sendfile.
    pub copy_to_local_clients: bool,
    /// How long that buffer is kept while the client's socket takes nothing: a client that
    /// stops reading holds no buffer after it.
    pub copy_buffer_hold: Duration,
    /// Slowest body accepted from a mirror: fewer than `.0` bytes within any `.1` fails it over
    /// to the next mirror; `None`: no minimum.
    pub min_rate: Option<(u64, Duration)>,
    /// Longest a request waits for a mirror to revalidate a stale copy before the copy is
    /// served anyway (the revalidation goes on in the background).
    pub stale_wait: Duration,
    /// How long a shutdown waits for transfers in flight.
    pub shutdown_grace: Duration,
    /// How often a hit is written to disk as the entry's last access (LRU order after a restart).
    pub access_persist_interval: Duration,
    /// Free space under which new files are streamed but not stored; `None`: 5 % of the file
    /// system, at most 5 GiB.
    pub free_space_floor: Option<u64>,
    /// Time between mirror benchmarks; `None`: only at start and on reload.
    pub mirror_refresh: Option<Duration>,
    /// First pause of a failing mirror (doubled per consecutive failure, at most 10 min).
    pub mirror_demotion: Duration,
    /// Bounds of a mirror benchmark.
    pub benchmark: crate::mirror::benchmark::Limits,
    /// Bounds on parsing indexes (Release, Packages).
    pub index_limits: IndexLimits,
    /// Bytes per second the background scrub reads to check stored bodies; 0: no scrub.
    pub scrub_rate: u64,
    /// Time between scrubs (the first runs after the start-up scan); `None`: only that one.
    pub scrub_interval: Option<Duration>,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            index_fresh: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(30),
            other_ttl: Duration::from_secs(3600),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            head_timeout: Duration::from_secs(10),
            client_head_timeout: Duration::from_secs(30),
            client_write_timeout: Duration::from_secs(60),
            copy_to_local_clients: true,
            copy_buffer_hold: Duration::from_millis(250),
            min_rate: Some((10 * 1024 * 30, Duration::from_secs(30))),
            stale_wait: Duration::from_secs(3),
            shutdown_grace: Duration::from_secs(30),
            access_persist_interval: Duration::from_secs(3600),
            free_space_floor: None,
            mirror_refresh: Some(Duration::from_secs(3600)),
            mirror_demotion: Duration::from_secs(30),
            benchmark: crate::mirror::benchmark::Limits::default(),
            index_limits: IndexLimits::default(),
            scrub_rate: 32 << 20,
            scrub_interval: Some(Duration::from_secs(7 * 86_400)),
        }
    }
}

impl Config {
    /// A configuration with every default and the cache in `cache_dir`.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Config {
        Config {
            host: "0.0.0.0".into(),
            port: 3142,
            max_connections_per_client: Some(1024),
            mode: Mode::All,
            cache_dir: cache_dir.into(),
            storage: StorageChoice::Disk,
            mirrors: MirrorPins::new(),
            upstream_keep_alive: true,
            debug: false,
            config_file: None,
            file_warnings: Vec::new(),
            connect: ConnectSettings::default(),
            distributions_config: None,
            cache_limits: CacheLimits {
                max_size_bytes: Some(10 * GIB),
                ttl: Some(Duration::from_secs(168 * 3600)),
                cleanup_interval: Some(Duration::from_secs(3600)),
                max_object_bytes: 16 * GIB,
            },
            tls: None,
            security: Security {
                api_key: None,
                api_auth: false,
                api_rate_limit_per_minute: 60,
                trusted_proxies: Vec::new(),
                allow_private_upstreams: Vec::new(),
                allowed_clients: Vec::new(),
            },
            otlp_traces_url: None,
            otlp_protocol: crate::telemetry::tracing::Protocol::Grpc,
            tuning: Tuning::default(),
        }
    }

    /// Merges flags, environment (`env`), the YAML file and defaults. `home` is the user's home
    /// directory for the `~` search locations. The apt-proxy.yaml read, if any, is in
    /// `config_file`.
    pub fn resolve(cli: Cli, env: &Env<'_>, home: Option<&Path>) -> Result<Config, ConfigError> {
        let given = pick(cli.config, env, "APT_PROXY_CONFIG_FILE", None)?;
        let config_file = match given {
            Some(path) if !path.is_file() => {
                return Err(ConfigError::File {
                    path,
                    message: "no such file (from --config / APT_PROXY_CONFIG_FILE)".into(),
                });
            }
            Some(path) => Some(path),
            None => file::search(&file::main_candidates(home)),
        };
        let (f, ignored) = match &config_file {
            Some(path) => FileConfig::load(path, env)?,
            None => (FileConfig::default(), Vec::new()),
        };
        let server = f.server.unwrap_or_default();
        let cache = f.cache.unwrap_or_default();
        let mirrors = f.mirrors.unwrap_or_default();
        let tls = f.tls.unwrap_or_default();
        let security = f.security.unwrap_or_default();
        let storage = f.storage.unwrap_or_default();
        let s3 = storage.s3.unwrap_or_default();
        let mut config = Config::new(PathBuf::new());
        if let Some(path) = &config_file {
            config.file_warnings = ignored
                .iter()
                .map(|k| match k.line {
                    Some(line) => format!("{}:{line}: {}", path.display(), k.reason()),
                    None => format!("{}: {}", path.display(), k.reason()),
                })
                .collect();
        }
        config.config_file = config_file.clone();

        config.host = pick(cli.host, env, "APT_PROXY_HOST", server.host)?.unwrap_or(config.host);
        config.port = pick(cli.port, env, "APT_PROXY_PORT", server.port)?.unwrap_or(config.port);
        config.max_connections_per_client = match pick(
            cli.max_connections_per_client,
            env,
            "APT_PROXY_MAX_CONNECTIONS_PER_CLIENT",
            server.max_connections_per_client,
        )? {
            Some(0) => None,
            Some(n) => Some(n),
            None => config.max_connections_per_client,
        };
        config.mode = pick(cli.mode, env, "APT_PROXY_MODE", f.mode)?.unwrap_or(config.mode);
        config.debug = pick_bool(cli.debug, env, "APT_PROXY_DEBUG", server.debug)?.unwrap_or(false);
        config.upstream_keep_alive = pick_bool(
            cli.upstream_keep_alive,
            env,
            "APT_PROXY_UPSTREAM_KEEP_ALIVE",
            f.upstream_keep_alive,
        )?
        .unwrap_or(true);

        let cache_dir = pick(cli.cachedir, env, "APT_PROXY_CACHEDIR", cache.dir)?;
        config.cache_dir = cache_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("./.aptcache"));

        for (id, flag, var, from_file) in [
            ("ubuntu", cli.ubuntu, "APT_PROXY_UBUNTU", mirrors.ubuntu),
            (
                "ubuntu-ports",
                cli.ubuntu_ports,
                "APT_PROXY_UBUNTU_PORTS",
                mirrors.ubuntu_ports,
            ),
            ("debian", cli.debian, "APT_PROXY_DEBIAN", mirrors.debian),
            ("centos", cli.centos, "APT_PROXY_CENTOS", mirrors.centos),
            ("alpine", cli.alpine, "APT_PROXY_ALPINE", mirrors.alpine),
        ] {
            if let Some(spec) = pick(flag, env, var, from_file)?.filter(|s| !s.trim().is_empty()) {
                config.mirrors.insert(id.to_string(), spec);
            }
        }

        let refresh_min = pick(
            cli.mirror_refresh_interval,
            env,
            "APT_PROXY_MIRROR_REFRESH_INTERVAL",
            mirrors.refresh_interval_min,
        )?;
        config.tuning.mirror_refresh = match refresh_min {
            Some(0) => None,
            Some(m) => Some(Duration::from_secs(m.saturating_mul(60))),
            None => config.tuning.mirror_refresh,
        };

        let dist_given = pick(
            cli.distributions_config,
            env,
            "APT_PROXY_DISTRIBUTIONS_CONFIG",
            f.distributions_config,
        )?;
        config.distributions_config = match dist_given {
            Some(path) if !path.is_file() => {
                return Err(ConfigError::File { path, message: "distributions config not found (from --distributions-config / APT_PROXY_DISTRIBUTIONS_CONFIG / distributions_config)".into() });
            }
            Some(path) => Some(path),
            None => file::search(&file::distributions_candidates(home)),
        };

        let max_gb = pick(
            cli.cache_max_size,
            env,
            "APT_PROXY_CACHE_MAX_SIZE",
            cache.max_size_gb,
        )?;
        let ttl_h = pick(cli.cache_ttl, env, "APT_PROXY_CACHE_TTL", cache.ttl_hours)?;
        let max_object_gb = pick(
            cli.max_object_size,
            env,
            "APT_PROXY_MAX_OBJECT_SIZE",
            cache.max_object_size_gb,
        )?;
        if let Some(gb) = max_object_gb
            && (!gb.is_finite() || gb <= 0.0)
        {
            return Err(ConfigError::Invalid {
                setting: "largest file stored (--max-object-size, APT_PROXY_MAX_OBJECT_SIZE, cache.max_object_size_gb)",
                message: format!("{gb} is not a positive size in GB"),
            });
        }
        let min_rate_kib = pick(
            cli.upstream_min_rate,
            env,
            "APT_PROXY_UPSTREAM_MIN_RATE",
            f.upstream_min_rate_kib,
        )?
        .unwrap_or(10);
        let min_rate_window = pick(
            cli.upstream_min_rate_window,
            env,
            "APT_PROXY_UPSTREAM_MIN_RATE_WINDOW",
            f.upstream_min_rate_window_s,
        )?
        .unwrap_or(30);
        if min_rate_window == 0 {
            return Err(ConfigError::Invalid {
                setting: "minimum mirror rate window (--upstream-min-rate-window, APT_PROXY_UPSTREAM_MIN_RATE_WINDOW, upstream_min_rate_window_s)",
                message: "must be at least 1 second".into(),
            });
        }
        config.tuning.min_rate = (min_rate_kib > 0).then(|| {
            (
                min_rate_kib
                    .saturating_mul(1024)
                    .saturating_mul(min_rate_window),
                Duration::from_secs(min_rate_window),
            )
        });
        let cleanup_min = pick(
            cli.cache_cleanup_interval,
            env,
            "APT_PROXY_CACHE_CLEANUP_INTERVAL",
            cache.cleanup_interval_min,
        )?;
        if let Some(gb) = max_gb
            && (!gb.is_finite() || gb < 0.0)
        {
            return Err(ConfigError::Invalid {
                setting: "cache max size (--cache-max-size, APT_PROXY_CACHE_MAX_SIZE, cache.max_size_gb)",
                message: format!("{gb} is not a size in GB (0 disables the limit)"),
            });
        }
        config.cache_limits = CacheLimits {
            max_size_bytes: match max_gb {
                Some(gb) if gb <= 0.0 => None,
                Some(gb) => Some((gb * GIB as f64) as u64),
                None => config.cache_limits.max_size_bytes,
            },
            ttl: match ttl_h {
                Some(0) => None,
                Some(h) => Some(Duration::from_secs(h.saturating_mul(3600))),
                None => config.cache_limits.ttl,
            },
            cleanup_interval: match cleanup_min {
                Some(0) => None,
                Some(m) => Some(Duration::from_secs(m.saturating_mul(60))),
                None => config.cache_limits.cleanup_interval,
            },
            max_object_bytes: max_object_gb.map_or(config.cache_limits.max_object_bytes, |gb| {
                (gb * GIB as f64) as u64
            }),
        };

        let tls_on =
            pick_bool(cli.tls, env, "APT_PROXY_TLS_ENABLED", tls.enabled)?.unwrap_or(false);
        let cert = pick(cli.tls_cert, env, "APT_PROXY_TLS_CERT", tls.cert_file)?;
        let key = pick(cli.tls_key, env, "APT_PROXY_TLS_KEY", tls.key_file)?;
        if tls_on {
            let cert = readable(
                cert,
                "TLS certificate (--tls-cert, APT_PROXY_TLS_CERT, tls.cert_file)",
            )?;
            let key = readable(key, "TLS key (--tls-key, APT_PROXY_TLS_KEY, tls.key_file)")?;
            config.tls = Some(TlsFiles { cert, key });
        }

        let api_key = pick(cli.api_key, env, "APT_PROXY_API_KEY", security.api_key)?
            .filter(|k| !k.is_empty());
        let auth = pick_bool(
            cli.enable_api_auth,
            env,
            "APT_PROXY_ENABLE_API_AUTH",
            security.enable_api_auth,
        )?;
        let api_auth = auth.unwrap_or(api_key.is_some());
        if api_auth && api_key.is_none() {
            return Err(ConfigError::Invalid {
                setting: "API authentication (--enable-api-auth)",
                message:
                    "is on but no API key is set (--api-key, APT_PROXY_API_KEY, security.api_key)"
                        .into(),
            });
        }
        let rate = pick(
            cli.api_rate_limit,
            env,
            "APT_PROXY_API_RATE_LIMIT_PER_MINUTE",
            security.api_rate_limit_per_minute,
        )?
        .unwrap_or(60);
        let trusted_proxies = cidr_list(
            pick(cli.trusted_proxies, env, "APT_PROXY_TRUSTED_PROXIES", None)?,
            security.trusted_proxies,
            "trusted proxies (--trusted-proxies, APT_PROXY_TRUSTED_PROXIES, security.trusted_proxies)",
        )?;
        let allow_private_upstreams = cidr_list(
            pick(
                cli.allow_private_upstreams,
                env,
                "APT_PROXY_ALLOW_PRIVATE_UPSTREAMS",
                None,
            )?,
            security.allow_private_upstreams,
            "private upstreams (--allow-private-upstreams, APT_PROXY_ALLOW_PRIVATE_UPSTREAMS, security.allow_private_upstreams)",
        )?;
        let allowed_clients = cidr_list(
            pick(cli.allowed_clients, env, "APT_PROXY_ALLOWED_CLIENTS", None)?,
            security.allowed_clients,
            "allowed clients (--allowed-clients, APT_PROXY_ALLOWED_CLIENTS, security.allowed_clients)",
        )?;
        config.security = Security {
            api_key,
            api_auth,
            api_rate_limit_per_minute: rate,
            trusted_proxies,
            allow_private_upstreams,
            allowed_clients,
        };

        let flags = ConnectFlags {
            hosts: cli.connect_hosts,
            ports: cli.connect_ports,
            max_per_client: cli.connect_max_per_client,
            idle_timeout: cli.connect_idle_timeout,
        };
        config.connect = connect_settings(flags, env, f.connect.unwrap_or_default())?;

        let backend = pick(
            cli.storage_backend,
            env,
            "APT_PROXY_STORAGE_BACKEND",
            storage.backend,
        )?
        .unwrap_or_else(|| "disk".into());
        const BACKEND: &str =
            "storage backend (--storage-backend, APT_PROXY_STORAGE_BACKEND, storage.backend)";
        let s3_wanted = match backend.to_ascii_lowercase().as_str() {
            "disk" | "" => false,
            "s3" => true,
            other => {
                return Err(ConfigError::Invalid {
                    setting: BACKEND,
                    message: format!("{other:?} is not one of disk, s3"),
                });
            }
        };
        // The S3 settings are read (so that a typo in them is an error) even on disk.
        let endpoint = pick(cli.s3_endpoint, env, "APT_PROXY_S3_ENDPOINT", s3.endpoint)?;
        let region = pick(cli.s3_region, env, "APT_PROXY_S3_REGION", s3.region)?;
        let bucket = pick(cli.s3_bucket, env, "APT_PROXY_S3_BUCKET", s3.bucket)?;
        let prefix = pick(cli.s3_prefix, env, "APT_PROXY_S3_PREFIX", s3.prefix)?;
        let access_key = pick(
            cli.s3_access_key,
            env,
            "APT_PROXY_S3_ACCESS_KEY",
            s3.access_key,
        )?;
        let secret_key = pick(
            cli.s3_secret_key,
            env,
            "APT_PROXY_S3_SECRET_KEY",
            s3.secret_key,
        )?;
        let session_token = pick(
            cli.s3_session_token,
            env,
            "APT_PROXY_S3_SESSION_TOKEN",
            s3.session_token,
        )?;
        let use_ssl = pick_bool(cli.s3_use_ssl, env, "APT_PROXY_S3_USE_SSL", s3.use_ssl)?;
        let path_style = pick_bool(
            cli.s3_use_path_style,
            env,
            "APT_PROXY_S3_USE_PATH_STYLE",
            s3.use_path_style,
        )?;
        let inline_max_mb = pick(
            cli.s3_inline_max_mb,
            env,
            "APT_PROXY_S3_INLINE_MAX_MB",
            s3.inline_max_mb,
        )?;
        let temp_dir = pick(cli.s3_temp_dir, env, "APT_PROXY_S3_TEMP_DIR", s3.temp_dir)?;
        let abandoned = pick(
            cli.s3_abandoned_upload_age,
            env,
            "APT_PROXY_S3_ABANDONED_UPLOAD_AGE",
            s3.abandoned_upload_age_s,
        )?;
        let timeout = pick(cli.s3_timeout, env, "APT_PROXY_S3_TIMEOUT", s3.timeout_s)?;
        if s3_wanted {
            let invalid = |setting: &'static str, message: &str| ConfigError::Invalid {
                setting,
                message: message.into(),
            };
            let endpoint = endpoint.filter(|e| !e.is_empty()).ok_or_else(|| {
                invalid(
                    "S3 endpoint (--s3-endpoint, APT_PROXY_S3_ENDPOINT, storage.s3.endpoint)",
                    "required with the s3 backend (host[:port])",
                )
            })?;
            if endpoint.contains("://") || endpoint.contains('/') {
                return Err(invalid(
                    "S3 endpoint (--s3-endpoint, APT_PROXY_S3_ENDPOINT, storage.s3.endpoint)",
                    "give host[:port] without a scheme or a path (the scheme comes from use_ssl)",
                ));
            }
            let bucket = bucket.filter(|b| !b.is_empty()).ok_or_else(|| {
                invalid(
                    "S3 bucket (--s3-bucket, APT_PROXY_S3_BUCKET, storage.s3.bucket)",
                    "required with the s3 backend",
                )
            })?;
            if access_key.is_some() != secret_key.is_some() {
                return Err(invalid(
                    "S3 credentials (--s3-access-key/--s3-secret-key, APT_PROXY_S3_ACCESS_KEY/APT_PROXY_S3_SECRET_KEY)",
                    "give both the access key and the secret key, or neither",
                ));
            }
            let inline_max_mb = inline_max_mb.unwrap_or(32);
            if inline_max_mb == 0 || inline_max_mb > 5 * 1024 {
                return Err(invalid(
                    "S3 inline size (--s3-inline-max-mb, APT_PROXY_S3_INLINE_MAX_MB, storage.s3.inline_max_mb)",
                    "must be between 1 and 5120 (MiB)",
                ));
            }
            let timeout = timeout.unwrap_or(5);
            if timeout == 0 || timeout > 600 {
                return Err(invalid(
                    "S3 timeout (--s3-timeout, APT_PROXY_S3_TIMEOUT, storage.s3.timeout_s)",
                    "must be between 1 and 600 (seconds)",
                ));
            }
            let prefix = match prefix {
                None => "apt-proxy/".to_string(),
                Some(p) if p.is_empty() || p.ends_with('/') => p,
                Some(p) => format!("{p}/"),
            };
            config.storage = StorageChoice::S3(Box::new(crate::storage::s3::S3Settings {
                endpoint,
                region: region
                    .filter(|r| !r.is_empty())
                    .unwrap_or_else(|| "us-east-1".into()),
                bucket,
                prefix,
                access_key: access_key.filter(|k| !k.is_empty()),
                secret_key: secret_key.filter(|k| !k.is_empty()),
                session_token: session_token.filter(|k| !k.is_empty()),
                use_ssl: use_ssl.unwrap_or(true),
                path_style: path_style.unwrap_or(false),
                inline_max: inline_max_mb << 20,
                temp_dir: temp_dir
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or_else(std::env::temp_dir),
                abandoned_upload_age: Duration::from_secs(abandoned.unwrap_or(3600).max(1)),
                timeout: Duration::from_secs(timeout),
            }));
        }
        config.otlp_protocol = crate::telemetry::tracing::protocol_from_env(env).map_err(|e| {
            ConfigError::Invalid {
                setting: "OTLP protocol (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, OTEL_EXPORTER_OTLP_PROTOCOL)",
                message: e,
            }
        })?;
        if let Some((var, url)) =
            crate::telemetry::tracing::endpoint_from_env(env, config.otlp_protocol)
        {
            if config.otlp_protocol == crate::telemetry::tracing::Protocol::Grpc {
                crate::telemetry::grpc::Target::parse(&url).map_err(|message| {
                    ConfigError::Invalid {
                        setting: var,
                        message,
                    }
                })?;
            }
            config.otlp_traces_url = Some(url);
        }
        Ok(config)
    }
}

const GIB: u64 = 1024 * 1024 * 1024;

/// Flag, else environment variable (empty counts as unset), else file.
fn pick<T: FromStr>(
    flag: Option<T>,
    env: &Env<'_>,
    var: &str,
    from_file: Option<T>,
) -> Result<Option<T>, ConfigError>
where
    T::Err: std::fmt::Display,
{
    if flag.is_some() {
        return Ok(flag);
    }
    if let Some(value) = env(var).filter(|v| !v.is_empty()) {
        return value
            .trim()
            .parse::<T>()
            .map(Some)
            .map_err(|e| ConfigError::Env {
                var: var.into(),
                value: value.clone(),
                expected: e.to_string(),
            });
    }
    Ok(from_file)
}

/// Like [`pick`] for booleans, accepting the spellings Go's strconv.ParseBool does, and
/// yes/no/on/off.
fn pick_bool(
    flag: Option<bool>,
    env: &Env<'_>,
    var: &str,
    from_file: Option<bool>,
) -> Result<Option<bool>, ConfigError> {
    if flag.is_some() {
        return Ok(flag);
    }
    if let Some(value) = env(var).filter(|v| !v.is_empty()) {
        return match lenient::parse_bool(&value) {
            Some(b) => Ok(Some(b)),
            None => Err(ConfigError::Env {
                var: var.into(),
                value,
                expected: "expected true or false".into(),
            }),
        };
    }
    Ok(from_file)
}

fn readable(path: Option<PathBuf>, setting: &'static str) -> Result<PathBuf, ConfigError> {
    let path = path.ok_or(ConfigError::Invalid {
        setting,
        message: "is required when TLS is enabled".into(),
    })?;
    std::fs::File::open(&path).map_err(|e| ConfigError::Invalid {
        setting,
        message: format!("{}: {e}", path.display()),
    })?;
    Ok(path)
}

/// The CONNECT flags, taken out of the command line.
struct ConnectFlags {
    hosts: Option<String>,
    ports: Option<String>,
    max_per_client: Option<usize>,
    idle_timeout: Option<u64>,
}

fn connect_settings(
    cli: ConnectFlags,
    env: &Env<'_>,
    file: file::ConnectSection,
) -> Result<ConnectSettings, ConfigError> {
    let defaults = ConnectSettings::default();
    let list = |flag: Option<String>, var: &str| -> Result<Option<Vec<String>>, ConfigError> {
        Ok(pick(flag, env, var, None::<String>)?.map(|text| comma_list(&text)))
    };
    const HOSTS: &str = "CONNECT hosts (--connect-hosts, APT_PROXY_CONNECT_HOSTS, connect.hosts)";
    const PORTS: &str = "CONNECT ports (--connect-ports, APT_PROXY_CONNECT_PORTS, connect.ports)";
    let hosts = list(cli.hosts, "APT_PROXY_CONNECT_HOSTS")?
        .or(file.hosts)
        .unwrap_or_default()
        .into_iter()
        .map(|h| {
            let h = h.trim().trim_end_matches('.').to_ascii_lowercase();
            let name = h.strip_prefix("*.").unwrap_or(&h);
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c));
            if valid {
                Ok(h)
            } else {
                Err(ConfigError::Invalid {
                    setting: HOSTS,
                    message: format!("{h:?} is not a host name or address"),
                })
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ports = match list(cli.ports, "APT_PROXY_CONNECT_PORTS")? {
        Some(items) if items.len() == 1 && items[0].eq_ignore_ascii_case("none") => Vec::new(),
        Some(items) => items
            .iter()
            .map(|p| match p.parse::<u16>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(ConfigError::Invalid {
                    setting: PORTS,
                    message: format!("{p:?} is not a port (1-65535) or `none`"),
                }),
            })
            .collect::<Result<_, _>>()?,
        None => match file.ports {
            Some(ports) if ports.contains(&0) => {
                return Err(ConfigError::Invalid {
                    setting: PORTS,
                    message: "0 is not a port".into(),
                });
            }
            Some(ports) => ports,
            None => defaults.ports,
        },
    };
    let max_per_client = match pick(
        cli.max_per_client,
        env,
        "APT_PROXY_CONNECT_MAX_PER_CLIENT",
        file.max_per_client,
    )? {
        Some(0) => None,
        Some(n) => Some(n),
        None => defaults.max_per_client,
    };
    let idle_timeout = match pick(
        cli.idle_timeout,
        env,
        "APT_PROXY_CONNECT_IDLE_TIMEOUT",
        file.idle_timeout_s,
    )? {
        Some(0) => {
            return Err(ConfigError::Invalid {
                setting: "CONNECT idle timeout (--connect-idle-timeout, APT_PROXY_CONNECT_IDLE_TIMEOUT, connect.idle_timeout_s)",
                message: "must be at least 1 second".into(),
            });
        }
        Some(s) => Duration::from_secs(s),
        None => defaults.idle_timeout,
    };
    Ok(ConnectSettings {
        hosts,
        ports,
        max_per_client,
        idle_timeout,
    })
}

/// The items of a comma-separated flag or variable, blanks dropped.
fn comma_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// A CIDR list from a comma-separated flag or variable, else from the file's YAML list.
fn cidr_list(
    text: Option<String>,
    from_file: Option<Vec<String>>,
    setting: &'static str,
) -> Result<Vec<IpNet>, ConfigError> {
    let items: Vec<String> = match text {
        Some(text) => comma_list(&text),
        None => from_file.unwrap_or_default(),
    };
    items
        .iter()
        .map(|text| {
            text.parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| ConfigError::Invalid {
                    setting,
                    message: format!("{text:?} is not a CIDR or an IP address"),
                })
        })
        .collect()
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        <Mode as clap::ValueEnum>::from_str(s, true).map_err(|_| {
            "expected one of all, ubuntu, ubuntu-ports, debian, centos, alpine".to_string()
        })
    }
}

#[cfg(test)]
mod tests;
