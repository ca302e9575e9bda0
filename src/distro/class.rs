//! File classes: what a path inside a repository is, which decides how long a cached copy is
//! trusted without asking the mirror again.

/// How a file behaves upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileClass {
    /// Never changes once published under this name: packages, by-hash indexes, hash-named
    /// repodata. Cached until evicted, never revalidated.
    Immutable,
    /// Rewritten in place on every mirror sync: Release files, Packages, repomd.xml, APKINDEX.
    /// Fresh for a short window, then revalidated.
    Volatile,
    /// Anything else: upstream Cache-Control decides, else a heuristic.
    Other,
}

const PACKAGE_SUFFIXES: &[&str] = &[
    ".deb", ".udeb", ".ddeb", ".rpm", ".drpm", ".apk", ".dsc", ".diff.gz",
];

const INDEX_NAMES: &[&str] = &[
    "InRelease",
    "Release",
    "Release.gpg",
    "repomd.xml",
    "repomd.xml.asc",
    "repomd.xml.key",
    "APKINDEX.tar.gz",
    "metalink",
    "mirrorlist",
];

const INDEX_PREFIXES: &[&str] = &[
    "Packages",
    "Sources",
    "Translation-",
    "Contents-",
    "Components-",
    "Commands-",
    "icons-",
];

/// The last segment of a path (a byte search from the end: names are short, paths long).
pub fn file_name(path: &str) -> &str {
    match path.bytes().rposition(|b| b == b'/') {
        Some(slash) => &path[slash + 1..],
        None => path,
    }
}

/// Classifies a path inside a repository (no leading `/`; a query string may follow).
pub fn classify(path_in_repo: &str) -> FileClass {
    let path = path_in_repo.split('?').next().unwrap_or_default();
    let name = file_name(path);
    if path.contains("/by-hash/") || path.starts_with("pool/") || is_hash_named_repodata(path, name)
    {
        return FileClass::Immutable;
    }
    if PACKAGE_SUFFIXES.iter().any(|s| name.ends_with(s)) {
        return FileClass::Immutable;
    }
    if INDEX_NAMES.contains(&name)
        || INDEX_PREFIXES.iter().any(|p| name.starts_with(p))
        || path.starts_with("dists/")
        || path.contains("/dists/")
    {
        return FileClass::Volatile;
    }
    FileClass::Other
}

/// `repodata/<sha256>-primary.xml.gz` and friends: the name carries the content hash.
fn is_hash_named_repodata(path: &str, name: &str) -> bool {
    if !(path.starts_with("repodata/") || path.contains("/repodata/")) {
        return false;
    }
    match name.split_once('-') {
        Some((hash, _)) => hash.len() >= 32 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        None => false,
    }
}

/// The digest a by-hash URL names: (algorithm, lower-case hex), for SHA256 and SHA512.
pub fn by_hash_digest(path_in_repo: &str) -> Option<(HashAlgo, String)> {
    let path = path_in_repo.split('?').next()?;
    let (_, tail) = path.rsplit_once("/by-hash/")?;
    let (algo, hex) = tail.split_once('/')?;
    let algo = match (algo, hex.len()) {
        ("SHA256", 64) => HashAlgo::Sha256,
        ("SHA512", 128) => HashAlgo::Sha512,
        _ => return None,
    };
    hex.bytes()
        .all(|b| b.is_ascii_hexdigit())
        .then(|| (algo, hex.to_ascii_lowercase()))
}

/// Digest algorithms a URL can pin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashAlgo {
    Sha256,
    Sha512,
}

/// The suite directory (`dists/<suite>/`) a path lies in, if any.
pub fn suite_dir(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("dists/")?;
    let end = rest.find('/')?;
    Some(&path[.."dists/".len() + end + 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        use FileClass::*;
        let cases = [
            ("pool/main/h/hello/hello_2.10-3_amd64.deb", Immutable),
            (
                "pool/main/e/erlang/erlang-doc_1%253a25.2.3+dfsg-1_all.deb",
                Immutable,
            ),
            (
                "dists/stable/main/binary-amd64/by-hash/SHA256/0123",
                Immutable,
            ),
            ("7/os/x86_64/Packages/bash-4.2.rpm", Immutable),
            (
                "7/os/x86_64/repodata/0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9-primary.xml.gz",
                Immutable,
            ),
            ("v3.20/main/x86_64/musl-1.2.5-r0.apk", Immutable),
            ("dists/stable/InRelease", Volatile),
            ("dists/stable/main/binary-amd64/Packages.xz", Volatile),
            ("dists/stable/main/i18n/Translation-en", Volatile),
            ("7/os/x86_64/repodata/repomd.xml", Volatile),
            ("v3.20/main/x86_64/APKINDEX.tar.gz", Volatile),
            ("ls-lR.gz", Other),
            ("project/trace/master", Other),
        ];
        for (path, class) in cases {
            assert_eq!(classify(path), class, "{path}");
        }
    }

    #[test]
    fn by_hash_digests() {
        let h = "a".repeat(64);
        assert_eq!(
            by_hash_digest(&format!("dists/s/main/by-hash/SHA256/{h}")),
            Some((HashAlgo::Sha256, h.clone()))
        );
        assert_eq!(
            by_hash_digest(&format!("dists/s/main/by-hash/SHA512/{h}")),
            None
        );
        assert_eq!(
            by_hash_digest(&format!("dists/s/main/by-hash/MD5Sum/{}", &h[..32])),
            None
        );
        assert_eq!(by_hash_digest("dists/s/InRelease"), None);
    }
}
