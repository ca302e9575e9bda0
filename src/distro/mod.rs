//! Distributions, their upstream trees ("repos") and the hosts that name them.
//!
//! A distribution (ubuntu, debian, …) is what `--mode` and the per-distribution mirror flags
//! talk about. A repo is one upstream tree with its own path prefix and cache namespace: Debian
//! has two, `debian` and `debian-security`, because a security suite must never be answered from
//! the main archive. Every route the proxy accepts ends in exactly one repo.

mod builtin;
pub mod class;
pub mod file;
mod lists;
mod spec;

pub use file::DistributionsFile;
pub use spec::CacheRule;

use std::collections::BTreeMap;
use std::sync::Arc;

use url::Url;

use crate::mirror::{Candidate, MirrorSet};

/// Which distributions are served (`--mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    All,
    Ubuntu,
    UbuntuPorts,
    Debian,
    Centos,
    Alpine,
}

impl Mode {
    /// Whether the distribution with this id is served in this mode.
    pub fn serves(self, distro_id: &str) -> bool {
        match self {
            Mode::All => true,
            Mode::Ubuntu => distro_id == "ubuntu",
            Mode::UbuntuPorts => distro_id == "ubuntu-ports",
            Mode::Debian => distro_id == "debian",
            Mode::Centos => distro_id == "centos",
            Mode::Alpine => distro_id == "alpine",
        }
    }
}

/// Errors found while building the registry; each names what the user wrote.
#[derive(Debug, thiserror::Error)]
pub enum DistroError {
    #[error("unknown mirror shortcut {name:?} for {distro} (known: {known})")]
    UnknownShortcut {
        distro: String,
        name: String,
        known: String,
    },
    #[error("invalid mirror URL {spec:?} for {distro}: {reason}")]
    BadMirror {
        distro: String,
        spec: String,
        reason: String,
    },
    #[error("distribution {distro:?}: {what} {reason}")]
    Invalid {
        distro: String,
        what: String,
        reason: String,
    },
}

/// A host name pattern: exact, or `*.suffix` for every sub-domain of suffix.
#[derive(Clone, Debug)]
pub(crate) enum HostPattern {
    Exact(String),
    Subdomain(String),
}

impl HostPattern {
    pub(crate) fn parse(pattern: &str) -> Self {
        match pattern.strip_prefix("*.") {
            Some(suffix) => HostPattern::Subdomain(format!(".{}", suffix.to_ascii_lowercase())),
            None => HostPattern::Exact(pattern.to_ascii_lowercase()),
        }
    }

    pub(crate) fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Subdomain(suffix) => {
                host.len() > suffix.len() && host.ends_with(suffix.as_str())
            }
        }
    }
}

/// A (host, port, path prefix) under which clients may address a repo in forward-proxy form.
#[derive(Clone, Debug)]
struct KnownPrefix {
    host: HostPattern,
    /// `None`: any default port (80, 443 or none written).
    port: Option<u16>,
    /// Starts and ends with `/`.
    path: String,
}

/// One upstream tree: its path prefix id, cache namespace and mirror.
#[derive(Debug)]
pub struct Repo {
    /// Path prefix and cache namespace, e.g. `debian-security`.
    pub id: String,
    /// The distribution it belongs to, e.g. `debian`.
    pub distro: String,
    /// The distribution's display name, e.g. `Debian`.
    pub distro_name: String,
    /// The distribution's type number (1 Ubuntu, 2 Ubuntu Ports, 3 Debian, 4 CentOS, 5 Alpine).
    pub kind: u8,
    /// The tree's mirrors: candidates, ranking and health.
    pub mirror_set: Arc<MirrorSet>,
    /// Freshness overrides by path pattern.
    pub cache_rules: Vec<CacheRule>,
    /// A distributions.yaml `url_pattern` whose first group is the path in the repo.
    pub url_pattern: Option<regex_lite::Regex>,
}

impl Repo {
    /// Whether the repo is an Alpine tree (type 5): its `.apk` files are Alpine packages.
    pub fn is_alpine(&self) -> bool {
        self.kind == 5
    }
}

impl Repo {
    /// Base URL of the configured first mirror of this tree (before any ranking); ends with `/`.
    pub fn upstream(&self) -> &Url {
        &self.mirror_set.candidates[0].url
    }

