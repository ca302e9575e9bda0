//! The digests of a body, computed while it is received: the SHA256 of every body, the hash
//! its URL pins or its index names, the digests an index may name later for a package fetched
//! before its index (SHA-1 and SHA-512 of an `.rpm`), and for an Alpine package the hashes of
//! its control segment together with the check of its data segment against the `datahash` its
//! `.PKGINFO` declares.

use std::collections::BTreeMap;

use sha1::Sha1;
use sha2::{Digest as _, Sha256, Sha512};

use super::index::{Algo, TarStream};

/// Most bytes a signature or control segment of an `.apk` may expand to.
pub const APK_CONTROL_MAX: u64 = 16 << 20;
/// Most bytes of `.PKGINFO` read.
const PKGINFO_MAX: usize = 1 << 20;
/// Most bytes of a gzip member header (its optional name, comment and extra field included);
/// real ones are a few dozen.
const GZIP_HEADER_MAX: usize = 4 << 10;

/// What to compute for one body.
#[derive(Debug, Default, Clone, Copy)]
pub struct Wanted {
    pub sha1: bool,
    pub sha512: bool,
    /// The body is an Alpine package: walk its segments.
    pub apk: bool,
}

impl Wanted {
    /// What a 200 response for `path` needs, given the hash an index or its URL already
    /// names (`named`, `None` when nothing vouches for it yet); `alpine`: the repo is an
    /// Alpine tree (elsewhere an `.apk` may be anything, an Android package for one).
    pub fn for_path(path: &str, named: Option<Algo>, alpine: bool) -> Wanted {
        let name = super::index::file_name(path);
        let rpm = name.ends_with(".rpm");
        Wanted {
            sha1: named == Some(Algo::Sha1) || (rpm && named.is_none()),
            sha512: named == Some(Algo::Sha512) || (rpm && named.is_none()),
            apk: alpine && name.ends_with(".apk"),
        }
    }
}

/// The digests of a whole body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    pub sha256: String,
    /// The others, by [`Algo::name`].
    pub others: BTreeMap<String, String>,
    /// An `.apk` whose content cannot be checked (v3 format, no `datahash`): why.
    pub unchecked: Option<&'static str>,
}

impl Digests {
    /// The digest of kind `algo`, if it was computed.
    pub fn get(&self, algo: Algo) -> Option<&str> {
        match algo {
            Algo::Sha256 => Some(&self.sha256),
            _ => self.others.get(algo.name()).map(String::as_str),
        }
    }
}

/// Hashes a body slice by slice.
pub struct Hashes {
    sha256: Sha256,
    sha1: Option<Sha1>,
    sha512: Option<Sha512>,
    apk: Option<Box<ApkWalk>>,
}

