//! Prometheus metrics, under the names of the interface we keep. Labels take only bounded
//! values: repo ids (from the configuration; the label is called `distro`, as in the
//! interface, and `debian-security` is its own series), cache status, method, status code,
//! byte source. Never a host or a path. Every series a configured repo can have exists from
//! start-up at zero ([`Metrics::zero_repos`]).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::{PoisonError, RwLock};

/// A repo id (`debian`, `debian-security`, …), under the interface's label name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DistroLabel {
    pub distro: String,
}

/// Where served bytes came from.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: &'static str,
}

/// How a CONNECT request ended: `opened`, `refused` (not allowed, or over a limit) or
/// `failed` (the host could not be reached).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TunnelLabel {
    pub outcome: &'static str,
}

/// The direction of tunnelled bytes: `upstream` (client to host) or `client`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: &'static str,
}

/// An upstream request's method and status (`error` when there was no response).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabel {
    pub method: &'static str,
    pub status: String,
}

/// Every metric the proxy keeps.
pub struct Metrics {
    registry: Registry,
    pub cache_hits: Family<DistroLabel, Counter>,
    pub cache_misses: Family<DistroLabel, Counter>,
    pub cache_size_bytes: Gauge,
    pub cache_items: Gauge,
    pub cache_evictions: Counter,
    pub cleanup_duration: Histogram,
    pub upstream_duration: Family<UpstreamLabel, Histogram>,
    pub upstream_errors: Family<DistroLabel, Counter>,
    pub bytes_served: Family<SourceLabel, Counter>,
    /// `bytes_served`'s two series, looked up once: a hit neither builds nor hashes a label.
    pub bytes_from_cache: Counter,
    pub bytes_from_upstream: Counter,
    pub integrity_failures: Family<DistroLabel, Counter>,
    pub mirror_failovers: Family<DistroLabel, Counter>,
    pub mirror_benchmarks: Family<DistroLabel, Counter>,
    pub index_unparsed: Family<DistroLabel, Counter>,
    pub integrity_unchecked: Family<DistroLabel, Counter>,
    pub cache_damaged: Counter,
    pub tunnels: Family<TunnelLabel, Counter>,
    pub tunnels_open: Gauge,
    pub tunnel_bytes: Family<DirectionLabel, Counter>,
    /// Storage backend operations.
    pub storage: crate::storage::StoreMetrics,
    /// Each repo's `cache_hits` and `cache_misses` series (handles sharing their values), made
    /// with the repo's other series by [`Metrics::zero_repos`] and found by a short scan, so
    /// that counting a request neither builds a label nor hashes it ([`Metrics::count_cache`]).
    cache_counts: RwLock<Vec<(String, Counter, Counter)>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let cache_hits = Family::<DistroLabel, Counter>::default();
        let cache_misses = Family::<DistroLabel, Counter>::default();
        let cache_size_bytes = Gauge::default();
        let cache_items = Gauge::default();
        let cache_evictions = Counter::default();
        let cleanup_duration = Histogram::new(exponential_buckets(0.001, 4.0, 10));
        let upstream_duration = Family::<UpstreamLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 3.0, 10))
        });
        let upstream_errors = Family::<DistroLabel, Counter>::default();
        let bytes_served = Family::<SourceLabel, Counter>::default();
        let integrity_failures = Family::<DistroLabel, Counter>::default();
        let mirror_failovers = Family::<DistroLabel, Counter>::default();
        let mirror_benchmarks = Family::<DistroLabel, Counter>::default();
        let index_unparsed = Family::<DistroLabel, Counter>::default();
        let integrity_unchecked = Family::<DistroLabel, Counter>::default();
        let cache_damaged = Counter::default();
        let tunnels = Family::<TunnelLabel, Counter>::default();
        let tunnels_open = Gauge::default();
        let tunnel_bytes = Family::<DirectionLabel, Counter>::default();
        for outcome in ["opened", "refused", "failed"] {
            drop(tunnels.get_or_create(&TunnelLabel { outcome }));
        }
        for direction in ["upstream", "client"] {
            drop(tunnel_bytes.get_or_create(&DirectionLabel { direction }));
        }
        // The series that need no repo exist from the start, at zero.
        let [bytes_from_cache, bytes_from_upstream] = ["cache", "upstream"]
            .map(|source| bytes_served.get_or_create(&SourceLabel { source }).clone());
        drop(upstream_duration.get_or_create(&UpstreamLabel {
            method: "GET",
            status: "200".into(),
        }));
        registry.register(
            "apt_proxy_cache_hits",
            "Requests answered from the cache",
            cache_hits.clone(),
        );
        registry.register(
            "apt_proxy_cache_misses",
            "Requests that went to a mirror",
            cache_misses.clone(),
        );
        registry.register(
            "apt_proxy_cache_size_bytes",
            "Bytes stored in the cache",
            cache_size_bytes.clone(),
        );
        registry.register(
            "apt_proxy_cache_items",
            "Entries stored in the cache",
            cache_items.clone(),
        );
        registry.register(
            "apt_proxy_cache_evictions",
            "Entries removed to respect the size limit or the TTL",
            cache_evictions.clone(),
        );
        registry.register(
            "apt_proxy_cache_cleanup_duration_seconds",
            "Duration of cache cleanups",
            cleanup_duration.clone(),
        );
        registry.register(
            "apt_proxy_cache_upstream_request_duration_seconds",
            "Time to a mirror's response head",
            upstream_duration.clone(),
        );
        registry.register(
            "apt_proxy_cache_upstream_errors",
            "Mirror requests that failed",
            upstream_errors.clone(),
        );
        registry.register(
            "apt_proxy_bytes_served",
            "Body bytes sent to clients, by where they came from",
            bytes_served.clone(),
        );
        registry.register(
            "apt_proxy_integrity_failures",
            "Downloads refused or stored copies dropped because they did not match their index or URL hash, or a package contradicted itself",
            integrity_failures.clone(),
        );
        registry.register(
            "apt_proxy_mirror_failovers",
            "Requests that moved on to the next mirror after one failed",
            mirror_failovers.clone(),
        );
        registry.register(
            "apt_proxy_mirror_benchmarks",
            "Mirror benchmarks run",
            mirror_benchmarks.clone(),
        );
        registry.register(
            "apt_proxy_index_unparsed",
            "Indexes served but not parsed (past a parsing limit, or unreadable): the files they list are not verified against them",
            index_unparsed.clone(),
        );
        registry.register(
            "apt_proxy_integrity_unchecked",
            "Packages stored on their length alone because their format carries no hash the proxy can check (apk v3, apk without datahash)",
            integrity_unchecked.clone(),
        );
        registry.register(
            "apt_proxy_cache_damaged_entries",
            "Stored entries dropped because their body was truncated, changed or unreadable",
            cache_damaged.clone(),
        );
        registry.register(
            "apt_proxy_tunnels",
            "CONNECT requests, by outcome: opened, refused (not allowed or over a limit), failed (host unreachable)",
            tunnels.clone(),
        );
        registry.register(
            "apt_proxy_tunnels_open",
            "CONNECT tunnels open now",
            tunnels_open.clone(),
        );
        registry.register(
            "apt_proxy_tunnel_bytes",
            "Bytes carried by CONNECT tunnels, by direction (upstream: client to host)",
            tunnel_bytes.clone(),
        );
        let storage = crate::storage::StoreMetrics::default();
        registry.register(
            "apt_proxy_storage_operations",
            "Operations on the cache storage backend, by backend and operation",
            storage.operations.clone(),
        );
        registry.register(
            "apt_proxy_storage_errors",
            "Storage operations that failed (no answer, a timeout, a server error or throttling)",
            storage.errors.clone(),
        );
        registry.register(
            "apt_proxy_storage_operation_duration_seconds",
            "Duration of storage operations",
            storage.duration.clone(),
        );
        registry.register(
            "apt_proxy_storage_upload_buffered_bytes",
            "Bytes read from spools for uploads and not yet sent to the store, all uploads together",
            storage.upload_buffered.clone(),
        );
        Metrics {
            registry,
            storage,
            cache_hits,
            cache_misses,
            cache_size_bytes,
            cache_items,
            cache_evictions,
            cleanup_duration,
            upstream_duration,
            upstream_errors,
            bytes_served,
            bytes_from_cache,
            bytes_from_upstream,
            integrity_failures,
            mirror_failovers,
            mirror_benchmarks,
            index_unparsed,
            integrity_unchecked,
            cache_damaged,
            tunnels,
            tunnels_open,
            tunnel_bytes,
            cache_counts: RwLock::default(),
        }
    }

    /// Counts a request for `repo` answered from the cache (`hit`) or from a mirror.
    pub fn count_cache(&self, repo: &str, hit: bool) {
        let counts = self
            .cache_counts
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((_, hits, misses)) = counts.iter().find(|(id, _, _)| id == repo) {
            if hit {
                hits.inc();
            } else {
                misses.inc();
            }
            return;
        }
        drop(counts);
        // A repo no registry named when the series were made (a cache built without one):
        // made now, then found.
        self.zero_repos([repo]);
        self.count_cache(repo, hit);
    }

    /// Makes every per-repo series of `repos` exist, at zero until its first event, so that
    /// `rate()` and `absent()` work from start-up. Called with each registry, at start and on
    /// reload (a repo that is gone keeps its series, as counters must).
    pub fn zero_repos<'a>(&self, repos: impl IntoIterator<Item = &'a str>) {
        for repo in repos {
            let label = DistroLabel {
                distro: repo.to_string(),
            };
            let mut counts = self
                .cache_counts
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if !counts.iter().any(|(id, _, _)| id == repo) {
                counts.push((
                    repo.to_string(),
                    self.cache_hits.get_or_create(&label).clone(),
                    self.cache_misses.get_or_create(&label).clone(),
                ));
            }
            drop(counts);
            for family in [
                &self.cache_hits,
                &self.cache_misses,
                &self.upstream_errors,
                &self.integrity_failures,
                &self.mirror_failovers,
                &self.mirror_benchmarks,
                &self.index_unparsed,
                &self.integrity_unchecked,
            ] {
                drop(family.get_or_create(&label));
            }
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_counts_land_in_the_families_series_zeroed_or_not() {
        let metrics = Metrics::new();
        metrics.zero_repos(["debian"]);
        metrics.count_cache("debian", true);
        metrics.count_cache("debian", true);
        metrics.count_cache("debian", false);
        // A repo no registry named is counted too.
        metrics.count_cache("other", false);
        let text = metrics.encode();
        for line in [
            "apt_proxy_cache_hits_total{distro=\"debian\"} 2",
            "apt_proxy_cache_misses_total{distro=\"debian\"} 1",
            "apt_proxy_cache_hits_total{distro=\"other\"} 0",
            "apt_proxy_cache_misses_total{distro=\"other\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }
}
