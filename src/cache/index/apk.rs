//! Alpine indexes: `APKINDEX.tar.gz`, a gzip stream (a signature segment, then the index
//! segment) holding a tar archive whose `APKINDEX` member lists every package of its
//! directory: `P:` name, `V:` version, `S:` size and `C:` the hash of the package's control
//! segment (`Q1` + base64 of a SHA-1, or `Q2` + base64 of a SHA-256).

use std::io::Read;

use base64::Engine as _;

use super::decode::{self, Compression, Lines};
use super::{Algo, Digest, IndexError, Listing};
use crate::config::IndexLimits;

/// Reads an APKINDEX.tar.gz and returns `(file name, digest)` for every package it lists
/// with a size and a control hash, within `limits`. Blocking.
pub fn parse_apkindex(
    input: impl Read,
    limits: &IndexLimits,
) -> Result<Vec<(String, Digest)>, IndexError> {
    let reader = decode::decoded(input, Compression::Gzip, limits)?;
    let mut tar = TarStream::new(b"APKINDEX");
    let mut lines = Lines::new(limits.line_bytes);
    let mut records = Records {
        out: Listing::new(limits.entries),
        ..Records::default()
    };
    decode::pump(reader, limits, |buf| {
        tar.feed(buf, |member| lines.feed(member, |line| records.line(line)))
    })?;
    lines.finish(|line| records.line(line))?;
    records.end()?;
    Ok(records.out.entries)
}

/// The body of one named member of a tar stream, handed out in slices; other members are
/// skipped. Segments that are cut (no end-of-archive blocks) and concatenated, as apk writes
/// them, read as one stream.
#[derive(Default)]
pub struct TarStream {
    want: &'static [u8],
    /// A member (extended headers aside) was seen.
    any_member: bool,
    /// A member whose name does not start with `.SIGN.` was seen.
    unsigned_names: bool,
    header: Vec<u8>,
    /// Bytes of the current member's body still to come, and whether it is the index.
    body_left: u64,
    wanted: bool,
    /// Padding to the next 512-byte block.
    pad_left: u64,
}

impl TarStream {
    /// A stream whose member named `want` is handed out.
    pub fn new(want: &'static [u8]) -> TarStream {
        TarStream {
            want,
            ..TarStream::default()
        }
    }

    /// Whether every member so far is a signature (`.SIGN.*`), as in an apk signature segment.
    pub fn only_signatures(&self) -> bool {
        self.any_member && !self.unsigned_names
    }

    /// Reads `buf`, handing the wanted member's body to `member`.
    pub fn feed(
        &mut self,
        mut buf: &[u8],
        mut member: impl FnMut(&[u8]) -> Result<(), IndexError>,
    ) -> Result<(), IndexError> {
        while !buf.is_empty() {
            if self.body_left > 0 {
                let n = (self.body_left.min(buf.len() as u64)) as usize;
                if self.wanted {
                    member(&buf[..n])?;
                }
                self.body_left -= n as u64;
                buf = &buf[n..];
                continue;
            }
            if self.pad_left > 0 {
                let n = (self.pad_left.min(buf.len() as u64)) as usize;
                self.pad_left -= n as u64;
                buf = &buf[n..];
                continue;
            }
            let n = (512 - self.header.len()).min(buf.len());
            self.header.extend_from_slice(&buf[..n]);
            buf = &buf[n..];
            if self.header.len() < 512 {
                continue;
            }
            let header = std::mem::take(&mut self.header);
            if header.iter().all(|&b| b == 0) {
                continue;
            }
            let name = &header[..100];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(100)];
            let size = octal(&header[124..136]).ok_or_else(|| {
                IndexError::Io(std::io::Error::other("tar header with an unreadable size"))
            })?;
            let kind = header[156];
            // Extended headers (pax, GNU long names) describe the next member.
            if !matches!(kind, b'x' | b'g' | b'L' | b'K') {
                self.any_member = true;
                self.unsigned_names |= !name.starts_with(b".SIGN.");
            }
            self.wanted = matches!(kind, b'0' | 0) && name == self.want;
            self.body_left = size;
            self.pad_left = (512 - size % 512) % 512;
        }
        Ok(())
    }
}