impl Hashes {
    pub fn new(wanted: Wanted) -> Hashes {
        Hashes {
            sha256: Sha256::new(),
            sha1: wanted.sha1.then(Sha1::new),
            sha512: wanted.sha512.then(Sha512::new),
            apk: wanted.apk.then(|| Box::new(ApkWalk::default())),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.sha256.update(data);
        if let Some(h) = self.sha1.as_mut() {
            h.update(data);
        }
        if let Some(h) = self.sha512.as_mut() {
            h.update(data);
        }
        if let Some(walk) = self.apk.as_mut() {
            walk.update(data);
        }
    }

    /// The digests, or why the body contradicts itself (an `.apk` that is not one, or whose
    /// data segment is not the one its control segment names).
    pub fn finish(self) -> Result<Digests, String> {
        let mut others = BTreeMap::new();
        if let Some(h) = self.sha1 {
            others.insert(Algo::Sha1.name().to_string(), hex::encode(h.finalize()));
        }
        if let Some(h) = self.sha512 {
            others.insert(Algo::Sha512.name().to_string(), hex::encode(h.finalize()));
        }
        let mut unchecked = None;
        if let Some(walk) = self.apk {
            match walk.finish()? {
                ApkVerdict::Verified {
                    sha1,
                    sha256,
                    unchecked: why,
                } => {
                    others.insert(Algo::ApkControlSha1.name().to_string(), sha1);
                    others.insert(Algo::ApkControlSha256.name().to_string(), sha256);
                    unchecked = why;
                }
                ApkVerdict::Unchecked(why) => unchecked = Some(why),
            }
        }
        Ok(Digests {
            sha256: hex::encode(self.sha256.finalize()),
            others,
            unchecked,
        })
    }
}

/// What an `.apk` turned out to be.
enum ApkVerdict {
    /// A v2 package whose data segment matches its `datahash`: the control segment's hashes
    /// (of control and data when it has no `datahash`, and then `unchecked` says so).
    Verified {
        sha1: String,
        sha256: String,
        unchecked: Option<&'static str>,
    },
    /// A package the proxy cannot check beyond its length.
    Unchecked(&'static str),
}

/// Where the walk through an `.apk` stands.
#[derive(Default)]
enum Phase {
    /// The first bytes, to tell a v2 package (gzip) from a v3 one (`ADB`).
    #[default]
    Start,
    /// Reading a gzip member's header.
    Header,
    /// Inside a member's deflate stream.
    Deflate,
    /// The 8-byte trailer of a member (`left` bytes still to come).
    Trailer { left: u8 },
    /// Past the control segment: the data segment, hashed only.
    Data,
    /// A v3 package.
    V3,
    /// Not a well-formed package.
    Broken(String),
}

/// The segments of a v2 `.apk`: gzip members, the first ones (signatures, then control)
/// decompressed to read their tar, the rest (data) hashed as it is.
#[derive(Default)]
struct ApkWalk {
    phase: Phase,
    /// Bytes of the member header read so far (or of the magic, at the start).
    header: Vec<u8>,
    inflate: Option<flate2::Decompress>,
    /// Members read before the data segment.
    members: usize,
    /// The tar of the current member, and the bytes it expanded to.
    tar: TarStream,
    expanded: u64,
    pkginfo: Vec<u8>,
    /// Hashes of the current member's bytes; from the control segment on, of every byte (the
    /// identity of a package without `datahash` covers its data too).
    member_sha1: Sha1,
    member_sha256: Sha256,
    /// The control segment's hashes, and its `datahash`.
    control: Option<(String, String)>,
    datahash: Option<String>,
    data: Sha256,
}

impl ApkWalk {
    fn broken(&mut self, why: impl Into<String>) {
        self.phase = Phase::Broken(why.into());
    }

    fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.phase {
                Phase::Start => {
                    let n = (4 - self.header.len()).min(data.len());
                    self.header.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if self.header.len() < 4 {
                        continue;
                    }
                    if self.header.starts_with(&[0x1f, 0x8b]) {
                        self.phase = Phase::Header;
                        self.start_member();
                        let magic = std::mem::take(&mut self.header);
                        self.member_bytes(&magic);
                        self.header = magic;
                    } else if self.header.starts_with(b"ADB") {
                        self.phase = Phase::V3;
                    } else {
                        self.broken("neither a gzip stream nor an apk v3 file");
                    }
                }
                Phase::Header => {
                    let n = data.len().min(256);
                    let chunk = &data[..n];
                    self.header.extend_from_slice(chunk);
                    match gzip_header_len(&self.header) {
                        Ok(Some(len)) => {
                            // The header ends inside this chunk: the rest is deflate data.
                            let used = n - (self.header.len() - len);
                            self.member_bytes(&data[..used]);
                            data = &data[used..];
                            self.header.clear();
                            self.inflate = Some(flate2::Decompress::new(false));
                            self.phase = Phase::Deflate;
                        }
                        Ok(None) if self.header.len() < GZIP_HEADER_MAX => {
                            self.member_bytes(chunk);
                            data = &data[n..];
                        }
                        Ok(None) => self.broken("a gzip header without end"),
                        Err(why) => self.broken(why),
                    }
                }
                Phase::Deflate => {
                    let used = self.inflate_some(data);
                    self.member_bytes(&data[..used]);
                    data = &data[used..];
                }
                Phase::Trailer { left } => {
                    let n = usize::from(*left).min(data.len());
                    *left -= n as u8;
                    let done = *left == 0;
                    self.member_bytes(&data[..n]);
                    data = &data[n..];
                    if done {
                        self.end_member();
                    }
                }
                Phase::Data => {
                    self.data.update(data);
                    if self.datahash.is_none() {
                        self.member_bytes(data);
                    }
                    return;
                }
                Phase::V3 | Phase::Broken(_) => return,
            }
        }
    }

