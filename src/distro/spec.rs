//! Distribution specs: the built-in table made owned, and changed or extended by a
//! distributions.yaml, before the registry turns them into repos.

use std::collections::BTreeMap;

use regex_lite::Regex;

use super::file::{DistributionsFile, DistroEntry};
use super::{DistroError, alias_name, builtin};

/// A cache rule: 200, 206, 304 and 404 answers for paths in the repo that match `pattern` carry
/// `cache_control` as their Cache-Control, and, when it gives a lifetime, are fresh for
/// `max_age` seconds (immutable files excepted: they never change under their name).
#[derive(Debug, Clone)]
pub struct CacheRule {
    pub pattern: Regex,
    pub cache_control: http::HeaderValue,
    pub max_age: Option<u64>,
}

/// One upstream tree of a distribution.
#[derive(Debug, Clone)]
pub(super) struct TreeSpec {
    pub id: String,
    pub mirror_path: String,
    pub official_hosts: Vec<String>,
    /// The upstream when no mirror is pinned; `None`: the first mirror of the list.
    pub default_upstream: Option<String>,
    pub sibling_of_mirror: Option<String>,
}

/// One distribution, owned.
#[derive(Debug, Clone)]
pub(super) struct DistroSpec {
    pub id: String,
    pub name: String,
    pub kind: u8,
    pub url_pattern: Option<Regex>,
    pub benchmark_url: Option<String>,
    pub geo_mirror_api: Option<String>,
    pub cache_rules: Vec<CacheRule>,
    /// Mirror candidates (`host/path/` or URLs), in order of preference.
    pub mirrors: Vec<String>,
    /// Shortcut -> mirror.
    pub aliases: BTreeMap<String, String>,
    pub trees: Vec<TreeSpec>,
}

/// The `cn:<name>` shortcuts of a mirror list.
fn auto_aliases(mirrors: &[String]) -> BTreeMap<String, String> {
    mirrors
        .iter()
        .filter(|m| !m.contains("://"))
        .filter_map(|m| {
            let host = m.split('/').next()?.split(':').next()?;
            Some((format!("cn:{}", alias_name(host)), m.clone()))
        })
        .collect()
}

/// The built-in distributions.
pub(super) fn builtin_specs() -> Vec<DistroSpec> {
    builtin::DISTROS
        .iter()
        .map(|def| {
            let primary = &def.repos[0];
            let cn: Vec<String> = builtin::CN_MIRROR_HOSTS
                .iter()
                .map(|h| format!("{h}{}", primary.mirror_path))
                .collect();
            let aliases = auto_aliases(&cn);
            let mut mirrors = vec![primary.default_upstream.to_string()];
            mirrors.extend(cn);
            DistroSpec {
                id: def.id.into(),
                name: def.name.into(),
                kind: def.kind,
                url_pattern: None,
                benchmark_url: Some(def.benchmark_url.into()),
                geo_mirror_api: def.geo_mirror_api.map(Into::into),
                cache_rules: Vec::new(),
                mirrors,
                aliases,
                trees: def
                    .repos
                    .iter()
                    .map(|r| TreeSpec {
                        id: r.id.into(),
                        mirror_path: r.mirror_path.into(),
                        official_hosts: r.official_hosts.iter().map(|h| h.to_string()).collect(),
                        default_upstream: Some(r.default_upstream.into()),
                        sibling_of_mirror: r.sibling_of_mirror.map(Into::into),
                    })
                    .collect(),
            }
        })
        .collect()
}

fn invalid(id: &str, what: &str, reason: impl Into<String>) -> DistroError {
    DistroError::Invalid {
        distro: id.into(),
        what: what.into(),
        reason: reason.into(),
    }
}

/// `specs` changed and extended by the entries of `file`.
pub(super) fn merge(
    mut specs: Vec<DistroSpec>,
    file: &DistributionsFile,
) -> Result<Vec<DistroSpec>, DistroError> {
    let mut seen = std::collections::HashSet::new();
    for entry in &file.distributions {
        let id = entry.id.trim();
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid(
                id,
                "id",
                "must be a non-empty path segment of letters, digits, - and _",
            ));
        }
        // Paths that belong to the management plane or to apt-cacher-ng's URL forms.
        if [
            "api", "_", "HTTPS", "healthz", "livez", "readyz", "version", "metrics",
        ]
        .contains(&id)
        {
            return Err(invalid(id, "id", "is reserved"));
        }

        if !seen.insert(id.to_string()) {
            return Err(invalid(id, "id", "appears twice"));
        }
        match specs.iter_mut().find(|s| s.id == id) {
            Some(spec) => apply(spec, entry)?,
            None => specs.push(new_spec(entry)?),
        }
    }
    Ok(specs)
}

