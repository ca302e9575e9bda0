//! OpenTelemetry traces over OTLP, written by hand: one span per request (method, path,
//! status, cache status, distribution, repo, mirror), batched and sent by a background task,
//! flushed on graceful shutdown. Enabled by OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (used as is) or
//! OTEL_EXPORTER_OTLP_ENDPOINT. The protocol follows OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, else
//! OTEL_EXPORTER_OTLP_PROTOCOL: `grpc` (the default, as in the Go program: the endpoint is the
//! collector's `http://host:4317`, see [`super::grpc`]), `http/protobuf` or `http/json` (spans
//! go to `<endpoint>/v1/traces`). A W3C `traceparent` header on the request makes the span a
//! child of the caller's.
//!
//! No OpenTelemetry SDK: the protocol is small, and the SDK with its exporter would add about
//! a megabyte and its own runtime plumbing to a binary whose size is a promise.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use super::grpc;

/// Spans waiting to be sent at most; beyond, new spans are dropped (and counted in the log).
const QUEUE: usize = 8192;
/// Spans per export request.
const BATCH: usize = 512;

/// One finished request.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub name: String,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, String)>,
    pub error: bool,
}

enum Message {
    Span(Box<SpanRecord>),
    Flush(oneshot::Sender<()>),
}

/// The exporter's handle.
#[derive(Debug)]
pub struct Tracer {
    tx: mpsc::Sender<Message>,
    dropped: std::sync::atomic::AtomicU64,
    ids: Mutex<u64>,
    random: RandomState,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Message")
    }
}

/// How spans travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `grpc`: the ExportTraceServiceRequest message in a unary gRPC call over HTTP/2.
    Grpc,
    /// `http/protobuf`: the ExportTraceServiceRequest message, `application/x-protobuf`.
    Protobuf,
    /// `http/json`: the same message in OTLP's JSON mapping, `application/json`.
    Json,
}

impl Protocol {
    /// As OTEL_EXPORTER_OTLP_PROTOCOL spells it.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::Protobuf => "http/protobuf",
            Protocol::Json => "http/json",
        }
    }
}

/// The protocol the environment asks for; `grpc` when it asks for none.
pub fn protocol_from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Protocol, String> {
    let (var, value) = [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    .into_iter()
    .find_map(|var| env(var).filter(|v| !v.trim().is_empty()).map(|v| (var, v)))
    .unwrap_or(("", "grpc".to_string()));
    let value = value.trim();
    [Protocol::Grpc, Protocol::Protobuf, Protocol::Json]
        .into_iter()
        .find(|p| p.name() == value)
        .ok_or_else(|| format!("{var}={value:?} is not one of grpc, http/protobuf, http/json"))
}

/// The traces endpoint the environment asks for, if any, with the variable that named it. Over
/// HTTP, OTEL_EXPORTER_OTLP_ENDPOINT is a base URL (`/v1/traces` is added); a gRPC endpoint
/// is the collector's address either way.
pub fn endpoint_from_env(
    env: &dyn Fn(&str) -> Option<String>,
    protocol: Protocol,
) -> Option<(&'static str, String)> {
    let var = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
    if let Some(url) = env(var).filter(|v| !v.is_empty()) {
        return Some((var, url));
    }
    let var = "OTEL_EXPORTER_OTLP_ENDPOINT";
    env(var)
        .filter(|v| !v.is_empty())
        .map(|base| match protocol {
            Protocol::Grpc => (var, base),
            _ => (var, format!("{}/v1/traces", base.trim_end_matches('/'))),
        })
}

impl Tracer {
    /// Starts the exporter task sending to `url` (must run inside the tokio runtime).
    pub fn start(url: String, protocol: Protocol) -> Tracer {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(export_loop(url, protocol, rx));
        Tracer {
            tx,
            dropped: Default::default(),
            ids: Mutex::new(0),
            random: RandomState::new(),
        }
    }

    fn random_u64(&self) -> u64 {
        let mut counter = self
            .ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *counter += 1;
        let mut h = self.random.build_hasher();
        h.write_u64(*counter);
        h.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.finish()
    }

    /// New trace and span ids, or the caller's trace from a `traceparent` header.
    pub fn ids(&self, traceparent: Option<&str>) -> ([u8; 16], [u8; 8], Option<[u8; 8]>) {
        let span_id = self.random_u64().to_be_bytes();
        if let Some((trace, parent)) = traceparent.and_then(parse_traceparent) {
            return (trace, span_id, Some(parent));
        }
        let mut trace = [0u8; 16];
        trace[..8].copy_from_slice(&self.random_u64().to_be_bytes());
        trace[8..].copy_from_slice(&self.random_u64().to_be_bytes());
        (trace, span_id, None)
    }

    /// Queues a finished span; never waits.
    pub fn record(&self, span: SpanRecord) {
        if self.tx.try_send(Message::Span(Box::new(span))).is_err() {
            let n = self
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if n.is_multiple_of(1000) {
                tracing::warn!(dropped = n + 1, "trace export queue full: spans dropped");
            }
        }
    }

    /// Sends every queued span (at most `within`).
    pub async fn flush(&self, within: Duration) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Message::Flush(done)).await.is_ok() {
            let _ = tokio::time::timeout(within, wait).await;
        }
    }
}

