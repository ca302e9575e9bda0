//! What repository indexes say about other files, so that the cache never hands out files that
//! do not verify against each other.
//!
//! - A Release or InRelease file lists the size and SHA256 of every index file under its
//!   directory (`dists/<suite>/`); a repomd.xml lists the metadata files of its repository. A
//!   cached index whose hash is not the one its Release names is refetched; when the mirror
//!   still serves the old one (caught mid-sync), the file is taken from its
//!   `by-hash/SHA256/<hex>` name instead.
//! - Package indexes list every package with its size and a hash: a Packages file (plain,
//!   .gz or .xz, also when fetched by hash) the SHA256 of each `.deb`; the primary metadata a
//!   repomd.xml names (plain, .gz, .xz or .zst) the SHA256, SHA512 or SHA-1 of each `.rpm`;
//!   an APKINDEX.tar.gz the hash of each `.apk`'s control segment. A package download that
//!   does not match is not stored, and a cached package the index no longer names with that
//!   hash is refetched.
//!
//! The tables are kept in memory: learnt as indexes are stored, and learnt again from the
//! stored indexes after a restart (see `cache::learn`).

mod apk;
mod deb;
mod decode;
mod rpm;

pub use apk::{TarStream, parse_apkindex};
pub use deb::{parse_packages, parse_release};
pub use decode::Compression;
pub use rpm::{parse_primary, parse_repomd};

use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::{Arc, Mutex, PoisonError};

use crate::storage::EntryMeta;

/// A hash an index may name for a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algo {
    Sha256,
    Sha512,
    Sha1,
    /// SHA-1 of an apk v2 package's control segment (the `Q1` checksum of APKINDEX).
    ApkControlSha1,
    /// SHA-256 of an apk v2 package's control segment (`Q2`).
    ApkControlSha256,
}

impl Algo {
    /// The name of the digest in an entry's record (`EntryMeta::digests`).
    pub fn name(self) -> &'static str {
        match self {
            Algo::Sha256 => "sha256",
            Algo::Sha512 => "sha512",
            Algo::Sha1 => "sha1",
            Algo::ApkControlSha1 => "apk-control-sha1",
            Algo::ApkControlSha256 => "apk-control-sha256",
        }
    }

    /// Length of the digest in hex digits.
    pub fn hex_len(self) -> usize {
        match self {
            Algo::Sha256 | Algo::ApkControlSha256 => 64,
            Algo::Sha512 => 128,
            Algo::Sha1 | Algo::ApkControlSha1 => 40,
        }
    }
}

/// Size and hash (lower-case hex) a file must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub size: u64,
    pub algo: Algo,
    pub hex: String,
}

impl Digest {
    pub fn new(size: u64, algo: Algo, hex: &str) -> Digest {
        Digest {
            size,
            algo,
            hex: hex.to_ascii_lowercase(),
        }
    }

    /// Whether a stored entry is this file: its length and the digest of this kind recorded
    /// when it was written. An entry without such a digest does not match.
    pub fn matches(&self, meta: &EntryMeta) -> bool {
        meta.len == self.size && recorded(meta, self.algo) == Some(self.hex.as_str())
    }
}

/// The digest of kind `algo` recorded for a stored body, if it was computed.
pub fn recorded(meta: &EntryMeta, algo: Algo) -> Option<&str> {
    match algo {
        Algo::Sha256 => Some(meta.sha256.as_str()),
        _ => meta.digests.get(algo.name()).map(String::as_str),
    }
}

/// Who vouches for a digest, which decides what a mismatch means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A Release file or a repomd.xml: the index is fetched by its by-hash name where the
    /// Release allows it, streamed, and cut at its end if it does not match.
    Release,
    /// A package index (Packages, primary, APKINDEX): the package is streamed; a mismatch is
    /// not stored.
    PackageIndex,
}