    fn start_member(&mut self) {
        self.member_sha1 = Sha1::new();
        self.member_sha256 = Sha256::new();
        self.tar = TarStream::new(b".PKGINFO");
        self.expanded = 0;
        // `.PKGINFO` counts only in the control segment.
        self.pkginfo.clear();
    }

    fn member_bytes(&mut self, bytes: &[u8]) {
        self.member_sha1.update(bytes);
        self.member_sha256.update(bytes);
    }

    /// Inflates from `data` until it is used up or the member's deflate stream ends; returns
    /// the bytes used.
    fn inflate_some(&mut self, data: &[u8]) -> usize {
        let Some(mut inflate) = self.inflate.take() else {
            self.broken("inflate state lost");
            return data.len();
        };
        let mut out = [0u8; 32 << 10];
        let mut used = 0;
        loop {
            let (in_before, out_before) = (inflate.total_in(), inflate.total_out());
            let status = inflate.decompress(&data[used..], &mut out, flate2::FlushDecompress::None);
            let consumed = (inflate.total_in() - in_before) as usize;
            used += consumed;
            let produced = (inflate.total_out() - out_before) as usize;
            if consumed == 0 && produced == 0 && status.is_ok() && used < data.len() {
                self.broken("deflate data that makes no progress");
                return data.len();
            }
            self.expanded += produced as u64;
            if self.expanded > APK_CONTROL_MAX {
                self.broken(format!(
                    "a signature or control segment expands past {APK_CONTROL_MAX} bytes"
                ));
                return data.len();
            }
            let mut pkginfo = std::mem::take(&mut self.pkginfo);
            let fed = self.tar.feed(&out[..produced], |b| {
                let room = PKGINFO_MAX.saturating_sub(pkginfo.len());
                pkginfo.extend_from_slice(&b[..b.len().min(room)]);
                Ok(())
            });
            self.pkginfo = pkginfo;
            if let Err(e) = fed {
                self.broken(format!("unreadable tar in a control segment: {e}"));
                return data.len();
            }
            match status {
                Ok(flate2::Status::StreamEnd) => {
                    self.phase = Phase::Trailer { left: 8 };
                    return used;
                }
                Ok(_) if used == data.len() && produced < out.len() => {
                    self.inflate = Some(inflate);
                    return used;
                }
                Ok(_) => {}
                Err(e) => {
                    self.broken(format!("corrupt deflate data: {e}"));
                    return data.len();
                }
            }
        }
    }

    /// A member ended: a signature segment (every file in it `.SIGN.*`, as apk reads it) is
    /// followed by another member, the control segment by the data.
    fn end_member(&mut self) {
        self.members += 1;
        if self.tar.only_signatures() {
            if self.members < 4 {
                self.phase = Phase::Header;
                self.start_member();
            } else {
                self.broken("more signature segments than a package has");
            }
            return;
        }
        // `key = value` lines; the last `datahash` wins, as in apk.
        let pkginfo = String::from_utf8_lossy(&self.pkginfo);
        self.datahash = pkginfo
            .lines()
            .rev()
            .filter_map(|line| line.split_once(" = "))
            .find(|(key, _)| *key == "datahash")
            .map(|(_, value)| value.trim().to_ascii_lowercase());
        if self.datahash.is_some() {
            let sha1 = std::mem::replace(&mut self.member_sha1, Sha1::new());
            let sha256 = std::mem::replace(&mut self.member_sha256, Sha256::new());
            self.control = Some((hex::encode(sha1.finalize()), hex::encode(sha256.finalize())));
        }
        self.phase = Phase::Data;
    }

