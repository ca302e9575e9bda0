//! The plain-HTTP connection driver: its refusals (each a clear status and a closed
//! connection, after the answers to the requests before it), hits sent from the body file
//! (bytes, ranges, HEAD, a body removed while it is sent), the hand-over to hyper for the
//! proxy's own pages and for what the driver does not answer itself, and the same request
//! headers answered alike by the driver and by hyper.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::pipeline::{next_response, pipeline, until};
use crate::{Behavior, Origin, Proxy, cache_dir, data, exchange, exchange_after, metric, x_cache};

/// Sends `raw` on a new connection and reads until the proxy closes it. Panics when it does
/// not close within 10 s.
async fn until_closed(addr: SocketAddr, raw: &[u8]) -> String {
    let (text, closed) = exchange(addr, raw, Duration::from_secs(10)).await;
    assert!(closed, "the connection was not closed: {raw:?}");
    text
}

/// Sends `raw` on a new connection and ends the client's side (a half-close).
async fn send_and_end(addr: SocketAddr, raw: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    stream.shutdown().await.unwrap();
    stream
}

/// Reads until the proxy closes `stream`. Panics when it does not within 5 s.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw))
        .await
        .expect("the proxy closed the connection within 5 s")
        .unwrap();
    raw
}

/// How many responses `text` holds, and the status line of the last one.
fn answers(text: &str) -> (usize, &str) {
    let count = text.matches("HTTP/1.1 ").count();
    let last = text.rsplit("HTTP/1.1 ").next().unwrap_or_default();
    (count, last.lines().next().unwrap_or_default())
}

#[tokio::test]
async fn bad_requests_get_a_clear_status_and_a_closed_connection() {
    let origin = Origin::start().await;
    origin.put("/debian/pool/a.deb", "the first file");
    origin.put("/debian/pool/b.deb", "a smuggled request's file");
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    let good = "GET /debian/pool/a.deb HTTP/1.1\r\nHost: x\r\n\r\n";
    let smuggled = "GET /debian/pool/b.deb HTTP/1.1\r\nHost: x\r\n\r\n";
    let many_lines: String = (0..101).map(|i| format!("X-{i}: y\r\n")).collect();
    // One header line that never ends.
    let endless = format!("X-Endless: {}", "y".repeat(17 * 1024));
    let cases: Vec<(String, &str)> = vec![
        (
            format!(
                "GET /debian/pool/a.deb HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            "400 Bad Request",
        ),
        (
            format!(
                "POST /api/cache/purge HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n{smuggled}"
            ),
            "400 Bad Request",
        ),
        (
            format!(
                "POST /debian/pool/a.deb HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n{smuggled}"
            ),
            "400 Bad Request",
        ),
        (
            format!(
                "GET /debian/pool/a.deb HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{smuggled}"
            ),
            "400 Bad Request",
        ),
        (
            format!(
                "GET /debian/pool/a.deb HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "v".repeat(17 * 1024)
            ),
            "431 Request Header Fields Too Large",
        ),
        (
            format!("GET /debian/pool/a.deb HTTP/1.1\r\nHost: x\r\n{many_lines}\r\n"),
            "431 Request Header Fields Too Large",
        ),
        (
            format!("GET /debian/pool/a.deb HTTP/1.1\r\nHost: x\r\n{endless}"),
            "431 Request Header Fields Too Large",
        ),
        (
            "G(T /debian/pool/a.deb HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            "400 Bad Request",
        ),
        (
            "GET /debian/pool/a.deb HTTP/2.0\r\nHost: x\r\n\r\n".into(),
            "505 HTTP Version Not Supported",
        ),
        (
            "GET debian/pool/a.deb HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            "400 Bad Request",
        ),
        (
            "GET /debian/pool/\x01.deb HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            "400 Bad Request",
        ),
        (
            "GET /debian/pool/a.deb HTTP/1.1\r\nHost: x\r\nBad Name: y\r\n\r\n".into(),
            "400 Bad Request",
        ),
    ];
    for (raw, status) in &cases {
        let text = until_closed(proxy.addr, raw.as_bytes()).await;
        assert_eq!(answers(&text), (1, *status), "{raw:?} got {text}");
        // The request after the refused one was never answered, nor fetched, and nothing
        // reached the mirror.
        assert_eq!(origin.total(), 0, "{raw:?}");
    }

    // A good request before a refused one is answered first, in full.
    let raw = format!(
        "{good}GET /debian/pool/a.deb HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
    );
    let text = until_closed(proxy.addr, raw.as_bytes()).await;
    assert_eq!(answers(&text), (2, "400 Bad Request"), "{text}");
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("the first file"), "{text}");

    // A path that climbs out of its repository is refused by the router, and the connection
    // stays usable.
    let mut stream = pipeline(
        proxy.addr,
        &["debian/pool/../../etc/passwd", "debian/pool/a.deb"],
    )
    .await;
    let mut buf = Vec::new();
    assert_eq!(next_response(&mut stream, &mut buf).await.0, 403);
    let (status, _, body) = next_response(&mut stream, &mut buf).await;
    assert_eq!((status, body.as_slice()), (200, &b"the first file"[..]));
}

