//! Traces: spans exported over OTLP (gRPC, HTTP with protobuf or JSON) to receivers on
//! loopback, flushed on shutdown.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use apt_proxy::telemetry::grpc;
use apt_proxy::telemetry::tracing::Protocol;

use crate::{Origin, Proxy, cache_dir};

/// The caller's trace and span in the `traceparent` header of [`traced_get`].
const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// GETs `path` through the proxy as part of the caller's trace.
async fn traced_get(proxy: &Proxy, path: &str) {
    proxy
        .client()
        .get(proxy.url(path))
        .header("traceparent", TRACEPARENT)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
}

/// A proxy exporting its spans to `url` over `protocol`, in front of an origin that holds
/// `debian/pool/<file>`; the origin and the cache dir live as long as they are kept.
async fn exporting(
    url: &str,
    protocol: Protocol,
    file: &str,
) -> (Proxy, Origin, tempfile::TempDir) {
    let origin = Origin::start().await;
    origin.put(&format!("/debian/pool/{file}"), file.to_string());
    let dir = cache_dir();
    let url = url.to_string();
    let proxy = Proxy::start(&origin, dir.path(), move |c| {
        c.otlp_traces_url = Some(url);
        c.otlp_protocol = protocol;
    })
    .await;
    (proxy, origin, dir)
}

/// A body posted to the receiver, with its content type.
type Posted = Arc<Mutex<Vec<(String, Bytes)>>>;

/// An OTLP/HTTP receiver that keeps every body posted to /v1/traces.
async fn receiver() -> (String, Posted) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    let got: Posted = Arc::default();
    let store = got.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let store = store.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let store = store.clone();
                    async move {
                        assert_eq!(req.uri().path(), "/v1/traces");
                        let kind = req.headers()["content-type"].to_str().unwrap().to_string();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        store.lock().unwrap().push((kind, body));
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, got)
}