    /// Whether the user chose the mirrors (a flag) rather than the built-in candidates.
    pub fn pinned(&self) -> bool {
        self.mirror_set.pinned
    }
}

/// The distributions being served, with their repos.
#[derive(Debug)]
pub struct Registry {
    repos: Vec<Arc<Repo>>,
    /// Where forward-proxy requests for each repo may point.
    hosts: HostIndex,
}

/// The (host, port, path prefix)s of every repo: exact host names in a map (there are
/// thousands, from the shipped mirror lists), `*.suffix` patterns in a short list.
#[derive(Debug, Default)]
struct HostIndex {
    exact: std::collections::HashMap<String, Vec<(KnownPrefix, usize)>>,
    patterns: Vec<(KnownPrefix, usize)>,
}

impl HostIndex {
    fn add(&mut self, prefix: KnownPrefix, repo: usize) {
        match &prefix.host {
            HostPattern::Exact(host) => {
                let list = self.exact.entry(host.clone()).or_default();
                // The same prefix for the same repo comes from several sources.
                if !list
                    .iter()
                    .any(|(k, r)| *r == repo && k.port == prefix.port && k.path == prefix.path)
                {
                    list.push((prefix, repo));
                }
            }
            HostPattern::Subdomain(_) => self.patterns.push((prefix, repo)),
        }
    }
}

/// Mirror choices by distribution id (`--debian=…` gives `debian -> …`).
pub type MirrorPins = BTreeMap<String, String>;

impl Registry {
    /// The built-in distributions served in `mode`, with mirrors pinned by `pins`
    /// (a full URL, `host/path`, or a shortcut such as `cn:tsinghua`).
    pub fn builtin(mode: Mode, pins: &MirrorPins) -> Result<Registry, DistroError> {
        Registry::build(mode, pins, &spec::builtin_specs())
    }

    /// The built-in distributions changed and extended by a distributions.yaml.
    pub fn with_file(
        mode: Mode,
        pins: &MirrorPins,
        file: &DistributionsFile,
    ) -> Result<Registry, DistroError> {
        Registry::build(mode, pins, &spec::merge(spec::builtin_specs(), file)?)
    }

