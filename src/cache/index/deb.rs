//! APT indexes: the SHA256 section of a Release file, and the package stanzas of a Packages
//! file.

use std::io::Read;

use super::decode::{self, Compression, Lines};
use super::{Algo, Digest, IndexError, Listing, ReleaseTable};
use crate::config::IndexLimits;

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
                let digest = Digest::new(size, Algo::Sha256, hash);
                table.by_hash.insert(digest.hex.clone(), path.to_string());
                table.files.insert(path.to_string(), digest);
            }
        } else {
            in_sha256 = line.trim_end() == "SHA256:";
        }
    }
    table
}

/// Reads a Packages index and returns `(Filename, digest)` for each stanza that has a
/// Filename, a Size and a SHA256, within `limits`: decompressed and parsed as a stream, so
/// memory stays bounded whatever the index says. Blocking.
pub fn parse_packages(
    input: impl Read,
    compression: Compression,
    limits: &IndexLimits,
) -> Result<Vec<(String, Digest)>, IndexError> {
    let reader = decode::decoded(input, compression, limits)?;
    let mut lines = Lines::new(limits.line_bytes);
    let mut sink = Stanzas {
        out: Listing::new(limits.entries),
        ..Stanzas::default()
    };
    decode::pump(reader, limits, |buf| {
        lines.feed(buf, |line| sink.line(line))
    })?;
    lines.finish(|line| sink.line(line))?;
    sink.end_stanza()?;
    Ok(sink.out.entries)
}

/// The fields of the stanza being read, and the entries read so far.
#[derive(Default)]
struct Stanzas {
    filename: Option<String>,
    sha256: Option<String>,
    size: Option<u64>,
    out: Listing,
}

impl Stanzas {
    fn line(&mut self, line: &[u8]) -> Result<(), IndexError> {
        if line.is_empty() {
            return self.end_stanza();
        }
        let Ok(text) = std::str::from_utf8(line) else {
            return Ok(());
        };
        if let Some(v) = text.strip_prefix("Filename:") {
            self.filename = Some(v.trim().to_string());
        } else if let Some(v) = text.strip_prefix("SHA256:") {
            self.sha256 = Some(v.trim().to_string());
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
            self.out
                .push(filename, Digest::new(size, Algo::Sha256, &sha256))?;
        }
        self.filename = None;
        self.sha256 = None;
        self.size = None;
        Ok(())
    }
}
