//! The storage contract (`src/storage/mod.rs`), checked the same way on every backend: the
//! local directory and an S3 bucket on a real SeaweedFS.

use std::os::unix::fs::FileExt;
use std::time::SystemTime;

use apt_proxy::storage::disk::DiskStore;
use apt_proxy::storage::s3::S3Store;
use apt_proxy::storage::{CacheKey, EntryMeta, META_VERSION, Source, Store, StoreMetrics};
use futures_util::StreamExt;

use crate::{data, weed};

fn record(key: &CacheKey, body: &[u8]) -> EntryMeta {
    use sha2::Digest;
    EntryMeta {
        v: META_VERSION,
        key: key.as_str().to_string(),
        body: String::new(),
        status: 200,
        len: body.len() as u64,
        content_type: Some("application/vnd.debian.binary-package".into()),
        last_modified: None,
        etag: None,
        // Kept headers travel with the record.
        cache_control: Some("public, max-age=60".into()),
        sha256: hex::encode(sha2::Sha256::digest(body)),
        // A digest of another kind travels with the record.
        digests: [("sha1".to_string(), "0".repeat(40))].into(),
        stored_at: apt_proxy::unix_now(),
        fresh_until: u64::MAX,
    }
}

/// Writes `body` in chunks of `chunk` bytes and commits it.
async fn store_body(store: &Store, key: &CacheKey, body: &[u8], chunk: usize) -> EntryMeta {
    let mut writer = store.begin(key, Some(body.len() as u64)).await.unwrap();
    for part in body.chunks(chunk) {
        writer.write(part).await.unwrap();
        writer.flush().await.unwrap();
    }
    assert_eq!(writer.written(), body.len() as u64);
    store.commit(key, writer, record(key, body)).await.unwrap()
}

/// Bytes `start..end` of `meta`'s body.
async fn read(store: &Store, meta: &EntryMeta, start: u64, end: u64) -> Vec<u8> {
    collect(store.open(meta, start, end).await.unwrap(), start, end).await
}

async fn collect(source: Source, start: u64, end: u64) -> Vec<u8> {
    match source {
        Source::File(file) => {
            let mut buf = vec![0; (end - start) as usize];
            file.read_exact_at(&mut buf, start).unwrap();
            buf
        }
        Source::Stream(mut stream) => {
            let mut out = Vec::new();
            while let Some(chunk) = stream.next().await {
                out.extend_from_slice(&chunk.unwrap());
            }
            out
        }
    }
}

async fn listed(store: &Store) -> Vec<EntryMeta> {
    let mut out = Vec::new();
    let mut pages = store.list(SystemTime::UNIX_EPOCH);
    while let Some(page) = pages.next().await {
        out.extend(page.unwrap().into_iter().map(|l| l.meta));
    }
    out
}