/// A collector that answers every request with a 307 to `elsewhere`; counts them.
async fn redirecting(elsewhere: String) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = asked.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (count, elsewhere) = (count.clone(), elsewhere.clone());
            tokio::spawn(async move {
                let service = service_fn(move |_req: http::Request<hyper::body::Incoming>| {
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let answer = http::Response::builder()
                        .status(307)
                        .header("location", elsewhere.as_str())
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    async move { Ok::<_, Infallible>(answer) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, asked)
}

#[tokio::test]
async fn a_collector_that_redirects_is_not_followed() {
    let (elsewhere, got) = receiver().await;
    let (url, asked) = redirecting(elsewhere).await;
    let (proxy, _origin, _dir) = exporting(&url, Protocol::Json, "t.deb").await;
    traced_get(&proxy, "debian/pool/t.deb").await;
    proxy.stop().await;
    assert!(asked.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert!(got.lock().unwrap().is_empty(), "spans were sent on");
}

#[tokio::test]
async fn spans_reach_the_collector_and_flush_on_shutdown() {
    let (url, got) = receiver().await;
    let (proxy, _origin, _dir) = exporting(&url, Protocol::Json, "t.deb").await;
    proxy.get("debian/pool/t.deb").await.bytes().await.unwrap();
    traced_get(&proxy, "debian/pool/t.deb").await;
    proxy.stop().await;

    let spans: Vec<serde_json::Value> = got
        .lock()
        .unwrap()
        .iter()
        .map(|(kind, body)| {
            assert_eq!(kind, "application/json");
            serde_json::from_slice::<serde_json::Value>(body).unwrap()
        })
        .flat_map(|body| {
            body["resourceSpans"][0]["scopeSpans"][0]["spans"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(spans.len(), 2, "{spans:?}");
    let attr = |span: &serde_json::Value, key: &str| {
        span["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == key)
            .map(|a| a["value"]["stringValue"].as_str().unwrap().to_string())
    };
    assert_eq!(attr(&spans[0], "apt_proxy.cache").as_deref(), Some("MISS"));
    assert_eq!(attr(&spans[1], "apt_proxy.cache").as_deref(), Some("HIT"));
    for span in &spans {
        assert_eq!(attr(span, "apt_proxy.distro").as_deref(), Some("debian"));
        assert_eq!(attr(span, "apt_proxy.mirror").as_deref(), Some("127.0.0.1"));
        assert_eq!(
            attr(span, "http.response.status_code").as_deref(),
            Some("200")
        );
        assert_eq!(span["kind"], 2);
        assert_eq!(span["spanId"].as_str().unwrap().len(), 16);
    }
    assert_eq!(spans[1]["traceId"], TRACE_ID);
    assert_eq!(spans[1]["parentSpanId"], "b7ad6b7169203331");
    assert_ne!(spans[0]["traceId"], spans[1]["traceId"]);
}

/// OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf: the same spans as an ExportTraceServiceRequest
/// message, `application/x-protobuf`.
#[tokio::test]
async fn spans_in_protobuf_when_asked() {
    let (url, got) = receiver().await;
    let (proxy, _origin, _dir) = exporting(&url, Protocol::Protobuf, "p.deb").await;
    traced_get(&proxy, "debian/pool/p.deb").await;
    proxy.stop().await;
    let got = got.lock().unwrap().clone();
    assert!(!got.is_empty(), "nothing exported");
    let body: Vec<u8> = got
        .iter()
        .inspect(|(kind, _)| assert_eq!(kind, "application/x-protobuf"))
        .flat_map(|(_, b)| b.to_vec())
        .collect();
    let find = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    // trace_id (field 1, 16 bytes) of the caller's trace, and its span as the parent (field 4).
    let trace = hex::decode(TRACE_ID).unwrap();
    let parent = hex::decode("b7ad6b7169203331").unwrap();
    assert!(find(&[[0x0a, 16].as_slice(), &trace].concat()), "trace id");
    assert!(
        find(&[[0x22, 8].as_slice(), &parent].concat()),
        "parent span id"
    );
    assert!(
        find(b"\x4a\x19\x0a\x0fapt_proxy.cache\x12\x06\x0a\x04MISS"),
        "cache attribute"
    );
    assert!(find(b"service.name"), "resource");
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// A call the gRPC stand-in received: path, content-type, te, and the body (the gRPC message
/// with its 5-byte prefix).
type Call = (String, String, String, Vec<u8>);
type Calls = Arc<Mutex<Vec<Call>>>;

/// A collector stand-in speaking gRPC over HTTP/2 with the h2 crate (an implementation
/// independent of ours: it Huffman-codes its headers and uses its dynamic table), with
/// flow-control windows of `window` bytes, answering every call with `grpc_status`.
async fn grpc_receiver(grpc_status: &'static str, window: u32) -> (String, Calls) {
    grpc_receiver_on(grpc_status, window, None).await
}

/// The same over TLS when `tls` is given (ALPN must offer h2).
async fn grpc_receiver_on(
    grpc_status: &'static str,
    window: u32,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> (String, Calls) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let url = match tls {
        Some(_) => format!("https://localhost:{port}"),
        None => format!("http://127.0.0.1:{port}"),
    };
    let calls: Calls = Arc::default();
    let store = calls.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let store = store.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let mut builder = h2::server::Builder::new();
                builder
                    .initial_window_size(window)
                    .initial_connection_window_size(window);
                let handshake = match tls {
                    Some(acceptor) => {
                        let Ok(stream) = acceptor.accept(stream).await else {
                            return;
                        };
                        builder
                            .handshake::<_, Bytes>(Box::new(stream) as Box<dyn Io>)
                            .await
                    }
                    None => {
                        builder
                            .handshake::<_, Bytes>(Box::new(stream) as Box<dyn Io>)
                            .await
                    }
                };
                let Ok(mut conn) = handshake else {
                    return;
                };
                while let Some(Ok((request, mut respond))) = conn.accept().await {
                    let store = store.clone();
                    tokio::spawn(async move {
                        let (parts, mut body) = request.into_parts();
                        let mut message = Vec::new();
                        while let Some(Ok(chunk)) = body.data().await {
                            let _ = body.flow_control().release_capacity(chunk.len());
                            message.extend_from_slice(&chunk);
                        }
                        let header = |name: &str| {
                            parts
                                .headers
                                .get(name)
                                .map_or(String::new(), |v| v.to_str().unwrap().to_string())
                        };
                        store.lock().unwrap().push((
                            parts.uri.path().to_string(),
                            header("content-type"),
                            header("te"),
                            message,
                        ));
                        let response = http::Response::builder()
                            .status(200)
                            .header("content-type", "application/grpc")
                            .body(())
                            .unwrap();
                        let mut send = respond.send_response(response, false).unwrap();
                        // An empty ExportTraceServiceResponse.
                        send.send_data(Bytes::from_static(&[0; 5]), false).unwrap();
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", grpc_status.parse().unwrap());
                        if grpc_status != "0" {
                            trailers
                                .insert("grpc-message", "collector%20is%20full".parse().unwrap());
                        }
                        send.send_trailers(trailers).unwrap();
                    });
                }
            });
        }
    });
    (url, calls)
}

/// With no protocol asked for, spans go as the Go program sends them: OTLP over gRPC to the
/// endpoint as given (the spec's `http://otel-collector:4317`).
#[tokio::test]
async fn spans_go_over_grpc_by_default() {
    let (url, calls) = grpc_receiver("0", 65_535).await;
    let origin = Origin::start().await;
    origin.put("/debian/pool/g.deb", "grpc");
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |c| {
        assert_eq!(c.otlp_protocol, Protocol::Grpc);
        c.otlp_traces_url = Some(url.clone());
    })
    .await;
    for _ in 0..2 {
        traced_get(&proxy, "debian/pool/g.deb").await;
    }
    proxy.stop().await;
    let calls = calls.lock().unwrap().clone();
    assert!(!calls.is_empty(), "nothing exported");
    let mut message = Vec::new();
    for (path, kind, te, body) in &calls {
        assert_eq!(path, grpc::EXPORT_PATH);
        assert_eq!(kind, "application/grpc");
        assert_eq!(te, "trailers");
        // Not compressed, then the length of what follows.
        assert_eq!(body[0], 0);
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, body.len() - 5);
        message.extend_from_slice(&body[5..]);
    }
    let find = |needle: &[u8]| message.windows(needle.len()).any(|w| w == needle);
    let trace = hex::decode(TRACE_ID).unwrap();
    assert!(find(&[[0x0a, 16].as_slice(), &trace].concat()), "trace id");
    assert!(find(b"\x0a\x04MISS") && find(b"\x0a\x03HIT"), "both spans");
}

/// A batch larger than the collector's windows is sent as they open; the collector's verdict
/// and a peer that is no gRPC server are errors with a reason, not hangs.
#[tokio::test]
async fn grpc_calls_follow_flow_control_and_report_failures() {
    let message: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let (url, calls) = grpc_receiver("0", 1_000).await;
    let target = grpc::Target::parse(&url).unwrap();
    grpc::export(&target, None, &message).await.unwrap();
    let got = calls.lock().unwrap()[0].3.clone();
    assert_eq!(got.len(), message.len() + 5);
    assert!(got[5..] == message[..], "the message arrived altered");

    let (url, _) = grpc_receiver("8", 65_535).await;
    let err = grpc::export(&grpc::Target::parse(&url).unwrap(), None, b"x")
        .await
        .unwrap_err();
    assert_eq!(
        err,
        "the collector answered grpc-status 8: collector is full"
    );

    // An HTTP/1.1 server (the OTLP/HTTP receiver, hyper) closes on the HTTP/2 preface: an
    // error within the call.
    let (http_url, _) = receiver().await;
    let http1 = http_url.trim_end_matches("/v1/traces");
    let outcome = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        grpc::export(&grpc::Target::parse(http1).unwrap(), None, b"x"),
    )
    .await
    .expect("the call hung");
    let err = outcome.unwrap_err();
    assert!(err.contains("closed the connection"), "{err}");
}

/// An `https://` endpoint: TLS with ALPN h2, the collector's certificate checked.
#[tokio::test]
async fn grpc_over_tls() {
    let (mut server, ca, _) = crate::tls::signed_by_a_test_ca();
    server.alpn_protocols = vec![b"h2".to_vec()];
    let (url, calls) = grpc_receiver_on(
        "0",
        65_535,
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(server))),
    )
    .await;
    let target = grpc::Target::parse(&url).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let mut client = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"h2".to_vec()];
    grpc::export(&target, Some(&Arc::new(client.clone())), b"spans")
        .await
        .unwrap();
    assert_eq!(calls.lock().unwrap()[0].3, b"\0\0\0\0\x05spans");

    // A client that does not trust the collector's CA does not send.
    let strangers = rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let err = grpc::export(&target, Some(&Arc::new(strangers)), b"spans")
        .await
        .unwrap_err();
    assert!(err.starts_with("TLS with localhost:"), "{err}");
    assert_eq!(calls.lock().unwrap().len(), 1);
}
