//! What repository indexes say about other files, so that the cache never hands out files that
//! do not verify against each other.
//!
//! - A Release or InRelease file lists the size and SHA256 of every index file under its
//!   directory (`dists/<suite>/`). A cached Packages file whose hash is not the one the current
//!   Release names is refetched; when the mirror still serves the old one (caught mid-sync),
//!   the file is taken from its `by-hash/SHA256/<hex>` name instead.
//! - A Packages file (plain, .gz or .xz, also when fetched by hash) lists the SHA256 of every
//!   package in the pool. A package download that does not match is not stored, and a cached
//!   package the index no longer names with that hash is refetched.
//!
//! The tables are kept in memory, learnt as indexes are stored, and reloaded from the cache
//! after a restart when a file under a suite is first asked for.

use crate::config::IndexLimits;
use std::collections::HashMap;
use std::io::{self, BufReader, Read};
use std::sync::{Arc, Mutex, PoisonError};

/// Size and SHA256 (lower-case hex) a file must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub size: u64,
    pub sha256: String,
}

/// Who vouches for a digest, which decides what a mismatch means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A Release file: the index is held back until verified, and a mismatch is retried by hash.
    Release,
    /// A Packages file: the package is streamed; a mismatch is not stored.
    Packages,
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
    /// SHA256 hex -> relative path, to know what a by-hash file is.
    by_hash: HashMap<String, String>,
    /// Whether the mirror keeps `by-hash/` copies (APT repositories; not YUM ones).
    has_by_hash: bool,
}

/// The tables of every repo.
#[derive(Debug, Default)]
pub struct IndexTables {
    /// `repo/dir/` -> the Release of that directory (`None`: looked for, none cached).
    releases: Mutex<HashMap<String, Option<Arc<ReleaseTable>>>>,
    /// repo -> pool path -> digest.
    packages: Mutex<HashMap<String, HashMap<String, Digest>>>,
}

/// Whether `path` names a Release file (whose table applies to its directory).
pub fn is_release(path: &str) -> bool {
    matches!(file_name(path), "InRelease" | "Release")
}