/// `00-<32 hex trace id>-<16 hex parent id>-<flags>`.
fn parse_traceparent(value: &str) -> Option<([u8; 16], [u8; 8])> {
    let mut parts = value.trim().split('-');
    let (version, trace, parent) = (parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || trace.len() != 32 || parent.len() != 16 {
        return None;
    }
    let mut t = [0u8; 16];
    let mut p = [0u8; 8];
    hex::decode_to_slice(trace, &mut t).ok()?;
    hex::decode_to_slice(parent, &mut p).ok()?;
    (t != [0; 16] && p != [0; 8]).then_some((t, p))
}

fn nanos(t: SystemTime) -> String {
    nanos_u64(t).to_string()
}

/// The OTLP/JSON body for `spans`.
pub fn encode(spans: &[SpanRecord]) -> Value {
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            json!({
                "traceId": hex::encode(s.trace_id),
                "spanId": hex::encode(s.span_id),
                "parentSpanId": s.parent_span_id.map(hex::encode).unwrap_or_default(),
                "name": s.name,
                "kind": 2,
                "startTimeUnixNano": nanos(s.start),
                "endTimeUnixNano": nanos(s.end),
                "attributes": s.attributes.iter().map(|(k, v)| json!({ "key": k, "value": { "stringValue": v } })).collect::<Vec<_>>(),
                "status": { "code": if s.error { 2 } else { 1 } },
            })
        })
        .collect();
    json!({
        "resourceSpans": [{
            "resource": { "attributes": [
                { "key": "service.name", "value": { "stringValue": "apt-proxy" } },
                { "key": "service.version", "value": { "stringValue": crate::VERSION } },
            ]},
            "scopeSpans": [{ "scope": { "name": "apt-proxy", "version": crate::VERSION }, "spans": spans }],
        }]
    })
}

/// The OTLP protobuf body (ExportTraceServiceRequest) for `spans`.
pub fn encode_protobuf(spans: &[SpanRecord]) -> Vec<u8> {
    // A KeyValue: field 1 of a Resource, field 9 of a Span.
    let attribute = |out: &mut Vec<u8>, field: u32, key: &str, value: &str| {
        pb::message(out, field, |kv| {
            pb::bytes(kv, 1, key.as_bytes());
            pb::message(kv, 2, |any| pb::bytes(any, 1, value.as_bytes()));
        });
    };
    let mut out = Vec::with_capacity(256 * spans.len() + 128);
    pb::message(&mut out, 1, |resource_spans| {
        pb::message(resource_spans, 1, |resource| {
            attribute(resource, 1, "service.name", "apt-proxy");
            attribute(resource, 1, "service.version", crate::VERSION);
        });
        pb::message(resource_spans, 2, |scope_spans| {
            pb::message(scope_spans, 1, |scope| {
                pb::bytes(scope, 1, b"apt-proxy");
                pb::bytes(scope, 2, crate::VERSION.as_bytes());
            });
            for s in spans {
                pb::message(scope_spans, 2, |span| {
                    pb::bytes(span, 1, &s.trace_id);
                    pb::bytes(span, 2, &s.span_id);
                    if let Some(parent) = &s.parent_span_id {
                        pb::bytes(span, 4, parent);
                    }
                    pb::bytes(span, 5, s.name.as_bytes());
                    pb::varint_field(span, 6, 2); // SPAN_KIND_SERVER
                    pb::fixed64(span, 7, nanos_u64(s.start));
                    pb::fixed64(span, 8, nanos_u64(s.end));
                    for (k, v) in &s.attributes {
                        attribute(span, 9, k, v);
                    }
                    // Status: code 1 OK, 2 ERROR.
                    pb::message(span, 15, |status| {
                        pb::varint_field(status, 3, if s.error { 2 } else { 1 })
                    });
                });
            }
        });
    });
    out
}

