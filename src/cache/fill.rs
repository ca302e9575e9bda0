//! One fill: the single upstream request for a key, streamed into a temporary body that every
//! waiting client reads while it grows, verified, and committed (or thrown away).

use std::fs::File;
use std::sync::Arc;

use futures_util::StreamExt;
use reqwest::header::{CACHE_CONTROL, CONTENT_RANGE, CONTENT_TYPE, ETAG, HeaderMap, LAST_MODIFIED};
use tokio::sync::watch;

use super::index::{self, Digest, Source};
use super::verify::{Digests, Hashes, Wanted};
use super::{Cache, FillRequest, policy};
use crate::distro::class::{HashAlgo, by_hash_digest};
use crate::mirror::{MAX_ATTEMPTS, Mirror};
use crate::storage::{EntryMeta, META_VERSION};
use crate::storage::{StorageError, Writer};
use crate::telemetry::metrics::{DistroLabel, UpstreamLabel};
use crate::unix_now;
use crate::upstream::{Ask, UpstreamError, Validators};

/// Response head of a fill, known before its body.
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    /// Content-Length, when upstream sent one.
    pub len: Option<u64>,
    pub content_type: Option<String>,
    pub last_modified: Option<String>,
    pub etag: Option<String>,
    pub cache_control: Option<String>,
}

impl Head {
    /// The head of a mirror's response.
    pub fn of(response: &reqwest::Response) -> Head {
        let headers = response.headers();
        Head {
            status: response.status().as_u16(),
            len: response.content_length(),
            content_type: header(headers, CONTENT_TYPE),
            last_modified: header(headers, LAST_MODIFIED),
            etag: header(headers, ETAG),
            cache_control: header(headers, CACHE_CONTROL),
        }
    }

    /// The validator that makes a byte range safe to join to bytes already received
    /// (`If-Range`): the strong ETag, else the Last-Modified date.
    pub fn if_range(&self) -> Option<String> {
        self.etag
            .clone()
            .filter(|e| !e.starts_with("W/"))
            .or_else(|| self.last_modified.clone())
    }
}

/// A response the fill will not store (too large for the cache, the disk full or failing):
/// the first client to follow takes it and streams it; any other fetches its own.
pub type Unstored = Arc<std::sync::Mutex<Option<reqwest::Response>>>;

/// Where a fill stands; clients watch it.
#[derive(Debug, Clone)]
pub enum FillState {
    /// Waiting for the mirror's response head.
    Pending,
    /// The body is arriving; `written` bytes of `file` can be read.
    Streaming {
        head: Arc<Head>,
        file: Arc<File>,
        written: u64,
    },
    /// The entry is stored (`revalidated`: the mirror answered 304 for the stale copy).
    Done {
        meta: Arc<EntryMeta>,
        revalidated: bool,
    },
    /// The mirror answered with a status that is not cached (5xx, 403, …).
    Passthrough { status: u16 },
    /// The fill failed; nothing was stored. When it failed writing the cache
    /// ([`FillError::Storage`]), clients already reading the body keep what was written and
    /// fetch the rest themselves.
    Failed(Arc<FillError>),
    /// The body will not be stored: streamed straight from the mirror (`X-Cache: SKIP`).
    Unstored { head: Arc<Head>, response: Unstored },
    /// The body arrived whole and verified, but the store did not take it (a failing or
    /// unreachable store): its clients read it from the spool, and nothing is kept.
    Spooled {
        meta: Arc<EntryMeta>,
        file: Arc<File>,
    },
}

/// Why a fill failed.
#[derive(Debug, thiserror::Error)]
pub enum FillError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("cache storage failed")]
    Storage(#[from] StorageError),
    #[error("mirror sent {got} bytes, announced {expected}")]
    Length { expected: u64, got: u64 },
    #[error("mirror sent more than the largest file stored ({0} bytes)")]
    TooLarge(u64),
    #[error("mirror sent content that does not match the hash in its URL")]
    Digest,
    #[error("mirror sent a file whose hash differs from the one its index lists")]
    Mismatch,
    /// A package that contradicts itself (an `.apk` whose data is not what its control
    /// segment declares, or no package at all).
    #[error("mirror sent a damaged package: {0}")]
    Damaged(String),
    #[error("mirror is inconsistent (mid-sync?): the index does not match its Release")]
    Inconsistent,
    /// The request's path does not make a URL under the mirror's base: the client's fault.
    #[error("malformed path")]
    BadPath,
    /// A read-ahead's fill that no one waits for any more.
    #[error("read-ahead no longer wanted")]
    Unwanted,
}

