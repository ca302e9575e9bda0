//! OTLP over gRPC: each batch of spans is one unary call of
//! `opentelemetry.proto.collector.trace.v1.TraceService/Export` on its own HTTP/2 connection
//! (plain text for an `http://` endpoint, TLS with ALPN `h2` for `https://`), written by hand.
//!
//! An HTTP/2 client crate costs about 670 KB in the release binary, more than the size promise
//! leaves; one unary call needs a small part of the protocol: the preface, SETTINGS and their
//! acknowledgement, one HEADERS frame, DATA frames within the peer's flow-control windows, and
//! reading the answer's HEADERS (HPACK, [`super::hpack`]), PING, WINDOW_UPDATE, RST_STREAM
//! and GOAWAY. Batches come at most once a second, so a connection per call costs nothing
//! worth a pool.
//!
//! The collector is untrusted like every peer: frames over 16 KiB (the size we advertise by
//! not raising it), header blocks over 16 KiB or decoding to more than 16 KiB of fields,
//! more than 1 MiB read in one call and window arithmetic past 2^31-1 end the call with an
//! error; the caller bounds its time. Data the collector sends is never acknowledged with
//! WINDOW_UPDATE: an Export answer is a few bytes, far inside the initial 64 KiB window.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::hpack;

/// The method every OTLP/gRPC trace exporter calls.
pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Frame payloads we accept: SETTINGS_MAX_FRAME_SIZE's initial value, which we never raise.
const MAX_FRAME: usize = 16_384;
/// A header block with its CONTINUATION frames, at most.
const MAX_HEADER_BLOCK: usize = 16_384;
/// What the collector may send in one call, frames of every kind together.
const MAX_READ: usize = 1 << 20;
/// Flow-control windows start here (6.9.2) and may not exceed 2^31-1.
const INITIAL_WINDOW: i64 = 65_535;
const MAX_WINDOW: i64 = (1 << 31) - 1;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// Frame types (6) and flags.
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// The one stream a call uses.
const STREAM: u32 = 1;

/// Where a gRPC endpoint is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    tls: bool,
    /// Host name or IP address (no brackets), for connecting and for TLS.
    host: String,
    port: u16,
    /// `host[:port]` as the endpoint wrote it, for `:authority`.
    authority: String,
}

impl Target {
    /// `http://host:port` (plain text) or `https://host:port` (TLS); a path is ignored, as the
    /// OTLP specification says for gRPC.
    pub fn parse(endpoint: &str) -> Result<Target, String> {
        let url = url::Url::parse(endpoint.trim())
            .map_err(|e| format!("{endpoint:?} is not a URL: {e}"))?;
        let tls = match url.scheme() {
            "http" => false,
            "https" => true,
            other => {
                return Err(format!(
                    "{endpoint:?}: the scheme {other:?} is neither http (plain text) nor https (TLS)"
                ));
            }
        };
        let host = match url.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(host) => host.to_string(),
            None => return Err(format!("{endpoint:?} names no host")),
        };
        let port = url.port_or_known_default().unwrap_or(443);
        let authority = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_string(),
        };
        Ok(Target {
            tls,
            host,
            port,
            authority,
        })
    }

    pub fn tls(&self) -> bool {
        self.tls
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Calls Export with `message` (an encoded ExportTraceServiceRequest). `tls` is the client
/// configuration for `https://` targets; its ALPN must offer `h2`.
pub async fn export(
    target: &Target,
    tls: Option<&Arc<rustls::ClientConfig>>,
    message: &[u8],
) -> Result<(), String> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", target.authority))?;
    let _ = tcp.set_nodelay(true);
    if !target.tls {
        return call(Box::new(tcp), target, message).await;
    }
    let config = tls.ok_or("no TLS configuration for an https endpoint")?;
    let name = rustls_pki_types::ServerName::try_from(target.host.clone())
        .map_err(|e| format!("{}: {e}", target.host))?;
    let stream = tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {}: {e}", target.authority))?;
    if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err(format!(
            "{} did not agree to HTTP/2 (ALPN h2) over TLS",
            target.authority
        ));
    }
    call(Box::new(stream), target, message).await
}

/// A connection, plain or TLS: one copy of the protocol code serves both.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Appends a frame: its 9-byte header, then `payload`.
fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// A 31-bit big-endian value (stream ids, window increments) from the first four bytes.
fn be31(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff
}

