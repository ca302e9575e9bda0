//! Resolved configuration: what the rest of the program reads, built from the command line
//! and environment (and, later, the YAML files).

pub mod cli;

use std::path::PathBuf;
use std::time::Duration;

use crate::distro::{MirrorPins, Mode};

/// Everything the server needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: String,
    pub port: u16,
    pub mode: Mode,
    pub cache_dir: PathBuf,
    /// Mirror choice per distribution id.
    pub mirrors: MirrorPins,
    pub upstream_keep_alive: bool,
    pub debug: bool,
    pub tuning: Tuning,
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
    /// Longest a request waits for a mirror to revalidate a stale copy before the copy is
    /// served anyway (the revalidation goes on in the background).
    pub stale_wait: Duration,
    /// How long a shutdown waits for transfers in flight.
    pub shutdown_grace: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            index_fresh: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(30),
            other_ttl: Duration::from_secs(3600),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
            head_timeout: Duration::from_secs(20),
            stale_wait: Duration::from_secs(3),

            shutdown_grace: Duration::from_secs(30),
        }
    }
}

impl Config {
    /// A configuration with every default and the cache in `cache_dir`.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Config {
        Config {
            host: "0.0.0.0".into(),
            port: 3142,
            mode: Mode::All,
            cache_dir: cache_dir.into(),
            mirrors: MirrorPins::new(),
            upstream_keep_alive: true,
            debug: false,
            tuning: Tuning::default(),
        }
    }

    /// The configuration the command line and environment describe.
    pub fn from_cli(cli: cli::Cli) -> Config {
        let mirrors = [
            ("ubuntu", cli.ubuntu),
            ("ubuntu-ports", cli.ubuntu_ports),
            ("debian", cli.debian),
            ("centos", cli.centos),
            ("alpine", cli.alpine),
        ]
        .into_iter()
        .filter_map(|(id, spec)| spec.map(|s| (id.to_string(), s)))
        .collect();
        Config {
            host: cli.host,
            port: cli.port,
            mode: cli.mode,
            cache_dir: cli.cachedir,
            mirrors,
            upstream_keep_alive: cli.upstream_keep_alive,
            debug: cli.debug,
            tuning: Tuning::default(),
        }
    }
}
