//! Reading an index within bounds: decompression (gzip, xz, zstd) whose output and memory are
//! capped, fed to a parser in slices so that nothing is held whole.

use std::io::{self, BufRead, BufReader, Read};

use super::IndexError;
use crate::config::IndexLimits;

/// How an index file is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Xz,
    Zstd,
}

impl Compression {
    /// The compression a file name's extension says; `None` (not [`Compression::None`]) for
    /// one the proxy cannot read (bzip2, lzma).
    pub fn of_name(name: &str) -> Option<Compression> {
        let ext = name.rsplit_once('.').map_or("", |(_, e)| e);
        match ext {
            "gz" => Some(Compression::Gzip),
            "xz" => Some(Compression::Xz),
            "zst" => Some(Compression::Zstd),
            "bz2" | "lzma" | "lz4" | "Z" => None,
            _ => Some(Compression::None),
        }
    }
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

/// The window a zstd frame header declares (the memory its decoder needs), from the first
/// bytes of the file; `None` when they are not a zstd frame header.
fn zstd_window(header: &[u8]) -> Option<u64> {
    if header.get(..4)? != [0x28, 0xb5, 0x2f, 0xfd] {
        return None;
    }
    let descriptor = *header.get(4)?;
    let single_segment = descriptor & 0x20 != 0;
    if !single_segment {
        let wd = *header.get(5)?;
        let base = 1u64 << (10 + u32::from(wd >> 3));
        return Some(base + base / 8 * u64::from(wd & 7));
    }
    // A single segment: the window is the content size, after the dictionary id.
    let dict_len = [0usize, 1, 2, 4][usize::from(descriptor & 3)];
    let fcs_len = [1usize, 2, 4, 8][usize::from(descriptor >> 6)];
    let at = 5 + dict_len;
    let field = header.get(at..at + fcs_len)?;
    let mut size = 0u64;
    for (i, b) in field.iter().enumerate() {
        size |= u64::from(*b) << (8 * i);
    }
    Some(if fcs_len == 2 { size + 256 } else { size })
}

/// `input` decompressed, within `limits`: at most `unpacked_bytes` of output, and a decoder
/// dictionary (xz) or window (zstd) of at most `xz_memory_kib`.
pub fn decoded<'a>(
    input: impl Read + 'a,
    compression: Compression,
    limits: &IndexLimits,
) -> Result<Box<dyn Read + 'a>, IndexError> {
    let mut input = BufReader::with_capacity(64 << 10, input);
    let decoded: Box<dyn Read + 'a> = match compression {
        Compression::None => Box::new(input),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
        Compression::Xz => Box::new(lzma_rust2::XzReader::new_mem_limit(
            input,
            true,
            limits.xz_memory_kib,
        )),
        Compression::Zstd => {
            let window = zstd_window(input.fill_buf()?)
                .ok_or_else(|| IndexError::Io(io::Error::other("not a zstd frame")))?;
            if window > u64::from(limits.xz_memory_kib) * 1024 {
                return Err(IndexError::Limit(format!(
                    "zstd window larger than {} KiB",
                    limits.xz_memory_kib
                )));
            }
            Box::new(
                ruzstd::decoding::StreamingDecoder::new(input)
                    .map_err(|e| IndexError::Io(io::Error::other(e)))?,
            )
        }
    };
    Ok(Box::new(Bounded {
        inner: decoded,
        left: limits.unpacked_bytes,
        limit: limits.unpacked_bytes,
    }))
}

/// Reads `reader` to its end in 64 KiB slices, handing each to `feed`; the limit errors of
/// [`decoded`] become [`IndexError::Limit`].
pub fn pump(
    mut reader: impl Read,
    limits: &IndexLimits,
    mut feed: impl FnMut(&[u8]) -> Result<(), IndexError>,
) -> Result<(), IndexError> {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(()),
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
        feed(&buf[..n])?;
    }
}

/// Splits a byte stream into lines of at most `max` bytes: a longer line is skipped whole,
/// with at most `max` bytes buffered, so an endless line costs no memory.
#[derive(Default)]
pub struct Lines {
    partial: Vec<u8>,
    /// The line being read is longer than `max`: skip to its end.
    overlong: bool,
    max: usize,
}

impl Lines {
    pub fn new(max: usize) -> Lines {
        Lines {
            max,
            ..Lines::default()
        }
    }

    /// Hands every complete line in `buf` (without its `\n` or `\r`) to `line`.
    pub fn feed(
        &mut self,
        buf: &[u8],
        mut line: impl FnMut(&[u8]) -> Result<(), IndexError>,
    ) -> Result<(), IndexError> {
        let mut rest = buf;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            let piece = &rest[..i];
            rest = &rest[i + 1..];
            if std::mem::take(&mut self.overlong) {
                self.partial.clear();
                continue;
            }
            if self.partial.is_empty() {
                line(trim_cr(piece))?;
            } else if self.partial.len() + piece.len() <= self.max {
                self.partial.extend_from_slice(piece);
                let whole = std::mem::take(&mut self.partial);
                line(trim_cr(&whole))?;
            } else {
                self.partial.clear();
            }
        }
        if !self.overlong {
            if self.partial.len() + rest.len() > self.max {
                self.partial.clear();
                self.overlong = true;
            } else {
                self.partial.extend_from_slice(rest);
            }
        }
        Ok(())
    }

    /// The last line, when the input does not end with `\n`.
    pub fn finish(
        &mut self,
        mut line: impl FnMut(&[u8]) -> Result<(), IndexError>,
    ) -> Result<(), IndexError> {
        if !self.partial.is_empty() && !self.overlong {
            let whole = std::mem::take(&mut self.partial);
            line(trim_cr(&whole))?;
        }
        Ok(())
    }

    /// Bytes held for an unfinished line.
    #[cfg(test)]
    pub fn buffered(&self) -> usize {
        self.partial.capacity()
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zstd_windows_are_read_from_the_frame_header() {
        // Window descriptor: exponent 10 (1 MiB << ... ) mantissa 0 → 2^20.
        assert_eq!(
            zstd_window(&[0x28, 0xb5, 0x2f, 0xfd, 0x00, 10 << 3]),
            Some(1 << 20)
        );
        // Single segment, 1-byte content size.
        assert_eq!(zstd_window(&[0x28, 0xb5, 0x2f, 0xfd, 0x20, 200]), Some(200));
        assert_eq!(zstd_window(b"not zstd"), None);
    }
}
