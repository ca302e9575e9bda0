#!/usr/bin/env python3
"""Alpine v2 packages and index signatures (stdlib + openssl CLI): the release's .apk
(scripts/release.sh) and the packages of the apk end-to-end suite.

Commands:
  keygen DIR NAME                 DIR/NAME.rsa (private key) and DIR/NAME.rsa.pub (what apk trusts)
  build OUTDIR KEY NAME VERSION ARCH [--depends DEP]... [--random-mib N] [--text PATH=TEXT]...
        [--file PATH=SOURCE]... [--description TEXT] [--license SPDX]
                                  OUTDIR/NAME-VERSION.apk, signed by KEY (KEY "-": unsigned,
                                  installed with apk add --allow-untrusted); --file takes the
                                  content and the permission bits of SOURCE
  sign FILE KEY                   prepend a signature stream to FILE (an APKINDEX.tar.gz), in place

A v2 .apk is three gzip streams one after the other:
  1. signature: a tar holding `.SIGN.RSA.<key name>.pub` = RSA/SHA-1 signature of stream 2's bytes
  2. control:   a tar holding `.PKGINFO` (name, version, arch, depends, datahash = SHA-256 of stream 3)
  3. data:      the package's files as a tar; each regular file carries the pax header
                APK-TOOLS.checksum.SHA1 (hex SHA-1 of its content)
Streams 1 and 2 are tar fragments without the closing zero blocks, so that the concatenation
reads as one tar archive. A signed index is stream 1 followed by the unsigned APKINDEX.tar.gz.
"""
import argparse
import gzip
import hashlib
import io
import os
import subprocess
import sys
import tarfile

EPOCH = 1704067200  # fixed mtimes: reproducible packages


def _entry(name, size=0, kind=tarfile.REGTYPE, mode=0o644, pax=None):
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode, info.mtime = kind, size, mode, EPOCH
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    if pax:
        info.pax_headers = dict(pax)
    return info


def _tar(entries, fmt, keep_end):
    """entries: [(TarInfo, bytes or None)] -> tar bytes; keep_end=False drops the end-of-archive."""
    out = io.BytesIO()
    tf = tarfile.open(fileobj=out, mode="w", format=fmt)
    for info, content in entries:
        tf.addfile(info, io.BytesIO(content) if content is not None else None)
    if keep_end:
        tf.close()
        return out.getvalue()
    # tarfile writes the two zero blocks and record padding only on close(): take the bytes before.
    raw = out.getvalue()
    tf.fileobj = io.BytesIO()  # let close() write its trailer somewhere harmless
    tf.close()
    return raw


def _gzip(raw):
    # small streams as abuild does (level 9); large random payloads at level 1 to stay fast
    return gzip.compress(raw, compresslevel=9 if len(raw) < 1 << 20 else 1, mtime=EPOCH)


def _signature_stream(signed_bytes, key):
    sig = subprocess.run(["openssl", "dgst", "-sha1", "-sign", key], input=signed_bytes,
                         capture_output=True, check=True).stdout
    name = ".SIGN.RSA." + os.path.basename(key) + ".pub"
    return _gzip(_tar([(_entry(name, len(sig)), sig)], tarfile.USTAR_FORMAT, keep_end=False))


def keygen(directory, name):
    os.makedirs(directory, exist_ok=True)
    private = os.path.join(directory, name + ".rsa")
    subprocess.run(["openssl", "genrsa", "-out", private, "2048"], capture_output=True, check=True)
    subprocess.run(["openssl", "rsa", "-in", private, "-pubout", "-out", private + ".pub"],
                   capture_output=True, check=True)
    print(private + ".pub")


def build(outdir, key, name, version, arch, depends, random_mib, texts, sources=(), description=None, license="MIT"):
    files = dict(texts)
    modes = {}
    for path, source in sources:
        with open(source, "rb") as f:
            files[path] = f.read()
        modes[path] = os.stat(source).st_mode & 0o7777
    if not files:
        files = {f"usr/share/{name}/README": f"{name} {version}\n".encode()}
    if random_mib:
        files[f"usr/share/{name}/payload.bin"] = os.urandom(random_mib << 20)
    entries, seen_dirs, installed = [], set(), 0
    for path in sorted(files):
        parts = path.split("/")
        for depth in range(1, len(parts)):
            d = "/".join(parts[:depth])
            if d not in seen_dirs:
                seen_dirs.add(d)
                entries.append((_entry(d, kind=tarfile.DIRTYPE, mode=0o755), None))
        content = files[path]
        pax = {"APK-TOOLS.checksum.SHA1": hashlib.sha1(content).hexdigest()}
        entries.append((_entry(path, len(content), mode=modes.get(path, 0o644), pax=pax), content))
        installed += len(content)
    data = _gzip(_tar(entries, tarfile.PAX_FORMAT, keep_end=True))
    info = [
        "# packaging/apkpkg.py",
        f"pkgname = {name}",
        f"pkgver = {version}",
        f"pkgdesc = {description or 'apt-proxy end-to-end test package ' + name}",
        "url = http://test.invalid/",
        f"builddate = {EPOCH}",
        "packager = apt-proxy e2e <apk@test.invalid>",
        f"size = {installed}",
        f"arch = {arch}",
        f"origin = {name}",
        f"license = {license}",
    ]
    info += [f"depend = {d}" for d in depends]
    info.append(f"datahash = {hashlib.sha256(data).hexdigest()}")
    pkginfo = ("\n".join(info) + "\n").encode()
    control = _gzip(_tar([(_entry(".PKGINFO", len(pkginfo)), pkginfo)], tarfile.PAX_FORMAT, keep_end=False))
    os.makedirs(outdir, exist_ok=True)
    out = os.path.join(outdir, f"{name}-{version}.apk")
    with open(out, "wb") as f:
        signature = b"" if key == "-" else _signature_stream(control, key)
        f.write(signature + control + data)
    print(out)


def sign(path, key):
    with open(path, "rb") as f:
        body = f.read()
    signed = _signature_stream(body, key) + body
    with open(path + ".tmp", "wb") as f:
        f.write(signed)
    os.replace(path + ".tmp", path)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    k = sub.add_parser("keygen")
    k.add_argument("directory")
    k.add_argument("name")
    b = sub.add_parser("build")
    for arg in ("outdir", "key", "name", "version", "arch"):
        b.add_argument(arg)
    b.add_argument("--depends", action="append", default=[])
    b.add_argument("--random-mib", type=int, default=0)
    b.add_argument("--text", action="append", default=[], help="PATH=TEXT")
    b.add_argument("--file", action="append", default=[], help="PATH=SOURCE")
    b.add_argument("--description")
    b.add_argument("--license", default="MIT")
    s = sub.add_parser("sign")
    s.add_argument("file")
    s.add_argument("key")
    a = ap.parse_args(argv)
    if a.cmd == "keygen":
        keygen(a.directory, a.name)
    elif a.cmd == "build":
        texts = [(t.split("=", 1)[0], t.split("=", 1)[1].encode()) for t in a.text]
        sources = [tuple(f.split("=", 1)) for f in a.file]
        build(a.outdir, a.key, a.name, a.version, a.arch, a.depends, a.random_mib, texts,
              sources, a.description, a.license)
    else:
        sign(a.file, a.key)


if __name__ == "__main__":
    main(sys.argv[1:])
