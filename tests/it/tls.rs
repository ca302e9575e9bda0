//! HTTPS mirrors: the real binary fetches through rustls from a TLS origin whose certificate
//! is signed by a test CA given in SSL_CERT_FILE.

use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::cache_dir;
use crate::crash::Binary;

/// A server configuration for `localhost` signed by a fresh test CA, with the CA's certificate
/// (DER and PEM).
pub fn signed_by_a_test_ca() -> (ServerConfig, CertificateDer<'static>, String) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "apt-proxy test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();

    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(leaf.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .unwrap();
    (
        config,
        CertificateDer::from(ca_cert.der().to_vec()),
        ca_cert.pem(),
    )
}

/// A TLS origin that answers every request with `body`; returns its port and the CA's PEM.
pub async fn tls_origin(body: &'static [u8]) -> (u16, String) {
    let (config, _, ca_pem) = signed_by_a_test_ca();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = tls.write_all(head.as_bytes()).await;
                let _ = tls.write_all(body).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, ca_pem)
}

#[tokio::test]
async fn https_mirror_through_rustls() {
    let (port, ca_pem) = tls_origin(b"over tls").await;
    let dir = cache_dir();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let cache = dir.path().join("cache");
    let proxy = Binary::start_with(
        &cache,
        &[
            "--mode",
            "debian",
            "--debian",
            &format!("https://localhost:{port}/debian/"),
        ],
        &[("SSL_CERT_FILE", ca_file.to_str().unwrap())],
    );
    let client = crate::client_builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let r = client
        .get(proxy.url("debian/pool/main/t/tls.deb"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "over tls");

    // The same origin is refused when its certificate is not trusted.
    let untrusted = Binary::start_with(
        &dir.path().join("cache2"),
        &[
            "--mode",
            "debian",
            "--debian",
            &format!("https://localhost:{port}/debian/"),
        ],
        &[],
    );
    let r = client
        .get(untrusted.url("debian/pool/main/t/tls.deb"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
}