/// The longest upstream header value kept with an entry (Content-Type, Last-Modified, ETag,
/// Cache-Control); a longer one is dropped, so a hostile mirror cannot bloat every record.
pub const MAX_KEPT_HEADER: usize = 1024;

fn header(headers: &HeaderMap, name: reqwest::header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= MAX_KEPT_HEADER)
        .map(str::to_owned)
}

/// Runs the fill for `request` to its end and publishes the outcome; the fill is then removed
/// from the table of fills in progress.
pub(super) async fn run(
    cache: Arc<Cache>,
    request: FillRequest,
    stale: Option<Arc<EntryMeta>>,
    tx: watch::Sender<FillState>,
) {
    let outcome = fetch(&cache, &request, stale.as_deref(), &tx).await;
    match &outcome {
        Err(FillError::Upstream(e)) => cache.record_mirror(&request.repo, Some(e.to_string())),
        Err(FillError::BadPath) => {}
        Ok(FillState::Passthrough { status }) if *status >= 500 => {
            cache.record_mirror(&request.repo, Some(format!("mirror answered {status}")))
        }
        _ => cache.record_mirror(&request.repo, None),
    }
    if let Err(e) = &outcome {
        let label = DistroLabel {
            distro: request.repo.clone(),
        };
        match e {
            FillError::Upstream(_) => cache.metrics.upstream_errors.get_or_create(&label).inc(),
            FillError::Digest
            | FillError::Mismatch
            | FillError::Damaged(_)
            | FillError::Inconsistent => {
                cache.metrics.integrity_failures.get_or_create(&label).inc()
            }
            _ => 0,
        };
    }
    let state = outcome.unwrap_or_else(|e| {
        if matches!(e, FillError::Unwanted) {
            tracing::debug!(key = %request.key, "read-ahead no longer wanted; stopped, nothing stored");
        } else {
            tracing::warn!(key = %request.key, error = %crate::upstream::error_chain(&e), "fill failed, nothing stored");
        }

        FillState::Failed(Arc::new(e))
    });
    // Leave the table first: a request that comes after this fill's outcome must not join it
    // (an entry that is stale at once, a failure) but look up again.
    cache.fill_finished(&request.key);
    tx.send_replace(state);
}