/// A tar number field: octal digits, spaces and NULs around them.
fn octal(field: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

/// Decodes an apk checksum (`Q1…`, `Q2…`) into its algorithm and hex digest.
pub fn control_hash(field: &str) -> Option<(Algo, String)> {
    let (algo, b64) = match field.get(..2)? {
        "Q1" => (Algo::ApkControlSha1, &field[2..]),
        "Q2" => (Algo::ApkControlSha256, &field[2..]),
        _ => return None,
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    (bytes.len() * 2 == algo.hex_len()).then(|| (algo, hex::encode(bytes)))
}

/// The fields of the record being read, and the entries read so far.
#[derive(Default)]
struct Records {
    name: Option<String>,
    version: Option<String>,
    size: Option<u64>,
    hash: Option<(Algo, String)>,
    out: Listing,
}

impl Records {
    fn line(&mut self, line: &[u8]) -> Result<(), IndexError> {
        if line.is_empty() {
            return self.end();
        }
        let Ok(text) = std::str::from_utf8(line) else {
            return Ok(());
        };
        let Some((field, value)) = text.split_once(':') else {
            return Ok(());
        };
        match field {
            "P" => self.name = Some(value.to_string()),
            "V" => self.version = Some(value.to_string()),
            "S" => self.size = value.parse().ok(),
            "C" => self.hash = control_hash(value),
            _ => {}
        }
        Ok(())
    }

    fn end(&mut self) -> Result<(), IndexError> {
        let (name, version, size, hash) = (
            self.name.take(),
            self.version.take(),
            self.size.take(),
            self.hash.take(),
        );
        let (Some(name), Some(version), Some(size), Some((algo, hex))) =
            (name, version, size, hash)
        else {
            return Ok(());
        };
        if name.contains('/') || version.contains('/') {
            return Ok(());
        }
        self.out.push(
            format!("{name}-{version}.apk"),
            Digest::new(size, algo, &hex),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{gzip, tar};

    #[test]
    fn apkindex_lists_packages_by_file_name() {
        let sha1 = [7u8; 20];
        let sha256 = [9u8; 32];
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let index = format!(
            "C:Q1{}\nP:musl\nV:1.2.4-r2\nA:x86_64\nS:383152\nT:the musl c library\n\nC:Q2{}\nP:busybox\nV:1.36.1-r5\nS:500\n\nP:broken\nV:1\nS:1\nC:Q1notbase64!\n\nP:nohash\nV:1\nS:1\n",
            b64(&sha1),
            b64(&sha256)
        );
        let mut file = gzip(&tar(&[(".SIGN.RSA.key.rsa.pub", b"signature")], true));
        file.extend(gzip(&tar(
            &[("DESCRIPTION", b"v3.19"), ("APKINDEX", index.as_bytes())],
            false,
        )));
        let got = parse_apkindex(&file[..], &IndexLimits::default()).unwrap();
        assert_eq!(
            got,
            vec![
                (
                    "musl-1.2.4-r2.apk".to_string(),
                    Digest::new(383152, Algo::ApkControlSha1, &hex::encode(sha1))
                ),
                (
                    "busybox-1.36.1-r5.apk".to_string(),
                    Digest::new(500, Algo::ApkControlSha256, &hex::encode(sha256))
                ),
            ]
        );
        // Slicing does not matter.
        let mut tar_stream = TarStream::new(b"APKINDEX");
        let mut seen = Vec::new();
        let plain = tar(&[("APKINDEX", index.as_bytes())], false);
        for chunk in plain.chunks(7) {
            tar_stream
                .feed(chunk, |b| {
                    seen.extend_from_slice(b);
                    Ok(())
                })
                .unwrap();
        }
        assert_eq!(seen, index.as_bytes());
    }
}
