//! YUM/DNF indexes: `repodata/repomd.xml`, which lists the metadata files with their
//! checksums, and the primary metadata it names, which lists every package with its checksum.
//!
//! Both are read with a plain scan of the markup, not an XML parser: the files are
//! machine-written and regular, text never holds a raw `<`, and the scan skips whatever it
//! does not need without buffering it (a description of any length costs nothing).

use std::io::Read;

use super::decode::{self, Compression};
use super::{Algo, Digest, IndexError, Listing, ReleaseTable};
use crate::config::IndexLimits;

/// The checksum types the proxy can check, by their name in repository metadata.
fn algo_named(name: &str) -> Option<Algo> {
    match name {
        "sha256" => Some(Algo::Sha256),
        "sha512" => Some(Algo::Sha512),
        // `sha` is what old createrepo versions call SHA-1.
        "sha1" | "sha" => Some(Algo::Sha1),
        _ => None,
    }
}

/// The value of attribute `name` in the text of a tag (`a="b" c='d'`), with the five
/// predefined entities resolved.
fn attr(tag: &str, name: &str) -> Option<String> {
    let mut rest = tag;
    loop {
        let at = rest.find(name)?;
        let before = rest[..at].chars().last();
        let after = &rest[at + name.len()..];
        rest = after;
        if !before.is_some_and(char::is_whitespace) {
            continue;
        }
        let Some(value) = after.trim_start().strip_prefix('=') else {
            continue;
        };
        let value = value.trim_start();
        let quote = value.chars().next().filter(|c| *c == '"' || *c == '\'')?;
        let end = value[1..].find(quote)?;
        return Some(unescape(&value[1..1 + end]));
    }
}