fn nanos_u64(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The protobuf wire format, as much of it as the export message needs.
mod pb {
    pub fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
        varint(out, (u64::from(field) << 3) | u64::from(wire));
    }

    pub fn varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
        key(out, field, 0);
        varint(out, v);
    }

    pub fn fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
        key(out, field, 1);
        out.extend_from_slice(&v.to_le_bytes());
    }

    /// A length-delimited field: bytes, a string, or an encoded message.
    pub fn bytes(out: &mut Vec<u8>, field: u32, data: &[u8]) {
        key(out, field, 2);
        varint(out, data.len() as u64);
        out.extend_from_slice(data);
    }

    /// An embedded message written by `f`.
    pub fn message(out: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
        let mut inner = Vec::new();
        f(&mut inner);
        bytes(out, field, &inner);
    }
}

/// How batches leave.
enum Sender {
    /// A POST of each batch to `url`, as `content_type`.
    Http {
        client: reqwest::Client,
        url: String,
        content_type: &'static str,
    },
    Grpc(grpc::Target, Option<Arc<rustls::ClientConfig>>),
}

impl Sender {
    fn new(url: &str, protocol: Protocol) -> Result<Sender, String> {
        if protocol != Protocol::Grpc {
            // A collector's redirect is not followed: spans go to the configured address only.
            let client = reqwest::Client::builder()
                .timeout(EXPORT_TIMEOUT)
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| e.to_string())?;
            return Ok(Sender::Http {
                client,
                url: url.to_string(),
                content_type: if protocol == Protocol::Json {
                    "application/json"
                } else {
                    "application/x-protobuf"
                },
            });
        }
        let target = grpc::Target::parse(url)?;
        if target.port() == 4318 {
            tracing::warn!(
                url,
                "4318 is OTLP's HTTP port, and traces go over gRPC (4317) unless OTEL_EXPORTER_OTLP_PROTOCOL says http/protobuf or http/json"
            );
        }
        let tls = if target.tls() {
            use rustls_platform_verifier::ConfigVerifierExt;
            let mut config = rustls::ClientConfig::with_platform_verifier()
                .map_err(|e| format!("TLS roots: {e}"))?;
            config.alpn_protocols = vec![b"h2".to_vec()];
            Some(Arc::new(config))
        } else {
            None
        };
        Ok(Sender::Grpc(target, tls))
    }

    async fn send(&self, body: Vec<u8>) -> Result<(), String> {
        match self {
            Sender::Grpc(target, tls) => {
                tokio::time::timeout(EXPORT_TIMEOUT, grpc::export(target, tls.as_ref(), &body))
                    .await
                    .unwrap_or_else(|_| {
                        Err(format!("no answer within {}s", EXPORT_TIMEOUT.as_secs()))
                    })
            }
            Sender::Http {
                client,
                url,
                content_type,
            } => {
                match client
                    .post(url)
                    .header("content-type", *content_type)
                    .body(body)
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) => Err(format!(
                        "the collector answered HTTP {}",
                        r.status().as_u16()
                    )),
                    Err(e) => Err(crate::upstream::error_chain(&e)),
                }
            }
        }
    }
}

/// One export, connection and answer included, at most.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