#[tokio::test]
async fn hits_are_sent_with_sendfile() {
    hits_are_sent_from_the_body_file(false).await;
}

#[tokio::test]
async fn hits_to_a_local_client_are_copied_through_a_buffer() {
    hits_are_sent_from_the_body_file(true).await;
}

/// Hits whole, in ranges and as HEAD, with sendfile or (`copy`, for a client on this host, as
/// every test's is) through a buffer.
async fn hits_are_sent_from_the_body_file(copy: bool) {
    let origin = Origin::start().await;
    let big = data(3 << 20, 7);
    origin.put("/debian/pool/big.deb", big.clone());
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |c| {
        c.tuning.copy_to_local_clients = copy;
    })
    .await;
    let r = proxy.get("debian/pool/big.deb").await;
    assert_eq!(x_cache(&r), "MISS");
    assert!(r.bytes().await.unwrap() == big);
    let before = metric(&proxy, "apt_proxy_bytes_served_total{source=\"cache\"}").await;

    // Whole.
    let r = proxy.get("debian/pool/big.deb").await;
    assert_eq!(x_cache(&r), "HIT");
    assert_eq!(r.content_length(), Some(big.len() as u64));
    assert!(r.bytes().await.unwrap() == big, "the hit's bytes differ");

    // A range across the first read and the file's end, and one in the middle.
    let len = big.len();
    for (range, from, to) in [
        ("bytes=10000-", 10_000, len),
        ("bytes=1000000-1999999", 1_000_000, 2_000_000),
    ] {
        let r = proxy.get_range("debian/pool/big.deb", range).await;
        assert_eq!((r.status().as_u16(), x_cache(&r)), (206, "HIT".into()));
        let content_range = format!("bytes {from}-{}/{len}", to - 1);
        assert_eq!(r.headers()["content-range"], content_range.as_str());
        assert!(r.bytes().await.unwrap() == big[from..to], "{range}");
    }

    // HEAD: the head alone, and the connection goes on.
    let raw = "HEAD /debian/pool/big.deb HTTP/1.1\r\nHost: x\r\n\r\nGET /debian/pool/big.deb HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\n";
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(raw.as_bytes()).await.unwrap();
    let mut text = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&text).contains("206 Partial Content")
        || !text.ends_with(&big[..10])
    {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("answers within 10 s")
            .unwrap();
        assert!(n > 0, "closed early");
        text.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&text);
    let head = text.split("HTTP/1.1 206").next().unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains(&format!("content-length: {}\r\n", big.len())),
        "{head}"
    );
    assert!(
        head.ends_with("\r\n\r\n"),
        "a HEAD answer carries no body: {head:?}"
    );

    // Every byte sent from the file is counted as served from the cache.
    let after = metric(&proxy, "apt_proxy_bytes_served_total{source=\"cache\"}").await;
    let sent = len + (len - 10_000) + 1_000_000 + 10;
    assert_eq!(after - before, sent as f64);
    assert_eq!(origin.hits("/debian/pool/big.deb"), 1);
}

/// A proxy (`copy`: `Tuning::copy_to_local_clients`, with the copy buffer held 50 ms while the
/// socket takes nothing) that has `big` stored, and a client with a 4 KiB receive buffer that
/// asked for it and read its first 64 KiB: the head (a whole HIT) and the body's first bytes.
/// Most of the file is still to be sent.
async fn slow_hit(
    origin: &Origin,
    dir: &std::path::Path,
    big: &[u8],
    copy: bool,
) -> (Proxy, TcpStream, Vec<u8>) {
    origin.put("/debian/pool/big.deb", big.to_vec());
    let proxy = Proxy::start(origin, dir, |c| {
        c.tuning.copy_to_local_clients = copy;
        c.tuning.copy_buffer_hold = Duration::from_millis(50);
    })
    .await;
    let first = proxy.get("debian/pool/big.deb").await;
    assert!(first.bytes().await.unwrap() == big);
    let mut stream = crate::slow_get(proxy.addr, "debian/pool/big.deb").await;
    let mut got = vec![0u8; 64 * 1024];
    stream.read_exact(&mut got).await.unwrap();
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&got[..head_end]).into_owned();
    let length = format!("content-length: {}\r\n", big.len());
    assert!(
        head.contains("x-cache: HIT") && head.contains(&length),
        "{head}"
    );
    let body = got.split_off(head_end);
    (proxy, stream, body)
}