/// What a file is expected to be, and where else to find it.
#[derive(Debug, Clone)]
pub struct Expectation {
    pub digest: Digest,
    pub source: Source,
    /// The `by-hash/SHA256/<hex>` path of the same content, for index files.
    pub by_hash_path: Option<String>,
}

/// The files a Release (or a repomd.xml) lists, relative to its directory.
#[derive(Debug, Default)]
pub struct ReleaseTable {
    files: HashMap<String, Digest>,
    /// Hex digest -> relative path, to know what a by-hash file is.
    by_hash: HashMap<String, String>,
    /// Whether the mirror keeps `by-hash/` copies (APT repositories; not YUM ones).
    has_by_hash: bool,
    /// The href of a repomd.xml's primary metadata.
    primary: Option<String>,
}

impl ReleaseTable {
    /// The package indexes this table names, relative to its directory: the primary
    /// metadata of a repomd.xml, or the Packages files of a Release (smallest first: the best
    /// compression is the cheapest read).
    pub fn package_indexes(&self) -> Vec<(&str, &Digest)> {
        if let Some(primary) = &self.primary {
            return self
                .files
                .get_key_value(primary)
                .map(|(k, d)| (k.as_str(), d))
                .into_iter()
                .collect();
        }
        let mut out: Vec<_> = self
            .files
            .iter()
            .filter(|(path, _)| {
                PackageFormat::of_name(file_name(path))
                    .is_some_and(|(f, _)| f == PackageFormat::Packages)
            })
            .map(|(path, d)| (path.as_str(), d))
            .collect();
        out.sort_by_key(|(path, d)| (d.size, *path));
        out
    }
}

/// Which kind of package index a file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageFormat {
    /// An APT Packages file.
    Packages,
    /// YUM primary metadata.
    Primary,
    /// An Alpine APKINDEX.tar.gz.
    ApkIndex,
}

impl PackageFormat {
    /// The format of an APT or Alpine package index, by file name (primary metadata is
    /// known only through its repomd.xml).
    fn of_name(name: &str) -> Option<(PackageFormat, Compression)> {
        match name {
            "Packages" => Some((PackageFormat::Packages, Compression::None)),
            "Packages.gz" => Some((PackageFormat::Packages, Compression::Gzip)),
            "Packages.xz" => Some((PackageFormat::Packages, Compression::Xz)),
            "APKINDEX.tar.gz" => Some((PackageFormat::ApkIndex, Compression::Gzip)),
            _ => None,
        }
    }
}

/// A package index: its format, its compression, and the directory its names are relative
/// to (`""`: the repo's root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageIndex {
    pub format: PackageFormat,
    pub compression: Compression,
    pub root: String,
}

/// The tables of every repo.
#[derive(Debug, Default)]
pub struct IndexTables {
    /// `repo/dir/` -> the Release of that directory (`None`: looked for, none cached).
    releases: Mutex<HashMap<String, Option<Arc<ReleaseTable>>>>,
    /// repo -> package path -> digest.
    packages: Mutex<HashMap<String, HashMap<String, Digest>>>,
    /// Package indexes being learnt from.
    learning: Arc<LearningNow>,
}

/// The package indexes being learnt from, per repo, and a wake-up when one is done.
#[derive(Debug, Default)]
struct LearningNow {
    repos: Mutex<HashMap<String, usize>>,
    /// The sum of `repos`' counts: package requests skip the lock when nothing is learnt.
    active: std::sync::atomic::AtomicUsize,
    done: tokio::sync::Notify,
}

/// Whether `path` names a Release file (whose table applies to its directory).
pub fn is_release(path: &str) -> bool {
    matches!(file_name(path), "InRelease" | "Release")
}

/// Whether `path` names a YUM repository's `repodata/repomd.xml`.
pub fn is_repomd(path: &str) -> bool {
    path == "repodata/repomd.xml" || path.ends_with("/repodata/repomd.xml")
}