/// Whether `path` names a YUM repository's `repodata/repomd.xml`.
pub fn is_repomd(path: &str) -> bool {
    path == "repodata/repomd.xml" || path.ends_with("/repodata/repomd.xml")
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The directory part of a path, with its trailing `/` (`""` at the top).
fn dir_of(path: &str) -> &str {
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

impl IndexTables {
    /// Whether the Release of `repo`'s directory `dir` was already looked for.
    pub fn knows_release(&self, repo: &str, dir: &str) -> bool {
        lock(&self.releases).contains_key(&format!("{repo}/{dir}"))
    }

    /// Records the Release of `repo`'s directory `dir` (`None`: there is none in the cache).
    pub fn set_release(&self, repo: &str, dir: &str, table: Option<ReleaseTable>) {
        lock(&self.releases).insert(format!("{repo}/{dir}"), table.map(Arc::new));
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
        let root = &path[..path.len() - "repodata/repomd.xml".len()];
        self.set_release(repo, root, Some(table));
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
        if let Some(digest) = lock(&self.packages)
            .get(repo)
            .and_then(|t| t.get(path))
            .cloned()
        {
            return Some(Expectation {
                digest,
                source: Source::Packages,
                by_hash_path: None,
            });
        }
        let (_, rel, table) = self.resolve_index(repo, path)?;
        let digest = table.files.get(&rel)?.clone();
        let by_hash_path = table
            .has_by_hash
            .then(|| format!("{}by-hash/SHA256/{}", dir_of(path), digest.sha256));
        Some(Expectation {
            digest,
            source: Source::Release,
            by_hash_path,
        })
    }

    /// Whether the file at `path` (possibly a by-hash name) is a Packages index, and how it is
    /// compressed (its name's extension).
    pub fn packages_index(&self, repo: &str, path: &str) -> Option<Compression> {
        let name = if path.contains("/by-hash/") {
            self.resolve_index(repo, path)?.1
        } else {
            path.to_string()
        };
        match file_name(&name) {
            "Packages" => Some(Compression::None),
            "Packages.gz" => Some(Compression::Gzip),
            "Packages.xz" => Some(Compression::Xz),
            _ => None,
        }
    }

    /// Adds the packages a Packages index lists to `repo`'s table.
    /// Refused when the repo's table would hold more than `cap` packages.
    pub fn learn_packages(
        &self,
        repo: &str,
        entries: Vec<(String, Digest)>,
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
        table.extend(entries);
        tracing::debug!(repo, packages = n, "learnt package hashes");
        Ok(())
    }
}

/// Parses the SHA256 section of a Release or InRelease file.
pub fn parse_release(text: &str) -> ReleaseTable {
    let mut table = ReleaseTable {
        has_by_hash: true,
        ..ReleaseTable::default()
    };

    let mut in_sha256 = false;
    for line in text.lines() {
        if let Some(entry) = line.strip_prefix(' ') {
            if !in_sha256 {
                continue;
            }
            let mut fields = entry.split_whitespace();
            if let (Some(hash), Some(size), Some(path)) =
                (fields.next(), fields.next(), fields.next())
                && hash.len() == 64
                && let Ok(size) = size.parse()
            {
                let sha256 = hash.to_ascii_lowercase();
                table.by_hash.insert(sha256.clone(), path.to_string());
                table
                    .files
                    .insert(path.to_string(), Digest { size, sha256 });
            }
        } else {
            in_sha256 = line.trim_end() == "SHA256:";
        }
    }
    table
}

/// How an index file is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Xz,
}

/// Why an index was not learnt from.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("unreadable index: {0}")]
    Io(#[from] io::Error),
    #[error("index past the parsing limit: {0}")]
    Limit(String),
}

/// A reader that fails once more than `left` bytes have come through it.
struct Bounded<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!("expands to more than {} bytes", self.limit),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Reads a Packages index and returns `(Filename, digest)` for each stanza that has a
/// Filename, a Size and a SHA256, within `limits`: decompressed and parsed as a stream, so
/// memory stays bounded whatever the index says. Blocking.
pub fn parse_packages(
    input: impl Read,
    compression: Compression,
    limits: &IndexLimits,
) -> Result<Vec<(String, Digest)>, IndexError> {
    let input = BufReader::new(input);
    let decoded: Box<dyn Read> = match compression {
        Compression::None => Box::new(input),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
        Compression::Xz => Box::new(lzma_rust2::XzReader::new_mem_limit(
            input,
            true,
            limits.xz_memory_kib,
        )),
    };
    let mut reader = Bounded {
        inner: decoded,
        left: limits.unpacked_bytes,
        limit: limits.unpacked_bytes,
    };
    let mut sink = StanzaSink {
        line_max: limits.line_bytes,
        entries_max: limits.entries,
        ..StanzaSink::default()
    };
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::FileTooLarge => {
                return Err(IndexError::Limit(e.to_string()));
            }
            Err(e) => {
                // The xz decoder reports its memory limit as a plain error.
                let text = e.to_string();
                if text.contains("mem_limit") || text.contains("memory") {
                    return Err(IndexError::Limit(format!(
                        "xz dictionary larger than {} KiB",
                        limits.xz_memory_kib
                    )));
                }
                return Err(IndexError::Io(e));
            }
        };
        sink.feed(&buf[..n])?;
    }
    sink.finish()?;
    Ok(sink.out)
}

/// Parses deb822 stanzas line by line, so a large decompressed index is never held in memory
/// whole; a line is kept up to `line_max` bytes.
#[derive(Default)]
struct StanzaSink {
    partial: Vec<u8>,
    /// The line being read is longer than `line_max`: skip to its end.
    overlong: bool,
    line_max: usize,
    entries_max: usize,
    filename: Option<String>,
    sha256: Option<String>,
    size: Option<u64>,
    out: Vec<(String, Digest)>,
}