    fn build(
        mode: Mode,
        pins: &MirrorPins,
        specs: &[spec::DistroSpec],
    ) -> Result<Registry, DistroError> {
        let mut repos = Vec::new();
        let mut hosts = HostIndex::default();
        for def in specs {
            if !mode.serves(&def.id) {
                continue;
            }
            let bad = |spec: &str, reason: String| DistroError::BadMirror {
                distro: def.id.clone(),
                spec: spec.into(),
                reason,
            };
            let candidates: Vec<Candidate> = def
                .mirrors
                .iter()
                .map(|m| {
                    Ok(Candidate {
                        url: resolve_mirror(&def.id, m, &def.aliases)?,
                        any_scheme: !m.contains("://"),
                    })
                })
                .collect::<Result<_, DistroError>>()?;
            // A pin may list several mirrors, comma-separated: tried in that order.
            let pinned: Vec<Url> = match pins.get(&def.id) {
                Some(spec) => spec
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| resolve_mirror(&def.id, s, &def.aliases))
                    .collect::<Result<_, _>>()?,
                None => Vec::new(),
            };
            let primary = pinned
                .first()
                .or_else(|| candidates.first().map(|c| &c.url))
                .cloned()
                .ok_or_else(|| bad("", "no mirror is listed".into()))?;
            for (index, tree) in def.trees.iter().enumerate() {
                let derive = |url: &Url| match &tree.sibling_of_mirror {
                    Some(sibling) => sibling_url(url, sibling),
                    None => url.clone(),
                };
                let upstream = match (pinned.is_empty(), &tree.default_upstream) {
                    (true, Some(default)) => {
                        Url::parse(default).map_err(|e| bad(default, e.to_string()))?
                    }
                    _ => derive(&primary),
                };
                let tree_candidates: Vec<Candidate> = if pinned.is_empty() {
                    let first = Candidate {
                        any_scheme: tree.default_upstream.is_none()
                            && candidates.first().is_some_and(|c| c.any_scheme),
                        url: upstream.clone(),
                    };
                    std::iter::once(first)
                        .chain(candidates.iter().map(|c| Candidate {
                            url: derive(&c.url),
                            any_scheme: c.any_scheme,
                        }))
                        .collect()
                } else {
                    pinned
                        .iter()
                        .map(|u| Candidate {
                            url: derive(u),
                            any_scheme: false,
                        })
                        .collect()
                };
                let mut known: Vec<KnownPrefix> = tree
                    .official_hosts
                    .iter()
                    .map(|h| KnownPrefix {
                        host: HostPattern::parse(h),
                        port: None,
                        path: tree.mirror_path.clone(),
                    })
                    .collect();
                // Every mirror the proxy knows for this tree is recognised, whichever is
                // pinned: the tree's candidates (the pins, when pinned), the built-in and
                // configured mirrors, the shipped lists.
                known.extend(tree_candidates.iter().map(|c| prefix_of_url(&c.url)));
                if !pinned.is_empty() {
                    known.extend(candidates.iter().map(|c| prefix_of_url(&derive(&c.url))));
                }
                known.extend(lists::shipped(&tree.id).into_iter().map(|(host, path)| {
                    KnownPrefix {
                        host: HostPattern::Exact(host.to_string()),
                        port: None,
                        path,
                    }
                }));
                for prefix in known {
                    hosts.add(prefix, repos.len());
                }
                // Only the distribution's main tree is benchmarked: the benchmark file lives
                // there.
                let mirror_set = Arc::new(MirrorSet::new(
                    &tree.id,
                    &def.id,
                    !pinned.is_empty(),
                    tree_candidates,
                    def.benchmark_url.clone().filter(|_| index == 0),
                    def.geo_mirror_api.clone().filter(|_| index == 0),
                ));
                repos.push(Arc::new(Repo {
                    id: tree.id.clone(),
                    distro: def.id.clone(),
                    distro_name: def.name.clone(),
                    kind: def.kind,
                    mirror_set,
                    cache_rules: def.cache_rules.clone(),
                    url_pattern: def.url_pattern.clone(),
                }));
            }
        }
        Ok(Registry { repos, hosts })
    }

    /// The repo whose `url_pattern` (from distributions.yaml) matches an origin-form `path`,
    /// with the path inside the repo (the pattern's first group).
    pub fn by_pattern<'p>(&self, path: &'p str) -> Option<(&Arc<Repo>, &'p str)> {
        self.repos.iter().find_map(|repo| {
            let group = repo.url_pattern.as_ref()?.captures(path)?.get(1)?;
            Some((repo, &path[group.start()..group.end()]))
        })
    }

    /// Every repo being served.
    pub fn repos(&self) -> &[Arc<Repo>] {
        &self.repos
    }

    /// The repo whose path prefix id is `id` (path-prefixed form `/<id>/…`).
    pub fn by_id(&self, id: &str) -> Option<&Arc<Repo>> {
        self.repos.iter().find(|r| r.id == id)
    }

    /// Whether `host` (lower case) is a mirror host of a served distribution, under any path
    /// or port: the CONNECT allow-list.
    pub fn knows_host(&self, host: &str) -> bool {
        self.hosts.exact.contains_key(host)
            || self
                .hosts
                .patterns
                .iter()
                .any(|(k, _)| k.host.matches(host))
    }

    /// The repo a forward-proxy URL names, with the path inside the repo. `host` must be lower
    /// case; `port` is the port written in the URL, if any. The longest matching prefix wins.
    pub fn by_host_path<'p>(
        &self,
        host: &str,
        port: Option<u16>,
        path: &'p str,
    ) -> Option<(&Arc<Repo>, &'p str)> {
        let exact = self.hosts.exact.get(host).into_iter().flatten();
        let patterns = self
            .hosts
            .patterns
            .iter()
            .filter(|(k, _)| k.host.matches(host));
        let mut best: Option<(usize, usize)> = None;
        for (k, repo) in exact.chain(patterns) {
            let port_ok = match k.port {
                Some(p) => port == Some(p) || (port.is_none() && matches!(p, 80 | 443)),
                None => matches!(port, None | Some(80) | Some(443)),
            };
            if port_ok
                && path.starts_with(k.path.as_str())
                && best.is_none_or(|(_, len)| k.path.len() > len)
            {
                best = Some((*repo, k.path.len()));
            }
        }
        let best = best.map(|(repo, len)| (&self.repos[repo], len));
        best.map(|(repo, len)| (repo, &path[len..]))
    }
}