/// The request's header block.
fn request_headers(target: &Target) -> Vec<u8> {
    // :method POST and :scheme are static-table entries 3, 6 (http) and 7 (https).
    let mut block = vec![0x83, if target.tls { 0x87 } else { 0x86 }];
    hpack::put_field(&mut block, hpack::PATH, EXPORT_PATH);
    hpack::put_field(&mut block, hpack::AUTHORITY, &target.authority);
    hpack::put_field(&mut block, hpack::CONTENT_TYPE, "application/grpc");
    hpack::put_field(
        &mut block,
        hpack::USER_AGENT,
        concat!("apt-proxy/", env!("CARGO_PKG_VERSION")),
    );
    hpack::put_new_field(&mut block, "te", "trailers");
    block
}

/// What the answer said so far.
#[derive(Debug, Default)]
struct Answer {
    status: Option<String>,
    grpc_status: Option<String>,
    grpc_message: Option<String>,
    /// The stream has ended (END_STREAM seen).
    done: bool,
}

impl Answer {
    fn take(&mut self, fields: Vec<(String, String)>) {
        for (name, value) in fields {
            match name.as_str() {
                ":status" => self.status = Some(value),
                "grpc-status" => self.grpc_status = Some(value),
                "grpc-message" => self.grpc_message = Some(value),
                _ => {}
            }
        }
    }

    fn verdict(self) -> Result<(), String> {
        match self.status.as_deref() {
            Some("200") => {}
            Some(status) => return Err(format!("the collector answered HTTP {status}")),
            None => return Err("the collector's answer has no :status".into()),
        }
        match self.grpc_status.as_deref() {
            Some("0") => Ok(()),
            Some(code) => {
                let message = self.grpc_message.map_or(String::new(), |m| {
                    let text = percent_encoding::percent_decode_str(&m).decode_utf8_lossy();
                    format!(": {}", text.chars().take(200).collect::<String>())
                });
                Err(format!(
                    "the collector answered grpc-status {code}{message}"
                ))
            }
            None => Err("the collector's answer has no grpc-status".into()),
        }
    }
}

/// One HTTP/2 connection carrying one call.
struct Connection {
    io: Box<dyn Io>,
    decoder: hpack::Decoder,
    read: usize,
    /// Send windows: the connection's and the stream's (which SETTINGS can move).
    connection_window: i64,
    stream_window: i64,
    /// The peer's SETTINGS_INITIAL_WINDOW_SIZE and SETTINGS_MAX_FRAME_SIZE.
    initial_window: i64,
    max_frame: usize,
    /// The error code of a GOAWAY that let the call finish, to explain a close that follows.
    goaway: Option<String>,
}

async fn call(io: Box<dyn Io>, target: &Target, message: &[u8]) -> Result<(), String> {
    let mut c = Connection {
        io,
        decoder: hpack::Decoder::default(),
        read: 0,
        connection_window: INITIAL_WINDOW,
        stream_window: INITIAL_WINDOW,
        initial_window: INITIAL_WINDOW,
        max_frame: MAX_FRAME,
        goaway: None,
    };
    let block = request_headers(target);
    if block.len() > MAX_FRAME {
        return Err("the endpoint's name is too long for one header frame".into());
    }
    let mut out = PREFACE.to_vec();
    // Our SETTINGS: SETTINGS_ENABLE_PUSH (2) = 0; the rest stay at their initial values.
    frame(&mut out, SETTINGS, 0, 0, &[0, 2, 0, 0, 0, 0]);
    frame(&mut out, HEADERS, END_HEADERS, STREAM, &block);
    c.write(&out).await?;

    // The gRPC message: not compressed (0), its length, the protobuf.
    let length = u32::try_from(message.len()).map_err(|_| "a batch over 4 GiB")?;
    let mut body = Vec::with_capacity(5 + message.len());
    body.push(0);
    body.extend_from_slice(&length.to_be_bytes());
    body.extend_from_slice(message);

    let mut answer = Answer::default();
    let mut sent = 0;
    while sent < body.len() && !answer.done {
        let room = c.connection_window.min(c.stream_window);
        if room <= 0 {
            // Wait for WINDOW_UPDATE (or an early answer, which ends the call).
            c.read_frame(&mut answer).await?;
            continue;
        }
        let n = (room as usize).min(c.max_frame).min(body.len() - sent);
        let last = sent + n == body.len();
        let mut data = Vec::with_capacity(9 + n);
        let flags = if last { END_STREAM } else { 0 };
        frame(&mut data, DATA, flags, STREAM, &body[sent..sent + n]);
        c.write(&data).await?;
        sent += n;
        c.connection_window -= n as i64;
        c.stream_window -= n as i64;
    }
    while !answer.done {
        c.read_frame(&mut answer).await?;
    }
    // A polite end: GOAWAY (last stream 0, NO_ERROR), then close; the answer is in already.
    let mut bye = Vec::with_capacity(17);
    frame(&mut bye, GOAWAY, 0, 0, &[0; 8]);
    let _ = c.io.write_all(&bye).await;
    let _ = c.io.shutdown().await;
    answer.verdict()
}

