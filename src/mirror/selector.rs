//! The selector: benchmarks the mirror sets that are not pinned, in the background, at start,
//! periodically and on request (a reload), and swaps each ranking in when it is ready. The
//! proxy never waits for it: until a ranking exists, sets use their configuration order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::benchmark::{self, Limits};
use super::{Mirror, MirrorSet, Report};
use crate::telemetry::metrics::{DistroLabel, Metrics};
use crate::unix_now;
use crate::upstream::policy::AddressPolicy;

/// Runs benchmarks; one per set at a time.
#[derive(Debug)]
pub struct Selector {
    limits: Limits,
    /// Time between benchmarks; `None`: only at start and on request.
    interval: Option<Duration>,
    /// First pause of a mirror that fails its recovery probe.
    demotion: Duration,
    wake: Notify,
    metrics: Arc<Metrics>,
    /// Where geo-list mirrors and redirects may lead.
    policy: Arc<AddressPolicy>,
}

impl Selector {
    pub fn new(
        limits: Limits,
        interval: Option<Duration>,
        demotion: Duration,
        metrics: Arc<Metrics>,
        policy: Arc<AddressPolicy>,
    ) -> Selector {
        Selector {
            limits,
            interval,
            demotion,
            wake: Notify::new(),
            metrics,
            policy,
        }
    }

    /// The metrics it counts benchmarks in (shared with the whole proxy).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The upstream address policy (its trusted mirrors change with each reload).
    pub fn policy(&self) -> &Arc<AddressPolicy> {
        &self.policy
    }

    /// Asks for a new benchmark of every set now (after a reload).
    pub fn refresh(&self) {
        self.wake.notify_one();
    }

    /// Benchmarks the sets `sets()` returns, at once and then whenever it is time or asked,
    /// and probes their failed mirrors when their pause is over, until the process ends.
    pub async fn run(
        self: Arc<Self>,
        sets: impl Fn() -> Vec<Arc<MirrorSet>> + Send + Sync + 'static,
    ) {
        let sets = Arc::new(sets);
        let prober = self.clone();
        let probed = sets.clone();
        tokio::spawn(async move { prober.recover(&*probed).await });
        loop {
            self.benchmark_all(sets()).await;
            match self.interval {
                Some(every) => {
                    let _ = tokio::time::timeout(every, self.wake.notified()).await;
                }
                None => self.wake.notified().await,
            }
        }
    }

    /// Every `recovery_every`: a HEAD of the base URL of each failed mirror whose pause is over.
    /// Any answer below 500 restores it; a failure pauses it again, for longer.
    async fn recover(&self, sets: &(dyn Fn() -> Vec<Arc<MirrorSet>> + Send + Sync)) {
        let client = match benchmark::client(&self.limits, &self.policy) {
            Ok(client) => client,
            Err(e) => {
                tracing::warn!(error = %e, "no recovery probes for failed mirrors");
                return;
            }
        };
        loop {
            tokio::time::sleep(self.limits.recovery_every).await;
            let now = Instant::now();
            for set in sets() {
                for mirror in set.ranked().iter() {
                    if mirror.claim_probe(now, self.limits.probe_timeout) {
                        let client = client.clone();
                        let mirror = mirror.clone();
                        let (timeout, demotion) = (self.limits.probe_timeout, self.demotion);
                        let repo = set.repo.clone();
                        tokio::spawn(async move {
                            let answer = tokio::time::timeout(
                                timeout,
                                client.head(mirror.base.clone()).send(),
                            )
                            .await;
                            let error = match answer {
                                Ok(Ok(r)) if r.status().as_u16() < 500 => None,
                                Ok(Ok(r)) => {
                                    Some(format!("mirror answered {}", r.status().as_u16()))
                                }
                                Ok(Err(e)) => Some(crate::upstream::error_chain(&e)),
                                Err(_) => Some(format!("no answer within {timeout:?}")),
                            };
                            match error {
                                None => {
                                    mirror.succeeded();
                                    tracing::info!(repo = %repo, mirror = %mirror.base, "mirror answers again; restored");
                                }
                                Some(e) => {
                                    let pause = mirror.failed(&e, demotion);
                                    tracing::debug!(repo = %repo, mirror = %mirror.base, error = %e, ?pause, "mirror still failing");
                                }
                            }
                        });
                    }
                }
            }
        }
    }

