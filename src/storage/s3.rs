//! The S3 backend: entries in an S3-compatible bucket, shared by every instance that names it.
//!
//! Layout under the prefix (`apt-proxy/` by default):
//! - `meta/<aa>/<digest>`: an entry's record (the same JSON as on disk), written last: the
//!   entry exists once it does. Any instance reads it, so the record travels with the body.
//! - `data/<aa>/<digest>-<nonce>`: a body version, written whole (one PUT, or a multipart
//!   upload completed) before its record points at it. A version never changes; a newer commit
//!   writes a new one and the record moves to it, so a reader gets one version or none, and two
//!   instances filling one key at once both finish with a whole object (the last record wins).
//! - `access/<aa>/<digest>`: an empty object whose modification time is the entry's last
//!   access through any instance, written at most once per access-persist interval.
//!
//! Bodies are spooled to an unnamed local file under the temp dir as they arrive (readers of
//! the fill follow it) and uploaded from there: one streamed PUT up to `inline_max`, else a
//! multipart upload that sends each [`PART`] as soon as it is spooled. Both read the spool in
//! 256 KiB chunks as the connection takes them: one chunk in memory per upload (gauge
//! `apt_proxy_storage_upload_buffered_bytes`). A cut or failed fill
//! aborts its upload; uploads orphaned by a killed instance, bodies no record names and access
//! markers of removed entries are removed by [`S3Store::sweep`] on any instance once older than
//! the abandoned-upload age.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use reqwest::StatusCode;
use rusty_s3::actions::{
    AbortMultipartUpload, CompleteMultipartUpload, CreateMultipartUpload, DeleteObject, GetObject,
    HeadObject, ListObjectsV2, PutObject, UploadPart,
};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use tokio::sync::watch;

use super::{CacheKey, EntryMeta, Listed, META_VERSION, Source, Spool, StorageError, StoreMetrics};

/// Size of a multipart upload's parts (the last may be smaller). S3 wants at least 5 MiB and
/// at most 10,000 parts: 8 MiB parts reach 78 GiB, past the largest object stored by default.
pub const PART: u64 = 8 << 20;

/// Size of the reads from a spool that feed an upload.
pub const UPLOAD_CHUNK: u64 = 256 << 10;

/// Largest record read back (a record is a few hundred bytes).
const MAX_RECORD: usize = 64 << 10;

/// Largest listing page read (1,000 keys are about 300 KiB of XML).
const MAX_LISTING: usize = 4 << 20;

/// Records read at once while listing.
const LIST_CONCURRENCY: usize = 16;

/// How long a presigned request stays valid.
const SIGNED_FOR: Duration = Duration::from_secs(3600);

/// The settings of the S3 backend.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// `host[:port]`, without a scheme.
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    /// Prepended to every object name; ends with `/` unless empty.
    pub prefix: String,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub session_token: Option<String>,
    pub use_ssl: bool,
    pub path_style: bool,
    /// Bodies up to this size are uploaded with one PUT; larger ones in parts.
    pub inline_max: u64,
    /// Where spools live.
    pub temp_dir: PathBuf,
    /// Multipart uploads older than this are taken for orphans and aborted by the sweep.
    pub abandoned_upload_age: Duration,
    /// The longest wait for a small request (a record, a HEAD, a DELETE) and for each read of
    /// a transfer.
    pub timeout: Duration,
}

/// Why the bucket cannot be used at all (start-up refuses).
#[derive(Debug, thiserror::Error)]
pub enum S3SetupError {
    #[error("S3 endpoint {endpoint:?}: {detail}")]
    Endpoint { endpoint: String, detail: String },
    #[error("bucket {bucket:?} does not exist at S3 endpoint {endpoint}")]
    NoBucket { endpoint: String, bucket: String },
    #[error(
        "S3 endpoint {endpoint} refused the credentials for bucket {bucket:?} (answered {status})"
    )]
    Refused {
        endpoint: String,
        bucket: String,
        status: u16,
    },
    #[error(
        "S3 endpoint {endpoint} redirects the requests for bucket {bucket:?} (answered {status}; \
         {whither}), and redirects are not followed: check the endpoint, the region and the \
         path style"
    )]
    Redirected {
        endpoint: String,
        bucket: String,
        status: u16,
        whither: String,
    },
    #[error("S3 temp dir {path}: {source}")]
    TempDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An S3-compatible bucket.
#[derive(Debug, Clone)]
pub struct S3Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    bucket: Bucket,
    credentials: Option<Credentials>,
    client: reqwest::Client,
    prefix: String,
    inline_max: u64,
    spool_dir: PathBuf,
    abandoned_age: Duration,
    timeout: Duration,
    nonce: AtomicU64,
    metrics: StoreMetrics,
}