/// Reads from `stream` onto `body` until it is `len` bytes long, within 20 s.
async fn read_more(stream: &mut TcpStream, body: &mut Vec<u8>, len: usize) {
    let mut more = vec![0u8; len - body.len()];
    tokio::time::timeout(Duration::from_secs(20), stream.read_exact(&mut more))
        .await
        .unwrap_or_else(|_| panic!("{} more bytes within 20 s", more.len()))
        .unwrap();
    body.extend_from_slice(&more);
}

#[tokio::test]
async fn a_hit_cut_short_on_disk_while_it_is_sendfiled_is_cut() {
    a_hit_cut_short_on_disk_while_it_is_sent_is_cut(false).await;
}

#[tokio::test]
async fn a_hit_cut_short_on_disk_while_it_is_copied_is_cut() {
    a_hit_cut_short_on_disk_while_it_is_sent_is_cut(true).await;
}

/// A body file truncated (by someone else) while it is sent: the client sees a cut transfer,
/// never a short body taken for a whole one, and nothing hangs.
async fn a_hit_cut_short_on_disk_while_it_is_sent_is_cut(copy: bool) {
    let (origin, dir) = (Origin::start().await, cache_dir());
    let big = data(16 << 20, 9);
    let (_proxy, mut stream, mut body) = slow_hit(&origin, dir.path(), &big, copy).await;
    std::fs::OpenOptions::new()
        .write(true)
        .open(crate::failures::only_body(dir.path()))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let mut rest = Vec::new();
    // Closed or reset: either way the transfer is cut.
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut rest))
        .await
        .expect("the connection ends within 20 s");
    body.extend_from_slice(&rest);
    assert!(body.len() < big.len(), "a whole body from a cut file");
    let kept = body.len().min(1 << 20);
    assert!(
        body[..kept] == big[..kept],
        "the bytes before the cut changed"
    );
}

#[tokio::test]
async fn a_hit_removed_while_it_is_sendfiled_arrives_whole() {
    a_hit_removed_while_it_is_sent_arrives_whole(false).await;
}

#[tokio::test]
async fn a_hit_removed_while_it_is_copied_arrives_whole() {
    a_hit_removed_while_it_is_sent_arrives_whole(true).await;
}

async fn a_hit_removed_while_it_is_sent_arrives_whole(copy: bool) {
    let (origin, dir) = (Origin::start().await, cache_dir());
    let big = data(16 << 20, 8);
    // Most of the file is still to be sent when the cache is purged.
    let (proxy, mut stream, mut body) = slow_hit(&origin, dir.path(), &big, copy).await;
    let purged = proxy
        .client()
        .post(proxy.url("api/cache/purge"))
        .send()
        .await
        .unwrap();
    assert_eq!(purged.status(), 200);
    assert!(purged.text().await.unwrap().contains("\"removed_items\":1"));
    read_more(&mut stream, &mut body, big.len()).await;
    assert!(body == big, "the body changed under its reader");
    let r = proxy.get("debian/pool/big.deb").await;
    assert_eq!(x_cache(&r), "MISS");
}

/// A client on this host that stops reading for longer than the driver keeps its copy buffer
/// (50 ms here, 250 ms by default): the buffer is given up with bytes read from the file but
/// not sent, and those are read again when the client reads on. Every byte arrives once, in
/// order. The sleeps are the client's pauses under test, not a wait for the proxy; each is 14
/// times the hold, so only a driver stalled for most of a pause would miss the release.
#[tokio::test]
async fn a_local_client_that_pauses_past_the_buffer_hold_gets_every_byte_once() {
    let (origin, dir) = (Origin::start().await, cache_dir());
    let big = data(16 << 20, 6);
    let (_proxy, mut stream, mut body) = slow_hit(&origin, dir.path(), &big, true).await;
    for _ in 0..3 {
        // The socket buffers hold far less than the 16 MiB left: the driver is stuck on a
        // full socket for the whole pause.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let len = body.len() + (1 << 20);
        read_more(&mut stream, &mut body, len).await;
    }
    read_more(&mut stream, &mut body, big.len()).await;
    assert!(body == big, "bytes lost, repeated or out of order");
}

