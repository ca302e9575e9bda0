//! Mirrors of one upstream tree: their ranking, their health, and the order a fill tries them.
//!
//! Every repo has a [`MirrorSet`]. It starts in configuration order (the pinned URLs, or the
//! default upstream followed by the other candidates), so the proxy serves at once; the
//! [`selector`] benchmarks the candidates in the background and swaps in a ranking. A fill
//! asks [`MirrorSet::attempt_order`] and moves to the next mirror when one fails; a failure
//! demotes the mirror for a while (a circuit breaker whose pause doubles with each consecutive
//! failure). When the pause is over the mirror is "recovering": tried only after the healthy
//! ones, until a background probe (or a request that reaches it) succeeds and restores it. So
//! a hung mirror costs clients nothing once it has failed.

pub mod benchmark;
pub mod selector;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use url::Url;

use crate::unix_now;

/// Longest pause of a failing mirror (the first is `Tuning::mirror_demotion`, doubled with each
/// consecutive failure).
const LONGEST_DEMOTION: Duration = Duration::from_secs(600);
/// Most mirrors one request tries (the first included).
pub const MAX_ATTEMPTS: usize = 3;

/// The URL of `path_in_repo` under a mirror's base URL (which ends with `/`), kept byte for
/// byte as written (percent-encoding included: apt asks for `%253a` and means it).
pub fn url_in(base: &Url, path_in_repo: &str) -> Result<Url, url::ParseError> {
    Url::parse(&format!("{}{path_in_repo}", base.as_str()))
}

/// A mirror candidate as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Base URL of the tree on the mirror; ends with `/`.
    pub url: Url,
    /// Written without a scheme: the benchmark tries it over https and http.
    pub any_scheme: bool,
}

/// What a benchmark measured of a mirror.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Measure {
    /// Time to the response head, in milliseconds.
    pub latency_ms: u64,
    /// Transfer rate of the benchmark file's body, bytes per second.
    pub bytes_per_sec: u64,
    /// Bytes of the benchmark file received.
    pub bytes: u64,
    /// Estimated milliseconds to fetch 1 MiB (latency plus transfer at the measured rate; for
    /// a benchmark file under 64 KiB, the time to fetch it); lower ranks higher.
    pub score_ms: u64,
    /// When the mirror's index was published (unix seconds), if it says.
    pub published: Option<i64>,
    /// When it was measured (unix seconds).
    pub at: u64,
}

#[derive(Debug, Default)]
struct Health {
    /// Consecutive failures.
    failures: u32,
    demoted_until: Option<Instant>,
    last_error: Option<String>,
    last_failure: Option<u64>,
    last_success: Option<u64>,
    measure: Option<Measure>,
}

impl Health {
    fn standing(&self, now: Instant) -> Standing {
        match self.demoted_until {
            Some(until) if until > now => Standing::Demoted(until),
            _ if self.failures > 0 => Standing::Recovering,
            _ => Standing::Healthy,
        }
    }
}

/// One mirror of a tree, with its health.
#[derive(Debug)]
pub struct Mirror {
    /// Base URL of the tree on this mirror; ends with `/`.
    pub base: Url,
    health: Mutex<Health>,
}