/// The `cn:<name>` shortcut name of a mirror host: the last label that is neither a generic
/// prefix (`mirrors`, `repo`) nor a public suffix (`com`, `edu.cn`).
pub(super) fn alias_name(host: &str) -> String {
    const GENERIC: &[&str] = &[
        "mirrors", "mirror", "repo", "com", "cn", "edu", "org", "net", "cloud",
    ];
    host.split('.')
        .rfind(|label| !GENERIC.contains(label))
        .unwrap_or(host)
        .to_string()
}

/// A user's mirror choice as a base URL ending with `/`.
fn resolve_mirror(
    distro: &str,
    spec: &str,
    aliases: &BTreeMap<String, String>,
) -> Result<Url, DistroError> {
    let bad = |reason: &str| DistroError::BadMirror {
        distro: distro.into(),
        spec: spec.into(),
        reason: reason.into(),
    };
    let text = if spec.contains("://") {
        spec.to_string()
    } else if !spec.contains('/')
        && spec
            .split_once(':')
            .is_some_and(|(p, _)| p.chars().all(|c| c.is_ascii_alphabetic()))
    {
        match aliases.get(spec) {
            Some(target) if target.contains("://") => target.clone(),
            Some(target) => format!("https://{target}"),
            None => {
                return Err(DistroError::UnknownShortcut {
                    distro: distro.into(),
                    name: spec.into(),
                    known: aliases.keys().cloned().collect::<Vec<_>>().join(", "),
                });
            }
        }
    } else {
        format!("https://{spec}")
    };
    let mut url = Url::parse(&text).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("it names no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("a mirror URL takes no query or fragment"));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// The URL of a sibling tree on the same mirror: `…/debian/` -> `…/debian-security/`.
fn sibling_url(url: &Url, sibling: &str) -> Url {
    let mut out = url.clone();
    let trimmed = url.path().trim_end_matches('/');
    let parent = match trimmed.rfind('/') {
        Some(i) => &trimmed[..=i],
        None => "/",
    };
    out.set_path(&format!("{parent}{sibling}/"));
    out
}

fn prefix_of_url(url: &Url) -> KnownPrefix {
    KnownPrefix {
        host: HostPattern::Exact(url.host_str().unwrap_or_default().to_ascii_lowercase()),
        port: url.port_or_known_default(),
        path: url.path().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pins(list: &[(&str, &str)]) -> MirrorPins {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn shortcut_names_follow_the_interface() {
        let names: Vec<String> = builtin::CN_MIRROR_HOSTS
            .iter()
            .map(|h| alias_name(h))
            .collect();
        assert_eq!(
            names,
            [
                "tsinghua",
                "ustc",
                "163",
                "aliyun",
                "huaweicloud",
                "tencent"
            ]
        );
    }

    #[test]
    fn shortcuts_and_urls_resolve() {
        let reg = Registry::builtin(
            Mode::All,
            &pins(&[
                ("ubuntu", "cn:tsinghua"),
                ("debian", "http://127.0.0.1:9/d/debian"),
            ]),
        )
        .unwrap();
        assert_eq!(
            reg.by_id("ubuntu").unwrap().upstream().as_str(),
            "https://mirrors.tuna.tsinghua.edu.cn/ubuntu/"
        );
        assert!(reg.by_id("ubuntu").unwrap().pinned());
        assert_eq!(
            reg.by_id("debian").unwrap().upstream().as_str(),
            "http://127.0.0.1:9/d/debian/"
        );
        assert_eq!(
            reg.by_id("debian-security").unwrap().upstream().as_str(),
            "http://127.0.0.1:9/d/debian-security/"
        );
        assert!(!reg.by_id("alpine").unwrap().pinned());
    }

    #[test]
    fn pins_may_list_several_mirrors_and_candidates_keep_their_scheme_rule() {
        let reg = Registry::builtin(
            Mode::All,
            &pins(&[(
                "debian",
                "http://127.0.0.1:1/debian/, cn:ustc ,http://127.0.0.1:2/d/debian",
            )]),
        )
        .unwrap();
        let urls = |id: &str| -> Vec<String> {
            reg.by_id(id)
                .unwrap()
                .mirror_set
                .candidates
                .iter()
                .map(|c| c.url.to_string())
                .collect()
        };
        assert_eq!(
            urls("debian"),
            [
                "http://127.0.0.1:1/debian/",
                "https://mirrors.ustc.edu.cn/debian/",
                "http://127.0.0.1:2/d/debian/"
            ]
        );
        assert_eq!(
            urls("debian-security"),
            [
                "http://127.0.0.1:1/debian-security/",
                "https://mirrors.ustc.edu.cn/debian-security/",
                "http://127.0.0.1:2/d/debian-security/"
            ]
        );
        let debian = &reg.by_id("debian").unwrap().mirror_set;
        assert!(debian.pinned && !debian.is_benchmarked());
        // A pinned mirror is reachable in forward-proxy form too.
        assert!(
            reg.by_host_path("127.0.0.1", Some(2), "/d/debian/pool/x.deb")
                .is_some()
        );

        let ubuntu = &reg.by_id("ubuntu").unwrap().mirror_set;
        assert!(!ubuntu.pinned && ubuntu.is_benchmarked());
        assert_eq!(
            ubuntu.current().base.as_str(),
            "http://archive.ubuntu.com/ubuntu/"
        );
        assert!(
            !ubuntu.candidates[0].any_scheme,
            "the official URL has its scheme"
        );
        assert!(ubuntu.candidates[1..].iter().all(|c| c.any_scheme));
        assert!(ubuntu.geo_list.is_some());
        // Only a distribution's main tree carries the benchmark file.
        let security = &reg.by_id("debian-security").unwrap().mirror_set;
        assert!(security.benchmark_path.is_none());
    }

    #[test]
    fn unknown_shortcut_is_named() {
        let err = Registry::builtin(Mode::All, &pins(&[("debian", "cn:nowhere")])).unwrap_err();
        assert!(err.to_string().contains("cn:nowhere"), "{err}");
        let err =
            Registry::builtin(Mode::All, &pins(&[("debian", "ftp://x/debian/")])).unwrap_err();
        assert!(err.to_string().contains("scheme"), "{err}");
    }

    #[test]
    fn mode_limits_repos() {
        let reg = Registry::builtin(Mode::Debian, &MirrorPins::new()).unwrap();
        let ids: Vec<&str> = reg.repos().iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["debian", "debian-security"]);
    }

    #[test]
    fn host_matching_picks_the_tree() {
        let reg = Registry::builtin(
            Mode::All,
            &pins(&[("debian", "http://127.0.0.1:8080/debian/")]),
        )
        .unwrap();
        let (repo, rest) = reg
            .by_host_path("security.debian.org", None, "/debian-security/dists/x")
            .unwrap();
        assert_eq!((repo.id.as_str(), rest), ("debian-security", "dists/x"));
        let (repo, rest) = reg
            .by_host_path("ftp.de.debian.org", Some(80), "/debian/pool/a.deb")
            .unwrap();
        assert_eq!((repo.id.as_str(), rest), ("debian", "pool/a.deb"));
        let (repo, _) = reg
            .by_host_path("127.0.0.1", Some(8080), "/debian/x")
            .unwrap();
        assert_eq!(repo.id, "debian");
        let (repo, _) = reg
            .by_host_path("mirrors.ustc.edu.cn", None, "/ubuntu-ports/x")
            .unwrap();
        assert_eq!(repo.id, "ubuntu-ports");
        // Not a known host, wrong port, a look-alike domain, a path outside every tree.
        assert!(
            reg.by_host_path("127.0.0.1", Some(8081), "/debian/x")
                .is_none()
        );
        assert!(
            reg.by_host_path("evil-debian.org", None, "/debian/x")
                .is_none()
        );
        assert!(
            reg.by_host_path("debian.org.evil.com", None, "/debian/x")
                .is_none()
        );
        assert!(
            reg.by_host_path("archive.ubuntu.com", None, "/debian/x")
                .is_none()
        );
        assert!(
            reg.by_host_path("ppa.launchpadcontent.net", None, "/ubuntu/x")
                .is_none()
        );
    }

    #[test]
    fn any_known_mirror_is_recognised_whatever_is_pinned() {
        let reg = Registry::builtin(
            Mode::All,
            &pins(&[
                ("ubuntu", "cn:tsinghua"),
                ("debian", "http://127.0.0.1:9/debian/"),
            ]),
        )
        .unwrap();
        let tree = |host: &str, path: &str| {
            reg.by_host_path(host, None, path)
                .map(|(r, rest)| (r.id.clone(), rest.to_string()))
        };
        let some = |id: &str, rest: &str| Some((id.to_string(), rest.to_string()));
        // Another built-in mirror than the pinned one.
        assert_eq!(
            tree("mirrors.ustc.edu.cn", "/ubuntu/pool/a.deb"),
            some("ubuntu", "pool/a.deb")
        );
        // From the shipped lists: regional and independent mirrors, with their own path.
        assert_eq!(
            tree("mirror.vcu.edu", "/pub/gnu+linux/ubuntu/dists/x"),
            some("ubuntu", "dists/x")
        );
        assert_eq!(
            tree("ftp.lanet.kr", "/ubuntu-ports/pool/b.deb"),
            some("ubuntu-ports", "pool/b.deb")
        );
        assert_eq!(
            tree("artfiles.org", "/debian/pool/c.deb"),
            some("debian", "pool/c.deb")
        );
        assert_eq!(
            tree("artfiles.org", "/debian-security/pool/d.deb"),
            some("debian-security", "pool/d.deb")
        );
        // Only under the tree's path there: a listed host is not an open door.
        assert_eq!(tree("artfiles.org", "/docker/pool/e.deb"), None);
        assert_eq!(tree("mirror.vcu.edu", "/ubuntu/dists/x"), None);
        assert_eq!(tree("ftp.lanet.kr", "/centos/pool/b.deb"), None);
        // Only served distributions are recognised.
        let debian_only = Registry::builtin(Mode::Debian, &MirrorPins::new()).unwrap();
        assert!(
            debian_only
                .by_host_path("mirror.vcu.edu", None, "/pub/gnu+linux/ubuntu/x")
                .is_none()
        );
    }
}

#[cfg(test)]
mod file_tests {
    use super::*;
    use crate::config::file;

    fn load(text: &str) -> Result<Registry, DistroError> {
        let env = |_: &str| None;
        let parsed: DistributionsFile =
            file::parse(text, std::path::Path::new("d.yaml"), &env).unwrap();
        Registry::with_file(Mode::All, &MirrorPins::new(), &parsed)
    }

    #[test]
    fn shipped_files_load_and_change_nothing() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let env = |_: &str| None;
        let parsed: DistributionsFile = file::load(&dir.join("distributions.yaml"), &env).unwrap();
        let from_file = Registry::with_file(Mode::All, &MirrorPins::new(), &parsed).unwrap();
        let builtin = Registry::builtin(Mode::All, &MirrorPins::new()).unwrap();
        let summary = |r: &Registry| {
            r.repos()
                .iter()
                .map(|r| {
                    (
                        r.id.clone(),
                        r.upstream().to_string(),
                        r.mirror_set.candidates.len(),
                        r.kind,
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(summary(&from_file), summary(&builtin));
        let _: crate::config::file::FileConfig =
            file::load(&dir.join("apt-proxy.yaml"), &env).unwrap();
    }

    #[test]
    fn a_new_distribution_is_served_like_a_built_in_one() {
        let reg = load("distributions:\n  - id: fedora\n    name: Fedora\n    url_pattern: \"^/fed/(.+)$\"\n    cache_rules:\n      - pattern: \"repomd\\\\.xml$\"\n        cache_control: \"max-age=300\"\n    mirrors:\n      official: [\"mirror.example.org/pub/fedora/\"]\n      custom: [\"http://127.0.0.1:9/fedora\"]\n    aliases:\n      local: \"http://127.0.0.1:9/fedora/\"\n").unwrap();
        let fedora = reg.by_id("fedora").unwrap();
        assert_eq!(
            fedora.upstream().as_str(),
            "https://mirror.example.org/pub/fedora/"
        );
        assert_eq!(fedora.cache_rules[0].max_age, Some(300));
        assert_eq!(fedora.cache_rules[0].cache_control, "max-age=300");
        let (repo, rest) = reg
            .by_host_path("mirror.example.org", None, "/pub/fedora/releases/x")
            .unwrap();
        assert_eq!((repo.id.as_str(), rest), ("fedora", "releases/x"));
        let (repo, rest) = reg.by_pattern("/fed/releases/y").unwrap();
        assert_eq!((repo.id.as_str(), rest), ("fedora", "releases/y"));
        assert!(reg.by_id("ubuntu").is_some(), "built-ins stay");
        let env = |_: &str| None;
        let parsed: DistributionsFile = file::parse("distributions:\n  - id: fedora\n    mirrors:\n      official: [\"mirror.example.org/pub/fedora/\"]\n    aliases:\n      local: \"http://127.0.0.1:9/fedora/\"\n", std::path::Path::new("d.yaml"), &env).unwrap();
        let pins: MirrorPins = [("fedora".to_string(), "cn:local".to_string())].into();
        let reg = Registry::with_file(Mode::All, &pins, &parsed).unwrap();
        assert_eq!(
            reg.by_id("fedora").unwrap().upstream().as_str(),
            "http://127.0.0.1:9/fedora/"
        );
        // Only mode all serves distributions the modes do not name.
        assert!(
            Registry::with_file(Mode::Debian, &MirrorPins::new(), &parsed)
                .unwrap()
                .by_id("fedora")
                .is_none()
        );
    }

    #[test]
    fn changing_a_built_in_keeps_its_hosts() {
        let reg = load("distributions:\n  - id: debian\n    mirrors:\n      official: [\"http://127.0.0.1:9/debian/\"]\n").unwrap();
        assert_eq!(
            reg.by_id("debian").unwrap().upstream().as_str(),
            "http://127.0.0.1:9/debian/"
        );
        assert_eq!(
            reg.by_id("debian-security").unwrap().upstream().as_str(),
            "http://security.debian.org/debian-security/"
        );
        assert!(
            reg.by_host_path("ftp.debian.org", None, "/debian/x")
                .is_some()
        );
    }

    #[test]
    fn bad_entries_are_named() {
        for (text, needle) in [
            (
                "distributions:\n  - id: api\n    mirrors: {official: [\"x/y/\"]}\n",
                "reserved",
            ),
            ("distributions:\n  - id: new\n", "mirror"),
            (
                "distributions:\n  - id: a\n    url_pattern: \"(\"\n    mirrors: {official: [\"x/y/\"]}\n",
                "url_pattern",
            ),
            (
                "distributions:\n  - id: a\n    url_pattern: \"^/a/.+$\"\n    mirrors: {official: [\"x/y/\"]}\n",
                "capture group",
            ),
            (
                "distributions:\n  - id: a\n    mirrors: {official: [\"x/y/\"]}\n  - id: a\n    mirrors: {official: [\"x/y/\"]}\n",
                "twice",
            ),
            (
                "distributions:\n  - id: \"a/b\"\n    mirrors: {official: [\"x/y/\"]}\n",
                "path segment",
            ),
            (
                "distributions:\n  - id: a\n    cache_rules: [{pattern: x, cache_control: \"\"}]\n    mirrors: {official: [\"x/y/\"]}\n",
                "cache_rules.cache_control",
            ),
            (
                "distributions:\n  - id: a\n    cache_rules: [{pattern: x, cache_control: \"max-age=1\\u0001\"}]\n    mirrors: {official: [\"x/y/\"]}\n",
                "cache_rules.cache_control",
            ),
        ] {
            let err = load(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
        let env = |_: &str| None;
        let err = file::parse::<DistributionsFile>(
            "distributions:\n  - id: a\n    mirrorz: []\n",
            std::path::Path::new("/etc/apt-proxy/distributions.yaml"),
            &env,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("/etc/apt-proxy/distributions.yaml") && err.contains("mirrorz"),
            "{err}"
        );
    }
}