async fn export_loop(url: String, protocol: Protocol, mut rx: mpsc::Receiver<Message>) {
    let sender = match Sender::new(&url, protocol) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "trace exporter disabled");
            return;
        }
    };
    let mut batch: Vec<SpanRecord> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        // (a flush to acknowledge, whether every sender is gone)
        let (flush_done, closed) = tokio::select! {
            message = rx.recv() => match message {
                Some(Message::Span(span)) => {
                    batch.push(*span);
                    if batch.len() < BATCH {
                        continue;
                    }
                    (None, false)
                }
                Some(Message::Flush(done)) => (Some(done), false),
                // The tracer is gone: send what is left and stop (recv would return at once
                // from now on).
                None => (None, true),
            },
            _ = tick.tick() => (None, false),
        };
        if !batch.is_empty() {
            let body = match protocol {
                Protocol::Json => encode(&batch).to_string().into_bytes(),
                Protocol::Protobuf | Protocol::Grpc => encode_protobuf(&batch),
            };
            let spans = batch.len();
            batch.clear();
            if let Err(e) = sender.send(body).await {
                tracing::warn!(error = %e, url, spans, "trace export failed: spans dropped");
            }
        }
        if let Some(done) = flush_done {
            let _ = done.send(());
        }
        if closed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_exporter_stops_when_the_tracer_is_gone() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (tx, rx) = mpsc::channel(4);
        drop(tx);
        let stopped = tokio::time::timeout(
            Duration::from_secs(5),
            export_loop("http://127.0.0.1:9/v1/traces".into(), Protocol::Json, rx),
        )
        .await;
        assert!(stopped.is_ok(), "the export loop outlived its tracer");
    }

    #[test]
    fn traceparent_and_endpoints() {
        let (t, p) =
            parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
        assert_eq!(hex::encode(t), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(hex::encode(p), "b7ad6b7169203331");
        assert!(
            parse_traceparent("00-00000000000000000000000000000000-b7ad6b7169203331-01").is_none()
        );
        assert!(parse_traceparent("garbage").is_none());
        let env = |k: &str| {
            (k == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://collector:4318/".to_string())
        };
        assert_eq!(
            endpoint_from_env(&env, Protocol::Json).unwrap().1,
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            endpoint_from_env(&env, Protocol::Grpc),
            Some((
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "http://collector:4318/".into()
            ))
        );
        assert_eq!(endpoint_from_env(&|_| None, Protocol::Grpc), None);
        let protocol = |pairs: &'static [(&'static str, &'static str)]| {
            protocol_from_env(&move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            })
        };
        assert_eq!(protocol(&[]), Ok(Protocol::Grpc));
        assert_eq!(
            protocol(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]),
            Ok(Protocol::Protobuf)
        );
        assert_eq!(
            protocol(&[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
            ]),
            Ok(Protocol::Grpc)
        );
        assert!(
            protocol(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift")])
                .unwrap_err()
                .contains("OTEL_EXPORTER_OTLP_PROTOCOL")
        );
    }

    #[test]
    fn protobuf_encoding_of_a_span() {
        let span = SpanRecord {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: Some([3; 8]),
            name: "GET debian".into(),
            start: UNIX_EPOCH + Duration::from_nanos(1_000),
            end: UNIX_EPOCH + Duration::from_nanos(2_000),
            attributes: vec![("apt_proxy.cache", "HIT".into())],
            error: false,
        };
        let body = encode_protobuf(&[span]);
        let find = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
        // trace_id (field 1, 16 bytes), span_id (2), parent (4), name (5), kind SERVER (6),
        // start and end as fixed64 (7, 8), status OK (15 { code 3 = 1 }).
        assert!(find(&[[0x0a, 16].as_slice(), &[1; 16]].concat()));
        assert!(find(&[[0x12, 8].as_slice(), &[2; 8]].concat()));
        assert!(find(&[[0x22, 8].as_slice(), &[3; 8]].concat()));
        assert!(find(b"\x2a\x0aGET debian"));
        assert!(find(&[0x30, 2]));
        assert!(find(&[[0x39].as_slice(), &1000u64.to_le_bytes()].concat()));
        assert!(find(&[[0x41].as_slice(), &2000u64.to_le_bytes()].concat()));
        assert!(find(&[0x7a, 2, 0x18, 1]));
        // The attribute is a KeyValue in field 9 (24 bytes), the resource's in field 1.
        assert!(find(b"\x4a\x18\x0a\x0fapt_proxy.cache\x12\x05\x0a\x03HIT"));
        assert!(find(
            b"\x0a\x1b\x0a\x0cservice.name\x12\x0b\x0a\x09apt-proxy"
        ));
        let mut v = Vec::new();
        pb::varint(&mut v, 300);
        assert_eq!(v, [0xac, 0x02]);
    }
}