async fn fetch(
    cache: &Arc<Cache>,
    request: &FillRequest,
    stale: Option<&EntryMeta>,
    tx: &watch::Sender<FillState>,
) -> Result<FillState, FillError> {
    let validators = stale.filter(|m| m.status == 200).map(|m| Validators {
        etag: m.etag.clone(),
        last_modified: m.last_modified.clone(),
    });
    let started = std::time::Instant::now();
    let ask = Ask {
        validators: validators.as_ref(),
        ..Ask::default()
    };
    // An index a Release vouches for is fetched by its by-hash name where the Release allows
    // it: a mirror caught mid-sync serves there the version the Release names, whatever its
    // plain name holds, so the index can be streamed like any file.
    let by_hash = request
        .expect
        .as_ref()
        .filter(|e| e.source == Source::Release)
        .and_then(|e| e.by_hash_path.as_deref());
    let mut upstream_path = by_hash.unwrap_or(&request.path);
    let mut mirrors = Attempts::new(cache, request);
    let mut answer = mirrors.first_answer(upstream_path, &ask).await?;
    if by_hash.is_some()
        && matches!(&answer, Answer::Response(_, r) if r.status().is_client_error())
    {
        // A mirror without by-hash files (404, or 403/410 from some stores): the plain name,
        // checked at its end.
        upstream_path = &request.path;
        mirrors = Attempts::new(cache, request);
        answer = mirrors.first_answer(upstream_path, &ask).await?;
    }
    let (mirror, response) = match answer {
        Answer::Response(mirror, response) => (mirror, response),
        Answer::Failed(status) => return Ok(FillState::Passthrough { status }),
    };
    let status = response.status().as_u16();

    tracing::debug!(key = %request.key, status, mirror = %mirror.base, ms = started.elapsed().as_millis() as u64, "upstream answered");

    if let (304, Some(old)) = (status, stale.filter(|m| m.status == 200)) {
        mirror.succeeded();
        let mut meta = old.clone();
        // A 304 updates the stored headers it carries (RFC 9111, 4.3.4).
        if let Some(cc) = header(response.headers(), CACHE_CONTROL) {
            meta.cache_control = Some(cc);
        }
        meta.fresh_until = policy::fresh_until_with_rule(
            request.class,
            200,
            response.headers(),
            unix_now(),
            &cache.tuning,
            request.rule_max_age,
        );
        // A cache that cannot record the revalidation still serves the copy it has.
        if let Err(e) = cache.store.update_meta(&request.key, &meta).await {
            cache.storage_failed(&format!("cannot update an entry: {e}"));
        }
        let meta = Arc::new(meta);
        cache.remember(request.key.clone(), meta.clone());
        return Ok(FillState::Done {
            meta,
            revalidated: true,
        });
    }
    if status != 200 && status != 404 {
        mirror.succeeded();
        return Ok(FillState::Passthrough { status });
    }

    // A file that cannot be stored is streamed to its clients from the mirror, unchecked
    // (they check it themselves) and without a temporary body on the cache disk.
    let unstored = |response: reqwest::Response| {
        mirror.succeeded();
        FillState::Unstored {
            head: Arc::new(Head::of(&response)),
            response: Arc::new(std::sync::Mutex::new(Some(response))),
        }
    };
    if !cache.admit(response.content_length()).await {
        return Ok(unstored(response));
    }
    let temp = match cache
        .store
        .begin(&request.key, response.content_length())
        .await
    {
        Ok(temp) => temp,
        Err(e) => {
            cache.storage_failed(&format!("cannot create a temporary body: {e}"));
            return Ok(unstored(response));
        }
    };
    let body = receive(
        cache,
        request,
        upstream_path,
        (mirror.clone(), response),
        &mut mirrors,
        tx,
        temp,
    )
    .await?;
    if let Some(expect) = request.expect.as_ref().filter(|_| status == 200)
        && !body.matches(&expect.digest)
    {
        if expect.source == Source::Release {
            tracing::warn!(key = %request.key, path = upstream_path, mirror = %body.mirror.base, "index does not match its Release (a mirror caught mid-sync?); cut, nothing stored");
            return Err(FillError::Inconsistent);
        }
        return Err(body.contradicts(cache, request, &expect.digest));
    }
    // A package no index vouched for when its fill started may have one now, or once the
    // package index of its repo being learnt is in (the download and the parse overlapped).
    let unvouched_package = request.expect.is_none() && index::is_package(&request.path);
    if unvouched_package && status == 200 {
        cache
            .indexes
            .settled(&request.repo, super::learn::SETTLE_MAX)
            .await;
        if let Some(expect) = cache.indexes.expected(&request.repo, &request.path)
            && !body.matches(&expect.digest)
        {
            return Err(body.contradicts(cache, request, &expect.digest));
        }
    }
    if let Some(why) = body.digests.unchecked.filter(|_| status == 200) {
        tracing::debug!(key = %request.key, "stored on its length alone: {why}");
        cache
            .metrics
            .integrity_unchecked
            .get_or_create(&DistroLabel {
                distro: request.repo.clone(),
            })
            .inc();
    }

    let now = unix_now();
    let meta = EntryMeta {
        v: META_VERSION,
        key: request.key.as_str().to_string(),
        body: String::new(),
        status,
        len: body.written,
        content_type: body.head.content_type.clone(),
        last_modified: body.head.last_modified.clone(),
        etag: body.head.etag.clone(),
        cache_control: body.head.cache_control.clone(),
        sha256: body.digests.sha256.clone(),
        digests: body.digests.others.clone(),
        stored_at: now,
        fresh_until: policy::fresh_until_with_rule(
            request.class,
            status,
            &body.headers,
            now,
            &cache.tuning,
            request.rule_max_age,
        ),
    };
    let spool = body.temp.spool();
    let committed = cache
        .store
        .commit(&request.key, body.temp, meta.clone())
        .await;
    let outcome = match committed {
        Ok(meta) => {
            let meta = Arc::new(meta);
            cache.storage_ok();
            cache.remember(request.key.clone(), meta.clone());
            // An index learnt while the body was committed: it is checked now, or by the
            // learning, which checks what is stored once its table is in place.
            if unvouched_package
                && status == 200
                && let Some(digest) = cache.index_contradicts(&request.repo, &request.path, &meta)
            {
                cache.drop_entry(&request.key, &meta);
                tracing::warn!(key = %request.key, mirror = %body.mirror.base, want = %digest.hex, "download does not match an index learnt meanwhile; dropped");
                body.mirror.failed(
                    "sent a file that contradicts its index",
                    cache.tuning.mirror_demotion,
                );
                return Err(FillError::Mismatch);
            }
            tracing::debug!(key = %request.key, bytes = meta.len, ms = started.elapsed().as_millis() as u64, "fill committed");
            FillState::Done {
                meta,
                revalidated: false,
            }
        }
        Err(e) => {
            cache.storage_failed(&format!("cannot commit an entry: {e}"));
            tracing::warn!(key = %request.key, error = %e, "the store did not take a verified file; its clients get it from the spool");
            FillState::Spooled {
                meta: Arc::new(meta),
                file: spool.clone(),
            }
        }
    };
    if status == 200 {
        cache
            .learn(&request.repo, &request.path, &request.key, spool)
            .await;
    }
    Ok(outcome)
}

