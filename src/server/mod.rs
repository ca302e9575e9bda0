//! The listener: accepts HTTP/1.1 connections (keep-alive, pipelining, TCP_NODELAY), serves
//! each request through [`handler`], and shuts down gracefully.

mod driver;
pub mod handler;
pub mod limits;
mod readahead;
pub mod reload;
mod stall;
mod tls;
pub mod tunnel;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::admin::ratelimit::RateLimiter;
use crate::cache::Cache;
use crate::config::StorageChoice;
use crate::config::{Config, Security};
use crate::mirror::selector::Selector;
use crate::storage::disk::DiskStore;
use crate::storage::s3::{S3SetupError, S3Store};
use crate::storage::{StorageError, Store};
use crate::telemetry::activity::RecentActivity;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::tracing::Tracer;
use crate::upstream::policy::AddressPolicy;
use crate::upstream::{Upstream, UpstreamError};
use reload::{LoadError, RegistrySource, Reloader};

/// What every request handler shares.
#[derive(Debug)]
pub struct AppState {
    /// The live registry of distributions, swapped whole on reload.
    pub reloader: Arc<Reloader>,
    pub cache: Arc<Cache>,
    pub security: Security,
    /// Requests seen; the next request id.
    pub requests: AtomicU64,
    /// When the server started (uptime).
    pub started: std::time::Instant,
    /// The last requests, for the status page.
    pub activity: RecentActivity,
    /// Requests and bytes over the last hours, for the status page's charts.
    pub traffic: crate::telemetry::traffic::Traffic,
    /// Per-IP limit on `/api/*`.
    pub limiter: RateLimiter,
    /// Per-IP limit on refused API keys, kept apart so they never use up `limiter`.
    pub auth_failures: RateLimiter,
    /// The port the server listens on: an absolute-form request to this port that names no
    /// mirror is addressed to the proxy itself (a browser using it as its proxy).
    pub port: u16,
    /// CONNECT tunnels: settings and the tunnels open per client.
    pub tunnels: tunnel::Tunnels,
    /// Whether the listener serves HTTPS (HSTS header).
    pub tls: bool,
    /// The OTLP span exporter, when tracing is on.
    pub tracer: Option<Tracer>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("cache directory (--cachedir, APT_PROXY_CACHEDIR, cache.dir): {0}")]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Bucket(#[from] S3SetupError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot listen on {addr} (--host, --port): {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// What `--check-config` checks beyond the values themselves: distributions.yaml and the
/// pinned mirrors build a registry, and the TLS files load. Touches neither the network nor the
/// cache. Returns one line per repo served, with its first mirror.
pub fn preflight(config: &Config) -> Result<Vec<String>, StartError> {
    let registry = RegistrySource::of(config).load()?;
    if let Some(files) = &config.tls {
        tls::acceptor(files)?;
    }
    Ok(registry
        .repos()
        .iter()
        .map(|repo| {
            let how = if repo.pinned() {
                "pinned"
            } else {
                "first candidate"
            };
            format!(
                "/{}/ -> {} ({how}, {} mirror(s))",
                repo.id,
                repo.upstream(),
                repo.mirror_set.candidates.len()
            )
        })
        .collect())
}

/// Serves one connection (CONNECT upgrades allowed) until it ends, or, once `stopping` turns
/// true, until its request in flight is answered. `_open` is held for as long as it runs.
async fn serve<I, S>(
    builder: &http1::Builder,
    io: I,
    service: S,
    mut stopping: tokio::sync::watch::Receiver<bool>,
    _open: tokio::sync::mpsc::Sender<()>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = crate::cache::body::Body>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let stop = async move {
        let _ = stopping.wait_for(|s| *s).await.map(|_| ());
    };
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        _ = stop => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Linux's "address family not supported": a kernel without IPv6.
const EAFNOSUPPORT: i32 = 97;

/// Binds `host:port`. `localhost` is both loopback addresses, 127.0.0.1 and ::1, on one port
/// (::1 is skipped with a warning on a machine without IPv6); any other name or address is
/// bound as the system resolves it, to its first address that works.
async fn listen(host: &str, port: u16) -> Result<Vec<TcpListener>, StartError> {
    let failed = |addr: String| move |source| StartError::Bind { addr, source };
    if !host.eq_ignore_ascii_case("localhost") {
        let listener = TcpListener::bind((host, port))
            .await
            .map_err(failed(format!("{host}:{port}")))?;
        return Ok(vec![listener]);
    }
    let v4 = SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
    let first = TcpListener::bind(v4)
        .await
        .map_err(failed(v4.to_string()))?;
    let port = first.local_addr().map_or(port, |a| a.port());
    let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    match TcpListener::bind(v6).await {
        Ok(second) => Ok(vec![first, second]),
        Err(e)
            if e.kind() == std::io::ErrorKind::AddrNotAvailable
                || e.raw_os_error() == Some(EAFNOSUPPORT) =>
        {
            tracing::warn!("no IPv6 loopback on this machine: listening on {v4} only");
            Ok(vec![first])
        }
        Err(e) => Err(failed(v6.to_string())(e)),
    }
}

/// A bound, not yet running server.
pub struct Server {
    /// One socket, or two for `localhost` (127.0.0.1 and ::1), all on the same port.
    listeners: Vec<TcpListener>,
    per_client: Arc<limits::PerClient>,
    /// How long a write to a client that stopped reading may stay blocked.
    write_timeout: Duration,
    state: Arc<AppState>,
    tls: Option<TlsAcceptor>,
    grace: Duration,
}

impl Server {
    /// Checks the configuration, opens the cache and binds the listening socket.
    pub async fn bind(config: &Config) -> Result<Server, StartError> {
        let metrics = Arc::new(Metrics::new());
        let policy = Arc::new(AddressPolicy::new(
            config.security.allow_private_upstreams.clone(),
        ));
        let selector = Arc::new(Selector::new(
            config.tuning.benchmark.clone(),
            config.tuning.mirror_refresh,
            config.tuning.mirror_demotion,
            metrics.clone(),
            policy.clone(),
        ));
        let reloader = Arc::new(Reloader::new(RegistrySource::of(config), selector.clone())?);

        if let Some(path) = &config.distributions_config {
            tracing::info!(file = %path.display(), "loaded distributions config");
        }
        let tls = config.tls.as_ref().map(tls::acceptor).transpose()?;
        let loopback = config
            .host
            .parse::<std::net::IpAddr>()
            .map_or(config.host == "localhost", |ip| ip.is_loopback());
        if !config.security.api_auth && !loopback {
            tracing::warn!(host = %config.host, "the management API (/api/*) has no key and listens beyond loopback: anyone who reaches it can purge the cache or reload; set --api-key");
        }
        let store = match &config.storage {
            StorageChoice::Disk => Store::Disk(DiskStore::open(&config.cache_dir)?),
            StorageChoice::S3(settings) => {
                tracing::warn!(cache_dir = %config.cache_dir.display(), temp_dir = %settings.temp_dir.display(), "the s3 backend ignores the cache directory: bodies are spooled under the temp dir while they are uploaded");
                let (store, problem) = S3Store::connect(settings, metrics.storage.clone()).await?;
                match problem {
                    Some(e) => {
                        tracing::error!(endpoint = %settings.endpoint, bucket = %settings.bucket, error = %e, "the bucket does not answer: serving from the mirrors until it does")
                    }
                    None => {
                        tracing::info!(endpoint = %settings.endpoint, bucket = %settings.bucket, prefix = %settings.prefix, "cache in an S3 bucket")
                    }
                }
                Store::S3(store)
            }
        };
        let maintenance = match &config.storage {
            StorageChoice::S3(settings) => Some(
                (settings.abandoned_upload_age / 2)
                    .clamp(Duration::from_secs(1), Duration::from_secs(900)),
            ),
            StorageChoice::Disk => None,
        };
        let upstream = Upstream::new(config.upstream_keep_alive, &config.tuning, &policy)?;
        let cache = Arc::new(Cache::new(
            store,
            upstream,
            config.tuning.clone(),
            config.cache_limits.clone(),
            metrics,
        ));
        let loader = cache.clone();
        let started = SystemTime::now();
        tokio::spawn(async move { loader.load_index(started).await });
        tokio::spawn(cache.clone().run_cleanups());
        tokio::spawn(cache.clone().run_scrubs());
        if let Some(every) = maintenance {
            tokio::spawn(cache.clone().run_maintenance(every));
        }
        let listeners = listen(&config.host, config.port).await?;
        let port = listeners[0].local_addr().map_or(config.port, |a| a.port());
        let state = Arc::new(AppState {
            port,
            tunnels: tunnel::Tunnels::new(config.connect.clone()),
            reloader,
            cache,
            security: config.security.clone(),
            requests: AtomicU64::new(0),
            started: std::time::Instant::now(),
            activity: RecentActivity::default(),
            traffic: Default::default(),
            limiter: RateLimiter::new(config.security.api_rate_limit_per_minute),
            auth_failures: RateLimiter::new(config.security.api_rate_limit_per_minute),
            tls: tls.is_some(),
            tracer: config.otlp_traces_url.clone().map(|url| {
                let protocol = config.otlp_protocol;
                tracing::info!(
                    url,
                    protocol = protocol.name(),
                    "exporting traces over OTLP"
                );
                Tracer::start(url, protocol)
            }),
        });
        // Mirrors are ranked in the background: the proxy serves at once, in configuration
        // order, and switches when a ranking is ready.
        let sets = state.reloader.clone();
        tokio::spawn(selector.run(move || sets.mirror_sets()));
        Ok(Server {
            listeners,
            per_client: limits::PerClient::new(config.max_connections_per_client),
            write_timeout: config.tuning.client_write_timeout,
            state,
            tls,
            grace: config.tuning.shutdown_grace,
        })
    }

    /// The cache (for readiness checks).
    pub fn cache(&self) -> Arc<Cache> {
        self.state.cache.clone()
    }

    /// The registry and its reloads (for SIGHUP).
    pub fn reloader(&self) -> Arc<Reloader> {
        self.state.reloader.clone()
    }

    /// `https` when the listener serves TLS, else `http`.
    pub fn protocol(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// The address the server listens on (the real port when bound to port 0); the first,
    /// when it listens on several.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listeners[0].local_addr()
    }

    /// Every address the server listens on.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Serves until `shutdown` completes, then stops accepting and waits (at most the grace
    /// period) for connections in flight to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        // Graceful shutdown: `stop` tells every connection to finish its request in flight and
        // close; each holds a clone of `open`, so `drained` ends when the last one is gone.
        // (hyper-util's GracefulShutdown cannot watch connections that allow CONNECT upgrades.)
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let (open, mut drained) = tokio::sync::mpsc::channel::<()>(1);
        let mut shutdown = std::pin::pin!(shutdown);
        let mut builder = http1::Builder::new();
        builder
            .keep_alive(true)
            // Not pipeline_flush: with it hyper buffers response bodies without limit, so a
            // client that reads slowly would make the proxy hold a whole file in memory.
            .timer(TokioTimer::new())
            // hyper asks the body for the next chunk only while less than this is queued: a
            // client that does not read holds at most one chunk (and request heads are limited
            // to this size, 431 beyond).
            .max_buf_size(driver::MAX_HEAD)
            .header_read_timeout(self.state.cache.tuning().client_head_timeout);
        tokio::spawn(self.state.reloader.clone().run(Duration::from_millis(500)));
        // The status page's byte chart: the served-bytes counters, sampled every minute.
        let sampled = Arc::downgrade(&self.state);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(state) = sampled.upgrade() else {
                    return;
                };
                crate::admin::status_page::sample_traffic(&state);
            }
        });
        tracing::info!("server started successfully");
        let mut next = 0;
        loop {
            // Every listener is polled, starting with a different one each time.
            let accept = std::future::poll_fn(|cx| {
                let n = self.listeners.len();
                for i in 0..n {
                    let listener = &self.listeners[(next + i) % n];
                    if let std::task::Poll::Ready(accepted) = listener.poll_accept(cx) {
                        next = (next + i + 1) % n;
                        return std::task::Poll::Ready(accepted);
                    }
                }
                std::task::Poll::Pending
            });
            tokio::select! {
                accepted = accept => match accepted {
                    Ok((stream, peer)) => {
                        // A dual-stack listener's IPv4 clients arrive as ::ffff:a.b.c.d.
                        let peer = peer.ip().to_canonical();
                        let allowed = &self.state.security.allowed_clients;
                        if !allowed.is_empty() && !allowed.iter().any(|net| net.contains(&peer)) {
                            tracing::debug!(client = %peer, "connection refused: not an allowed client");
                            tokio::spawn(limits::refuse(stream, limits::Refusal::NotAllowed, self.tls.is_some()));
                            continue;
                        }
                        let Some(admitted) = self.per_client.admit(peer) else {
                            tracing::debug!(client = %peer, "connection refused: too many open from this address");
                            tokio::spawn(limits::refuse(stream, limits::Refusal::TooMany, self.tls.is_some()));
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        let state = self.state.clone();
                        let connection = Arc::new(readahead::Connection::default());
                        let (shared, connection_shared) = (state.clone(), connection.clone());
                        let service = service_fn(move |req| handler::handle(state.clone(), peer, connection.clone(), req));
                        let builder = builder.clone();
                        let (stopping, open) = (stopping.clone(), open.clone());
                        match self.tls.clone() {
                            None => {
                                let driven = driver::Driven {
                                    state: shared,
                                    peer,
                                    connection: connection_shared,
                                    write_timeout: self.write_timeout,
                                    builder,
                                    service,
                                    stopping,
                                    open,
                                };
                                tokio::spawn(async move {
                                    let _admitted = admitted;
                                    driver::drive(stream, driven).await;
                                });
                            }
                            Some(acceptor) => {
                                let stream = stall::WriteTimeout::new(stream, self.write_timeout);
                                tokio::spawn(async move {
                                    let _admitted = admitted;
                                    let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await;
                                    let Ok(Ok(stream)) = handshake else {
                                        tracing::debug!("TLS handshake failed or timed out");
                                        return;
                                    };
                                    // Read-ahead looks at what hyper reads: the plain bytes.
                                    let stream = readahead::ReadAhead::new(stream, Vec::new(), shared, connection_shared);
                                    serve(&builder, stream, service, stopping, open).await;
                                });
                            }
                        }
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = &mut shutdown => break,
            }
        }
        drop(self.listeners);
        tracing::info!("shutting down: no new connections, waiting for transfers in flight");
        stop.send_replace(true);
        drop(open);
        tokio::select! {
            _ = drained.recv() => tracing::info!("all connections finished"),
            _ = tokio::time::sleep(self.grace) => tracing::warn!(grace_s = self.grace.as_secs(), "grace period over, closing the remaining connections"),
        }
        if let Some(tracer) = &self.state.tracer {
            tracer.flush(Duration::from_secs(5)).await;
        }
    }
}
