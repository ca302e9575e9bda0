//! Single-flight streaming fills: one upstream request however many clients, bytes flowing to
//! every client while the download runs, and a fill that outlives its first client.

use std::time::Duration;

use futures_util::StreamExt;

use crate::{Behavior, Origin, Proxy, cache_dir, data, x_cache};

#[tokio::test]
async fn herd_of_32_makes_one_upstream_request() {
    let origin = Origin::start().await;
    let body = data(4 << 20, 1);
    let path = "/debian/pool/main/b/big.deb";
    origin.put(path, body.clone());
    origin.set(
        path,
        Behavior::Slow {
            chunk: 256 << 10,
            delay: Duration::from_millis(20),
        },
    );
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    let client = proxy.client();
    let url = proxy.url(&path[1..]);
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let r = client.get(url).send().await.unwrap();
                assert_eq!(r.status(), 200);
                r.bytes().await.unwrap()
            })
        })
        .collect();
    for task in tasks {
        assert!(task.await.unwrap() == body, "a client got different bytes");
    }
    assert_eq!(origin.hits(path), 1);
}

#[tokio::test]
async fn late_joiner_reads_before_the_fill_ends() {
    let origin = Origin::start().await;
    let body = data(1 << 20, 2);
    let path = "/debian/pool/main/g/gated.deb";
    origin.put(path, body.clone());
    origin.set(path, Behavior::Gated(300_000));
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;

    // The first client receives the first part; the origin holds the rest back.
    let first = proxy.get(&path[1..]).await;
    assert_eq!(x_cache(&first), "MISS");
    let mut first_stream = first.bytes_stream();
    let mut got_first = first_stream.next().await.unwrap().unwrap().to_vec();

    // A second client joins and receives bytes while the download is still held.
    let second = proxy.get(&path[1..]).await;
    assert_eq!(x_cache(&second), "MISS");
    assert_eq!(second.content_length(), Some(body.len() as u64));
    let mut second_stream = second.bytes_stream();
    let mut got_second = second_stream.next().await.unwrap().unwrap().to_vec();
    assert!(!got_second.is_empty());
    assert_eq!(origin.hits(path), 1);

    origin.release();
    while let Some(chunk) = first_stream.next().await {
        got_first.extend_from_slice(&chunk.unwrap());
    }
    while let Some(chunk) = second_stream.next().await {
        got_second.extend_from_slice(&chunk.unwrap());
    }
    assert!(got_first == body && got_second == body);
    assert_eq!(origin.hits(path), 1);
}

#[tokio::test]
async fn a_client_that_hangs_up_does_not_abort_the_fill() {
    let origin = Origin::start().await;
    let body = data(2 << 20, 3);
    let path = "/debian/pool/main/d/dropped.deb";
    origin.put(path, body.clone());
    origin.set(
        path,
        Behavior::Slow {
            chunk: 128 << 10,
            delay: Duration::from_millis(10),
        },
    );
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    {
        let r = proxy.get(&path[1..]).await;
        let mut stream = r.bytes_stream();
        stream.next().await.unwrap().unwrap();
        // Dropped here: the client goes away mid-transfer.
    }
    // The next client is served whole, from the same single download.
    let r = proxy.get(&path[1..]).await;
    assert!(r.bytes().await.unwrap() == body);
    let r = proxy.get(&path[1..]).await;
    assert_eq!(x_cache(&r), "HIT");
    assert!(r.bytes().await.unwrap() == body);
    assert_eq!(origin.hits(path), 1);
}

#[tokio::test]
async fn range_request_joins_a_fill_in_progress() {
    let origin = Origin::start().await;
    let body = data(1 << 20, 4);
    let path = "/debian/pool/main/r/range.deb";
    origin.put(path, body.clone());
    origin.set(path, Behavior::Gated(100_000));
    let dir = cache_dir();
    let proxy = Proxy::start(&origin, dir.path(), |_| {}).await;
    let client = proxy.client();
    let first = proxy.get(&path[1..]).await;
    let mut first_stream = first.bytes_stream();
    first_stream.next().await.unwrap().unwrap();

    let ranged = client
        .get(proxy.url(&path[1..]))
        .header("range", "bytes=500000-500099")
        .send();
    let release = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        origin.release();
    };
    let (ranged, ()) = tokio::join!(ranged, release);
    let ranged = ranged.unwrap();
    assert_eq!(ranged.status(), 206);
    assert_eq!(
        ranged.headers()["content-range"],
        format!("bytes 500000-500099/{}", body.len())
    );
    assert_eq!(ranged.bytes().await.unwrap(), &body[500_000..500_100]);
    while let Some(chunk) = first_stream.next().await {
        chunk.unwrap();
    }
    assert_eq!(origin.hits(path), 1);
}