fn unescape(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// Parses the `<data>` entries of a repomd.xml: type, location href, size and checksum
/// (SHA256, SHA512 or SHA1; entries with another checksum type are skipped). The href of the
/// `primary` entry is kept: its packages are learnt when it is fetched.
pub fn parse_repomd(text: &str) -> ReleaseTable {
    let mut table = ReleaseTable::default();
    for block in text.split("<data ").skip(1) {
        let block = block.split("</data>").next().unwrap_or(block);
        let kind = block
            .split('>')
            .next()
            .and_then(|open| attr(&format!(" {open}"), "type"));
        let checksum = block.split("<checksum").nth(1).and_then(|c| {
            let (attrs, rest) = c.split_once('>')?;
            let algo = algo_named(&attr(attrs, "type")?)?;
            Some((
                algo,
                rest.split('<').next().unwrap_or("").trim().to_string(),
            ))
        });
        let href = block
            .split("<location")
            .nth(1)
            .and_then(|l| attr(l.split('>').next()?, "href"));
        let size = block
            .split("<size>")
            .nth(1)
            .and_then(|s| s.split('<').next())
            .and_then(|s| s.trim().parse().ok());
        if let (Some((algo, hex)), Some(href), Some(size)) = (checksum, href, size)
            && hex.len() == algo.hex_len()
        {
            let digest = Digest::new(size, algo, &hex);
            if kind.as_deref() == Some("primary") {
                table.primary = Some(href.clone());
            }
            table.by_hash.insert(digest.hex.clone(), href.clone());
            table.files.insert(href, digest);
        }
    }
    table
}

/// Reads a primary metadata file and returns `(location href, digest)` for every package with
/// a checksum the proxy can check, a size and a location in this repository (an `xml:base`
/// elsewhere is skipped), within `limits`. Blocking.
pub fn parse_primary(
    input: impl Read,
    compression: Compression,
    limits: &IndexLimits,
) -> Result<Vec<(String, Digest)>, IndexError> {
    let reader = decode::decoded(input, compression, limits)?;
    let mut scan = PrimaryScan {
        tag_max: limits.line_bytes,
        out: Listing::new(limits.entries),
        ..PrimaryScan::default()
    };
    decode::pump(reader, limits, |buf| scan.feed(buf))?;
    Ok(scan.out.entries)
}

/// The state of a scan of primary.xml.
#[derive(Default)]
struct PrimaryScan {
    tag_max: usize,
    /// Inside `<…>`: the tag text so far (without `<`), and the open quote, if any.
    in_tag: bool,
    tag: Vec<u8>,
    quote: Option<u8>,
    /// The tag is longer than `tag_max`: its text is dropped.
    overlong: bool,
    /// The text of the `<checksum>` being read.
    capture: Option<Vec<u8>>,
    package: Option<Package>,
    out: Listing,
}

#[derive(Default)]
struct Package {
    algo: Option<Algo>,
    hex: Option<String>,
    size: Option<u64>,
    href: Option<String>,
    elsewhere: bool,
}

impl PrimaryScan {
    fn feed(&mut self, buf: &[u8]) -> Result<(), IndexError> {
        let mut rest = buf;
        while !rest.is_empty() {
            if !self.in_tag {
                let end = rest.iter().position(|&b| b == b'<').unwrap_or(rest.len());
                if let Some(text) = self.capture.as_mut()
                    && text.len() + end <= 256
                {
                    text.extend_from_slice(&rest[..end]);
                }
                if end == rest.len() {
                    return Ok(());
                }
                rest = &rest[end + 1..];
                self.in_tag = true;
                self.tag.clear();
                self.quote = None;
                self.overlong = false;
                continue;
            }
            let mut taken = rest.len();
            for (i, &b) in rest.iter().enumerate() {
                match (self.quote, b) {
                    (Some(q), b) if b == q => self.quote = None,
                    (None, b'"' | b'\'') => self.quote = Some(b),
                    (None, b'>') => {
                        taken = i;
                        break;
                    }
                    _ => {}
                }
            }
            if !self.overlong {
                if self.tag.len() + taken > self.tag_max {
                    self.overlong = true;
                    self.tag.clear();
                } else {
                    self.tag.extend_from_slice(&rest[..taken]);
                }
            }
            if taken == rest.len() {
                return Ok(());
            }
            rest = &rest[taken + 1..];
            self.in_tag = false;
            if !self.overlong {
                let tag = std::mem::take(&mut self.tag);
                self.tag_done(&String::from_utf8_lossy(&tag))?;
                self.tag = tag;
            }
        }
        Ok(())
    }

    fn tag_done(&mut self, tag: &str) -> Result<(), IndexError> {
        if let Some(name) = tag.strip_prefix('/') {
            match name.trim() {
                "checksum" => {
                    if let (Some(text), Some(p)) = (self.capture.take(), self.package.as_mut()) {
                        p.hex = Some(String::from_utf8_lossy(&text).trim().to_ascii_lowercase());
                    }
                }
                "package" => self.end_package()?,
                _ => {}
            }
            return Ok(());
        }
        let name = tag
            .split(|c: char| c.is_whitespace() || c == '/')
            .next()
            .unwrap_or("");
        let self_closing = tag.ends_with('/');
        match name {
            "package" => self.package = Some(Package::default()),
            "checksum" => {
                if let Some(p) = self.package.as_mut()
                    && p.algo.is_none()
                {
                    p.algo = attr(tag, "type").as_deref().and_then(algo_named);
                    if !self_closing {
                        self.capture = Some(Vec::new());
                    }
                }
            }
            "size" => {
                if let Some(p) = self.package.as_mut() {
                    p.size = attr(tag, "package").and_then(|s| s.parse().ok());
                }
            }
            "location" => {
                if let Some(p) = self.package.as_mut() {
                    p.href = attr(tag, "href");
                    p.elsewhere = attr(tag, "xml:base").is_some();
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn end_package(&mut self) -> Result<(), IndexError> {
        let Some(p) = self.package.take() else {
            return Ok(());
        };
        self.capture = None;
        let (Some(algo), Some(hex), Some(size), Some(href)) = (p.algo, p.hex, p.size, p.href)
        else {
            return Ok(());
        };
        let inside = !p.elsewhere
            && !href.starts_with('/')
            && !href.contains("://")
            && !href
                .split('/')
                .any(|s| s == ".." || s == "." || s.is_empty());
        if !inside || hex.len() != algo.hex_len() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(());
        }
        self.out.push(href, Digest::new(size, algo, &hex))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn primary(packages: &[(&str, &str, &str, u64)]) -> String {
        let mut xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<metadata xmlns=\"http://linux.duke.edu/metadata/common\" xmlns:rpm=\"http://linux.duke.edu/metadata/rpm\" packages=\"{}\">\n",
            packages.len()
        );
        for (href, algo, hex, size) in packages {
            xml.push_str(&format!(
                "<package type=\"rpm\">\n  <name>x</name>\n  <arch>noarch</arch>\n  <version epoch=\"0\" ver=\"1\" rel=\"1\"/>\n  <checksum type=\"{algo}\" pkgid=\"YES\">{hex}</checksum>\n  <summary>a &lt;summary&gt; with a > sign</summary>\n  <description>line one\nline two &amp; more</description>\n  <packager></packager>\n  <url></url>\n  <time file=\"1\" build=\"1\"/>\n  <size package=\"{size}\" installed=\"10\" archive=\"20\"/>\n  <location href=\"{href}\"/>\n  <format>\n    <rpm:license>MIT</rpm:license>\n    <rpm:provides><rpm:entry name=\"x\" flags=\"EQ\" epoch=\"0\" ver=\"1\" rel=\"1\"/></rpm:provides>\n    <file>/usr/share/x</file>\n  </format>\n</package>\n"
            ));
        }
        xml.push_str("</metadata>\n");
        xml
    }

    #[test]
    fn primary_lists_packages_in_any_slicing() {
        let (a, b, c) = ("a".repeat(64), "b".repeat(128), "c".repeat(40));
        let xml = primary(&[
            ("Packages/a-1-1.noarch.rpm", "sha256", &a, 100),
            ("Packages/b-1-1.noarch.rpm", "sha512", &b, 200),
            ("Packages/c-1-1.noarch.rpm", "sha", &c, 300),
            ("../escape.rpm", "sha256", &a, 1),
            ("Packages/md5.rpm", "md5", &"d".repeat(32), 1),
        ])
        .replace(
            "<location href=\"Packages/b",
            "<location xml:base=\"http://elsewhere/\" href=\"Packages/b",
        );
        let limits = IndexLimits::default();
        let want = vec![
            (
                "Packages/a-1-1.noarch.rpm".to_string(),
                Digest::new(100, Algo::Sha256, &a),
            ),
            (
                "Packages/c-1-1.noarch.rpm".to_string(),
                Digest::new(300, Algo::Sha1, &c),
            ),
        ];
        assert_eq!(
            parse_primary(xml.as_bytes(), Compression::None, &limits).unwrap(),
            want
        );
        // Fed one byte at a time, the scan finds the same.
        let mut scan = PrimaryScan {
            tag_max: 1024,
            out: Listing::new(10),
            ..PrimaryScan::default()
        };
        for b in xml.as_bytes() {
            scan.feed(std::slice::from_ref(b)).unwrap();
        }
        assert_eq!(scan.out.entries, want);
    }

    #[test]
    fn primary_is_read_compressed_and_within_limits() {
        let a = "a".repeat(64);
        let xml = primary(&[("Packages/a.rpm", "sha256", a.as_str(), 1); 3]);
        let limits = IndexLimits::default();
        let zst = ruzstd::encoding::compress_to_vec(
            xml.as_bytes(),
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        assert_eq!(
            parse_primary(&zst[..], Compression::Zstd, &limits)
                .unwrap()
                .len(),
            3
        );
        let tight = IndexLimits {
            entries: 2,
            ..IndexLimits::default()
        };
        assert!(matches!(
            parse_primary(xml.as_bytes(), Compression::None, &tight),
            Err(IndexError::Limit(_))
        ));
        // An endless tag is dropped with bounded memory; the packages after it are read.
        let mut scan = PrimaryScan {
            tag_max: 4096,
            out: Listing::new(10),
            ..PrimaryScan::default()
        };
        scan.feed(b"<junk ").unwrap();
        for _ in 0..64 {
            scan.feed(&[b'x'; 16 << 10]).unwrap();
            assert!(scan.tag.capacity() <= 2 * 4096);
        }
        scan.feed(b">").unwrap();
        scan.feed(xml.as_bytes()).unwrap();
        assert_eq!(scan.out.entries.len(), 3);
    }

    #[test]
    fn repomd_names_its_primary() {
        let h = "e".repeat(64);
        let xml = format!(
            "<repomd><data type=\"primary\"><checksum type=\"sha256\">{h}</checksum><location href=\"repodata/{h}-primary.xml.zst\"/><size>9</size></data><data type=\"filelists\"><checksum type=\"sha512\">{}</checksum><location href=\"repodata/f.xml.gz\"/><size>8</size></data></repomd>",
            "f".repeat(128)
        );
        let t = parse_repomd(&xml);
        assert_eq!(
            t.primary.as_deref(),
            Some(&*format!("repodata/{h}-primary.xml.zst"))
        );
        assert_eq!(t.files["repodata/f.xml.gz"].algo, Algo::Sha512);
    }
}