impl Mirror {
    pub fn new(base: Url) -> Arc<Mirror> {
        Arc::new(Mirror {
            base,
            health: Mutex::default(),
        })
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The URL of `path_in_repo` on this mirror, kept byte for byte as the client sent it.
    pub fn url(&self, path_in_repo: &str) -> Result<Url, url::ParseError> {
        url_in(&self.base, path_in_repo)
    }

    /// Records a good answer: the mirror is restored.
    pub fn succeeded(&self) {
        let mut h = self.health();
        h.failures = 0;
        h.demoted_until = None;
        h.last_success = Some(unix_now());
    }

    /// Records a failure and demotes the mirror for `first` doubled per earlier consecutive
    /// failure; returns for how long.
    pub fn failed(&self, error: &str, first: Duration) -> Duration {
        let mut h = self.health();
        h.failures = h.failures.saturating_add(1);
        let pause = first
            .saturating_mul(1 << (h.failures - 1).min(8))
            .min(LONGEST_DEMOTION.max(first));
        h.demoted_until = Some(Instant::now() + pause);
        h.last_error = Some(error.to_string());
        h.last_failure = Some(unix_now());
        pause
    }

    /// Records a benchmark result.
    pub fn measured(&self, measure: Measure) {
        self.health().measure = Some(measure);
    }

    /// How the mirror stands now, for ordering.
    fn standing(&self, now: Instant) -> Standing {
        self.health().standing(now)
    }

    /// Whether a recovery probe is due (the mirror failed and its pause is over); if so, the
    /// pause is extended by `hold`, so that no second probe starts while this one runs.
    pub fn claim_probe(&self, now: Instant, hold: Duration) -> bool {
        let mut h = self.health();
        let due = h.failures > 0 && h.demoted_until.is_none_or(|t| t <= now);
        if due {
            h.demoted_until = Some(now + hold);
        }
        due
    }

    fn view(&self, rank: usize, now: Instant) -> MirrorView {
        let h = self.health();
        let standing = h.standing(now);
        let demoted = h.demoted_until.filter(|&t| t > now);
        MirrorView {
            rank: rank + 1,
            url: self.base.to_string(),
            healthy: standing == Standing::Healthy,
            state: match standing {
                Standing::Healthy => "healthy",
                Standing::Recovering => "recovering",
                Standing::Demoted(_) => "demoted",
            },
            demoted_for_secs: demoted.map(|t| (t - now).as_secs().max(1)),
            consecutive_failures: h.failures,
            last_error: h.last_error.clone(),
            last_failure: h.last_failure,
            last_success: h.last_success,
            measure: h.measure.clone(),
        }
    }
}

/// How a mirror stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// No failure since its last success.
    Healthy,
    /// Failed, pause over: tried after the healthy mirrors until something succeeds on it.
    Recovering,
    /// Failed, paused until then: tried last.
    Demoted(Instant),
}

/// A mirror as the status page and `/api/mirrors` show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MirrorView {
    /// 1 is tried first when every mirror is healthy.
    pub rank: usize,
    pub url: String,
    /// No failure since its last success.
    pub healthy: bool,
    /// `healthy`, `recovering` (failed, pause over: tried after the healthy ones until a
    /// success) or `demoted` (failed, paused: tried last).
    pub state: &'static str,
    pub demoted_for_secs: Option<u64>,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    pub last_failure: Option<u64>,
    pub last_success: Option<u64>,
    pub measure: Option<Measure>,
}

/// A candidate the last benchmark left out, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Dropped {
    pub url: String,
    pub reason: String,
}

/// What the last benchmark of a set found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    /// When it finished (unix seconds).
    pub finished_at: Option<u64>,
    /// How long it took, in milliseconds.
    pub took_ms: u64,
    /// Candidates probed (configured, geo list, both schemes).
    pub probed: usize,
    pub dropped: Vec<Dropped>,
    /// Why no ranking came out of it, if none did.
    pub error: Option<String>,
}

/// A repo's mirrors as the status page and `/api/mirrors` show them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SetView {
    pub repo: String,
    pub distro: String,
    pub pinned: bool,
    /// Whether a benchmark is running now.
    pub benchmarking: bool,
    pub mirrors: Vec<MirrorView>,
    pub last_benchmark: Option<Report>,
}

/// The mirrors of one repo, ranked.
#[derive(Debug)]
pub struct MirrorSet {
    /// Repo id, e.g. `debian-security`.
    pub repo: String,
    /// Distribution id, e.g. `debian`.
    pub distro: String,
    /// The user chose the mirrors: they are used in the order given, never benchmarked.
    pub pinned: bool,
    /// Candidates from the configuration, the default first, each once.
    pub candidates: Vec<Candidate>,
    /// Path probed by the benchmark (only the distribution's main tree has one).
    pub benchmark_path: Option<String>,
    /// URL of a list of geo-located mirrors (one URL per line).
    pub geo_list: Option<String>,
    ranked: ArcSwap<Vec<Arc<Mirror>>>,
    report: Mutex<Option<Report>>,
    benchmarking: std::sync::atomic::AtomicBool,
}