    fn finish(self) -> Result<ApkVerdict, String> {
        match self.phase {
            Phase::V3 => return Ok(ApkVerdict::Unchecked("an apk v3 package")),
            Phase::Broken(why) => return Err(format!("not a valid apk package: {why}")),
            Phase::Data => {}
            _ => return Err("not a valid apk package: it ends inside its control segment".into()),
        }
        let (Some((sha1, sha256)), Some(datahash)) = (self.control, self.datahash) else {
            // Without a datahash, the package's identity covers control and data alike: it
            // is checked against its index, but not against itself.
            return Ok(ApkVerdict::Verified {
                sha1: hex::encode(self.member_sha1.finalize()),
                sha256: hex::encode(self.member_sha256.finalize()),
                unchecked: Some("an apk package without a datahash"),
            });
        };
        if hex::encode(self.data.finalize()) != datahash {
            return Err(
                "the apk package's data segment does not match the datahash of its .PKGINFO".into(),
            );
        }
        Ok(ApkVerdict::Verified {
            sha1,
            sha256,
            unchecked: None,
        })
    }
}

/// The length of a complete gzip member header at the start of `h`: `Ok(None)` while more
/// bytes are needed. Each call scans `h` from its start: [`GZIP_HEADER_MAX`] keeps a header
/// sent byte by byte cheap.
fn gzip_header_len(h: &[u8]) -> Result<Option<usize>, &'static str> {
    if h.len() < 10 {
        return Ok(None);
    }
    if h[0] != 0x1f || h[1] != 0x8b || h[2] != 8 {
        return Err("a segment that is not a gzip member");
    }
    let flags = h[3];
    let mut at = 10;
    if flags & 4 != 0 {
        let Some(len) = h.get(at..at + 2) else {
            return Ok(None);
        };
        at += 2 + usize::from(u16::from_le_bytes([len[0], len[1]]));
    }
    for flag in [8u8, 16] {
        if flags & flag != 0 {
            let Some(end) = h.get(at..).and_then(|r| r.iter().position(|&b| b == 0)) else {
                return Ok(None);
            };
            at += end + 1;
        }
    }
    if flags & 2 != 0 {
        at += 2;
    }
    Ok((h.len() >= at).then_some(at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{apk, gzip, tar};

    fn digest(body: &[u8], chunk: usize) -> Result<Digests, String> {
        let mut h = Hashes::new(Wanted::for_path("x/pkg-1-r0.apk", None, true));
        for piece in body.chunks(chunk) {
            h.update(piece);
        }
        h.finish()
    }

    #[test]
    fn an_apk_yields_its_control_hashes_in_any_slicing() {
        let payload = noise(200_000);
        let (file, control) = apk(&[("usr/share/x/README", b"hi"), ("big", &payload)], false);
        for chunk in [1, 7, 512, 4096, file.len()] {
            let d = digest(&file, chunk).unwrap();
            assert_eq!(
                d.get(Algo::ApkControlSha1).unwrap(),
                hex::encode(Sha1::digest(&control)),
                "chunk {chunk}"
            );
            assert_eq!(
                d.get(Algo::ApkControlSha256).unwrap(),
                hex::encode(Sha256::digest(&control))
            );
            assert_eq!(d.sha256, hex::encode(Sha256::digest(&file)));
            assert_eq!(d.unchecked, None);
        }
    }

    fn noise(len: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn an_apk_that_contradicts_itself_is_refused() {
        let (file, _) = apk(&[("a", b"a")], true);
        assert!(digest(&file, 100).unwrap_err().contains("datahash"));
        // A changed byte in the data segment.
        let (mut file, _) = apk(&[("a", &noise(5000))], false);
        let last = file.len() - 20;
        file[last] ^= 1;
        assert!(digest(&file, 100).is_err());
        // Cut inside the control segment, garbage, and the v3 format.
        let (file, _) = apk(&[("a", b"a")], false);
        assert!(digest(&file[..60], 100).is_err());
        assert!(digest(b"garbage that is no package", 100).is_err());
        let v3 = digest(b"ADB.pckg and the rest", 3).unwrap();
        assert_eq!(v3.unchecked, Some("an apk v3 package"));
        assert_eq!(v3.get(Algo::ApkControlSha1), None);
    }

    #[test]
    fn a_pkginfo_hidden_in_a_signature_segment_does_not_count() {
        // A first member with a signature and a .PKGINFO vouching for forged data, then a
        // genuine control segment, then the forged data: apk takes the first member for the
        // control segment, and so does the proxy.
        let forged = gzip(&tar(&[("usr/bin/x", b"forged")], false));
        let pkginfo = format!("datahash = {}\n", hex::encode(Sha256::digest(&forged)));
        let first = gzip(&tar(
            &[
                (".SIGN.RSA.k.rsa.pub", b"sig"),
                (".PKGINFO", pkginfo.as_bytes()),
            ],
            true,
        ));
        let (genuine, control) = apk(&[("usr/bin/x", b"genuine")], false);
        let mut file = first.clone();
        file.extend_from_slice(&control);
        file.extend_from_slice(&forged);
        let err = digest(&file, 64).unwrap_err();
        assert!(err.contains("datahash"), "{err}");
        assert!(digest(&genuine, 64).is_ok());
    }

    #[test]
    fn without_a_datahash_the_identity_covers_control_and_data() {
        let data = gzip(&tar(&[("a", b"a")], false));
        let control = gzip(&tar(&[(".PKGINFO", b"pkgname = x\n")], true));
        let mut file = gzip(&tar(&[(".SIGN.RSA.k.rsa.pub", b"sig")], true));
        file.extend_from_slice(&control);
        file.extend_from_slice(&data);
        let whole = [control.as_slice(), &data].concat();
        for chunk in [1, 100, file.len()] {
            let d = digest(&file, chunk).unwrap();
            assert_eq!(
                d.get(Algo::ApkControlSha1).unwrap(),
                hex::encode(Sha1::digest(&whole))
            );
            assert_eq!(d.unchecked, Some("an apk package without a datahash"));
        }
        // Outside an Alpine tree an .apk is just a file.
        assert!(!Wanted::for_path("android/app.apk", None, false).apk);
    }

    #[test]
    fn a_control_segment_bomb_stops_at_the_limit() {
        let bomb = gzip(&vec![0u8; APK_CONTROL_MAX as usize + (1 << 20)]);
        assert!(bomb.len() < 1 << 20);
        let err = digest(&bomb, 64 << 10).unwrap_err();
        assert!(err.contains("expands past"), "{err}");
    }

    #[test]
    fn rpms_get_every_digest_an_index_may_name() {
        let w = Wanted::for_path("Packages/a.rpm", None, false);
        assert!(w.sha1 && w.sha512 && !w.apk);
        let w = Wanted::for_path("Packages/a.rpm", Some(Algo::Sha256), false);
        assert!(!w.sha1 && !w.sha512);
        let w = Wanted::for_path("pool/a.deb", None, false);
        assert!(!w.sha1 && !w.sha512 && !w.apk);
        let mut h = Hashes::new(Wanted::for_path("Packages/a.rpm", None, false));
        h.update(b"abc");
        let d = h.finish().unwrap();
        assert_eq!(
            d.get(Algo::Sha1).unwrap(),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(d.get(Algo::Sha512).unwrap().len(), 128);
    }
}