/// What asking the mirrors in turn gave.
enum Answer {
    /// A mirror answered with something other than a server error.
    Response(Arc<Mirror>, reqwest::Response),
    /// Every mirror tried answered with a server error; this is the last status.
    Failed(u16),
}

/// The mirrors one fill may still try, in order; each is tried once.
struct Attempts<'a> {
    cache: &'a Cache,
    request: &'a FillRequest,
    order: std::vec::IntoIter<Arc<Mirror>>,
    tried: usize,
}

impl<'a> Attempts<'a> {
    fn new(cache: &'a Cache, request: &'a FillRequest) -> Attempts<'a> {
        let mut order = request.mirrors.attempt_order();
        order.truncate(MAX_ATTEMPTS);
        Attempts {
            cache,
            request,
            order: order.into_iter(),
            tried: 0,
        }
    }

    /// The next mirror to try; counts a failover when it is not the first.
    fn next(&mut self, after: Option<&str>) -> Option<Arc<Mirror>> {
        let mirror = self.order.next()?;
        if self.tried > 0 {
            self.cache
                .metrics
                .mirror_failovers
                .get_or_create(&DistroLabel {
                    distro: self.request.repo.clone(),
                })
                .inc();
            tracing::warn!(key = %self.request.key, to = %mirror.base, reason = after.unwrap_or("failed"), "mirror failed; trying the next one");
        }
        self.tried += 1;
        Some(mirror)
    }

    /// Sends `ask` for `path` to mirror after mirror until one answers without a server error.
    async fn first_answer(&mut self, path: &str, ask: &Ask<'_>) -> Result<Answer, FillError> {
        let mut last: Option<Result<u16, UpstreamError>> = None;
        let mut reason: Option<String> = None;
        while let Some(mirror) = self.next(reason.as_deref()) {
            let started = std::time::Instant::now();
            // A path that makes no URL is the request's fault, not the mirror's (whether it
            // makes one does not depend on the mirror: every base ends with `/`).
            let url = mirror.url(path).map_err(|_| FillError::BadPath)?;
            let result = self.cache.upstream.send(url, ask).await;
            self.observe(ask, &result, started);
            match result {
                Ok(response) if response.status().is_server_error() => {
                    let status = response.status().as_u16();
                    let why = format!("mirror answered {status}");
                    mirror.failed(&why, self.cache.tuning.mirror_demotion);
                    reason = Some(why);
                    last = Some(Ok(status));
                }
                Ok(response) => return Ok(Answer::Response(mirror, response)),
                Err(e) => {
                    mirror.failed(&e.to_string(), self.cache.tuning.mirror_demotion);
                    reason = Some(e.to_string());
                    last = Some(Err(e));
                }
            }
        }
        match last {
            Some(Ok(status)) => Ok(Answer::Failed(status)),
            Some(Err(e)) => Err(e.into()),
            None => Err(UpstreamError::Connect {
                detail: "no mirror to try".into(),
            }
            .into()),
        }
    }

    /// After a mirror failed mid-body with `written` bytes received: a mirror that sends the
    /// rest, with whether it resends from the start (`true`: the first `written` bytes come
    /// again and are compared with those received).
    async fn resume(
        &mut self,
        path: &str,
        head: &Head,
        written: u64,
        why: &str,
    ) -> Option<(Arc<Mirror>, reqwest::Response, bool)> {
        // Without a length, a new transfer cannot be checked against the one cut.
        if head.len.is_none() && written > 0 {
            return None;
        }
        // Byte ranges are asked only where the bytes cannot differ between mirrors.
        let ranged = written > 0 && self.request.resumable();
        let mut reason = why.to_string();
        while let Some(mirror) = self.next(Some(&reason)) {
            let started = std::time::Instant::now();
            // The path made a URL on the first mirror, so it makes one on every mirror.
            let Ok(url) = mirror.url(path) else {
                return None;
            };
            let range = format!("bytes={written}-");
            let ask = Ask {
                range: ranged.then_some(range.as_str()),
                ..Ask::default()
            };
            let result = self.cache.upstream.send(url, &ask).await;
            self.observe(&ask, &result, started);
            let response = match result {
                Ok(r) => r,
                Err(e) => {
                    mirror.failed(&e.to_string(), self.cache.tuning.mirror_demotion);
                    reason = e.to_string();
                    continue;
                }
            };
            let status = response.status().as_u16();
            let total = |r: &reqwest::Response| match status {
                206 => content_range(r)
                    .filter(|&(from, _)| from == written)
                    .and_then(|(_, t)| t),
                _ => r.content_length(),
            };
            match status {
                206 | 200 if head.len.is_none() || total(&response) == head.len => {
                    tracing::info!(key = %self.request.key, mirror = %mirror.base, from = if status == 206 { written } else { 0 }, "download continues on another mirror");
                    return Some((mirror, response, status == 200 && written > 0));
                }
                s if s >= 500 => {
                    reason = format!("mirror answered {s}");
                    mirror.failed(&reason, self.cache.tuning.mirror_demotion);
                }
                s => {
                    reason = format!("mirror answered {s}; cannot continue the download there");
                }
            }
        }
        None
    }

    fn observe(
        &self,
        ask: &Ask<'_>,
        result: &Result<reqwest::Response, UpstreamError>,
        started: std::time::Instant,
    ) {
        let status = result
            .as_ref()
            .map_or_else(|_| "error".to_string(), |r| r.status().as_u16().to_string());
        self.cache
            .metrics
            .upstream_duration
            .get_or_create(&UpstreamLabel {
                method: ask.method(),
                status,
            })
            .observe(started.elapsed().as_secs_f64());
    }
}

