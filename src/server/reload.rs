//! Hot reload of distributions and mirrors (SIGHUP and `POST /api/mirrors/refresh`).
//!
//! Only distributions.yaml and mirror selection reload; apt-proxy.yaml needs a restart. A
//! reload builds a new registry and swaps it in whole: requests in flight keep the repo they
//! started with. A file that does not load keeps the old registry.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use crate::config::file;
use crate::distro::{DistributionsFile, DistroError, MirrorPins, Mode, Registry};
use crate::mirror::MirrorSet;
use crate::mirror::selector::Selector;

/// How the registry is (re)built.
#[derive(Debug)]
pub struct RegistrySource {
    pub mode: Mode,
    pub pins: MirrorPins,
    pub distributions_config: Option<PathBuf>,
}

/// Why a registry could not be built; the message names the file.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LoadError(pub String);

impl RegistrySource {
    /// The registry the configuration describes.
    pub fn of(config: &crate::config::Config) -> RegistrySource {
        RegistrySource {
            mode: config.mode,
            pins: config.mirrors.clone(),
            distributions_config: config.distributions_config.clone(),
        }
    }

    /// Reads distributions.yaml (if any) and builds the registry.
    pub fn load(&self) -> Result<Registry, LoadError> {
        match &self.distributions_config {
            Some(path) => {
                let env = |name: &str| std::env::var(name).ok();
                let parsed: DistributionsFile =
                    file::load(path, &env).map_err(|e| LoadError(e.to_string()))?;
                Registry::with_file(self.mode, &self.pins, &parsed).map_err(|e| {
                    if self.names_a_pin(&e) {
                        LoadError(format!(
                            "{e} (set by a mirror flag, variable or mirrors key)"
                        ))
                    } else {
                        LoadError(format!("{}: {e}", path.display()))
                    }
                })
            }
            None => Registry::builtin(self.mode, &self.pins).map_err(|e| LoadError(e.to_string())),
        }
    }
}

impl RegistrySource {
    /// Whether a registry error is about a pinned mirror (not about distributions.yaml).
    fn names_a_pin(&self, e: &DistroError) -> bool {
        let value = match e {
            DistroError::BadMirror { spec, .. } => spec,
            DistroError::UnknownShortcut { name, .. } => name,
            DistroError::Invalid { .. } => return false,
        };
        self.pins
            .values()
            .any(|pin| pin.split(',').any(|p| p.trim() == value))
    }
}

/// The live registry and its reloads.
#[derive(Debug)]
pub struct Reloader {
    pub registry: ArcSwap<Registry>,
    /// Ranks the mirrors; a reload asks it for a new benchmark.
    pub selector: Arc<Selector>,
    source: RegistrySource,
    /// One reload at a time.
    running: tokio::sync::Mutex<()>,
    /// A signal asked for a reload that has not started yet.
    pending: AtomicBool,
    wake: Notify,
}

impl Reloader {
    /// Builds the first registry.
    pub fn new(source: RegistrySource, selector: Arc<Selector>) -> Result<Reloader, LoadError> {
        let registry = source.load()?;
        log_mirrors(&registry);
        trust(&selector, &registry);
        Ok(Reloader {
            registry: ArcSwap::from_pointee(registry),
            selector,
            source,
            running: Default::default(),
            pending: AtomicBool::new(false),
            wake: Notify::new(),
        })
    }

    /// Reloads now; returns the number of repos served.
    pub async fn reload(&self) -> Result<usize, LoadError> {
        let _one_at_a_time = self.running.lock().await;
        let file = self
            .source
            .distributions_config
            .as_ref()
            .map_or("(built-in only)".to_string(), |p| p.display().to_string());
        tracing::info!(file = %file, "reloading distributions and mirrors (changes to apt-proxy.yaml need a restart)");
        match self.source.load() {
            Ok(registry) => {
                log_mirrors(&registry);
                // Unchanged mirror lists keep their ranking and health until the new benchmark.
                let old = self.registry.load();
                for repo in registry.repos() {
                    if let Some(before) = old.by_id(&repo.id) {
                        repo.mirror_set.inherit(&before.mirror_set);
                    }
                }
                let n = registry.repos().len();
                trust(&self.selector, &registry);
                self.registry.store(Arc::new(registry));
                self.selector.refresh();
                tracing::info!(repos = n, "reload done");
                Ok(n)
            }
            Err(e) => {
                tracing::error!(error = %e, "reload failed; keeping the previous configuration");
                Err(e)
            }
        }
    }

    /// Asks for a reload from a signal: signals within the debounce window coalesce, and at most
    /// one more reload is queued behind a running one.
    pub fn request(&self) {
        self.pending.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// Serves [`Reloader::request`]s until the process ends.
    pub async fn run(self: Arc<Self>, debounce: Duration) {
        loop {
            self.wake.notified().await;
            tokio::time::sleep(debounce).await;
            if self.pending.swap(false, Ordering::SeqCst) {
                let _ = self.reload().await;
            }
        }
    }

    /// Every repo's mirror set in the live registry.
    pub fn mirror_sets(&self) -> Vec<Arc<MirrorSet>> {
        self.registry
            .load()
            .repos()
            .iter()
            .map(|r| r.mirror_set.clone())
            .collect()
    }
}

/// Makes the registry's configured mirrors and geo-list addresses the origins the address
/// policy trusts (a candidate written without a scheme, over both schemes).
fn trust(selector: &Selector, registry: &Registry) {
    selector
        .metrics()
        .zero_repos(registry.repos().iter().map(|r| r.id.as_str()));
    let mut urls = Vec::new();
    for repo in registry.repos() {
        urls.extend(crate::mirror::benchmark::probe_urls(
            &repo.mirror_set.candidates,
        ));
        // The geo list's own address is the operator's too (its lines are not).
        urls.extend(
            repo.mirror_set
                .geo_list
                .as_deref()
                .and_then(|u| url::Url::parse(u).ok()),
        );
    }
    selector.policy().set_trusted(&urls);
}

fn log_mirrors(registry: &Registry) {
    for repo in registry.repos() {
        let set = &repo.mirror_set;
        if repo.pinned() {
            let mirrors: Vec<&str> = set.candidates.iter().map(|c| c.url.as_str()).collect();
            if mirrors.len() > 1 {
                tracing::info!(repo = %repo.id, mirror = %repo.upstream(), failover = %mirrors[1..].join(" "), "using specified {} mirror", repo.id);
            } else {
                tracing::info!(repo = %repo.id, mirror = %repo.upstream(), "using specified {} mirror", repo.id);
            }
        } else {
            tracing::info!(repo = %repo.id, mirror = %repo.upstream(), candidates = set.candidates.len(), benchmarked = set.is_benchmarked(), "using default {} mirror until the benchmark ranks the candidates", repo.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_pin_is_not_blamed_on_the_distributions_file() {
        let file =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/distributions.yaml");
        let source = |pin: &str| RegistrySource {
            mode: Mode::All,
            pins: [("debian".to_string(), pin.to_string())].into(),
            distributions_config: Some(file.clone()),
        };
        let err = source("http://a/debian/, ftp://b/debian/")
            .load()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ftp://b/debian/") && err.contains("mirror flag"),
            "{err}"
        );
        assert!(!err.contains("distributions.yaml"), "{err}");
        let err = source("cn:nowhere").load().unwrap_err().to_string();
        assert!(
            err.contains("cn:nowhere") && err.contains("mirror flag"),
            "{err}"
        );
    }
}