/// How far a writer got.
#[derive(Debug, Clone, Copy)]
enum Progress {
    Writing(u64),
    Done(u64),
}

/// The upload of one body, run by its own task while the body is spooled. Dropped before
/// [`S3Store::commit`], the task aborts what it started.
#[derive(Debug)]
pub(super) struct Upload {
    tx: watch::Sender<Progress>,
    task: tokio::task::JoinHandle<Result<(), StorageError>>,
    body: String,
}

impl Upload {
    pub(super) fn progress(&self, written: u64) {
        self.tx.send_replace(Progress::Writing(written));
    }
}

fn shard(digest: &str) -> &str {
    &digest[..2]
}

fn remote(op: &'static str, detail: impl std::fmt::Display) -> StorageError {
    StorageError::Remote {
        op,
        detail: detail.to_string(),
    }
}

/// A reqwest failure in words (no debug formatting in logs).
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "cannot connect".into()
    } else {
        crate::upstream::error_chain(e)
    }
}

/// Reads at most `limit` bytes of a response body.
async fn read_limited(
    op: &'static str,
    response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, StorageError> {
    let mut out = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| remote(op, describe(&e)))?;
        if out.len() + chunk.len() > limit {
            return Err(remote(op, format!("answer larger than {limit} bytes")));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// A status by which the store says it is failing: a server error, throttling, or a
/// redirect (not followed: the endpoint the operator named is the only host talked to).
fn store_failing(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS || status.is_redirection()
}

/// Where a store's redirect points, for the operator: its region header and `Location`
/// without its query (which may carry a signature), each cut to 200 characters; `None` when
/// it names neither (a 304, say, is no redirect).
fn whither(headers: &reqwest::header::HeaderMap) -> Option<String> {
    let named: Vec<String> = ["x-amz-bucket-region", "location"]
        .into_iter()
        .filter_map(|name| {
            let value = headers.get(name)?.to_str().ok()?;
            let value = value.split('?').next().unwrap_or_default();
            Some(format!(
                "{name}: {}",
                value.chars().take(200).collect::<String>()
            ))
        })
        .collect();
    (!named.is_empty()).then(|| named.join(", "))
}

/// The bucket round trip's failure: the status, and where a redirect pointed.
fn bucket_failed(status: StatusCode, whither: Option<String>) -> StorageError {
    let detail = match whither {
        None => format!("bucket answered {status}"),
        Some(whither) => {
            format!("bucket answered {status} ({whither}; redirects are not followed)")
        }
    };
    remote("check", detail)
}

/// `2024-01-15T10:30:00.000Z` as unix seconds.
fn iso_seconds(text: &str) -> Option<u64> {
    text.parse::<jiff::Timestamp>()
        .ok()
        .and_then(|t| u64::try_from(t.as_second()).ok())
}

/// The text of each `<tag>…</tag>` in `xml`, unescaped.
fn xml_values<'a>(xml: &'a str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest: &'a str = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        out.push(
            after[..end]
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&"),
        );
        rest = &after[end + close.len()..];
    }
    out
}

/// Every operation the store counts, by its `op` label.
const OPS: &[&str] = &[
    "check",
    "head",
    "get",
    "put",
    "put_meta",
    "touch",
    "load",
    "list",
    "delete",
    "create_upload",
    "upload_part",
    "complete_upload",
    "abort_upload",
    "list_uploads",
];