#[tokio::test]
async fn the_proxys_own_pages_and_http_1_0_are_hyper_s_on_the_same_connection() {
    let origin = Origin::start().await;
    origin.put("/debian/pool/a.deb", "aaaa");
    origin.put("/debian/pool/b.deb", "bbbbbb");
    origin.put("/debian/pool/c.deb", "cc");
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    // A package, a page of the proxy's own (the connection moves to hyper), packages again.
    let mut stream = pipeline(
        proxy.addr,
        &[
            "debian/pool/a.deb",
            "version",
            "debian/pool/b.deb",
            "debian/pool/a.deb",
        ],
    )
    .await;
    let mut buf = Vec::new();
    let (status, cache, body) = next_response(&mut stream, &mut buf).await;
    assert_eq!(
        (status, cache.as_str(), body.as_slice()),
        (200, "MISS", &b"aaaa"[..])
    );
    let (status, _, body) = next_response(&mut stream, &mut buf).await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("\"version\""));
    let (status, _, body) = next_response(&mut stream, &mut buf).await;
    assert_eq!((status, body.as_slice()), (200, &b"bbbbbb"[..]));
    let (status, cache, body) = next_response(&mut stream, &mut buf).await;
    assert_eq!(
        (status, cache.as_str(), body.as_slice()),
        (200, "HIT", &b"aaaa"[..])
    );

    // HTTP/1.0: answered and closed.
    let text = until_closed(proxy.addr, b"GET /debian/pool/a.deb HTTP/1.0\r\n\r\n").await;
    // hyper answered it (the driver answers only HTTP/1.1).
    assert!(text.starts_with("HTTP/1.0 200 OK"), "{text}");
    assert!(text.ends_with("aaaa"), "{text}");

    // Connection: close is honoured by the driver too.
    let text = until_closed(
        proxy.addr,
        b"GET /debian/pool/a.deb HTTP/1.1\r\nConnection: close\r\n\r\nGET /debian/pool/c.deb HTTP/1.1\r\n\r\n",
    )
    .await;
    assert_eq!(answers(&text).0, 1, "{text}");
    // Nothing after the close was read ahead.
    assert_eq!(origin.hits("/debian/pool/c.deb"), 0);
    assert!(
        text.contains("connection: close\r\n") && text.ends_with("aaaa"),
        "{text}"
    );
}