fn mirror_list(entry: &DistroEntry) -> Option<Vec<String>> {
    let lists = entry.mirrors.as_ref()?;
    let all: Vec<String> = lists
        .official
        .iter()
        .flatten()
        .chain(lists.custom.iter().flatten())
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty())
        .collect();
    (!all.is_empty()).then_some(all)
}

fn apply(spec: &mut DistroSpec, entry: &DistroEntry) -> Result<(), DistroError> {
    let id = entry.id.trim();
    if let Some(name) = &entry.name {
        spec.name = name.clone();
    }
    if let Some(kind) = entry.kind {
        spec.kind = kind;
    }
    if let Some(pattern) = &entry.url_pattern {
        let re = Regex::new(pattern).map_err(|e| invalid(id, "url_pattern", e.to_string()))?;
        if re.captures_len() < 2 {
            return Err(invalid(
                id,
                "url_pattern",
                "needs a capture group for the path in the repository",
            ));
        }
        spec.url_pattern = Some(re);
    }
    if let Some(url) = &entry.benchmark_url {
        spec.benchmark_url = Some(url.clone());
    }
    if let Some(api) = &entry.geo_mirror_api {
        spec.geo_mirror_api = Some(api.clone()).filter(|a| !a.is_empty());
    }
    if let Some(rules) = &entry.cache_rules {
        spec.cache_rules = rules
            .iter()
            .filter_map(|r| {
                let value = r.cache_control.as_deref()?.trim();
                Some(cache_rule(id, &r.pattern, value))
            })
            .collect::<Result<_, _>>()?;
    }
    if let Some(mirrors) = mirror_list(entry) {
        spec.aliases = auto_aliases(&mirrors);
        spec.mirrors = mirrors;
        // The first listed mirror now comes before the built-in official host.
        if let Some(primary) = spec.trees.first_mut() {
            primary.default_upstream = None;
        }
    }
    if let Some(aliases) = &entry.aliases {
        for (name, mirror) in aliases {
            let short = name.strip_prefix("cn:").unwrap_or(name);
            spec.aliases.insert(short.to_string(), mirror.clone());
            spec.aliases.insert(format!("cn:{short}"), mirror.clone());
        }
    }
    Ok(())
}

fn new_spec(entry: &DistroEntry) -> Result<DistroSpec, DistroError> {
    let id = entry.id.trim();
    let mirrors = mirror_list(entry).ok_or_else(|| {
        invalid(
            id,
            "mirrors",
            "a new distribution needs at least one mirror",
        )
    })?;
    let first = &mirrors[0];
    let without_scheme = first
        .split_once("://")
        .map_or(first.as_str(), |(_, rest)| rest);
    let path = without_scheme.find('/').map_or("/".to_string(), |i| {
        let p = &without_scheme[i..];
        if p.ends_with('/') {
            p.to_string()
        } else {
            format!("{p}/")
        }
    });
    let mut spec = DistroSpec {
        id: id.to_string(),
        name: id.to_string(),
        kind: 0,
        url_pattern: None,
        benchmark_url: None,
        geo_mirror_api: None,
        cache_rules: Vec::new(),
        mirrors: Vec::new(),
        aliases: BTreeMap::new(),
        trees: vec![TreeSpec {
            id: id.to_string(),
            mirror_path: path,
            official_hosts: Vec::new(),
            default_upstream: None,
            sibling_of_mirror: None,
        }],
    };
    apply(&mut spec, entry)?;
    Ok(spec)
}

fn cache_rule(id: &str, pattern: &str, value: &str) -> Result<CacheRule, DistroError> {
    let cache_control = http::HeaderValue::from_str(value)
        .ok()
        .filter(|_| !value.is_empty())
        .ok_or_else(|| {
            invalid(
                id,
                "cache_rules.cache_control",
                "must be a non-empty header value (visible ASCII)",
            )
        })?;
    let pattern =
        Regex::new(pattern).map_err(|e| invalid(id, "cache_rules.pattern", e.to_string()))?;
    Ok(CacheRule {
        pattern,
        cache_control,
        max_age: max_age(value),
    })
}

/// `max-age=N` (or `s-maxage`) of a Cache-Control value; `no-cache`/`no-store` mean 0.
fn max_age(cache_control: &str) -> Option<u64> {
    cache_control.split(',').map(str::trim).find_map(|d| {
        let d = d.to_ascii_lowercase();
        if d == "no-cache" || d == "no-store" {
            return Some(0);
        }
        d.strip_prefix("max-age=")
            .or_else(|| d.strip_prefix("s-maxage="))
            .and_then(|v| v.parse().ok())
    })
}