/// `Content-Range: bytes FROM-TO/TOTAL` as (FROM, TOTAL).
pub(crate) fn content_range(response: &reqwest::Response) -> Option<(u64, Option<u64>)> {
    let value = response.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    let (range, total) = value.strip_prefix("bytes ")?.split_once('/')?;
    let (from, _) = range.split_once('-')?;
    Some((from.trim().parse().ok()?, total.trim().parse().ok()))
}

/// A body received into a temporary file, with its digests and the mirror that sent it.
struct Received {
    head: Arc<Head>,
    headers: HeaderMap,
    temp: Writer,
    written: u64,
    digests: Digests,
    mirror: Arc<Mirror>,
}

impl Received {
    fn matches(&self, digest: &Digest) -> bool {
        self.written == digest.size && self.digests.get(digest.algo) == Some(digest.hex.as_str())
    }

    /// A package that contradicts its index: logged with the mirror that sent it, which is
    /// demoted so that the next try goes elsewhere.
    fn contradicts(&self, cache: &Cache, request: &FillRequest, digest: &Digest) -> FillError {
        let got = self.digests.get(digest.algo).unwrap_or("-");
        tracing::warn!(key = %request.key, mirror = %self.mirror.base, algo = digest.algo.name(), want = %digest.hex, got, size = self.written, want_size = digest.size, "download does not match its index; not stored");
        self.mirror.failed(
            "sent a file that contradicts its index",
            cache.tuning.mirror_demotion,
        );
        FillError::Mismatch
    }
}

