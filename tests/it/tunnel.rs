//! CONNECT tunnels: an https source fetched through the proxy with a test CA, and every
//! refusal (port, host, address policy, per-client limit) with its status and reason; idle
//! tunnels are closed; tunnels are counted.

use std::time::{Duration, Instant};

use apt_proxy::config::ConnectSettings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::capacity::parse_prometheus_text;
use crate::tls::tls_origin;
use crate::{Origin, Proxy, cache_dir};

fn settings(port: u16) -> ConnectSettings {
    ConnectSettings {
        hosts: vec!["localhost".into()],
        ports: vec![port],
        ..ConnectSettings::default()
    }
}

/// Sends a CONNECT on a new connection; returns the stream and the response head.
async fn open(proxy: &Proxy, target: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        assert!(
            n > 0,
            "closed before the head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let mut text = String::from_utf8(head).unwrap();
    // A refusal's body is its one-line reason.
    if !text.starts_with("HTTP/1.1 200") {
        let len: usize = text
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(|v| v.parse().unwrap())
            })
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).await.unwrap();
        text.push_str(&String::from_utf8(body).unwrap());
    }
    (stream, text)
}

async fn metric(proxy: &Proxy, name: &str) -> f64 {
    let text = proxy.text("metrics").await;
    parse_prometheus_text(&text)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
}

#[tokio::test]
async fn an_https_source_is_tunnelled_to_an_allowed_host_and_port() {
    let (port, ca_pem) = tls_origin(b"over the tunnel").await;
    let origin = Origin::start().await;
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |c| {
        c.connect = settings(port);
        // localhost is 127.0.0.1: an internal address the operator allows here.
        c.security.allow_private_upstreams = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let client = reqwest::Client::builder()
        .proxy(reqwest::Proxy::https(format!("http://{}", proxy.addr)).unwrap())
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    for _ in 0..2 {
        let r = client
            .get(format!("https://localhost:{port}/debian/dists/x/InRelease"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "over the tunnel");
    }
    drop(client);
    // Counted when the tunnels close.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&proxy, "apt_proxy_tunnels_open").await > 0.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(metric(&proxy, "apt_proxy_tunnels_open").await, 0.0);
    assert!(metric(&proxy, "apt_proxy_tunnels_total{outcome=\"opened\"}").await >= 1.0);
    assert!(metric(&proxy, "apt_proxy_tunnel_bytes_total{direction=\"client\"}").await > 15.0);
    assert!(
        metric(
            &proxy,
            "apt_proxy_tunnel_bytes_total{direction=\"upstream\"}"
        )
        .await
            > 0.0
    );
    // Nothing in a tunnel is cached.
    assert_eq!(origin.total(), 0);
}

#[tokio::test]
async fn what_is_not_allowed_is_refused_with_a_reason() {
    let (port, _) = tls_origin(b"x").await;
    let origin = Origin::start().await;
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |c| {
        c.connect = settings(port);
        c.connect.hosts.push("[::1]".into());
    })
    .await;
    for (target, status, reason) in [
        // Listed in brackets, requested in brackets: on the list, then refused by the policy.
        (
            format!("[::1]:{port}"),
            "403",
            "resolves to the internal address ::1",
        ),
        (format!("localhost:{}", port ^ 1), "403", "is not tunnelled"),
        (
            format!("example.invalid:{port}"),
            "403",
            "is not a mirror of a served distribution",
        ),
        // Listed, but 127.0.0.1 is internal and not allowed here.
        (
            format!("localhost:{port}"),
            "403",
            "resolves to the internal address 127.0.0.1",
        ),
        ("localhost".to_string(), "400", "CONNECT needs host:port"),
    ] {
        let (_, answer) = open(&proxy, &target).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")) && answer.contains(reason),
            "{target}: {answer}"
        );
    }
    assert_eq!(
        metric(&proxy, "apt_proxy_tunnels_total{outcome=\"refused\"}").await,
        5.0
    );
    assert_eq!(
        metric(&proxy, "apt_proxy_tunnels_total{outcome=\"opened\"}").await,
        0.0
    );

    // Tunnels off altogether.
    let dir = cache_dir();
    let off = Proxy::start(&origin, dir.path(), |c| {
        c.connect = ConnectSettings {
            ports: vec![],
            ..settings(port)
        }
    })
    .await;
    let (_, answer) = open(&off, &format!("localhost:{port}")).await;
    assert!(
        answer.starts_with("HTTP/1.1 403") && answer.contains("tunnels are off"),
        "{answer}"
    );
}

#[tokio::test]
async fn tunnels_per_client_are_limited_and_idle_ones_closed() {
    let (port, _) = tls_origin(b"x").await;
    let origin = Origin::start().await;
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |c| {
        c.connect = ConnectSettings {
            max_per_client: Some(1),
            idle_timeout: Duration::from_secs(1),
            ..settings(port)
        };
        c.security.allow_private_upstreams = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let target = format!("localhost:{port}");
    let (mut first, answer) = open(&proxy, &target).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (_, answer) = open(&proxy, &target).await;
    assert!(
        answer.starts_with("HTTP/1.1 429") && answer.contains("--connect-max-per-client"),
        "{answer}"
    );
    // The first tunnel carries nothing: after the idle limit (1 s) the proxy closes it.
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), first.read(&mut buf))
        .await
        .expect("the idle tunnel is closed within 10 s")
        .unwrap_or(0);
    assert_eq!(n, 0, "the idle tunnel ends without data");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}"
    );
    // Its place is free again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, answer) = open(&proxy, &target).await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "{answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
