#!/usr/bin/env bash
# Builds the release artefacts for this machine's architecture into dist/ (emptied first):
#   apt-proxy-<version>-<arch>-linux.tar.gz  the static binary, README, config templates, the unit
#   apt-proxy_<version>-1_<debarch>.deb      cargo deb: hardened systemd unit, conffiles in /etc
#   apt-proxy-<version>-1.<arch>.rpm         rpmbuild, packaging/apt-proxy.spec
#   apt-proxy-<version>-r0.apk               packaging/apkpkg.py (unsigned: apk add --allow-untrusted)
#   apt-proxy-image.tar                      the FROM scratch image (Dockerfile) as a docker-archive,
#                                            tagged apt-proxy:<version>: `podman load -i` / `docker load -i`
#   SHA256SUMS                               sha256sum of all of the above
# The binary is a static-pie glibc build (RUSTFLAGS=-C target-feature=+crt-static), so one binary
# runs on Debian, RPM systems, Alpine and in a scratch image; it must be at most 8 MiB.
# Installs what it needs (Debian packages, cargo-deb). Run as root on Debian 12.
#   SKIP_IMAGE=1  no image (no buildah)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh

say() { printf 'release: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

CARGO_DEB_VERSION=3.8.0
MAX_BINARY=$((8 * 1024 * 1024))
ARCH=$(uname -m)
TRIPLE=$ARCH-unknown-linux-gnu
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
[ -n "$VERSION" ] || die "no version in Cargo.toml"
DIST=$PWD/dist
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

debs=(rpm python3 openssl ca-certificates dpkg-dev)
[ "${SKIP_IMAGE:-0}" = 1 ] || debs+=(buildah)
deps_debs "${debs[@]}"
deps_cargo_tool cargo-deb "$CARGO_DEB_VERSION"

say "static binary for $TRIPLE"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$TRIPLE" --bin apt-proxy
BIN=target/$TRIPLE/release/apt-proxy
size=$(stat -c %s "$BIN")
say "$BIN: $size bytes ($(file -b "$BIN" 2>/dev/null | cut -d, -f1-2 || echo static))"
[ "$size" -le "$MAX_BINARY" ] || die "the binary is $size bytes, over 8 MiB"
if ldd "$BIN" >/dev/null 2>&1 && ! ldd "$BIN" 2>&1 | grep -q 'statically linked'; then
  die "$BIN is dynamically linked"
fi
"$BIN" --version >/dev/null

rm -rf "$DIST"
mkdir -p "$DIST"

# The installed tree the .rpm and the .apk carry (the .deb's list is Cargo.toml's, for cargo deb).
TREE=$WORK/tree
install -D -m 0755 "$BIN" "$TREE/usr/bin/apt-proxy"
install -D -m 0644 packaging/apt-proxy.yaml "$TREE/etc/apt-proxy/apt-proxy.yaml"
install -D -m 0644 config/distributions.yaml "$TREE/etc/apt-proxy/distributions.yaml"
install -D -m 0644 packaging/apt-proxy.service "$TREE/usr/lib/systemd/system/apt-proxy.service"
install -D -m 0644 config/apt-proxy.yaml "$TREE/usr/share/doc/apt-proxy/examples/apt-proxy.yaml"
install -D -m 0644 README.md "$TREE/usr/share/doc/apt-proxy/README.md"

say "tarball"
name=apt-proxy-$VERSION-$ARCH-linux
mkdir -p "$WORK/$name"
install -m 0755 "$BIN" "$WORK/$name/apt-proxy"
install -m 0644 README.md config/apt-proxy.yaml config/distributions.yaml packaging/apt-proxy.service "$WORK/$name/"
tar -C "$WORK" --owner=0 --group=0 --numeric-owner -czf "$DIST/$name.tar.gz" "$name"

say "deb (cargo deb)"
cargo deb --no-build --no-strip --target "$TRIPLE" --output "$DIST/" >/dev/null

say "rpm (rpmbuild)"
rpmbuild -bb --quiet \
  --define "_topdir $WORK/rpm" \
  --define "_rpmdir $DIST" \
  --define "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm" \
  --define "ap_version $VERSION" \
  --define "ap_tree $TREE" \
  --target "$ARCH" \
  packaging/apt-proxy.spec >/dev/null

say "apk (packaging/apkpkg.py)"
apk_files=()
while read -r f; do apk_files+=(--file "$f=$TREE/$f"); done < <(cd "$TREE" && find . -type f ! -path './usr/lib/systemd/*' -printf '%P\n' | sort)
python3 packaging/apkpkg.py build "$DIST" - apt-proxy "$VERSION-r0" "$ARCH" \
  --description "Caching proxy for APT, YUM/DNF and APK package managers" --license Apache-2.0 \
  "${apk_files[@]}" >/dev/null

if [ "${SKIP_IMAGE:-0}" != 1 ]; then
  say "image (buildah, Dockerfile with BINARY=prebuilt)"
  ctx=$WORK/image
  mkdir -p "$ctx/empty"
  install -m 0755 "$BIN" "$ctx/apt-proxy"
  install -m 0644 /etc/ssl/certs/ca-certificates.crt "$ctx/ca-certificates.crt"
  # No credentials of the remote's URL in a label.
  source_url=$(git remote get-url origin 2>/dev/null | sed -E 's#://[^/@]*@#://#' || true)
  # buildah 1.28 leaves a working container (and its image) behind for the aliased stage
  # `FROM ${BINARY} AS binary`: whatever this build leaves is removed below.
  before=$(buildah containers --format '{{.ContainerID}}' | sort)
  buildah bud --quiet --format docker --build-arg BINARY=prebuilt \
    --build-arg VERSION="$VERSION" \
    --build-arg REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
    --build-arg SOURCE="${source_url:-unknown}" \
    --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    -t "localhost/apt-proxy:$VERSION" -f Dockerfile "$ctx" >/dev/null
  buildah push --quiet "localhost/apt-proxy:$VERSION" \
    "docker-archive:$DIST/apt-proxy-image.tar:apt-proxy:$VERSION" >/dev/null
  buildah rmi "localhost/apt-proxy:$VERSION" >/dev/null   # the archive is the artefact
  buildah containers --format '{{.ContainerID}} {{.ImageID}}' | sort | while read -r c image; do
    grep -qx "$c" <<<"$before" && continue
    buildah rm "$c" >/dev/null && buildah rmi "$image" >/dev/null 2>&1 || true
  done
fi

(cd "$DIST" && sha256sum -- * >SHA256SUMS)
say "done: $DIST"
ls -l "$DIST" >&2