impl MirrorSet {
    /// A set in configuration order.
    pub fn new(
        repo: &str,
        distro: &str,
        pinned: bool,
        candidates: Vec<Candidate>,
        benchmark_path: Option<String>,
        geo_list: Option<String>,
    ) -> MirrorSet {
        let mut unique: Vec<Candidate> = Vec::new();
        for c in candidates {
            if !unique.iter().any(|u| u.url == c.url) {
                unique.push(c);
            }
        }
        let candidates = unique;
        let first: Vec<Arc<Mirror>> = candidates
            .iter()
            .map(|c| Mirror::new(c.url.clone()))
            .collect();
        MirrorSet {
            repo: repo.into(),
            distro: distro.into(),
            pinned,
            candidates,
            benchmark_path,
            geo_list,
            ranked: ArcSwap::from_pointee(first),
            report: Mutex::default(),
            benchmarking: Default::default(),
        }
    }

    /// Whether the selector benchmarks this set.
    pub fn is_benchmarked(&self) -> bool {
        !self.pinned && self.benchmark_path.is_some()
    }

    /// The mirrors in rank order.
    pub fn ranked(&self) -> Arc<Vec<Arc<Mirror>>> {
        self.ranked.load_full()
    }

    /// The mirror a request tries first now.
    pub fn current(&self) -> Arc<Mirror> {
        let now = Instant::now();
        if let Some(healthy) = self
            .ranked
            .load()
            .iter()
            .find(|m| m.standing(now) == Standing::Healthy)
        {
            return healthy.clone();
        }
        self.attempt_order()
            .into_iter()
            .next()
            .expect("a mirror set is never empty")
    }

    /// The order a request tries mirrors in: healthy ones by rank, then recovering ones by
    /// rank, then demoted ones, the one whose pause ends first first (when every mirror failed
    /// lately, one of them is still tried).
    pub fn attempt_order(&self) -> Vec<Arc<Mirror>> {
        let now = Instant::now();
        // (group, end of pause, rank): sorting by it gives the order.
        type Key = (u8, Option<Instant>, usize);
        let mut order: Vec<(Key, Arc<Mirror>)> = self
            .ranked
            .load()
            .iter()
            .enumerate()
            .map(|(rank, m)| {
                let key = match m.standing(now) {
                    Standing::Healthy => (0, None, rank),
                    Standing::Recovering => (1, None, rank),
                    Standing::Demoted(until) => (2, Some(until), rank),
                };
                (key, m.clone())
            })
            .collect();
        order.sort_by_key(|(key, _)| *key);
        order.into_iter().map(|(_, m)| m).collect()
    }

    /// Swaps in a ranking (never an empty one).
    pub fn set_ranking(&self, ranked: Vec<Arc<Mirror>>) {
        if !ranked.is_empty() {
            self.ranked.store(Arc::new(ranked));
        }
    }

    /// The mirror with this base URL in the current ranking, if any (its health is kept when
    /// a new ranking is made).
    pub fn find(&self, base: &Url) -> Option<Arc<Mirror>> {
        self.ranked.load().iter().find(|m| m.base == *base).cloned()
    }

    /// Takes over the ranking and health of the set this one replaces on a reload, when both
    /// have the same candidates.
    pub fn inherit(&self, old: &MirrorSet) {
        if self.candidates == old.candidates
            && self.benchmark_path == old.benchmark_path
            && self.geo_list == old.geo_list
            && self.pinned == old.pinned
        {
            self.ranked.store(old.ranked());
            *self.report_slot() = old.report();
        }
    }

    fn report_slot(&self) -> std::sync::MutexGuard<'_, Option<Report>> {
        self.report.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The last benchmark's report.
    pub fn report(&self) -> Option<Report> {
        self.report_slot().clone()
    }

    pub fn set_report(&self, report: Report) {
        *self.report_slot() = Some(report);
    }

    /// Marks a benchmark as running (`true`) or done; returns whether one was running already.
    pub fn set_benchmarking(&self, running: bool) -> bool {
        self.benchmarking
            .swap(running, std::sync::atomic::Ordering::SeqCst)
    }

