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

use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};
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

/// The suite directory (`dists/<suite>/`) a path lies in, if any.
pub fn suite_dir(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("dists/")?;
    let end = rest.find('/')?;
    Some(&path[.."dists/".len() + end + 1])
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
    pub fn learn_packages(&self, repo: &str, entries: Vec<(String, Digest)>) {
        let n = entries.len();
        lock(&self.packages)
            .entry(repo.to_string())
            .or_default()
            .extend(entries);
        tracing::debug!(repo, packages = n, "learnt package hashes");
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

/// Reads a Packages index and returns `(Filename, digest)` for each stanza that has both a
/// Filename and a SHA256. Blocking.
pub fn parse_packages(
    input: impl Read,
    compression: Compression,
) -> io::Result<Vec<(String, Digest)>> {
    let mut sink = StanzaSink::default();
    match compression {
        Compression::None => {
            io::copy(&mut BufReader::new(input), &mut sink)?;
        }
        Compression::Gzip => {
            io::copy(
                &mut flate2::read::MultiGzDecoder::new(BufReader::new(input)),
                &mut sink,
            )?;
        }
        Compression::Xz => {
            lzma_rs::xz_decompress(&mut BufReader::new(input), &mut sink)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{e:?}")))?;
        }
    }
    sink.flush()?;
    sink.end_stanza();
    Ok(sink.out)
}

/// A `Write` that parses deb822 stanzas line by line, so a large decompressed index is never
/// held in memory whole.
#[derive(Default)]
struct StanzaSink {
    partial: Vec<u8>,
    filename: Option<String>,
    sha256: Option<String>,
    size: Option<u64>,
    out: Vec<(String, Digest)>,
}

impl StanzaSink {
    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            self.end_stanza();
            return;
        }
        let Ok(text) = std::str::from_utf8(line) else {
            return;
        };
        if let Some(v) = text.strip_prefix("Filename:") {
            self.filename = Some(v.trim().to_string());
        } else if let Some(v) = text.strip_prefix("SHA256:") {
            self.sha256 = Some(v.trim().to_ascii_lowercase());
        } else if let Some(v) = text.strip_prefix("Size:") {
            self.size = v.trim().parse().ok();
        }
    }

    fn end_stanza(&mut self) {
        if let (Some(filename), Some(sha256), Some(size)) =
            (self.filename.take(), self.sha256.take(), self.size.take())
            && sha256.len() == 64
        {
            self.out.push((filename, Digest { size, sha256 }));
        }
        self.filename = None;
        self.sha256 = None;
        self.size = None;
    }
}

impl Write for StanzaSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            if self.partial.is_empty() {
                self.line(&rest[..i]);
            } else {
                self.partial.extend_from_slice(&rest[..i]);
                let line = std::mem::take(&mut self.partial);
                self.line(&line);
            }
            rest = &rest[i + 1..];
        }
        self.partial.extend_from_slice(rest);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.line(&line);
        }
        Ok(())
    }
}

/// Reads a whole small file as text (Release files), lossily. Blocking.
pub fn read_text(mut input: impl Read) -> io::Result<String> {
    let mut bytes = Vec::new();
    input.read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(suite_dir("dists/stable/main/x"), Some("dists/stable/"));
        assert_eq!(suite_dir("pool/main/x"), None);
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
        assert_eq!(
            parse_packages(text.as_bytes(), Compression::None).unwrap(),
            want
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(text.as_bytes()).unwrap();
        assert_eq!(
            parse_packages(&gz.finish().unwrap()[..], Compression::Gzip).unwrap(),
            want
        );
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut text.as_bytes(), &mut xz).unwrap();
        assert_eq!(parse_packages(&xz[..], Compression::Xz).unwrap(), want);
        assert!(parse_packages(&b"not xz"[..], Compression::Xz).is_err());
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
