//! Integration tests: the real server on 127.0.0.1:0 in this process, in front of an in-process
//! origin ([`origin::Origin`]) that counts requests and can misbehave, driven by real HTTP
//! clients (reqwest, and raw TCP where the exact bytes matter).

mod origin;

mod capacity;
mod clients;
mod config;
mod conformance;
mod consistency;
mod crash;
mod disk;
mod driver;
mod failures;
mod fill;
mod hostile;
mod integrity;
mod mirrors;
mod ops;
mod otlp;
mod pipeline;
mod routing;
mod s3;
mod semantics;
mod tls;
mod tunnel;
mod weed;

use std::net::SocketAddr;
use std::time::Duration;

use apt_proxy::config::{Config, Tuning};
use apt_proxy::server::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

pub use origin::{Behavior, Origin};

/// A proxy running in this process; shut down (gracefully) when dropped or by [`Proxy::stop`].
pub struct Proxy {
    pub addr: SocketAddr,
    /// Shared by [`Proxy::client`] and [`Proxy::get`] (one connection pool).
    client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    /// Starts a proxy with its cache in `cache_dir`, every distribution's mirror on `origin`
    /// (`/<id>/` there), and `tune` applied to the configuration.
    pub async fn start(
        origin: &Origin,
        cache_dir: &std::path::Path,
        tune: impl FnOnce(&mut Config),
    ) -> Proxy {
        if std::env::var_os("APT_PROXY_TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::DEBUG)
                .with_test_writer()
                .try_init();
        }
        let mut config = Config::new(cache_dir);
        config.host = "127.0.0.1".into();
        config.port = 0;
        for id in ["ubuntu", "ubuntu-ports", "debian", "centos", "alpine"] {
            config.mirrors.insert(id.into(), origin.base(id));
        }
        config.tuning = Tuning {
            shutdown_grace: Duration::from_secs(5),
            ..Tuning::default()
        };
        tune(&mut config);
        let server = Server::bind(&config).await.expect("proxy starts");
        let addr = server.local_addr().unwrap();
        let cache = server.cache();
        // The start-up scan of the cache directory runs in the background; tests start after it.
        for _ in 0..1000 {
            if cache.index_loaded() {
                break;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(cache.index_loaded(), "cache index loads");
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        Proxy {
            addr,
            client: crate::client_builder().build().unwrap(),
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// `http://127.0.0.1:P/<path>` (path-prefixed form); `path` has no leading `/`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    /// `GET /<path>` (its head; the body is read by the caller).
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// `GET /<path>` with a `Range` header.
    pub async fn get_range(&self, path: &str, range: &str) -> reqwest::Response {
        let request = self.client.get(self.url(path)).header("range", range);
        request.send().await.unwrap()
    }

    /// The body of `GET /<path>` as text.
    pub async fn text(&self, path: &str) -> String {
        self.get(path).await.text().await.unwrap()
    }

    /// A client that talks to the proxy directly (path-prefixed form).
    pub fn client(&self) -> reqwest::Client {
        self.client.clone()
    }

    /// A client that uses the proxy as its HTTP forward proxy (absolute-URI form).
    pub fn forward_client(&self) -> reqwest::Client {
        let proxy = reqwest::Proxy::http(format!("http://{}", self.addr)).unwrap();
        reqwest::Client::builder().proxy(proxy).build().unwrap()
    }

    /// Shuts down gracefully and waits for the server to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Sends `raw` bytes on a new connection and returns everything read until the server closes
/// it or `within` passes.
pub async fn raw_exchange(addr: SocketAddr, raw: &[u8], within: Duration) -> String {
    exchange(addr, raw, within).await.0
}

/// Sends `raw` bytes on a new connection (the server may close before it has them all) and
/// reads until the server closes it or `within` passes: what was read, and whether it closed.
pub async fn exchange(addr: SocketAddr, raw: &[u8], within: Duration) -> (String, bool) {
    exchange_after(addr, Duration::ZERO, raw, within).await
}

/// [`exchange`], with `raw` sent `pause` after the connection is made.
pub async fn exchange_after(
    addr: SocketAddr,
    pause: Duration,
    raw: &[u8],
    within: Duration,
) -> (String, bool) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(pause).await;
    let _ = stream.write_all(raw).await;
    let mut out = Vec::new();
    let closed = tokio::time::timeout(within, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// The value of a metric line starting with `name` (summed over its series).
pub async fn metric(proxy: &Proxy, name: &str) -> f64 {
    proxy
        .text("metrics")
        .await
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A client that reads slowly, or not at all: a connection with a 4 KiB receive buffer on
/// which `GET /<path>` was sent.
pub async fn slow_get(addr: SocketAddr, path: &str) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let request = format!("GET /{path} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// Deterministic pseudo-random bytes (incompressible enough for transfer tests).
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Reads a whole response body; `Err` when the transfer was cut.
pub async fn read_all(r: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    use futures_util::StreamExt;
    let mut out = Vec::new();
    let mut stream = r.bytes_stream();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

/// The `X-Cache` header of a response.
pub fn x_cache(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// A temporary cache directory.
pub fn cache_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// A reqwest client builder that talks to the proxy directly. Installs the process's rustls
/// crypto provider first, as the proxy does, for tests that start only the binary.
pub fn client_builder() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().no_proxy()
}
