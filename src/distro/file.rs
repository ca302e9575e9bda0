//! distributions.yaml: distributions and mirror lists maintained outside the binary.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with a `distributions` list"
)]
pub struct DistributionsFile {
    #[serde(default)]
    pub distributions: Vec<DistroEntry>,
}

/// One distribution. An entry whose id is built in changes that distribution (the fields it
/// gives replace the built-in ones); another id adds a distribution.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a distribution: a mapping with id, name, mirrors, …"
)]
pub struct DistroEntry {
    pub id: String,
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<u8>,
    pub url_pattern: Option<String>,
    pub benchmark_url: Option<String>,
    pub geo_mirror_api: Option<String>,
    pub cache_rules: Option<Vec<CacheRuleEntry>>,
    pub mirrors: Option<MirrorLists>,
    pub aliases: Option<BTreeMap<String, String>>,
}

/// A per-pattern freshness override.
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a cache rule: a mapping with pattern and cache_control"
)]
pub struct CacheRuleEntry {
    pub pattern: String,
    pub cache_control: Option<String>,
    /// Accepted for compatibility: every matched request is served through the proxy anyway.
    pub rewrite: Option<bool>,
}

/// Mirror host lists (`host/path/`, scheme optional).
#[derive(Debug, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a mapping with `official` and `custom` lists of mirrors"
)]
pub struct MirrorLists {
    pub official: Option<Vec<String>>,
    pub custom: Option<Vec<String>>,
}