impl Connection {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.io
            .write_all(bytes)
            .await
            .map_err(|e| format!("sending to the collector: {e}"))?;
        self.io
            .flush()
            .await
            .map_err(|e| format!("sending to the collector: {e}"))
    }

    /// One frame: (type, flags, stream, payload).
    async fn next_frame(&mut self) -> Result<(u8, u8, u32, Vec<u8>), String> {
        let mut head = [0u8; 9];
        self.io.read_exact(&mut head).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                let why = self.goaway.as_ref().map_or(String::new(), |code| {
                    format!(" (GOAWAY, HTTP/2 error {code})")
                });
                format!("the collector closed the connection before answering{why}")
            } else {
                format!("reading from the collector: {e}")
            }
        })?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let stream = be31(&head[5..]);
        if len > MAX_FRAME {
            return Err(format!(
                "the collector sent a frame of {len} bytes (limit {MAX_FRAME})"
            ));
        }
        self.read += 9 + len;
        if self.read > MAX_READ {
            return Err(format!(
                "the collector sent more than {MAX_READ} bytes in one call"
            ));
        }
        let mut payload = vec![0; len];
        self.io
            .read_exact(&mut payload)
            .await
            .map_err(|e| format!("reading from the collector: {e}"))?;
        Ok((head[3], head[4], stream, payload))
    }

    /// Reads one frame (a header block with its continuations) and acts on it.
    async fn read_frame(&mut self, answer: &mut Answer) -> Result<(), String> {
        let (kind, flags, stream, payload) = self.next_frame().await?;
        match kind {
            // The answer's message (an ExportTraceServiceResponse) is not needed: a partial
            // success is still a success for us.
            DATA if stream == STREAM && flags & END_STREAM != 0 => answer.done = true,
            HEADERS => {
                let mut block = unpad(flags, &payload)?;
                if flags & PRIORITY != 0 {
                    block = block.get(5..).ok_or("a HEADERS frame too short")?;
                }
                let mut block = block.to_vec();
                let mut end_headers = flags & END_HEADERS != 0;
                while !end_headers {
                    let (kind, more_flags, more_stream, more) = self.next_frame().await?;
                    if kind != CONTINUATION || more_stream != stream {
                        return Err("a header block interrupted by another frame".into());
                    }
                    block.extend_from_slice(&more);
                    if block.len() > MAX_HEADER_BLOCK {
                        return Err(format!(
                            "the collector sent a header block over {MAX_HEADER_BLOCK} bytes"
                        ));
                    }
                    end_headers = more_flags & END_HEADERS != 0;
                }
                // Every block goes through the decoder: it keeps the connection's table.
                let fields = self.decoder.decode(&block)?;
                if stream == STREAM {
                    answer.take(fields);
                    answer.done |= flags & END_STREAM != 0;
                }
            }
            RST_STREAM if stream == STREAM => {
                return Err(format!(
                    "the collector reset the call (HTTP/2 error {})",
                    code(&payload)
                ));
            }
            SETTINGS if stream != 0 => return Err("a SETTINGS frame on a stream".into()),
            SETTINGS if flags & ACK != 0 && !payload.is_empty() => {
                return Err("a SETTINGS acknowledgement with a payload".into());
            }
            SETTINGS if flags & ACK == 0 => {
                if payload.len() % 6 != 0 {
                    return Err("a SETTINGS frame of odd length".into());
                }
                for setting in payload.chunks_exact(6) {
                    let value =
                        u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
                    match u16::from_be_bytes([setting[0], setting[1]]) {
                        // SETTINGS_INITIAL_WINDOW_SIZE moves open streams' windows (6.9.2).
                        0x4 => {
                            let value = i64::from(value);
                            if value > MAX_WINDOW {
                                return Err("an initial window over 2^31-1".into());
                            }
                            self.stream_window += value - self.initial_window;
                            self.initial_window = value;
                            if self.stream_window > MAX_WINDOW {
                                return Err("a flow-control window over 2^31-1".into());
                            }
                        }
                        0x5 => {
                            if !(16_384..=16_777_215).contains(&value) {
                                return Err(format!("a maximum frame size of {value}"));
                            }
                            self.max_frame = value as usize;
                        }
                        _ => {}
                    }
                }
                let mut ack = Vec::with_capacity(9);
                frame(&mut ack, SETTINGS, ACK, 0, &[]);
                self.write(&ack).await?;
            }
            PING if flags & ACK == 0 => {
                if payload.len() != 8 {
                    return Err("a PING frame not of 8 bytes".into());
                }
                let mut pong = Vec::with_capacity(17);
                frame(&mut pong, PING, ACK, 0, &payload);
                self.write(&pong).await?;
            }
            GOAWAY => {
                let last = payload.get(..4).map_or(0, be31);
                let why = code(payload.get(4..).unwrap_or_default());
                if last < STREAM {
                    return Err(format!(
                        "the collector closed the connection (GOAWAY, HTTP/2 error {why})"
                    ));
                }
                self.goaway = Some(why);
            }
            WINDOW_UPDATE => {
                if payload.len() != 4 {
                    return Err("a WINDOW_UPDATE frame not of 4 bytes".into());
                }
                let add = i64::from(be31(&payload));
                if add == 0 {
                    return Err("a WINDOW_UPDATE of 0".into());
                }
                let window = match stream {
                    0 => &mut self.connection_window,
                    STREAM => &mut self.stream_window,
                    _ => return Ok(()),
                };
                *window += add;
                if *window > MAX_WINDOW {
                    return Err("a flow-control window over 2^31-1".into());
                }
            }
            PUSH_PROMISE => return Err("a PUSH_PROMISE although push is off".into()),
            CONTINUATION => return Err("a CONTINUATION frame without a header block".into()),
            // PRIORITY, acknowledgements, frames about other streams, unknown types.
            _ => {}
        }
        Ok(())
    }
}