    /// Benchmarks every set that is neither pinned nor without a benchmark file, concurrently.
    pub async fn benchmark_all(&self, sets: Vec<Arc<MirrorSet>>) {
        let runs = sets
            .into_iter()
            .filter(|s| s.is_benchmarked())
            .map(|set| async move { self.benchmark(&set).await });
        futures_util::future::join_all(runs).await;
    }

    /// Benchmarks one set and swaps its ranking in (unless nothing answered).
    pub async fn benchmark(&self, set: &MirrorSet) {
        let Some(path) = set.benchmark_path.as_deref() else {
            return;
        };
        if set.set_benchmarking(true) {
            return;
        }
        let started = Instant::now();
        tracing::info!(distro = %set.distro, repo = %set.repo, "Starting benchmark for mirrors");
        self.metrics
            .mirror_benchmarks
            .get_or_create(&DistroLabel {
                distro: set.repo.clone(),
            })
            .inc();
        let report = match benchmark::client(&self.limits, &self.policy) {
            Ok(client) => self.measure(set, &client, path, started).await,
            Err(e) => Report {
                error: Some(format!("benchmark client: {e}")),
                ..Report::default()
            },
        };
        if let Some(error) = &report.error {
            tracing::warn!(repo = %set.repo, error = %error, "no mirror ranking; keeping the current order");
        }
        set.set_report(report);
        set.set_benchmarking(false);
    }

    async fn measure(
        &self,
        set: &MirrorSet,
        client: &reqwest::Client,
        path: &str,
        started: Instant,
    ) -> Report {
        let mut candidates = set.candidates.clone();
        if let Some(list) = &set.geo_list {
            match benchmark::geo_list(client, list, self.limits.geo_timeout, &self.policy).await {
                Ok(found) => {
                    tracing::info!(repo = %set.repo, url = %list, mirrors = found.len(), "read the geo mirror list");
                    candidates.extend(found);
                }
                Err(e) => {
                    tracing::warn!(repo = %set.repo, url = %list, error = %e, "geo mirror list unavailable; ignored")
                }
            }
        }
        let urls = benchmark::probe_urls(&candidates);
        let configured = benchmark::probe_urls(&set.candidates);
        let probed = urls.len();
        let mut probes = benchmark::run(client, urls, path, &self.limits).await;
        // A mirror only a geo list names must prove it serves the distribution: its benchmark
        // file has to be an index with a publication date.
        for p in probes.iter_mut().filter(|p| !configured.contains(&p.base)) {
            if p.outcome.as_ref().is_ok_and(|m| m.published.is_none()) {
                p.outcome = Err("from the geo list, and served no valid index".into());
            }
        }
        let (ranked, dropped) = benchmark::rank(probes);
        for d in &dropped {
            tracing::debug!(repo = %set.repo, mirror = %d.url, reason = %d.reason, "mirror left out of the ranking");
        }
        tracing::info!(
            distro = %set.distro,
            repo = %set.repo,
            ranked = ranked.len(),
            dropped = dropped.len(),
            ms = started.elapsed().as_millis() as u64,
            "Finished benchmarking mirrors"
        );
        let mut report = Report {
            finished_at: Some(unix_now()),
            took_ms: started.elapsed().as_millis() as u64,
            probed,
            dropped,
            error: None,
        };
        if ranked.is_empty() {
            report.error = Some("no mirror answered the benchmark".into());
            return report;
        }
        let mirrors: Vec<Arc<Mirror>> = ranked
            .into_iter()
            .map(|(url, measure)| {
                let mirror = set.find(&url).unwrap_or_else(|| Mirror::new(url));
                mirror.measured(measure);
                mirror.succeeded();
                mirror
            })
            .collect();
        let fastest = mirrors[0].base.clone();
        set.set_ranking(mirrors);
        tracing::info!(repo = %set.repo, mirror = %fastest, "using fastest mirror");
        report
    }
}