    /// The set as the status page and `/api/mirrors` show it.
    pub fn view(&self) -> SetView {
        let now = Instant::now();
        SetView {
            repo: self.repo.clone(),
            distro: self.distro.clone(),
            pinned: self.pinned,
            benchmarking: self.benchmarking.load(std::sync::atomic::Ordering::SeqCst),
            mirrors: self
                .ranked
                .load()
                .iter()
                .enumerate()
                .map(|(i, m)| m.view(i, now))
                .collect(),
            last_benchmark: self.report(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(urls: &[&str]) -> MirrorSet {
        let candidates = urls
            .iter()
            .map(|u| Candidate {
                url: Url::parse(u).unwrap(),
                any_scheme: false,
            })
            .collect();
        MirrorSet::new("debian", "debian", false, candidates, None, None)
    }

    const PAUSE: Duration = Duration::from_secs(30);

    fn order(s: &MirrorSet) -> Vec<String> {
        s.attempt_order()
            .iter()
            .map(|m| m.base.host_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn a_failing_mirror_goes_last_until_it_succeeds() {
        let s = set(&["http://a/d/", "http://b/d/", "http://c/d/", "http://a/d/"]);
        assert_eq!(order(&s), ["a", "b", "c"], "duplicates collapse");
        let a = s.current();
        assert_eq!(a.failed("refused", PAUSE), PAUSE);
        assert_eq!(order(&s), ["b", "c", "a"]);
        s.attempt_order()[0].failed("timeout", PAUSE);
        assert_eq!(
            order(&s),
            ["c", "a", "b"],
            "the earliest to recover is tried first"
        );
        assert_eq!(a.failed("refused again", PAUSE), PAUSE * 2, "pauses double");
        assert_eq!(order(&s), ["c", "b", "a"]);
        a.succeeded();
        assert_eq!(order(&s), ["a", "c", "b"]);
        let view = s.view();
        assert!(view.mirrors[0].healthy && !view.mirrors[1].healthy);
        assert_eq!(view.mirrors[1].state, "demoted");
        assert_eq!(view.mirrors[1].last_error.as_deref(), Some("timeout"));
    }

    #[test]
    fn a_mirror_whose_pause_is_over_waits_behind_healthy_ones_for_its_probe() {
        let s = set(&["http://a/d/", "http://b/d/", "http://c/d/"]);
        let a = s.current();
        a.failed("hung", Duration::ZERO);
        let now = Instant::now();
        assert_eq!(
            order(&s),
            ["b", "c", "a"],
            "recovering: after the healthy ones"
        );
        assert_eq!(s.view().mirrors[0].state, "recovering");
        assert!(a.claim_probe(now, PAUSE), "a probe is due");
        assert!(!a.claim_probe(now, PAUSE), "one probe at a time");
        assert!(
            !s.ranked()[1].claim_probe(now, PAUSE),
            "healthy mirrors are not probed"
        );
        assert_eq!(order(&s), ["b", "c", "a"]);
        a.succeeded();
        assert_eq!(order(&s), ["a", "b", "c"]);
        // Every mirror failed: recovering ones before demoted ones.
        s.ranked()[1].failed("x", PAUSE);
        s.ranked()[2].failed("x", Duration::ZERO);
        a.failed("x", PAUSE * 4);
        assert_eq!(order(&s), ["c", "b", "a"]);
    }

    #[test]
    fn pauses_are_bounded() {
        let s = set(&["http://a/d/"]);
        let a = s.current();
        let mut last = Duration::ZERO;
        for _ in 0..40 {
            last = a.failed("x", PAUSE);
        }
        assert_eq!(last, LONGEST_DEMOTION);
        assert_eq!(order(&s), ["a"], "a lone mirror is still tried");
    }

    #[test]
    fn reload_keeps_the_ranking_of_unchanged_candidates() {
        let old = set(&["http://a/d/", "http://b/d/"]);
        old.set_ranking(vec![old.ranked()[1].clone(), old.ranked()[0].clone()]);
        let same = set(&["http://a/d/", "http://b/d/"]);
        same.inherit(&old);
        assert_eq!(order(&same), ["b", "a"]);
        let changed = set(&["http://a/d/", "http://c/d/"]);
        changed.inherit(&old);
        assert_eq!(order(&changed), ["a", "c"]);
        old.set_ranking(Vec::new());
        assert_eq!(order(&old), ["b", "a"], "an empty ranking is never taken");
    }
}
