//! CONNECT tunnels, for clients whose sources are `https://` and whose proxy for them is
//! apt-proxy. A tunnel carries TLS the proxy cannot read, so nothing in it is cached; an
//! `http://` source (or `http://HTTPS///host/…`) is the cached way.
//!
//! A tunnel is opened only to a host on the allow-list (the mirror hosts of the served
//! distributions, and `--connect-hosts`) on an allowed port (`--connect-ports`, 443 by
//! default), and only to addresses the upstream address policy allows (the operator's mirror
//! host names exempt, as for fetches). Each client IP may hold `--connect-max-per-client`
//! tunnels; a tunnel idle both ways for `--connect-idle-timeout` is closed. Anything else is
//! refused with a status and a one-line reason, and counted.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::AppState;
use super::handler::text;
use super::limits::PerClient;
use crate::cache::body::Body;
use crate::config::ConnectSettings;
use crate::distro::HostPattern;
use crate::telemetry::metrics::{DirectionLabel, Metrics, TunnelLabel};

/// How long resolving a tunnel's host may take.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting to a tunnel's host may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The tunnel settings and the tunnels open per client.
#[derive(Debug)]
pub struct Tunnels {
    settings: ConnectSettings,
    /// `settings.hosts`, parsed (an IPv6 address without its brackets, as requests give it).
    hosts: Vec<HostPattern>,
    open: Arc<PerClient>,
}

impl Tunnels {
    pub fn new(settings: ConnectSettings) -> Tunnels {
        Tunnels {
            hosts: settings
                .hosts
                .iter()
                .map(|h| HostPattern::parse(h.trim_start_matches('[').trim_end_matches(']')))
                .collect(),
            open: PerClient::new(settings.max_per_client),
            settings,
        }
    }
}

/// Answers a CONNECT request: 200 and a tunnel, or a refusal.
pub async fn connect(
    state: &AppState,
    mut request: Request<Incoming>,
    peer: IpAddr,
) -> Response<Body> {
    let metrics = state.cache.metrics().clone();
    let count = |outcome: &'static str| {
        metrics
            .tunnels
            .get_or_create(&TunnelLabel { outcome })
            .inc();
    };
    let tunnels = &state.tunnels;
    let refuse = |status: StatusCode, why: String| {
        count("refused");
        tracing::debug!(client = %peer, "CONNECT refused: {why}");
        text(status, why)
    };
    if tunnels.settings.ports.is_empty() {
        return refuse(
            StatusCode::FORBIDDEN,
            "CONNECT tunnels are off: use http:// repository URLs, which are cached".into(),
        );
    }
    let Some(authority) = request.uri().authority().cloned() else {
        return refuse(StatusCode::BAD_REQUEST, "CONNECT needs host:port".into());
    };
    let Some(port) = authority.port_u16() else {
        return refuse(StatusCode::BAD_REQUEST, "CONNECT needs host:port".into());
    };
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if !tunnels.settings.ports.contains(&port) {
        let allowed: Vec<String> = tunnels.settings.ports.iter().map(u16::to_string).collect();
        return refuse(
            StatusCode::FORBIDDEN,
            format!(
                "port {port} is not tunnelled (allowed: {})",
                allowed.join(", ")
            ),
        );
    }
    let listed = tunnels.hosts.iter().any(|h| h.matches(&host))
        || state.reloader.registry.load().knows_host(&host);
    if !listed {
        return refuse(
            StatusCode::FORBIDDEN,
            format!("{host} is not a mirror of a served distribution (see --connect-hosts)"),
        );
    }
    let Some(admitted) = tunnels.open.admit(peer) else {
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "too many tunnels open from this client (--connect-max-per-client)".into(),
        );
    };
    let addrs: Vec<SocketAddr> = match tokio::time::timeout(
        RESOLVE_TIMEOUT,
        tokio::net::lookup_host((host.as_str(), port)),
    )
    .await
    {
        Ok(Ok(addrs)) => addrs.collect(),
        Ok(Err(_)) | Err(_) => {
            count("failed");
            return text(StatusCode::BAD_GATEWAY, format!("cannot resolve {host}"));
        }
    };
    let allowed = match state.reloader.selector.policy().connectable(&host, addrs) {
        Ok(allowed) if !allowed.is_empty() => allowed,
        Ok(_) => {
            count("failed");
            return text(StatusCode::BAD_GATEWAY, format!("cannot resolve {host}"));
        }
        Err(refused) => return refuse(StatusCode::FORBIDDEN, refused.0),
    };
    let mut upstream = None;
    for addr in &allowed {
        if let Ok(Ok(stream)) =
            tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await
        {
            upstream = Some(stream);
            break;
        }
    }
    let Some(upstream) = upstream else {
        count("failed");
        return text(
            StatusCode::BAD_GATEWAY,
            format!("cannot connect to {host}:{port}"),
        );
    };
    let _ = upstream.set_nodelay(true);
    count("opened");
    let idle = tunnels.settings.idle_timeout;
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let _admitted = admitted;
        let client = match upgrade.await {
            Ok(upgraded) => TokioIo::new(upgraded),
            Err(e) => {
                tracing::debug!(error = %e, "CONNECT: the client's connection was not handed over");
                return;
            }
        };
        metrics.tunnels_open.inc();
        let started = Instant::now();
        let (up, down) = relay(client, upstream, idle, &metrics).await;
        metrics.tunnels_open.dec();
        tracing::debug!(client = %peer, host = %host, port, upstream_bytes = up, client_bytes = down, ms = started.elapsed().as_millis() as u64, "tunnel closed");
    });
    Response::new(crate::cache::body::empty())
}

/// Copies both ways until either side closes or nothing moves for `idle`; returns the bytes
/// sent upstream and to the client.
async fn relay<C, U>(client: C, upstream: U, idle: Duration, metrics: &Metrics) -> (u64, u64)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut client = Watched {
        inner: client,
        last: last.clone(),
        started,
        read: 0,
    };
    let mut upstream = Watched {
        inner: upstream,
        last: last.clone(),
        started,
        read: 0,
    };
    {
        let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
        tokio::pin!(copy);
        loop {
            let since = Duration::from_millis(last.load(Ordering::Relaxed));
            let deadline = tokio::time::Instant::from_std(started + since + idle);
            tokio::select! {
                _ = &mut copy => break,
                _ = tokio::time::sleep_until(deadline) => {
                    let moved = Duration::from_millis(last.load(Ordering::Relaxed));
                    if moved == since {
                        tracing::debug!(idle_s = idle.as_secs(), "tunnel idle: closed");
                        break;
                    }
                }
            }
        }
    }
    // Counted as they were read, so a tunnel cut by the idle limit or an error counts too.
    let (up, down) = (client.read, upstream.read);
    metrics
        .tunnel_bytes
        .get_or_create(&DirectionLabel {
            direction: "upstream",
        })
        .inc_by(up);
    metrics
        .tunnel_bytes
        .get_or_create(&DirectionLabel {
            direction: "client",
        })
        .inc_by(down);
    (up, down)
}

/// A stream that records when it last read something (milliseconds since `started`, shared by
/// both sides), and how much it read.
struct Watched<S> {
    inner: S,
    last: Arc<AtomicU64>,
    started: Instant,
    read: u64,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read += n as u64;
            let now = self.started.elapsed().as_millis() as u64;
            self.last.store(now, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
