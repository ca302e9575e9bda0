//! Traces: spans exported over OTLP/HTTP to a receiver on loopback, flushed on shutdown.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::{Origin, Proxy, cache_dir};

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

#[tokio::test]
async fn spans_reach_the_collector_and_flush_on_shutdown() {
    let (url, got) = receiver().await;
    let origin = Origin::start().await;
    origin.put("/debian/pool/t.deb", "traced");
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |c| {
        c.otlp_traces_url = Some(url.clone())
    })
    .await;
    let client = proxy.client();
    proxy.get("debian/pool/t.deb").await.bytes().await.unwrap();
    client
        .get(proxy.url("debian/pool/t.deb"))
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
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
    assert_eq!(spans[1]["traceId"], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(spans[1]["parentSpanId"], "b7ad6b7169203331");
    assert_ne!(spans[0]["traceId"], spans[1]["traceId"]);
}

/// OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf: the same spans as an ExportTraceServiceRequest
/// message, `application/x-protobuf`.
#[tokio::test]
async fn spans_in_protobuf_when_asked() {
    let (url, got) = receiver().await;
    let origin = Origin::start().await;
    origin.put("/debian/pool/p.deb", "protobuf");
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |c| {
        c.otlp_traces_url = Some(url.clone());
        c.otlp_protocol = Some(apt_proxy::telemetry::tracing::Protocol::Protobuf);
    })
    .await;
    proxy
        .client()
        .get(proxy.url("debian/pool/p.deb"))
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
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
    let trace = hex::decode("0af7651916cd43dd8448eb211c80319c").unwrap();
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
