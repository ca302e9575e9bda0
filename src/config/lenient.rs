//! What the Go program's YAML decoder accepts and a strict one would refuse: booleans spelled
//! `yes`/`no`/`on`/`off` (or `1`, `t`, `TRUE`, …), numbers written as quoted strings, and keys it
//! does not read, which are kept aside so that they can be reported with their line.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserializer;
use serde::de::{self, Visitor};

/// Keys of one mapping that no setting reads.
pub type Ignored = BTreeMap<String, serde_norway::Value>;

/// A boolean as Go's strconv.ParseBool spells it, plus YAML 1.1's yes/no/on/off, in any case.
pub fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "t" | "true" | "y" | "yes" | "on" => Some(true),
        "0" | "f" | "false" | "n" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// [`parse_bool`] for clap.
pub fn bool_flag(text: &str) -> Result<bool, String> {
    parse_bool(text)
        .ok_or_else(|| format!("expected true or false (or 1/0, yes/no, on/off), not {text:?}"))
}

/// An optional boolean: a YAML boolean or one of [`parse_bool`]'s spellings.
pub fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<bool>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("true or false (or yes/no, on/off, 1/0)")
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            match v {
                0 | 1 => Ok(Some(v == 1)),
                _ => Err(E::invalid_value(de::Unexpected::Unsigned(v), &self)),
            }
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            match v {
                0 | 1 => Ok(Some(v == 1)),
                _ => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
            }
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            parse_bool(v)
                .map(Some)
                .ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(V)
}

/// A number type a setting holds.
pub trait Number: Sized + std::str::FromStr {
    const EXPECTED: &'static str;
    fn from_u64(v: u64) -> Option<Self>;
    fn from_i64(v: i64) -> Option<Self>;
    fn from_f64(v: f64) -> Option<Self>;
}

macro_rules! integer {
    ($($t:ty => $what:literal),*) => {$(
        impl Number for $t {
            const EXPECTED: &'static str = $what;
            fn from_u64(v: u64) -> Option<Self> {
                v.try_into().ok()
            }
            fn from_i64(v: i64) -> Option<Self> {
                v.try_into().ok()
            }
            fn from_f64(_: f64) -> Option<Self> {
                None
            }
        }
    )*};
}
integer!(
    u16 => "a whole number from 0 to 65535",
    u32 => "a whole number from 0 to 4294967295",
    u64 => "a whole number, 0 or more",
    usize => "a whole number, 0 or more"
);

impl Number for f64 {
    const EXPECTED: &'static str = "a number";
    fn from_u64(v: u64) -> Option<Self> {
        Some(v as f64)
    }
    fn from_i64(v: i64) -> Option<Self> {
        Some(v as f64)
    }
    fn from_f64(v: f64) -> Option<Self> {
        Some(v)
    }
}

/// An optional number, written as a number or as a quoted one (`port: "3142"`).
pub fn number<'de, D: Deserializer<'de>, T: Number>(d: D) -> Result<Option<T>, D::Error> {
    struct V<T>(PhantomData<T>);
    impl<'de, T: Number> Visitor<'de> for V<T> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(T::EXPECTED)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            T::from_u64(v)
                .map(Some)
                .ok_or_else(|| E::invalid_value(de::Unexpected::Unsigned(v), &self))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            T::from_i64(v)
                .map(Some)
                .ok_or_else(|| E::invalid_value(de::Unexpected::Signed(v), &self))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            T::from_f64(v)
                .map(Some)
                .ok_or_else(|| E::invalid_value(de::Unexpected::Float(v), &self))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            v.trim()
                .parse()
                .map(Some)
                .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(V(PhantomData))
}

/// The spec's internal fields, which the Go program never reads from YAML, with the key that
/// sets them.
const INTERNAL: &[(&str, &str)] = &[
    ("cache.max_size", "cache.max_size_gb"),
    ("cache.ttl", "cache.ttl_hours"),
    ("cache.cleanup_interval", "cache.cleanup_interval_min"),
];

/// A key of the file that no setting reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoredKey {
    /// Dotted path, e.g. `cache.max_size`.
    pub key: String,
    /// 1-based line of the key in the file, when it can be found.
    pub line: Option<usize>,
}

impl IgnoredKey {
    /// Why the key is not read, for a warning.
    pub fn reason(&self) -> String {
        match INTERNAL.iter().find(|(k, _)| *k == self.key) {
            Some((_, instead)) => format!(
                "{} is an internal field that is not read from the file (use {instead}); ignored",
                self.key
            ),
            None => format!("{} is not a setting; ignored", self.key),
        }
    }
}

/// The ignored keys of `section` (`None`: the top level) as dotted paths, with their lines in
/// `text`.
pub fn collect(text: &str, section: Option<&str>, ignored: &Ignored, out: &mut Vec<IgnoredKey>) {
    for name in ignored.keys() {
        let path: Vec<&str> = section
            .into_iter()
            .flat_map(|s| s.split('.'))
            .chain([name.as_str()])
            .collect();
        out.push(IgnoredKey {
            key: path.join("."),
            line: line_of(text, &path),
        });
    }
}

/// The 1-based line of the block-style key at `path` (`["cache", "ttl"]`), else of its deepest
/// parent found (a flow mapping, `cache: {ttl: 1}`, is on its parent's line).
pub fn line_of(text: &str, path: &[&str]) -> Option<usize> {
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut best: Option<(usize, usize)> = None;
    for (n, line) in text.lines().enumerate() {
        let body = line.trim_start_matches(' ');
        if body.is_empty() || body.starts_with('#') || body.starts_with('-') {
            continue;
        }
        let indent = line.len() - body.len();
        let Some((key, _)) = body.split_once(':') else {
            continue;
        };
        let key = key.trim().trim_matches(|c| c == '"' || c == '\'');
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        stack.push((indent, key.to_string()));
        let depth = stack.len();
        let matches = depth <= path.len() && stack.iter().zip(path).all(|((_, k), p)| k == p);
        if matches && best.is_none_or(|(d, _)| depth > d) {
            best = Some((depth, n + 1));
            if depth == path.len() {
                break;
            }
        }
    }
    best.map(|(_, line)| line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_as_go_reads_them() {
        for yes in ["yes", "On", "TRUE", "1", "t", "y"] {
            assert_eq!(parse_bool(yes), Some(true), "{yes}");
        }
        for no in ["no", "OFF", "False", "0", "f", "n"] {
            assert_eq!(parse_bool(no), Some(false), "{no}");
        }
        assert_eq!(parse_bool("maybe"), None);
        assert!(bool_flag("2").unwrap_err().contains("\"2\""));
    }

    #[test]
    fn lines_of_keys() {
        let text = "server:\n  port: 1\n  # ttl: 2\ncache:\n  dir: x\n  ttl: 3\n  list:\n    - ttl: 4\nttl: 5\nflow: {ttl: 6}\n";
        assert_eq!(line_of(text, &["cache", "ttl"]), Some(6));
        assert_eq!(line_of(text, &["ttl"]), Some(9));
        assert_eq!(line_of(text, &["flow", "ttl"]), Some(10));
        assert_eq!(line_of(text, &["server", "port"]), Some(2));
        assert_eq!(line_of(text, &["nowhere"]), None);
    }
}