#[tokio::test]
async fn more_pipelined_requests_than_the_queue_holds_are_all_answered() {
    let origin = Origin::start().await;
    origin.put("/debian/pool/a.deb", "aaaa");
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    // 100 short heads in one write, read at once: more than the 64 the driver queues before it
    // pauses reading, and nothing more arrives.
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let raw = "GET /debian/pool/a.deb HTTP/1.1\r\n\r\n".repeat(100);
    assert!(raw.len() < 4096);
    stream.write_all(raw.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    for i in 0..100 {
        let (status, _, body) = next_response(&mut stream, &mut buf).await;
        assert_eq!((status, body.as_slice()), (200, &b"aaaa"[..]), "answer {i}");
    }
}

#[tokio::test]
async fn a_head_of_a_file_of_unknown_length_claims_no_length() {
    let origin = Origin::start().await;
    origin.put("/debian/pool/u.deb", data(50_000, 3));
    origin.set(
        "/debian/pool/u.deb",
        crate::Behavior::Unsized {
            chunk: 10_000,
            delay: Duration::from_millis(1),
        },
    );
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    let text = until_closed(
        proxy.addr,
        b"HEAD /debian/pool/u.deb HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(!text.contains("content-length"), "{text}");
}

/// The driver takes a read that leaves room in its buffer to mean the socket is drained, and
/// waits on epoll for more without reading again: bytes that come later (the rest of a head, the
/// next request on a kept-alive connection) and an end of stream must still be seen at once.
#[tokio::test]
async fn requests_in_pieces_later_requests_and_a_half_close_are_all_seen() {
    let origin = Origin::start().await;
    origin.put("/debian/pool/a.deb", "aaaa");
    origin.put("/debian/pool/b.deb", "bbbbbb");
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;

    // A head in three pieces, then, after a pause, the next request on the same connection.
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    for piece in ["GET /debian/pool/a.deb HTT", "P/1.1\r\nHost: x\r\n", "\r\n"] {
        stream.write_all(piece.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut buf = Vec::new();
    let (status, _, body) = next_response(&mut stream, &mut buf).await;
    assert_eq!((status, body.as_slice()), (200, &b"aaaa"[..]));
    tokio::time::sleep(Duration::from_millis(100)).await;
    stream
        .write_all(b"GET /debian/pool/b.deb HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (status, _, body) = next_response(&mut stream, &mut buf).await;
    assert_eq!((status, body.as_slice()), (200, &b"bbbbbb"[..]));

    // Two requests for stored files and the end of the client's side: both answered, then the
    // connection is closed, well before the 30 s a head may take.
    let both = b"GET /debian/pool/a.deb HTTP/1.1\r\n\r\nGET /debian/pool/b.deb HTTP/1.1\r\n\r\n";
    let mut stream = send_and_end(proxy.addr, both).await;
    let text = read_until_closed(&mut stream).await;
    let text = String::from_utf8_lossy(&text);
    assert_eq!(answers(&text), (2, "200 OK"), "{text}");
    assert!(text.ends_with("bbbbbb"), "{text}");

    // An answer still coming (its mirror holds the rest back) when the client's end of stream
    // is read, with nothing queued behind it: dropped, and the connection closed at once.
    let slow = data(4096, 7);
    let whole = |raw: &[u8]| raw.windows(slow.len()).any(|w| w == slow);
    for path in ["/debian/pool/slow.deb", "/debian/pool/left.deb"] {
        origin.put(path, slow.clone());
        origin.set(path, Behavior::Gated(1000));
    }
    let left = b"GET /debian/pool/left.deb HTTP/1.1\r\n\r\n";
    let mut stream = send_and_end(proxy.addr, left).await;
    assert!(
        !whole(&read_until_closed(&mut stream).await),
        "answered whole"
    );

    // The same with a second request queued behind it: both are answered whole.
    let both = b"GET /debian/pool/slow.deb HTTP/1.1\r\n\r\nGET /debian/pool/b.deb HTTP/1.1\r\n\r\n";
    let mut stream = send_and_end(proxy.addr, both).await;
    until("the slow file asked of the mirror", || {
        origin.hits("/debian/pool/slow.deb") == 1
    })
    .await;
    // (The end of stream is read while the mirror holds the rest back.)
    tokio::time::sleep(Duration::from_millis(100)).await;
    origin.release();
    let raw = read_until_closed(&mut stream).await;
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(answers(&text), (2, "200 OK"), "{text}");
    assert!(text.ends_with("bbbbbb"), "{text}");
    assert!(whole(&raw), "the first body whole");
}

/// `Tuning::client_head_timeout` (30 s by default, 300 ms here): a head begun and not finished
/// gets 408, a connection that sends nothing (before its first request or after its last
/// answer) is closed without a word, and each is closed on time.
#[tokio::test]
async fn a_head_not_finished_in_time_gets_408_and_a_silent_connection_is_closed() {
    let origin = Origin::start().await;
    origin.put("/debian/pool/a.deb", "aaaa");
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |c| {
        c.tuning.client_head_timeout = Duration::from_millis(300);
    })
    .await;
    let addr = proxy.addr;
    // Connects, waits `pause` ms, sends `raw`, reads until the proxy closes: what came, and
    // when the close came (counted from the connect), checked to be before 3 s.
    let timed = move |pause: u64, raw: &'static [u8]| async move {
        let started = std::time::Instant::now();
        let pause = Duration::from_millis(pause);
        let (text, closed) = exchange_after(addr, pause, raw, Duration::from_secs(10)).await;
        let took = started.elapsed();
        assert!(closed, "not closed within 10 s: {text}");
        assert!(took < Duration::from_secs(3), "closed late: {took:?}");
        (text, took)
    };

    let (text, took) = timed(0, b"GET /debian/pool/a.deb HTTP/1.1\r\nHost: x\r\n").await;
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(took >= Duration::from_millis(300), "{took:?}");

    let (text, took) = timed(0, b"").await;
    assert_eq!(text, "");
    assert!(took >= Duration::from_millis(300), "{took:?}");

    // Sent 200 ms in, answered, then closed once the next head is overdue: 300 ms after the
    // answer, not after the connect.
    let (text, took) = timed(200, b"GET /debian/pool/a.deb HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(answers(&text), (1, "200 OK"), "{text}");
    assert!(text.ends_with("aaaa"), "{text}");
    assert!(took >= Duration::from_millis(500), "{took:?}");

    // The same for a connection handed to hyper (one of the proxy's own pages).
    let (text, took) = timed(200, b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(answers(&text).0, 1, "{text}");
    assert!(took >= Duration::from_millis(500), "{took:?}");
}

/// Shutting down closes a keep-alive connection that waits for its next request at once: the
/// server does not wait out its grace period (5 s in these tests) for it.
#[tokio::test]
async fn shutdown_closes_an_idle_keep_alive_connection_at_once() {
    let origin = Origin::start().await;
    origin.put("/debian/pool/a.deb", "aaaa");
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /debian/pool/a.deb HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let (status, _, body) = next_response(&mut stream, &mut buf).await;
    assert_eq!((status, body.as_slice()), (200, &b"aaaa"[..]));
    // The driver now waits for the next head.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    proxy.stop().await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "shutdown waited {took:?}");
    assert!(read_until_closed(&mut stream).await.is_empty());
}

/// The same request headers through the driver (HTTP/1.1) and through hyper (HTTP/1.0, which
/// the driver hands on) get the same answer. The driver keeps only the headers a package
/// request's way reads (`handler::Asked`): one it dropped, or kept otherwise than hyper's path
/// reads it (the first of a repeated header), would show here as another status or body.
#[tokio::test]
async fn the_driver_and_hyper_answer_the_same_headers_alike() {
    let origin = Origin::start().await;
    // Text, so that a failure prints something readable.
    let body: Vec<u8> = data(50_000, 3)
        .iter()
        .flat_map(|b| format!("{b:02x}").into_bytes())
        .collect();
    origin.put("/debian/pool/c.deb", body.clone());
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    let first = proxy.get("debian/pool/c.deb").await;
    let header = |name: &str| first.headers()[name].to_str().unwrap().to_owned();
    let (etag, modified) = (header("etag"), header("last-modified"));
    assert!(first.bytes().await.unwrap() == body);

    let whole = String::from_utf8_lossy(&body).into_owned();
    let part = String::from_utf8_lossy(&body[10..20]).into_owned();
    for (lines, status, want) in [
        (String::new(), 200, whole.as_str()),
        ("User-Agent: x\r\nAccept: */*".into(), 200, &whole),
        ("Range: bytes=10-19".into(), 206, &part),
        (
            "range: bytes=10-19\r\nRange: bytes=50-59".into(),
            206,
            &part,
        ),
        (
            format!("Range: bytes=10-19\r\nIf-Range: {etag}"),
            206,
            &part,
        ),
        (
            "Range: bytes=10-19\r\nIf-Range: \"other\"".into(),
            200,
            &whole,
        ),
        // A weak validator never matches If-Range.
        (
            format!("Range: bytes=10-19\r\nIf-Range: W/{etag}"),
            200,
            &whole,
        ),
        ("Range: bytes=200000-".into(), 416, ""),
        (format!("If-None-Match: {etag}"), 304, ""),
        ("IF-NONE-MATCH: \"other\"".into(), 200, &whole),
        (format!("If-Modified-Since: {modified}"), 304, ""),
        // If-None-Match decides alone when it is there.
        (
            format!("If-None-Match: \"other\"\r\nIf-Modified-Since: {modified}"),
            200,
            &whole,
        ),
    ] {
        let lines = if lines.is_empty() {
            lines
        } else {
            lines + "\r\n"
        };
        let mut got = Vec::new();
        for (version, end) in [("1.1", "Connection: close\r\n"), ("1.0", "")] {
            let raw =
                format!("GET /debian/pool/c.deb HTTP/{version}\r\nHost: x\r\n{lines}{end}\r\n");
            let text = until_closed(proxy.addr, raw.as_bytes()).await;
            let (head, rest) = text.split_once("\r\n\r\n").expect("a whole head");
            let code: u16 = head[9..12].parse().unwrap();
            let range = head.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-range: ")
                    .map(str::to_owned)
            });
            let shown = |s: &str| s.chars().take(40).collect::<String>();
            assert_eq!(
                (code, rest.len(), shown(rest)),
                (status, want.len(), shown(want)),
                "HTTP/{version}, {lines:?}"
            );
            assert!(rest == want, "HTTP/{version}, {lines:?}: another body");
            got.push((code, range));
        }
        assert_eq!(got[0], got[1], "driver against hyper, {lines:?}");
    }
}