async fn contract(store: Store) {
    let caps = store.capabilities();
    store
        .check()
        .await
        .expect("a working store passes its check");
    let key = CacheKey::new("debian", "pool/main/h/hello/hello_2.10-3_amd64.deb");
    assert!(store.load(&key).await.unwrap().is_none(), "empty store");

    // A writer dropped before its commit leaves nothing; what it wrote was readable meanwhile.
    {
        let mut writer = store.begin(&key, Some(3 << 20)).await.unwrap();
        let chunk = data(1 << 20, 1);
        writer.write(&chunk).await.unwrap();
        writer.flush().await.unwrap();
        let mut seen = vec![0; 1 << 20];
        writer.spool().read_exact_at(&mut seen, 0).unwrap();
        assert_eq!(seen, chunk, "the spool holds what was written");
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        store.load(&key).await.unwrap().is_none(),
        "nothing from an abandoned write"
    );
    assert!(
        listed(&store).await.is_empty(),
        "nothing listed after an abandoned write"
    );

    // A committed body reads back whole and by range, across part boundaries (20 MiB is three
    // parts on S3 with a 1 MiB inline limit).
    let v1 = data(20 << 20, 2);
    let m1 = store_body(&store, &key, &v1, 1 << 20).await;
    assert!(!m1.body.is_empty(), "the commit names the body's version");
    let loaded = store
        .load(&key)
        .await
        .unwrap()
        .expect("committed entry loads");
    assert_eq!(loaded, m1);
    assert_eq!(read(&store, &m1, 0, m1.len).await, v1);
    let (a, b) = ((8 << 20) - 10, (8 << 20) + 10);
    assert_eq!(read(&store, &m1, a, b).await, v1[a as usize..b as usize]);

    // A reader of version 1 keeps reading it after version 2 replaced it.
    let open_v1 = store.open(&m1, 0, m1.len).await.unwrap();
    let v2 = data(1000, 3);
    let m2 = store_body(&store, &key, &v2, 300).await;
    assert_ne!(m1.body, m2.body, "a new version at each commit");
    assert_eq!(
        collect(open_v1, 0, m1.len).await,
        v1,
        "the old version, whole"
    );
    assert_eq!(store.load(&key).await.unwrap(), Some(m2.clone()));
    assert_eq!(read(&store, &m2, 0, m2.len).await, v2);

    // Removing a replaced version does not remove the entry.
    store.remove(&key, &m1).await.unwrap();
    assert_eq!(store.load(&key).await.unwrap(), Some(m2.clone()));

    // Records are rewritten in place.
    let mut m3 = m2.clone();
    m3.fresh_until = 12345;
    store.update_meta(&key, &m3).await.unwrap();
    assert_eq!(store.load(&key).await.unwrap(), Some(m3.clone()));
    assert_eq!(read(&store, &m3, 0, m3.len).await, v2, "same body");

    // An empty body (a remembered 404) and a second key.
    let missing = CacheKey::new("debian", "pool/none.deb");
    let mut writer = store.begin(&missing, Some(0)).await.unwrap();
    writer.flush().await.unwrap();
    let mut empty = record(&missing, b"");
    empty.status = 404;
    let m404 = store.commit(&missing, writer, empty).await.unwrap();
    assert_eq!(read(&store, &m404, 0, 0).await, b"");

    // The listing finds both entries, once each.
    let mut keys: Vec<String> = listed(&store).await.into_iter().map(|m| m.key).collect();
    keys.sort();
    assert_eq!(keys, [key.as_str(), missing.as_str()]);

    // Accesses: a shared store keeps them for every instance.
    store.touch(&key, &m3).await;
    match store.last_access(&key).await {
        Some(at) => {
            assert!(!caps.sole_writer);
            assert!(apt_proxy::unix_now().abs_diff(at) < 60, "{at}");
        }
        None => assert!(caps.sole_writer, "a shared store records accesses"),
    }

    // Removal of the current version removes the entry; its body is gone.
    store.remove(&key, &m3).await.unwrap();
    assert!(store.load(&key).await.unwrap().is_none());
    assert!(matches!(
        store.open(&m3, 0, m3.len).await,
        Err(apt_proxy::storage::StorageError::Missing(_))
    ));
    let keys: Vec<String> = listed(&store).await.into_iter().map(|m| m.key).collect();
    assert_eq!(keys, [missing.as_str()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_backend_keeps_the_storage_contract() {
    let dir = crate::cache_dir();
    contract(Store::Disk(DiskStore::open(dir.path()).unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_s3_backend_keeps_the_storage_contract() {
    let weed = weed::weed();
    let bucket = weed.space().await;
    let mut settings = weed.settings(&weed.endpoint, &bucket);
    settings.inline_max = 1 << 20;
    let metrics = StoreMetrics::default();
    let (store, problem) = S3Store::connect(&settings, metrics.clone()).await.unwrap();
    assert!(problem.is_none(), "{problem:?}");
    contract(Store::S3(store)).await;
    assert_eq!(metrics.upload_buffered.get(), 0, "no part left in memory");
    assert!(
        weed.uploads(&bucket).await.is_empty(),
        "the abandoned write's upload was aborted"
    );
}