/// Whether `path` names a package file the indexes may vouch for.
pub fn is_package(path: &str) -> bool {
    // No extension holds a `/`: the path ends with it exactly when its file name does.
    [".deb", ".udeb", ".ddeb", ".rpm", ".apk"]
        .iter()
        .any(|ext| path.ends_with(ext))
}

/// `path` with its percent-encoding undone: how an index writes it (borrowed when there was
/// none).
fn decoded(path: &str) -> std::borrow::Cow<'_, str> {
    if path.contains('%') {
        percent_encoding::percent_decode_str(path).decode_utf8_lossy()
    } else {
        std::borrow::Cow::Borrowed(path)
    }
}

pub(crate) use crate::distro::class::file_name;

/// The directory part of a path, with its trailing `/` (`""` at the top).
pub fn dir_of(path: &str) -> &str {
    path.rfind('/').map_or("", |i| &path[..=i])
}

/// Looks at the Release tables of `repo` from `path`'s directory up to the tree's root, and
/// returns the first answer `found` gives (with the directory and the table). One key buffer
/// for the whole walk.
fn walk_up<T>(
    releases: &HashMap<String, Option<Arc<ReleaseTable>>>,
    repo: &str,
    path: &str,
    mut found: impl FnMut(&str, &Arc<ReleaseTable>) -> Option<T>,
) -> Option<T> {
    let mut key = String::with_capacity(repo.len() + 1 + path.len());
    key.push_str(repo);
    key.push('/');
    let base = key.len();
    let mut d = dir_of(path);
    loop {
        key.truncate(base);
        key.push_str(d);
        if let Some(Some(table)) = releases.get(key.as_str())
            && let Some(answer) = found(d, table)
        {
            return Some(answer);
        }
        if d.is_empty() {
            return None;
        }
        d = dir_of(&d[..d.len() - 1]);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Marks a package index of a repo as being learnt from until dropped.
pub struct Learning {
    now: Arc<LearningNow>,
    repo: String,
}

impl Drop for Learning {
    fn drop(&mut self) {
        let mut repos = lock(&self.now.repos);
        if let Some(n) = repos.get_mut(&self.repo) {
            *n -= 1;
            if *n == 0 {
                repos.remove(&self.repo);
            }
            self.now
                .active
                .fetch_sub(1, std::sync::atomic::Ordering::Release);
        }
        drop(repos);
        self.now.done.notify_waiters();
    }
}

impl IndexTables {
    /// Whether the Release of `repo`'s directory `dir` was already looked for.
    pub fn knows_release(&self, repo: &str, dir: &str) -> bool {
        lock(&self.releases).contains_key(&format!("{repo}/{dir}"))
    }

    /// Records the Release of `repo`'s directory `dir` (`None`: there is none in the cache).
    pub fn set_release(&self, repo: &str, dir: &str, table: Option<ReleaseTable>) {
        lock(&self.releases).insert(format!("{repo}/{dir}"), table.map(Arc::new));
    }

    /// The Release table recorded for `repo`'s directory `dir`.
    pub fn release(&self, repo: &str, dir: &str) -> Option<Arc<ReleaseTable>> {
        lock(&self.releases).get(&format!("{repo}/{dir}"))?.clone()
    }

    /// Learns a Release file stored at `path`.
    pub fn learn_release(&self, repo: &str, path: &str, text: &str) {
        let table = parse_release(text);
        tracing::debug!(repo, path, files = table.files.len(), "learnt release");
        self.set_release(repo, dir_of(path), Some(table));
    }

    /// Learns a `repodata/repomd.xml` stored at `path`; its hrefs are relative to the
    /// directory above `repodata/`.
    pub fn learn_repomd(&self, repo: &str, path: &str, text: &str) {
        let table = parse_repomd(text);
        tracing::debug!(repo, path, files = table.files.len(), "learnt repomd");
        self.set_release(repo, repomd_root(path), Some(table));
    }

    /// The index at `path`: its Release's directory, its relative path inside it, and that
    /// Release's table. For a by-hash path, the file whose hash it is.
    fn resolve_index(&self, repo: &str, path: &str) -> Option<(String, String, Arc<ReleaseTable>)> {
        let releases = lock(&self.releases);
        if let Some((dir, hex)) = path.rsplit_once("/by-hash/SHA256/") {
            return walk_up(&releases, repo, path, |d, table| {
                let rel = table.by_hash.get(hex)?;
                (!d.is_empty() && rel.starts_with(dir.strip_prefix(d).unwrap_or("")))
                    .then(|| (d.to_string(), rel.clone(), table.clone()))
            });
        }
        walk_up(&releases, repo, path, |d, table| {
            let rel = &path[d.len()..];
            table
                .files
                .contains_key(rel)
                .then(|| (d.to_string(), rel.to_string(), table.clone()))
        })
    }

    /// What `path` in `repo` must be, if an index says so. Release files and by-hash paths
    /// (which carry their own hash) have no expectation here.
    pub fn expected(&self, repo: &str, path: &str) -> Option<Expectation> {
        if is_release(path)
            || is_repomd(path)
            || path.contains("/by-hash/")
            || file_name(path) == "Release.gpg"
        {
            return None;
        }
        if is_package(path) {
            // Index names are plain; clients may percent-encode some characters (`+`).
            let digest = lock(&self.packages)
                .get(repo)
                .and_then(|t| t.get(decoded(path).as_ref()))
                .cloned()?;
            return Some(Expectation {
                digest,
                source: Source::PackageIndex,
                by_hash_path: None,
            });
        }
        let (_, rel, table) = self.resolve_index(repo, path)?;
        let digest = table.files.get(&rel)?.clone();
        let by_hash_path = (table.has_by_hash && digest.algo == Algo::Sha256)
            .then(|| format!("{}by-hash/SHA256/{}", dir_of(path), digest.hex));
        Some(Expectation {
            digest,
            source: Source::Release,
            by_hash_path,
        })
    }

    /// Whether the file at `path` (possibly a by-hash name) is a package index, and which.
    pub fn package_index(&self, repo: &str, path: &str) -> Option<PackageIndex> {
        if let Some((format, compression)) = PackageFormat::of_name(file_name(path)) {
            let root = match format {
                PackageFormat::ApkIndex => decoded(dir_of(path)).into_owned(),
                _ => String::new(),
            };
            return Some(PackageIndex {
                format,
                compression,
                root,
            });
        }
        let (dir, rel, table) = self.resolve_index(repo, path)?;
        if table.primary.as_deref() == Some(rel.as_str()) {
            return Some(PackageIndex {
                format: PackageFormat::Primary,
                compression: Compression::of_name(&rel)?,
                root: decoded(&dir).into_owned(),
            });
        }
        let (format, compression) = PackageFormat::of_name(file_name(&rel))?;
        Some(PackageIndex {
            format,
            compression,
            root: String::new(),
        })
    }

    /// Adds the packages a package index lists (`entries`: path in the repo, digest) to
    /// `repo`'s table. Refused when the repo's table would hold more than `cap` packages.
    pub fn learn_packages(
        &self,
        repo: &str,
        entries: &[(String, Digest)],
        cap: usize,
    ) -> Result<(), IndexError> {
        let n = entries.len();
        let mut packages = lock(&self.packages);
        let table = packages.entry(repo.to_string()).or_default();
        if table.len().saturating_add(n) > cap {
            return Err(IndexError::Limit(format!(
                "the repo would know more than {cap} packages"
            )));
        }
        table.extend(entries.iter().cloned());
        tracing::debug!(repo, packages = n, "learnt package hashes");
        Ok(())
    }

    /// Marks a package index of `repo` as being learnt from: stored packages of that repo are
    /// not answered, and fetched ones not finished, before it is done
    /// ([`IndexTables::settled`]).
    pub fn learning(&self, repo: &str) -> Learning {
        let mut repos = lock(&self.learning.repos);
        *repos.entry(repo.to_string()).or_default() += 1;
        self.learning
            .active
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        drop(repos);
        Learning {
            now: self.learning.clone(),
            repo: repo.to_string(),
        }
    }

    /// Waits, at most `max`, until no package index of `repo` is being learnt from; whether
    /// one was (and the tables may have changed).
    pub async fn settled(&self, repo: &str, max: std::time::Duration) -> bool {
        if self
            .learning
            .active
            .load(std::sync::atomic::Ordering::Acquire)
            == 0
        {
            return false;
        }
        let deadline = tokio::time::Instant::now() + max;
        let mut waited = false;
        loop {
            let woken = self.learning.done.notified();
            if !lock(&self.learning.repos).contains_key(repo) {
                return waited;
            }
            waited = true;
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                tracing::debug!(repo, "package index still being learnt; not waiting longer");
                return true;
            }
        }
    }
}

/// The directory a repomd.xml's hrefs are relative to: the one above `repodata/`.
pub fn repomd_root(path: &str) -> &str {
    &path[..path.len() - "repodata/repomd.xml".len()]
}

/// What a package index lists so far: (path, digest), at most `max` of them.
#[derive(Default)]
struct Listing {
    entries: Vec<(String, Digest)>,
    max: usize,
}

impl Listing {
    fn new(max: usize) -> Listing {
        Listing {
            entries: Vec::new(),
            max,
        }
    }

    /// Adds one package; an index that lists more than `max` is past the parsing limit.
    fn push(&mut self, path: String, digest: Digest) -> Result<(), IndexError> {
        if self.entries.len() >= self.max {
            return Err(IndexError::Limit(format!(
                "more than {} packages",
                self.max
            )));
        }
        self.entries.push((path, digest));
        Ok(())
    }
}

/// Why an index was not learnt from.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("unreadable index: {0}")]
    Io(#[from] io::Error),
    #[error("index past the parsing limit: {0}")]
    Limit(String),
}

/// Reads a small index (Release, InRelease, repomd.xml) whole as text, lossily, refusing one
/// larger than `limit` bytes. Blocking.
pub fn read_text(input: impl Read, limit: u64) -> Result<String, IndexError> {
    let mut bytes = Vec::new();
    input.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(IndexError::Limit(format!("larger than {limit} bytes")));
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IndexLimits;
    use crate::testkit::gzip;
    use std::io::Write;

    const RELEASE: &str = "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nOrigin: Test\nSuite: stable\nMD5Sum:\n 0123 12 main/binary-amd64/Packages\nSHA256:\n aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa 120 main/binary-amd64/Packages\n BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB 80 main/binary-amd64/Packages.gz\n-----BEGIN PGP SIGNATURE-----\n\nxyz\n-----END PGP SIGNATURE-----\n";

    #[test]
    fn release_tables_give_expectations() {
        let t = IndexTables::default();
        t.learn_release("debian", "dists/stable/InRelease", RELEASE);
        let e = t
            .expected("debian", "dists/stable/main/binary-amd64/Packages.gz")
            .unwrap();
        assert_eq!(e.digest, Digest::new(80, Algo::Sha256, &"b".repeat(64)));
        assert_eq!(e.source, Source::Release);
        assert_eq!(
            e.by_hash_path.unwrap(),
            format!(
                "dists/stable/main/binary-amd64/by-hash/SHA256/{}",
                "b".repeat(64)
            )
        );
        assert!(
            t.expected("debian", "dists/stable/main/binary-amd64/Packages.xz")
                .is_none()
        );
        assert!(t.expected("debian", "dists/stable/InRelease").is_none());
        assert!(
            t.expected(
                "debian-security",
                "dists/stable/main/binary-amd64/Packages.gz"
            )
            .is_none()
        );
        let by_hash = format!(
            "dists/stable/main/binary-amd64/by-hash/SHA256/{}",
            "b".repeat(64)
        );
        assert_eq!(
            t.package_index("debian", &by_hash),
            Some(PackageIndex {
                format: PackageFormat::Packages,
                compression: Compression::Gzip,
                root: String::new()
            })
        );
        assert_eq!(
            crate::distro::class::suite_dir("dists/stable/main/x"),
            Some("dists/stable/")
        );
        assert_eq!(crate::distro::class::suite_dir("pool/main/x"), None);
    }

    #[test]
    fn packages_are_parsed_in_every_compression() {
        let text = "Package: a\nVersion: 1\nFilename: pool/main/a/a_1_all.deb\nSize: 10\nSHA256: CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC\nDescription: x\n more\n\nPackage: b\nFilename: pool/main/b/b_1_all.deb\nSize: 20\nSHA256: dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd\n";
        let want = vec![
            (
                "pool/main/a/a_1_all.deb".to_string(),
                Digest::new(10, Algo::Sha256, &"c".repeat(64)),
            ),
            (
                "pool/main/b/b_1_all.deb".to_string(),
                Digest::new(20, Algo::Sha256, &"d".repeat(64)),
            ),
        ];
        let limits = IndexLimits::default();
        assert_eq!(
            parse_packages(text.as_bytes(), Compression::None, &limits).unwrap(),
            want
        );
        assert_eq!(
            parse_packages(&gzip(text.as_bytes())[..], Compression::Gzip, &limits).unwrap(),
            want
        );
        assert_eq!(
            parse_packages(&xz(text.as_bytes(), 6)[..], Compression::Xz, &limits).unwrap(),
            want
        );
        assert!(matches!(
            parse_packages(&b"not xz"[..], Compression::Xz, &limits),
            Err(IndexError::Io(_))
        ));
    }

    fn xz(data: &[u8], preset: u32) -> Vec<u8> {
        let mut w =
            lzma_rust2::XzWriter::new(Vec::new(), lzma_rust2::XzOptions::with_preset(preset))
                .unwrap();
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    const STANZA: &str = "Package: a\nFilename: pool/a.deb\nSize: 1\nSHA256: cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc\n\n";

    #[test]
    fn bombs_stop_at_the_output_limit() {
        let limits = IndexLimits {
            unpacked_bytes: 8 << 20,
            ..IndexLimits::default()
        };
        // 16 gzip members of 4 MiB of newlines each: 64 MiB from well under 1 MiB.
        let member = gzip(&vec![b'\n'; 4 << 20]);
        let bomb: Vec<u8> = member
            .iter()
            .copied()
            .cycle()
            .take(member.len() * 16)
            .collect();
        assert!(bomb.len() < 1 << 20, "{} bytes is no bomb", bomb.len());
        let err = parse_packages(&bomb[..], Compression::Gzip, &limits).unwrap_err();
        assert!(matches!(err, IndexError::Limit(_)), "{err}");
        // Below the limit the same construction parses.
        let small: Vec<u8> = member.iter().copied().cycle().take(member.len()).collect();
        assert!(parse_packages(&small[..], Compression::Gzip, &limits).is_ok());
    }

    #[test]
    fn an_xz_dictionary_past_the_memory_limit_is_refused() {
        // Preset 9 declares a 64 MiB dictionary.
        let packed = xz(STANZA.as_bytes(), 9);
        let tight = IndexLimits {
            xz_memory_kib: 1024,
            ..IndexLimits::default()
        };
        let err = parse_packages(&packed[..], Compression::Xz, &tight).unwrap_err();
        assert!(matches!(err, IndexError::Limit(_)), "{err}");
        let parsed = parse_packages(&packed[..], Compression::Xz, &IndexLimits::default()).unwrap();
        assert_eq!(parsed.len(), 1);
    }

    #[test]
    fn endless_lines_are_skipped_with_bounded_memory() {
        let mut lines = decode::Lines::new(64 << 10);
        let mut seen: Vec<Vec<u8>> = Vec::new();
        let mut keep = |l: &[u8]| {
            seen.push(l.to_vec());
            Ok(())
        };
        let junk = vec![b'A'; 1 << 20];
        for _ in 0..16 {
            lines.feed(&junk, &mut keep).unwrap();
            assert!(lines.buffered() <= 2 * (64 << 10), "line buffer grew");
        }
        // The overlong line ends; the next lines are read.
        lines.feed(b"\n", &mut keep).unwrap();
        lines.feed(STANZA.as_bytes(), &mut keep).unwrap();
        lines.finish(&mut keep).unwrap();
        assert_eq!(seen.len(), STANZA.lines().count());
        assert_eq!(seen[1], b"Filename: pool/a.deb");
    }

    #[test]
    fn too_many_entries_and_too_large_releases_are_refused() {
        let limits = IndexLimits {
            entries: 2,
            ..IndexLimits::default()
        };
        let three = STANZA.repeat(3);
        assert!(matches!(
            parse_packages(three.as_bytes(), Compression::None, &limits),
            Err(IndexError::Limit(_))
        ));
        assert_eq!(
            parse_packages(STANZA.repeat(2).as_bytes(), Compression::None, &limits)
                .unwrap()
                .len(),
            2
        );
        assert!(matches!(
            read_text(&[b'x'; 2000][..], 1000),
            Err(IndexError::Limit(_))
        ));
        assert_eq!(read_text(&[b'x'; 1000][..], 1000).unwrap().len(), 1000);
        let t = IndexTables::default();
        let entry = |n: u32| {
            (
                format!("pool/{n}.deb"),
                Digest::new(1, Algo::Sha256, &"c".repeat(64)),
            )
        };
        t.learn_packages("debian", &[entry(1), entry(2)], 3)
            .unwrap();
        assert!(t.expected("debian", "pool/1.deb").is_some());
        // Clients may percent-encode what the index writes plainly.
        t.learn_packages("debian", &[("pool/lib++1.deb".to_string(), entry(0).1)], 4)
            .unwrap();
        assert!(t.expected("debian", "pool/lib%2B%2B1.deb").is_some());
        assert!(t.expected("debian", "pool/lib++1.deb").is_some());
        assert!(
            t.learn_packages("debian", &[entry(3), entry(4)], 4)
                .is_err()
        );
    }
}

#[cfg(test)]
mod repomd_tests {
    use super::*;

    #[test]
    fn repomd_lists_repodata() {
        let h = "e".repeat(64);
        let xml = format!(
            "<?xml version=\"1.0\"?>\n<repomd><revision>1</revision>\n<data type=\"primary\">\n  <checksum type=\"sha256\">{h}</checksum>\n  <open-checksum type=\"sha256\">{}</open-checksum>\n  <location href=\"repodata/{h}-primary.xml.gz\"/>\n  <size>321</size>\n</data>\n<data type=\"other\"><checksum type=\"sha1\">abc</checksum><location href=\"repodata/x-other.xml.gz\"/><size>9</size></data></repomd>",
            "f".repeat(64)
        );
        let t = IndexTables::default();
        t.learn_repomd("centos", "9/os/x86_64/repodata/repomd.xml", &xml);
        let e = t
            .expected(
                "centos",
                &format!("9/os/x86_64/repodata/{h}-primary.xml.gz"),
            )
            .unwrap();
        assert_eq!(e.digest, Digest::new(321, Algo::Sha256, &h.clone()));
        assert!(e.by_hash_path.is_none());
        assert!(
            t.expected("centos", "9/os/x86_64/repodata/x-other.xml.gz")
                .is_none()
        );
        assert!(
            t.expected("centos", "9/os/x86_64/repodata/repomd.xml")
                .is_none()
        );
    }
}