impl StanzaSink {
    fn line(&mut self, line: &[u8]) -> Result<(), IndexError> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return self.end_stanza();
        }
        let Ok(text) = std::str::from_utf8(line) else {
            return Ok(());
        };
        if let Some(v) = text.strip_prefix("Filename:") {
            self.filename = Some(v.trim().to_string());
        } else if let Some(v) = text.strip_prefix("SHA256:") {
            self.sha256 = Some(v.trim().to_ascii_lowercase());
        } else if let Some(v) = text.strip_prefix("Size:") {
            self.size = v.trim().parse().ok();
        }
        Ok(())
    }

    fn end_stanza(&mut self) -> Result<(), IndexError> {
        if let (Some(filename), Some(sha256), Some(size)) =
            (self.filename.take(), self.sha256.take(), self.size.take())
            && sha256.len() == 64
        {
            if self.out.len() >= self.entries_max {
                return Err(IndexError::Limit(format!(
                    "more than {} packages",
                    self.entries_max
                )));
            }
            self.out.push((filename, Digest { size, sha256 }));
        }
        self.filename = None;
        self.sha256 = None;
        self.size = None;
        Ok(())
    }

    fn feed(&mut self, buf: &[u8]) -> Result<(), IndexError> {
        let mut rest = buf;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            let piece = &rest[..i];
            rest = &rest[i + 1..];
            if std::mem::take(&mut self.overlong) {
                self.partial.clear();
                continue;
            }
            if self.partial.is_empty() {
                self.line(piece)?;
            } else if self.partial.len() + piece.len() <= self.line_max {
                self.partial.extend_from_slice(piece);
                let line = std::mem::take(&mut self.partial);
                self.line(&line)?;
            } else {
                self.partial.clear();
            }
        }
        if !self.overlong {
            if self.partial.len() + rest.len() > self.line_max {
                self.partial.clear();
                self.overlong = true;
            } else {
                self.partial.extend_from_slice(rest);
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), IndexError> {
        if !self.partial.is_empty() && !self.overlong {
            let line = std::mem::take(&mut self.partial);
            self.line(&line)?;
        }
        self.end_stanza()
    }
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
    use std::io::Write;

    const RELEASE: &str = "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nOrigin: Test\nSuite: stable\nMD5Sum:\n 0123 12 main/binary-amd64/Packages\nSHA256:\n aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa 120 main/binary-amd64/Packages\n BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB 80 main/binary-amd64/Packages.gz\n-----BEGIN PGP SIGNATURE-----\n\nxyz\n-----END PGP SIGNATURE-----\n";

    #[test]
    fn release_tables_give_expectations() {
        let t = IndexTables::default();
        t.learn_release("debian", "dists/stable/InRelease", RELEASE);
        let e = t
            .expected("debian", "dists/stable/main/binary-amd64/Packages.gz")
            .unwrap();
        assert_eq!(
            e.digest,
            Digest {
                size: 80,
                sha256: "b".repeat(64)
            }
        );
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
            t.packages_index("debian", &by_hash),
            Some(Compression::Gzip)
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
                Digest {
                    size: 10,
                    sha256: "c".repeat(64),
                },
            ),
            (
                "pool/main/b/b_1_all.deb".to_string(),
                Digest {
                    size: 20,
                    sha256: "d".repeat(64),
                },
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

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
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
        let mut sink = StanzaSink {
            line_max: 64 << 10,
            entries_max: 10,
            ..StanzaSink::default()
        };
        let junk = vec![b'A'; 1 << 20];
        for _ in 0..16 {
            sink.feed(&junk).unwrap();
            assert!(
                sink.partial.capacity() <= 2 * (64 << 10),
                "line buffer grew"
            );
        }
        // The overlong line ends; the next stanza is read.
        sink.feed(b"\n").unwrap();
        sink.feed(STANZA.as_bytes()).unwrap();
        sink.finish().unwrap();
        assert_eq!(sink.out.len(), 1);
        assert_eq!(sink.out[0].0, "pool/a.deb");
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
                Digest {
                    size: 1,
                    sha256: "c".repeat(64),
                },
            )
        };
        t.learn_packages("debian", vec![entry(1), entry(2)], 3)
            .unwrap();
        assert!(
            t.learn_packages("debian", vec![entry(3), entry(4)], 3)
                .is_err()
        );
    }
}

/// Parses the `<data>` entries of a repomd.xml: location href, size and SHA256 checksum.
/// Entries with another checksum type are skipped. A plain scan, not an XML parser: repomd
/// files are machine-written and regular.
pub fn parse_repomd(text: &str) -> ReleaseTable {
    let mut table = ReleaseTable::default();
    for block in text.split("<data ").skip(1) {
        let block = block.split("</data>").next().unwrap_or(block);
        let sha256 = block.split("<checksum").nth(1).and_then(|c| {
            let (attrs, rest) = c.split_once('>')?;
            (attrs.contains("\"sha256\"") || attrs.contains("'sha256'")).then(|| {
                rest.split('<')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
        });
        let href = block.split("<location").nth(1).and_then(|l| {
            let after = l.split("href=").nth(1)?;
            let quote = after.chars().next()?;
            after[1..].split(quote).next().map(str::to_string)
        });
        let size = block
            .split("<size>")
            .nth(1)
            .and_then(|s| s.split('<').next())
            .and_then(|s| s.trim().parse().ok());
        if let (Some(sha256), Some(href), Some(size)) = (sha256, href, size)
            && sha256.len() == 64
        {
            table.by_hash.insert(sha256.clone(), href.clone());
            table.files.insert(href, Digest { size, sha256 });
        }
    }
    table
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
        assert_eq!(
            e.digest,
            Digest {
                size: 321,
                sha256: h.clone()
            }
        );
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