/// Streams a mirror's response into a new temporary body, publishing progress on `tx` when
/// given; when the mirror fails mid-body the transfer continues on the next mirror. Checks
/// the whole against its announced length and the hash its URL pins.
async fn receive(
    cache: &Cache,
    request: &FillRequest,
    path: &str,
    (mut mirror, response): (Arc<Mirror>, reqwest::Response),
    mirrors: &mut Attempts<'_>,
    tx: &watch::Sender<FillState>,
    mut temp: Writer,
) -> Result<Received, FillError> {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let head = Arc::new(Head::of(&response));
    tx.send_replace(FillState::Streaming {
        head: head.clone(),
        file: temp.spool(),
        written: 0,
    });
    let pinned = if status == 200 {
        by_hash_digest(path)
    } else {
        None
    };
    let mut hashes = Hashes::new(if status == 200 {
        let named = match &pinned {
            Some((HashAlgo::Sha512, _)) => Some(index::Algo::Sha512),
            Some((HashAlgo::Sha256, _)) => Some(index::Algo::Sha256),
            None => request.expect.as_ref().map(|e| e.digest.algo),
        };
        Wanted::for_path(path, named, request.alpine)
    } else {
        Wanted::default()
    });
    let mut written = 0u64;
    // While another mirror resends the start: the offset of its next byte.
    let mut replay: Option<u64> = None;
    // Chunks that are already there are written together: one flush and one wake-up per batch.
    let mut chunks = response.bytes_stream().ready_chunks(64);
    // The minimum rate: at least `floor` bytes in every `window`, else the next mirror.
    let mut rate = cache.tuning.min_rate.map(|(floor, window)| RateWindow {
        floor,
        window,
        start: tokio::time::Instant::now(),
        bytes: 0,
    });
    loop {
        let next = match rate.as_ref() {
            Some(r) => tokio::time::timeout_at(r.start + r.window, chunks.next()).await,
            None => Ok(chunks.next().await),
        };
        let mut failure: Option<(String, bool)> = None;
        let batch = match next {
            Ok(Some(batch)) => batch,
            Ok(None) => break,
            // The window ended without a chunk: judged below.
            Err(_) => Vec::new(),
        };
        if let Some(r) = rate.as_mut() {
            r.bytes += batch
                .iter()
                .map(|c| c.as_ref().map_or(0, |b| b.len() as u64))
                .sum::<u64>();
            if let Some(why) = r.judge() {
                tracing::warn!(key = %request.key, mirror = %mirror.base, written, "{why}");
                failure = Some((why, true));
            }
        }
        for item in batch.into_iter().take_while(|_| failure.is_none()) {
            let chunk = match item {
                Ok(chunk) => chunk,
                Err(e) => {
                    let e = UpstreamError::from_reqwest(&e);
                    tracing::warn!(key = %request.key, mirror = %mirror.base, written, error = %crate::upstream::error_chain(&e), "mirror failed mid-body");
                    failure = Some((e.to_string(), true));
                    break;
                }
            };
            let mut data = &chunk[..];
            if let Some(at) = replay.as_mut() {
                let n = (data.len() as u64).min(written - *at) as usize;
                if !same_as_received(&temp.spool(), *at, &data[..n]) {
                    failure = Some((
                        "the mirror's copy differs from the first one's".into(),
                        false,
                    ));
                    break;
                }
                *at += n as u64;
                data = &data[n..];
                if *at == written {
                    replay = None;
                }
            }
            if data.is_empty() {
                continue;
            }
            if written + data.len() as u64 > cache.limits.max_object_bytes {
                tracing::warn!(key = %request.key, limit = cache.limits.max_object_bytes, "mirror body past the largest file stored; cut");
                return Err(FillError::TooLarge(cache.limits.max_object_bytes));
            }
            hashes.update(data);
            if let Err(e) = temp.write(data).await {
                return Err(cache.write_failed(e));
            }
            written += data.len() as u64;
        }
        if let Err(e) = temp.flush().await {
            return Err(cache.write_failed(e));
        }
        tx.send_modify(|state| {
            if let FillState::Streaming { written: w, .. } = state {
                *w = written;
            }
        });
        // Only the table of fills holds a receiver: the client whose read-ahead started this
        // left before asking for it, and no one else joined.
        if let Some(claimed) = &request.speculative
            && !claimed.load(std::sync::atomic::Ordering::Acquire)
            && tx.receiver_count() <= 1
        {
            return Err(FillError::Unwanted);
        }
        if let Some((why, unhealthy)) = failure {
            if unhealthy {
                mirror.failed(&why, cache.tuning.mirror_demotion);
            }
            let Some((next, response, again)) = mirrors.resume(path, &head, written, &why).await
            else {
                return Err(UpstreamError::Transfer { detail: why }.into());
            };
            mirror = next;
            replay = again.then_some(0);
            chunks = response.bytes_stream().ready_chunks(64);
            if let Some(r) = rate.as_mut() {
                r.restart();
            }
        }
    }
    if replay.is_some() {
        return Err(UpstreamError::Transfer {
            detail: "the next mirror sent less than was already received".into(),
        }
        .into());
    }
    if let Some(expected) = head.len.filter(|&n| n != written) {
        return Err(FillError::Length {
            expected,
            got: written,
        });
    }
    let digests = match hashes.finish() {
        Ok(digests) => digests,
        Err(why) => {
            tracing::warn!(key = %request.key, mirror = %mirror.base, "{why}; not stored");
            mirror.failed("sent a damaged package", cache.tuning.mirror_demotion);
            return Err(FillError::Damaged(why));
        }
    };
    mirror.succeeded();
    let digest_ok = match &pinned {
        Some((HashAlgo::Sha256, want)) => digests.get(index::Algo::Sha256) == Some(want),
        Some((HashAlgo::Sha512, want)) => digests.get(index::Algo::Sha512) == Some(want),
        None => true,
    };
    if !digest_ok {
        return Err(FillError::Digest);
    }
    Ok(Received {
        head,
        headers,
        temp,
        written,
        digests,
        mirror,
    })
}

