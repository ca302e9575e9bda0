//! Builders of package-format fixtures for the unit tests and `tests/it` (the server does not
//! use them): gzip members, ustar archives and Alpine v2 packages, built the way real tools
//! lay them out.

use std::io::Write;

use sha2::{Digest, Sha256};

/// `data` as one gzip member.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).expect("writing to a Vec");
    gz.finish().expect("writing to a Vec")
}

/// A ustar archive of `members` (name, body); `cut`: without the end-of-archive blocks, as the
/// signature and control segments of an `.apk` are.
pub fn tar(members: &[(&str, &[u8])], cut: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, body) in members {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[108..115].copy_from_slice(b"0000000");
        h[116..123].copy_from_slice(b"0000000");
        h[124..135].copy_from_slice(format!("{:011o}", body.len()).as_bytes());
        h[136..147].copy_from_slice(b"00000000000");
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(body);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    if !cut {
        out.extend_from_slice(&[0u8; 1024]);
    }
    out
}

/// An Alpine v2 package `x-1.0-r0` holding `data_files`: a signature segment, a control
/// segment whose `.PKGINFO` names the data segment's SHA-256 (a wrong one when `wrong_hash`),
/// and the data segment. Returns the package and its control segment (what `C:` hashes).
pub fn apk(data_files: &[(&str, &[u8])], wrong_hash: bool) -> (Vec<u8>, Vec<u8>) {
    let data = gzip(&tar(data_files, false));
    let hash = if wrong_hash {
        "0".repeat(64)
    } else {
        hex::encode(Sha256::digest(&data))
    };
    let pkginfo = format!("pkgname = x\npkgver = 1.0-r0\ndatahash = {hash}\n");
    let control = gzip(&tar(&[(".PKGINFO", pkginfo.as_bytes())], true));
    let mut file = gzip(&tar(&[(".SIGN.RSA.test.rsa.pub", b"signature")], true));
    file.extend_from_slice(&control);
    file.extend_from_slice(&data);
    (file, control)
}