impl S3Store {
    /// Checks the bucket and returns the store. A bucket that does not exist, credentials
    /// refused and a redirect (never followed) are errors; a store that cannot be reached is
    /// not (the proxy starts, serves from the mirrors and reports itself unhealthy until it
    /// answers): the problem is returned beside the store.
    pub async fn connect(
        settings: &S3Settings,
        metrics: StoreMetrics,
    ) -> Result<(S3Store, Option<StorageError>), S3SetupError> {
        let endpoint_error = |detail: String| S3SetupError::Endpoint {
            endpoint: settings.endpoint.clone(),
            detail,
        };
        if settings.endpoint.is_empty() || settings.endpoint.contains("://") {
            return Err(endpoint_error(
                "give host[:port] without a scheme (the scheme comes from use_ssl)".into(),
            ));
        }
        let scheme = if settings.use_ssl { "https" } else { "http" };
        let url: url::Url = format!("{scheme}://{}", settings.endpoint)
            .parse()
            .map_err(|e: url::ParseError| endpoint_error(e.to_string()))?;
        let style = if settings.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(url, style, settings.bucket.clone(), settings.region.clone())
            .map_err(|e| endpoint_error(e.to_string()))?;
        let credentials = match (&settings.access_key, &settings.secret_key) {
            (Some(key), Some(secret)) => Some(match &settings.session_token {
                Some(token) => Credentials::new_with_token(key, secret, token),
                None => Credentials::new(key, secret),
            }),
            _ => None,
        };
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .read_timeout(settings.timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(32)
            .tcp_nodelay(true)
            .no_proxy()
            // The store is named by the operator and is the only host it is talked to: a
            // redirect from it (a hostile or misconfigured store) would send a signed request,
            // or an upload, wherever it points. A 3xx is an answer the operation cannot use.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| endpoint_error(describe(&e)))?;
        let spool_dir = settings.temp_dir.clone();
        std::fs::create_dir_all(&spool_dir).map_err(|source| S3SetupError::TempDir {
            path: spool_dir.clone(),
            source,
        })?;
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        metrics.zero("s3", OPS);
        let store = S3Store {
            inner: Arc::new(Inner {
                bucket,
                credentials,
                client,
                prefix: settings.prefix.clone(),
                inline_max: settings.inline_max,
                spool_dir,
                abandoned_age: settings.abandoned_upload_age,
                timeout: settings.timeout,
                nonce: AtomicU64::new(seed ^ (u64::from(std::process::id()) << 40)),
                metrics,
            }),
        };
        let problem = match store.head_bucket().await {
            Ok((StatusCode::OK, _)) => None,
            Ok((StatusCode::NOT_FOUND, _)) => {
                return Err(S3SetupError::NoBucket {
                    endpoint: settings.endpoint.clone(),
                    bucket: settings.bucket.clone(),
                });
            }
            Ok((status @ (StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED), _)) => {
                return Err(S3SetupError::Refused {
                    endpoint: settings.endpoint.clone(),
                    bucket: settings.bucket.clone(),
                    status: status.as_u16(),
                });
            }
            // A misconfiguration (another region, endpoint or style), which waiting does not
            // mend: refused like the two above.
            Ok((status, Some(whither))) => {
                return Err(S3SetupError::Redirected {
                    endpoint: settings.endpoint.clone(),
                    bucket: settings.bucket.clone(),
                    status: status.as_u16(),
                    whither,
                });
            }
            Ok((status, None)) => Some(bucket_failed(status, None)),
            Err(e) => Some(e),
        };
        Ok((store, problem))
    }

    fn name(&self, kind: &str, digest: &str) -> String {
        format!("{}{kind}/{}/{digest}", self.inner.prefix, shard(digest))
    }

    fn body_name(&self, body: &str) -> Result<String, StorageError> {
        match body.get(..2) {
            Some(_) if body.len() > 2 => Ok(self.name("data", body)),
            _ => Err(StorageError::Missing(format!(
                "malformed body name {body:?}"
            ))),
        }
    }

    fn creds(&self) -> Option<&Credentials> {
        self.inner.credentials.as_ref()
    }

    /// Sends `request` as operation `op`, counting it; the answer is returned whatever its
    /// status, a failure to get one is [`StorageError::Remote`].
    async fn send(
        &self,
        op: &'static str,
        request: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<reqwest::Response, StorageError> {
        let started = Instant::now();
        let result = request.timeout(timeout).send().await;
        let ok = result.as_ref().is_ok_and(|r| !store_failing(r.status()));
        debug_assert!(OPS.contains(&op), "{op} is missing from OPS");
        self.inner.metrics.observe("s3", op, started, ok);
        result.map_err(|e| remote(op, describe(&e)))
    }

    /// [`S3Store::send`] for operations whose only good answer is a 2xx.
    async fn send_ok(
        &self,
        op: &'static str,
        request: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<reqwest::Response, StorageError> {
        let response = self.send(op, request, timeout).await?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(self.failed(op, &response))
        }
    }

    /// An answer the operation cannot use, as an error; counted as a storage error (the
    /// store's own failures were counted by [`S3Store::send`]).
    fn failed(&self, op: &'static str, response: &reqwest::Response) -> StorageError {
        if !store_failing(response.status()) {
            let label = super::OpLabel { backend: "s3", op };
            self.inner.metrics.errors.get_or_create(&label).inc();
        }
        remote(op, format!("answered {}", response.status()))
    }

    /// The bucket's status, and where it points when it redirects.
    async fn head_bucket(&self) -> Result<(StatusCode, Option<String>), StorageError> {
        let url =
            rusty_s3::actions::HeadBucket::new(&self.inner.bucket, self.creds()).sign(SIGNED_FOR);
        let response = self
            .send("check", self.inner.client.head(url), self.inner.timeout)
            .await?;
        let status = response.status();
        Ok((
            status,
            status
                .is_redirection()
                .then(|| whither(response.headers()))
                .flatten(),
        ))
    }

    /// A bucket round trip.
    pub async fn check(&self) -> Result<(), StorageError> {
        match self.head_bucket().await? {
            (StatusCode::OK, _) => Ok(()),
            (status, whither) => Err(bucket_failed(status, whither)),
        }
    }

    pub(super) async fn create_spool(&self) -> Result<Spool, StorageError> {
        let n = self.inner.nonce.fetch_add(1, Ordering::Relaxed);
        Spool::create(
            &self.inner.spool_dir,
            format!("apt-proxy-{n:016x}.spool"),
            false,
        )
        .await
    }

    /// Starts the upload task of a body of `key` read from `file` (`len` when announced).
    pub(super) fn start_upload(&self, key: &CacheKey, file: Arc<File>, len: Option<u64>) -> Upload {
        let n = self.inner.nonce.fetch_add(1, Ordering::Relaxed);
        let body = format!("{}-{n:016x}", key.digest());
        let (tx, rx) = watch::channel(Progress::Writing(0));
        let store = self.clone();
        let object = self.name("data", &body);
        let task = tokio::spawn(async move { store.upload(object, file, len, rx).await });
        Upload { tx, task, body }
    }

    async fn upload(
        self,
        object: String,
        file: Arc<File>,
        len: Option<u64>,
        mut rx: watch::Receiver<Progress>,
    ) -> Result<(), StorageError> {
        let mut multipart: Option<(String, Vec<String>, u64)> = None;
        let result = async {
            loop {
                let progress = *rx.borrow_and_update();
                let (written, done) = match progress {
                    Progress::Writing(n) => (n, false),
                    Progress::Done(n) => (n, true),
                };
                let big = len.is_some_and(|n| n > self.inner.inline_max)
                    || written > self.inner.inline_max;
                if big && multipart.is_none() {
                    multipart = Some((self.create_multipart(&object).await?, Vec::new(), 0));
                }
                match multipart.as_mut() {
                    Some((id, etags, sent)) => {
                        while written - *sent >= PART || (done && written > *sent) {
                            // A writer that went away stops the upload at once.
                            if !done && rx.has_changed().is_err() {
                                return Err(remote("upload", "fill abandoned"));
                            }
                            let n = (written - *sent).min(PART);
                            let etag = self
                                .upload_part(&object, id, etags.len() + 1, &file, *sent, n)
                                .await?;
                            etags.push(etag);
                            *sent += n;
                        }
                        if done {
                            return self.complete(&object, id, etags).await;
                        }
                    }
                    None if done => return self.put_file(&object, &file, written).await,
                    None => {}
                }
                if rx.changed().await.is_err() {
                    return Err(remote("upload", "fill abandoned"));
                }
            }
        }
        .await;
        if let (Err(_), Some((id, _, _))) = (&result, &multipart) {
            self.abort(&object, id).await;
        }
        result
    }

    async fn create_multipart(&self, object: &str) -> Result<String, StorageError> {
        let url =
            CreateMultipartUpload::new(&self.inner.bucket, self.creds(), object).sign(SIGNED_FOR);
        let response = self
            .send_ok(
                "create_upload",
                self.inner.client.post(url),
                self.inner.timeout,
            )
            .await?;
        let text = read_limited("create_upload", response, MAX_RECORD).await?;
        let parsed = CreateMultipartUpload::parse_response(&String::from_utf8_lossy(&text))
            .map_err(|e| remote("create_upload", e))?;
        Ok(parsed.upload_id().to_string())
    }

    /// Uploads bytes `from..from + n` of `file` as part `number`, streamed from the spool;
    /// returns its ETag.
    async fn upload_part(
        &self,
        object: &str,
        id: &str,
        number: usize,
        file: &Arc<File>,
        from: u64,
        n: u64,
    ) -> Result<String, StorageError> {
        let number = u16::try_from(number).map_err(|_| remote("upload_part", "too many parts"))?;
        let url =
            UploadPart::new(&self.inner.bucket, self.creds(), object, number, id).sign(SIGNED_FOR);
        let request = self
            .inner
            .client
            .put(url)
            .header(reqwest::header::CONTENT_LENGTH, n)
            .body(self.spool_body(file, from, n));
        let response = self
            .send_ok("upload_part", request, self.transfer_timeout(n))
            .await?;
        response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| remote("upload_part", "no ETag in the answer"))
    }

    /// A request body of bytes `from..from + n` of the spool, read in [`UPLOAD_CHUNK`]s as the
    /// connection takes them: one chunk per upload in memory, counted in the buffered-upload
    /// gauge until the next one is asked for.
    fn spool_body(&self, file: &Arc<File>, from: u64, n: u64) -> reqwest::Body {
        struct Held {
            gauge: prometheus_client::metrics::gauge::Gauge,
            bytes: i64,
        }
        impl Drop for Held {
            fn drop(&mut self) {
                self.gauge.dec_by(self.bytes);
            }
        }
        let end = from + n;
        let held = Held {
            gauge: self.inner.metrics.upload_buffered.clone(),
            bytes: 0,
        };
        let chunks = futures_util::stream::try_unfold(
            (file.clone(), from, held),
            move |(f, pos, mut held)| async move {
                // The chunk sent before is in the socket now.
                held.gauge.dec_by(held.bytes);
                held.bytes = 0;
                if pos >= end {
                    return Ok(None);
                }
                let len = (end - pos).min(UPLOAD_CHUNK);
                let g = f.clone();
                let chunk = tokio::task::spawn_blocking(move || -> std::io::Result<Bytes> {
                    let mut buf = vec![0u8; len as usize];
                    g.read_exact_at(&mut buf, pos)?;
                    Ok(Bytes::from(buf))
                })
                .await
                .map_err(std::io::Error::other)??;
                held.bytes = len as i64;
                held.gauge.inc_by(held.bytes);
                Ok::<_, std::io::Error>(Some((chunk, (f, pos + len, held))))
            },
        );
        reqwest::Body::wrap_stream(chunks)
    }

    async fn complete(&self, object: &str, id: &str, etags: &[String]) -> Result<(), StorageError> {
        let action = CompleteMultipartUpload::new(
            &self.inner.bucket,
            self.creds(),
            object,
            id,
            etags.iter().map(String::as_str),
        );
        let url = action.sign(SIGNED_FOR);
        let body = action.body();
        let response = self
            .send(
                "complete_upload",
                self.inner.client.post(url).body(body),
                self.transfer_timeout(0) * 4,
            )
            .await?;
        let status = response.status();
        // S3 may answer 200 with an error document when completing fails late.
        let text = read_limited("complete_upload", response, MAX_RECORD).await?;
        if !status.is_success() || String::from_utf8_lossy(&text).contains("<Error>") {
            return Err(remote("complete_upload", format!("answered {status}")));
        }
        Ok(())
    }

    async fn abort(&self, object: &str, id: &str) {
        let url = AbortMultipartUpload::new(&self.inner.bucket, self.creds(), object, id)
            .sign(SIGNED_FOR);
        match self
            .send(
                "abort_upload",
                self.inner.client.delete(url),
                self.inner.timeout,
            )
            .await
        {
            Ok(r) if r.status().is_success() || r.status() == StatusCode::NOT_FOUND => {}
            Ok(r) => tracing::warn!(
                object,
                status = r.status().as_u16(),
                "aborting an upload failed; the sweep will retry"
            ),
            Err(e) => {
                tracing::warn!(object, error = %e, "aborting an upload failed; the sweep will retry")
            }
        }
    }

    /// Uploads the first `len` bytes of `file` with one PUT, streamed from the file.
    async fn put_file(&self, object: &str, file: &Arc<File>, len: u64) -> Result<(), StorageError> {
        let url = PutObject::new(&self.inner.bucket, self.creds(), object).sign(SIGNED_FOR);
        let request = self
            .inner
            .client
            .put(url)
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(self.spool_body(file, 0, len));
        self.send_ok("put", request, self.transfer_timeout(len))
            .await
            .map(drop)
    }

    /// How long a transfer of `n` bytes may take: the timeout, plus a second per MiB (a
    /// store slower than 1 MiB/s is failing).
    fn transfer_timeout(&self, n: u64) -> Duration {
        self.inner.timeout + Duration::from_secs(n >> 20)
    }

    async fn put_small(
        &self,
        op: &'static str,
        object: &str,
        body: Vec<u8>,
    ) -> Result<(), StorageError> {
        let url = PutObject::new(&self.inner.bucket, self.creds(), object).sign(SIGNED_FOR);
        self.send_ok(
            op,
            self.inner.client.put(url).body(body),
            self.inner.timeout,
        )
        .await
        .map(drop)
    }

    async fn delete(&self, object: &str) -> Result<(), StorageError> {
        let url = DeleteObject::new(&self.inner.bucket, self.creds(), object).sign(SIGNED_FOR);
        let response = self
            .send("delete", self.inner.client.delete(url), self.inner.timeout)
            .await?;
        if response.status().is_success() || response.status() == StatusCode::NOT_FOUND {
            Ok(())
        } else {
            Err(self.failed("delete", &response))
        }
    }

    /// Makes the uploaded body `key`'s entry: waits for the upload to finish, then writes
    /// the record. The version it replaces is left to the sweep, so that another instance
    /// still sending it finishes.
    pub(super) async fn commit(
        &self,
        key: &CacheKey,
        writer: super::Writer,
        mut meta: EntryMeta,
    ) -> Result<EntryMeta, StorageError> {
        let super::Writer { spool, upload } = writer;
        let upload = upload.ok_or_else(|| remote("commit", "no upload"))?;
        meta.body = upload.body.clone();
        upload.tx.send_replace(Progress::Done(spool.written()));
        match upload.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(e.into()),
        }
        drop(spool);
        self.update_meta(key, &meta).await?;
        Ok(meta)
    }

