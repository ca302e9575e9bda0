//! Pipelined requests: the fills of requests queued behind a slow one start at once, the
//! answers come back in order, and read-aheads no one waits for any more stop.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{Behavior, Origin, Proxy, cache_dir, data, x_cache};

/// Sends GETs for `paths` in one write on one connection.
pub async fn pipeline(addr: SocketAddr, paths: &[&str]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let raw: String = paths
        .iter()
        .map(|p| format!("GET /{p} HTTP/1.1\r\nHost: {addr}\r\n\r\n"))
        .collect();
    stream.write_all(raw.as_bytes()).await.unwrap();
    stream
}

/// One response: status, X-Cache, body (by Content-Length).
pub async fn next_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> (u16, String, Vec<u8>) {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(len) = response.parse(buf).unwrap() {
            let header = |name: &str| {
                response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned())
            };
            let status = response.code.unwrap();
            let cache = header("x-cache").unwrap_or_default();
            let body_len: usize = header("content-length")
                .expect("every answer here has a length")
                .parse()
                .unwrap();
            while buf.len() < len + body_len {
                read_more(stream, buf).await;
            }
            let body = buf[len..len + body_len].to_vec();
            buf.drain(..len + body_len);
            return (status, cache, body);
        }
        read_more(stream, buf).await;
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = vec![0u8; 64 * 1024];
    let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut chunk))
        .await
        .expect("no answer within 20 s")
        .unwrap();
    assert!(n > 0, "the proxy closed the connection");
    buf.extend_from_slice(&chunk[..n]);
}

pub(crate) async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what}: not within 5 s");
}

#[tokio::test]
async fn queued_requests_are_fetched_at_once_and_answered_in_order() {
    let origin = Origin::start().await;
    let slow = data(300_000, 1);
    origin.put("/debian/pool/slow.deb", slow.clone());
    origin.set("/debian/pool/slow.deb", Behavior::Gated(100_000));
    origin.put("/debian/pool/fast.deb", data(20_000, 2));
    origin.put("/debian/pool/broken.deb", "x");
    origin.set("/debian/pool/broken.deb", Behavior::Status(500));
    origin.put("/debian/pool/last.deb", data(50_000, 3));
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    let paths = [
        "debian/pool/slow.deb",
        "debian/pool/fast.deb",
        "debian/pool/broken.deb",
        "debian/pool/last.deb",
    ];
    let mut stream = pipeline(proxy.addr, &paths).await;
    // While the first file is held at the mirror, the ones queued behind it are asked for.
    until("the queued files asked of the mirror", || {
        origin.hits("/debian/pool/fast.deb") == 1 && origin.hits("/debian/pool/last.deb") == 1
    })
    .await;
    origin.release();
    let mut buf = Vec::new();
    let (status, cache, body) = next_response(&mut stream, &mut buf).await;
    assert_eq!((status, cache.as_str()), (200, "MISS"));
    assert!(body == slow, "the slow file arrived altered");
    let (status, cache, body) = next_response(&mut stream, &mut buf).await;
    // Fetched by the read-ahead, and still this client's miss.
    assert_eq!((status, cache.as_str()), (200, "MISS"));
    assert!(body == data(20_000, 2));
    // A failed file in the middle is its own answer, and disturbs neither neighbour.
    let (status, _, _) = next_response(&mut stream, &mut buf).await;
    assert_eq!(status, 502);
    let (status, _, body) = next_response(&mut stream, &mut buf).await;
    assert_eq!(status, 200);
    assert!(body == data(50_000, 3));
    assert!(buf.is_empty());
    // Each file crossed the mirror once, and is stored.
    for p in ["fast.deb", "last.deb", "slow.deb"] {
        assert_eq!(origin.hits(&format!("/debian/pool/{p}")), 1, "{p}");
        let r = proxy.get(&format!("debian/pool/{p}")).await;
        assert_eq!(x_cache(&r), "HIT", "{p}");
    }
}

#[tokio::test]
async fn read_ahead_that_no_one_waits_for_stops_and_stores_nothing() {
    let origin = Origin::start().await;
    // Both arrive slowly: the proxy learns the client left at its next write of the first,
    // while the others are still coming.
    origin.put("/debian/pool/first.deb", data(100_000, 4));
    origin.set(
        "/debian/pool/first.deb",
        Behavior::Slow {
            chunk: 1_000,
            delay: Duration::from_millis(10),
        },
    );
    for i in 0..3 {
        let path = format!("/debian/pool/huge{i}.deb");
        origin.put(&path, data(2_000_000, 10 + i));
        origin.set(
            &path,
            // 12 s each: only a read-ahead that stops empties tmp/ within 5 s.
            Behavior::Slow {
                chunk: 16_384,
                delay: Duration::from_millis(100),
            },
        );
    }
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    let stream = pipeline(
        proxy.addr,
        &[
            "debian/pool/first.deb",
            "debian/pool/huge0.deb",
            "debian/pool/huge1.deb",
            "debian/pool/huge2.deb",
        ],
    )
    .await;
    until("the read-aheads started", || {
        (0..3).all(|i| origin.hits(&format!("/debian/pool/huge{i}.deb")) == 1)
    })
    .await;
    // The client leaves before asking for anything else.
    drop(stream);
    // The read-aheads stop at their next chunk and leave no temporary body behind; the first
    // file, which the client did ask for, goes on being fetched and is stored (below).
    let tmp = dir.path().join("tmp");
    until("the temporary bodies removed", || {
        std::fs::read_dir(&tmp).is_ok_and(|d| d.count() == 0)
    })
    .await;
    // Under load the first file's fill may not have made its temporary body yet when tmp/ is
    // found empty: this answer then joins the fill, which must still be the one started for
    // the client that left (one origin request), and stores the file.
    let r = proxy.get("debian/pool/first.deb").await;
    assert_eq!(r.bytes().await.unwrap(), data(100_000, 4));
    let r = proxy.get("debian/pool/first.deb").await;
    assert_eq!(x_cache(&r), "HIT");
    assert_eq!(origin.hits("/debian/pool/first.deb"), 1);
    for i in 0..3 {
        let path = format!("debian/pool/huge{i}.deb");
        origin.set(&format!("/{path}"), Behavior::Normal);
        let r = proxy.get(&path).await;
        assert_eq!(x_cache(&r), "MISS", "{path} was stored");
        assert_eq!(r.bytes().await.unwrap().len(), 2_000_000);
        assert_eq!(origin.hits(&format!("/{path}")), 2, "{path}");
    }
}

#[tokio::test]
async fn read_ahead_is_capped_per_connection() {
    let origin = Origin::start().await;
    let paths: Vec<String> = (0..40)
        .map(|i| format!("debian/pool/many{i}.deb"))
        .collect();
    for p in &paths {
        origin.put(&format!("/{p}"), data(50_000, 7));
        origin.set(&format!("/{p}"), Behavior::Gated(1_000));
    }
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
    let stream = pipeline(proxy.addr, &refs).await;
    // The first is hyper's own request; 32 read-aheads at most behind it.
    let cap = 1 + 32;
    until("the read-aheads started", || origin.total() >= cap).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(origin.total(), cap);
    drop(stream);
    origin.release();
}