/// A HEADERS or DATA payload without its padding.
fn unpad(flags: u8, payload: &[u8]) -> Result<&[u8], String> {
    if flags & PADDED == 0 {
        return Ok(payload);
    }
    let (&pad, rest) = payload.split_first().ok_or("a padded frame too short")?;
    rest.len()
        .checked_sub(usize::from(pad))
        .map(|end| &rest[..end])
        .ok_or_else(|| "a frame with more padding than payload".to_string())
}

/// An HTTP/2 error code's name (7), from the first four bytes.
fn code(bytes: &[u8]) -> String {
    let Some(b) = bytes.get(..4) else {
        return "(none)".into();
    };
    let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let names = [
        "NO_ERROR",
        "PROTOCOL_ERROR",
        "INTERNAL_ERROR",
        "FLOW_CONTROL_ERROR",
        "SETTINGS_TIMEOUT",
        "STREAM_CLOSED",
        "FRAME_SIZE_ERROR",
        "REFUSED_STREAM",
        "CANCEL",
        "COMPRESSION_ERROR",
        "CONNECT_ERROR",
        "ENHANCE_YOUR_CALM",
        "INADEQUATE_SECURITY",
        "HTTP_1_1_REQUIRED",
    ];
    names
        .get(n as usize)
        .map_or_else(|| format!("0x{n:x}"), |s| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let t = Target::parse("http://otel-collector:4317").unwrap();
        assert_eq!(
            (t.tls, t.host.as_str(), t.port),
            (false, "otel-collector", 4317)
        );
        assert_eq!(t.authority, "otel-collector:4317");
        let t = Target::parse("https://[::1]:4317/ignored/path").unwrap();
        assert_eq!((t.tls, t.host.as_str(), t.port), (true, "::1", 4317));
        assert_eq!(t.authority, "[::1]:4317");
        assert_eq!(Target::parse("https://c").unwrap().port, 443);
        assert!(
            Target::parse("otel-collector:4317")
                .unwrap_err()
                .contains("scheme")
        );
        assert!(Target::parse("grpc://c:4317").is_err());
        assert!(Target::parse("not a url").is_err());
    }

    #[test]
    fn answers() {
        let answer = |fields: &[(&str, &str)]| {
            let mut a = Answer::default();
            a.take(
                fields
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect(),
            );
            a.verdict()
        };
        assert_eq!(answer(&[(":status", "200"), ("grpc-status", "0")]), Ok(()));
        assert_eq!(
            answer(&[
                (":status", "200"),
                ("grpc-status", "14"),
                ("grpc-message", "no%20room")
            ]),
            Err("the collector answered grpc-status 14: no room".into())
        );
        assert!(answer(&[(":status", "503")]).unwrap_err().contains("503"));
        assert!(
            answer(&[(":status", "200")])
                .unwrap_err()
                .contains("grpc-status")
        );
        assert_eq!(code(&[0, 0, 0, 11]), "ENHANCE_YOUR_CALM");
        assert_eq!(code(&[0, 0, 1, 0]), "0x100");
        assert_eq!(unpad(PADDED, &[2, 7, 0, 0]), Ok(&[7u8][..]));
        assert!(unpad(PADDED, &[5, 7]).is_err());
    }
}