/// The minimum transfer rate, judged per window.
struct RateWindow {
    floor: u64,
    window: std::time::Duration,
    start: tokio::time::Instant,
    bytes: u64,
}

impl RateWindow {
    /// At the end of a window: the failure when it brought fewer than `floor` bytes (else a
    /// new window starts).
    fn judge(&mut self) -> Option<String> {
        if self.start.elapsed() < self.window {
            return None;
        }
        if self.bytes < self.floor {
            return Some(format!(
                "mirror too slow: {} bytes in {:?}, at least {} expected",
                self.bytes, self.window, self.floor
            ));
        }
        self.restart();
        None
    }

    fn restart(&mut self) {
        self.start = tokio::time::Instant::now();
        self.bytes = 0;
    }
}

/// Whether `data` equals the bytes received at `offset` of the temporary body.
fn same_as_received(file: &File, offset: u64, data: &[u8]) -> bool {
    use std::os::unix::fs::FileExt;
    let mut stored = vec![0; data.len()];
    file.read_exact_at(&mut stored, offset).is_ok() && stored == data
}

impl Cache {
    /// A write to a temporary body failed (disk full, I/O error): recorded for health checks;
    /// the fill fails with a storage error, which its clients survive by fetching the rest.
    fn write_failed(&self, e: StorageError) -> FillError {
        self.storage_failed(&format!("cannot write a temporary body: {e}"));
        FillError::Storage(e)
    }
}

/// Sends `ask` for the request's path to the repo's mirrors in turn until one answers without
/// a server error: the request of a client that reads a file the cache does not store, the
/// rest of one whose fill could not be written, a HEAD or a byte range on a file not cached.
/// Nothing is stored.
pub(crate) async fn unstored_get(
    cache: &Cache,
    request: &FillRequest,
    ask: &Ask<'_>,
) -> Result<reqwest::Response, FillError> {
    match Attempts::new(cache, request)
        .first_answer(&request.path, ask)
        .await?
    {
        Answer::Response(_, response) => Ok(response),
        Answer::Failed(status) => Err(UpstreamError::Transfer {
            detail: format!("mirror answered {status}"),
        }
        .into()),
    }
}