    /// Writes `key`'s record.
    pub(super) async fn update_meta(
        &self,
        key: &CacheKey,
        meta: &EntryMeta,
    ) -> Result<(), StorageError> {
        let json = serde_json::to_vec(meta).map_err(|e| remote("encode", e))?;
        self.put_small("put_meta", &self.name("meta", &key.digest()), json)
            .await
    }

    async fn record(&self, digest: &str) -> Result<Option<EntryMeta>, StorageError> {
        let object = self.name("meta", digest);
        let url = GetObject::new(&self.inner.bucket, self.creds(), &object).sign(SIGNED_FOR);
        let response = self
            .send("load", self.inner.client.get(url), self.inner.timeout)
            .await?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            _ => return Err(self.failed("load", &response)),
        }
        let bytes = read_limited("load", response, MAX_RECORD).await?;
        match serde_json::from_slice::<EntryMeta>(&bytes) {
            Ok(meta) if meta.v == META_VERSION => Ok(Some(meta)),
            Ok(_) => Ok(None),
            Err(_) => {
                tracing::warn!(object, "unreadable cache record in the bucket ignored");
                Ok(None)
            }
        }
    }

    /// The entry stored for `key`, if any.
    pub(super) async fn load(&self, key: &CacheKey) -> Result<Option<EntryMeta>, StorageError> {
        Ok(self
            .record(&key.digest())
            .await?
            .filter(|m| m.key == key.as_str()))
    }

    /// Bytes `start..end` of `meta`'s body, streamed.
    pub(super) async fn open(
        &self,
        meta: &EntryMeta,
        start: u64,
        end: u64,
    ) -> Result<Source, StorageError> {
        if end <= start {
            return Ok(Source::Stream(futures_util::stream::empty().boxed()));
        }
        let object = self.body_name(&meta.body)?;
        let url = GetObject::new(&self.inner.bucket, self.creds(), &object).sign(SIGNED_FOR);
        let request = self
            .inner
            .client
            .get(url)
            .header(reqwest::header::RANGE, format!("bytes={start}-{}", end - 1));
        // The answer's head within the timeout; the body then reads with the read timeout.
        let response = self
            .send("get", request, self.transfer_timeout(end - start))
            .await?;
        match response.status() {
            StatusCode::OK if start == 0 && end == meta.len => {}
            StatusCode::PARTIAL_CONTENT => {}
            StatusCode::NOT_FOUND => return Err(StorageError::Missing(object)),
            _ => return Err(self.failed("get", &response)),
        }
        if response.content_length() != Some(end - start) {
            let sent = response
                .content_length()
                .map_or("no Content-Length".to_string(), |n| format!("{n} bytes"));
            return Err(StorageError::Missing(format!(
                "{object}: the store sent {sent}, {} expected",
                end - start
            )));
        }
        let stream = response
            .bytes_stream()
            .map_err(|e| std::io::Error::other(describe(&e)));
        Ok(Source::Stream(stream.boxed()))
    }

    /// Removes `key`'s entry if its record still names `meta`'s body.
    pub(super) async fn remove(
        &self,
        key: &CacheKey,
        meta: &EntryMeta,
    ) -> Result<(), StorageError> {
        let digest = key.digest();
        match self.record(&digest).await? {
            Some(current) if current.body != meta.body => return Ok(()),
            _ => {}
        }
        self.delete(&self.name("meta", &digest)).await?;
        self.delete(&self.body_name(&meta.body)?).await?;
        self.delete(&self.name("access", &digest)).await
    }

    /// Records an access through this instance.
    pub(super) async fn touch(&self, key: &CacheKey) {
        let object = self.name("access", &key.digest());
        if let Err(e) = self.put_small("touch", &object, Vec::new()).await {
            tracing::debug!(error = %e, "recording an access in the bucket failed");
        }
    }

    /// The last access recorded in the bucket by any instance.
    pub(super) async fn last_access(&self, key: &CacheKey) -> Option<u64> {
        let object = self.name("access", &key.digest());
        let url = HeadObject::new(&self.inner.bucket, self.creds(), &object).sign(SIGNED_FOR);
        let response = self
            .send("head", self.inner.client.head(url), self.inner.timeout)
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        let date = response
            .headers()
            .get(reqwest::header::LAST_MODIFIED)?
            .to_str()
            .ok()?;
        httpdate::parse_http_date(date)
            .ok()?
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs())
    }

    /// One page of the names under `kind/`, with their modification times.
    async fn list_page(
        &self,
        kind: &str,
        token: Option<&str>,
    ) -> Result<(Vec<(String, u64)>, Option<String>), StorageError> {
        let prefix = format!("{}{kind}/", self.inner.prefix);
        let mut action = ListObjectsV2::new(&self.inner.bucket, self.creds());
        action.with_prefix(prefix.as_str());
        if let Some(t) = token {
            action.with_continuation_token(t);
        }
        let url = action.sign(SIGNED_FOR);
        let response = self
            .send_ok("list", self.inner.client.get(url), self.inner.timeout * 2)
            .await?;
        let text = read_limited("list", response, MAX_LISTING).await?;
        let parsed = ListObjectsV2::parse_response(&String::from_utf8_lossy(&text))
            .map_err(|e| remote("list", e))?;
        let names = parsed
            .contents
            .into_iter()
            .filter_map(|c| {
                let at = c
                    .last_modified
                    .as_deref()
                    .and_then(iso_seconds)
                    .unwrap_or(0);
                c.key
                    .strip_prefix(&prefix)
                    .and_then(|rest| rest.rsplit('/').next())
                    .map(|name| (name.to_string(), at))
            })
            .collect();
        Ok((names, parsed.next_continuation_token))
    }

    /// Every name under `kind/` with its modification time.
    async fn list_all(&self, kind: &str) -> Result<Vec<(String, u64)>, StorageError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let (names, next) = self.list_page(kind, token.as_deref()).await?;
            out.extend(names);
            match next {
                Some(t) if Some(&t) != token.as_ref() => token = Some(t),
                _ => return Ok(out),
            }
        }
    }

    /// Every entry in the bucket, a listing page at a time (each record is read, 16 at once);
    /// last accesses come from the access markers.
    pub(super) fn list(&self) -> BoxStream<'_, Result<Vec<Listed>, StorageError>> {
        struct State {
            access: Option<HashMap<String, u64>>,
            token: Option<String>,
            finished: bool,
        }
        let start = State {
            access: None,
            token: None,
            finished: false,
        };
        Box::pin(futures_util::stream::try_unfold(
            start,
            move |mut st| async move {
                if st.finished {
                    return Ok(None);
                }
                if st.access.is_none() {
                    st.access = Some(self.list_all("access").await?.into_iter().collect());
                }
                let (names, next) = self.list_page("meta", st.token.as_deref()).await?;
                st.finished = next.is_none() || next == st.token;
                st.token = next;
                let access = st.access.as_ref().expect("access markers listed above");
                let page: Vec<Listed> = futures_util::stream::iter(names)
                    .map(|(digest, _)| async move { (self.record(&digest).await, digest) })
                    .buffer_unordered(LIST_CONCURRENCY)
                    .filter_map(|(record, digest)| async move {
                        let meta = record.ok().flatten()?;
                        let accessed = access
                            .get(&digest)
                            .copied()
                            .unwrap_or(0)
                            .max(meta.stored_at);
                        Some(Listed { meta, accessed })
                    })
                    .collect()
                    .await;
                Ok(Some((page, st)))
            },
        ))
    }

    /// Removes what interrupted runs of any instance left, once older than the abandoned
    /// age: multipart uploads never completed, bodies no record names, access markers of
    /// removed entries. An upload still running on another instance is younger than that.
    pub async fn sweep(&self) {
        let started = Instant::now();
        let now = crate::unix_now();
        let age = self.inner.abandoned_age.as_secs();
        let old = |at: u64| now.saturating_sub(at) > age;
        let aborted = match self.abandoned_uploads().await {
            Ok(uploads) => {
                let mut n = 0;
                for (object, id, at) in uploads {
                    if old(at) {
                        self.abort(&object, &id).await;
                        n += 1;
                    }
                }
                n
            }
            Err(e) => {
                tracing::warn!(error = %e, "listing multipart uploads failed");
                0
            }
        };
        let (metas, bodies, markers) = match (
            self.list_all("meta").await,
            self.list_all("data").await,
            self.list_all("access").await,
        ) {
            (Ok(m), Ok(b), Ok(a)) => (m, b, a),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                tracing::warn!(error = %e, "listing the bucket for the sweep failed");
                return;
            }
        };
        let recorded: HashSet<String> = metas.into_iter().map(|(d, _)| d).collect();
        let mut by_digest: HashMap<String, Vec<(String, u64)>> = HashMap::new();
        for (name, at) in bodies {
            let digest = name.split('-').next().unwrap_or_default().to_string();
            by_digest.entry(digest).or_default().push((name, at));
        }
        let mut removed = 0usize;
        for (digest, versions) in by_digest {
            let keep = if !recorded.contains(&digest) {
                None
            } else if versions.len() > 1 {
                match self.record(&digest).await {
                    Ok(Some(meta)) => Some(meta.body),
                    // Cannot tell which is current: keep them all for now.
                    _ => continue,
                }
            } else {
                continue;
            };
            for (name, at) in versions {
                if Some(&name) != keep.as_ref()
                    && old(at)
                    && self.delete(&self.name("data", &name)).await.is_ok()
                {
                    removed += 1;
                }
            }
        }
        for (digest, at) in markers {
            if !recorded.contains(&digest) && old(at) {
                let _ = self.delete(&self.name("access", &digest)).await;
            }
        }
        tracing::info!(
            aborted_uploads = aborted,
            removed_bodies = removed,
            ms = started.elapsed().as_millis() as u64,
            "bucket sweep done"
        );
    }

    /// Multipart uploads under the prefix: object, upload id, initiation time.
    async fn abandoned_uploads(&self) -> Result<Vec<(String, String, u64)>, StorageError> {
        let mut out = Vec::new();
        let mut markers: Option<(String, String)> = None;
        // At most 100 pages of 1,000 uploads per sweep; the rest waits for the next one.
        for _ in 0..100 {
            let mut query: Vec<(&str, &str)> =
                vec![("uploads", ""), ("prefix", &self.inner.prefix)];
            if let Some((key, id)) = &markers {
                query.push(("key-marker", key));
                query.push(("upload-id-marker", id));
            }
            let url = self.signed_bucket_get(&query);
            let response = self
                .send_ok(
                    "list_uploads",
                    self.inner.client.get(url),
                    self.inner.timeout * 2,
                )
                .await?;
            let text = read_limited("list_uploads", response, MAX_LISTING).await?;
            let text = String::from_utf8_lossy(&text);
            for upload in xml_values(&text, "Upload") {
                let key = xml_values(&upload, "Key").pop();
                let id = xml_values(&upload, "UploadId").pop();
                let at = xml_values(&upload, "Initiated")
                    .pop()
                    .and_then(|t| iso_seconds(&t));
                if let (Some(key), Some(id), Some(at)) = (key, id, at) {
                    out.push((key, id, at));
                }
            }
            let truncated = xml_values(&text, "IsTruncated")
                .pop()
                .is_some_and(|t| t == "true");
            let next = (
                xml_values(&text, "NextKeyMarker").pop(),
                xml_values(&text, "NextUploadIdMarker").pop(),
            );
            match next {
                (Some(k), Some(i))
                    if truncated && markers.as_ref() != Some(&(k.clone(), i.clone())) =>
                {
                    markers = Some((k, i))
                }
                _ => break,
            }
        }
        Ok(out)
    }

    /// A presigned GET of the bucket itself with `query` (for the actions the signing crate
    /// does not name).
    fn signed_bucket_get(&self, query: &[(&str, &str)]) -> url::Url {
        let url = self.inner.bucket.base_url().clone();
        // The signature covers the query in key order.
        let mut query = query.to_vec();
        query.sort_unstable();
        let now = jiff::Timestamp::now();
        match &self.inner.credentials {
            Some(c) => rusty_s3::signing::sign(
                &now,
                rusty_s3::Method::Get,
                url,
                c.key(),
                c.secret(),
                c.token(),
                self.inner.bucket.region(),
                SIGNED_FOR.as_secs(),
                query.iter().copied(),
                std::iter::empty(),
            ),
            None => {
                let mut url = url;
                {
                    let mut pairs = url.query_pairs_mut();
                    for (k, v) in &query {
                        pairs.append_pair(k, v);
                    }
                }
                url
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_fields() {
        let xml = "<R><Upload><Key>p/data/ab/x&amp;y</Key><UploadId>1</UploadId><Initiated>2024-01-15T10:30:00.000Z</Initiated></Upload><IsTruncated>false</IsTruncated></R>";
        let uploads = xml_values(xml, "Upload");
        assert_eq!(uploads.len(), 1);
        assert_eq!(xml_values(&uploads[0], "Key"), ["p/data/ab/x&y"]);
        assert_eq!(
            xml_values(&uploads[0], "Initiated")
                .pop()
                .as_deref()
                .and_then(iso_seconds),
            Some(1_705_314_600)
        );
    }
}
