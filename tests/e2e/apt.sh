#!/usr/bin/env bash
# End-to-end: the real apt-get through apt-proxy against a signed local APT repository.
#
# Repository (built here, no network): .debs made with dpkg-deb (e2e-hello depends on e2e-libdep,
# a version with an epoch, a file name with '+', and e2e-big: 22 MiB of random data),
# apt-ftparchive Packages/.gz/.xz, by-hash copies (Acquire-By-Hash: yes), Release signed by a
# throwaway key as InRelease and Release.gpg; served by nginx under /debian/.
#
# Client: apt-get isolated by an APT_CONFIG file (nothing from /etc/apt, private lists, archives
# and an empty dpkg status; the repo key only via signed-by). Per mode:
#   forward: sources name the origin, Acquire::http::Proxy = apt-proxy
#   path:    sources name http://127.0.0.1:PROXY/debian/
# Steps: update, install --download-only, update again, .debs compared byte for byte with the
# origin; then the origin is stopped, the client's lists and archives wiped, and update +
# install --download-only (resuming a 5 MiB partial e2e-big) must succeed from the proxy's cache
# alone. Both modes share one proxy and its cache, so at the end every .deb must have been
# fetched from the origin exactly once.
# Stale phase (STALE_WAIT, lib.sh): origin still down, the proxy's index entries past their fresh
# window: a fresh client must succeed again (stale served); then the origin returns and a fresh
# client updates (whether the proxy revalidated is reported).
#
# DIRECT=1: no proxy, the client uses the origin (checks the repository and the client part).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init apt
need_cmd apt-get apt-ftparchive dpkg-deb gpg gpgconf gzip xz nginx curl

DIST=e2e
REPO=$WWW/debian
BIG_MIB=${BIG_MIB:-22}
INSTALL=(e2e-hello e2e-tools e2e-epoch e2e-plus e2e-big)   # e2e-libdep comes in as a dependency
ALL_PKGS=(e2e-hello e2e-libdep e2e-tools e2e-epoch e2e-plus e2e-big)

# ---------------------------------------------------------------- packages

# mkdeb NAME VERSION [DEPENDS] [PAYLOAD_MIB]: builds pool/main/<letter>/<name>/<name>_<ver-no-epoch>_all.deb
mkdeb() {
  local name=$1 version=$2 depends=${3:-} mib=${4:-0}
  local src=$WORK/debsrc/$name upstream=${version#*:}
  local out=$REPO/pool/main/${name:0:1}/$name/${name}_${upstream}_all.deb
  mkdir -p "$src/DEBIAN" "$src/usr/share/doc/$name" "$(dirname "$out")"
  printf '%s %s: end-to-end test package for apt-proxy\n' "$name" "$version" >"$src/usr/share/doc/$name/README"
  local comp=(-Zxz)
  if [ "$mib" -gt 0 ]; then
    random_file "$src/usr/share/doc/$name/payload.bin" "$mib"
    comp=(-Zgzip -z1)   # random data does not compress: do not spend time trying
  fi
  {
    echo "Package: $name"
    echo "Version: $version"
    echo "Architecture: all"
    echo "Maintainer: apt-proxy e2e <e2e@test.invalid>"
    echo "Installed-Size: $(du -sk "$src/usr" | cut -f1)"
    [ -n "$depends" ] && echo "Depends: $depends"
    echo "Section: misc"
    echo "Priority: optional"
    echo "Description: apt-proxy end-to-end test package $name"
    echo " Built by tests/e2e/apt.sh; never installed on a real system."
  } >"$src/DEBIAN/control"
  dpkg-deb --root-owner-group "${comp[@]}" --build "$src" "$out" >/dev/null
}

say "building .debs"
mkdeb e2e-libdep 1.2-1
mkdeb e2e-hello 2.0-1 'e2e-libdep (>= 1.2)'
mkdeb e2e-tools 0.9-3
mkdeb e2e-epoch 3:1.0-1
mkdeb e2e-plus 1.0+dfsg-2
mkdeb e2e-big 1.0-1 '' "$BIG_MIB"
mapfile -t DEBS < <(cd "$REPO" && find pool -name '*.deb' | sort)
[ "$(stat -c %s "$REPO/pool/main/e/e2e-big/e2e-big_1.0-1_all.deb")" -gt $((20 * 1024 * 1024)) ] ||
  die "e2e-big.deb is not over 20 MiB"

# ---------------------------------------------------------------- indexes + signatures

say "building indexes"
BIN=dists/$DIST/main/binary-amd64
(
  cd "$REPO"
  mkdir -p "$BIN"
  apt-ftparchive packages pool >"$BIN/Packages"
  gzip -9 -n -k "$BIN/Packages"
  xz -k "$BIN/Packages"
  printf 'Archive: %s\nComponent: main\nOrigin: apt-proxy-e2e\nLabel: apt-proxy-e2e\nArchitecture: amd64\n' \
    "$DIST" >"$BIN/Release"
  for algo in MD5Sum:md5sum SHA256:sha256sum SHA512:sha512sum; do
    mkdir -p "$BIN/by-hash/${algo%%:*}"
    for f in Packages Packages.gz Packages.xz; do
      cp "$BIN/$f" "$BIN/by-hash/${algo%%:*}/$(${algo#*:} "$BIN/$f" | cut -d' ' -f1)"
    done
  done
  apt-ftparchive \
    -o APT::FTPArchive::Release::Origin=apt-proxy-e2e \
    -o APT::FTPArchive::Release::Label=apt-proxy-e2e \
    -o APT::FTPArchive::Release::Suite="$DIST" \
    -o APT::FTPArchive::Release::Codename="$DIST" \
    -o APT::FTPArchive::Release::Architectures=amd64 \
    -o APT::FTPArchive::Release::Components=main \
    -o APT::FTPArchive::Release::Acquire-By-Hash=yes \
    release "dists/$DIST" >"$WORK/Release"
  mv "$WORK/Release" "dists/$DIST/Release"
)

say "signing Release with a throwaway key"
export GNUPGHOME=$WORK/gnupg
mkdir -m 700 "$GNUPGHOME"
gpg --batch --quiet --passphrase '' --quick-gen-key 'apt-proxy e2e <apt@test.invalid>' ed25519 sign 1d
gpg --batch --quiet --yes --clearsign --output "$REPO/dists/$DIST/InRelease" "$REPO/dists/$DIST/Release"
gpg --batch --quiet --yes --armor --detach-sign --output "$REPO/dists/$DIST/Release.gpg" "$REPO/dists/$DIST/Release"
KEYRING=$WORK/repo-keyring.gpg
gpg --batch --quiet --export >"$KEYRING"
gpgconf --kill gpg-agent
unset GNUPGHOME

# immutable files the proxy must fetch at most once: the .debs and the by-hash indexes
mapfile -t BYHASH < <(cd "$REPO" && find "$BIN/by-hash" -type f | sort)

# ---------------------------------------------------------------- servers

origin_start
proxy_start

# ---------------------------------------------------------------- client

# client_setup MODE: fresh isolated apt state in $C, APT_CONFIG exported.
client_setup() {
  local mode=$1 proxy=DIRECT url
  C=$WORK/client-$mode
  rm -rf "$C"
  mkdir -p "$C/etc/apt.conf.d" "$C/etc/preferences.d" "$C/etc/sources.list.d" "$C/etc/trusted.gpg.d" \
    "$C/state/lists/partial" "$C/cache/archives/partial" "$C/log"
  : >"$C/status"
  url=$(base_url "$mode" debian)
  [ "$mode" = forward ] && proxy=$(proxy_url)/
  echo "deb [signed-by=$KEYRING] $url $DIST main" >"$C/etc/sources.list"
  # Everything apt reads comes from here: Dir::Etc::main=/dev/null keeps /etc/apt/apt.conf out and
  # Parts points away from /etc/apt/apt.conf.d (-o on the command line would come too late).
  cat >"$C/apt.conf" <<EOF
Dir::Etc::main "/dev/null";
Dir::Etc::Parts "$C/etc/apt.conf.d";
Dir::Etc::SourceList "$C/etc/sources.list";
Dir::Etc::SourceParts "$C/etc/sources.list.d";
Dir::Etc::Preferences "/dev/null";
Dir::Etc::PreferencesParts "$C/etc/preferences.d";
Dir::Etc::Trusted "/dev/null";
Dir::Etc::TrustedParts "$C/etc/trusted.gpg.d";
Dir::State "$C/state";
Dir::State::status "$C/status";
Dir::Cache "$C/cache";
Dir::Log "$C/log";
APT::Architecture "amd64";
APT::Architectures { "amd64"; };
APT::Sandbox::User "root";
APT::Get::Assume-Yes "true";
Acquire::Languages "none";
Acquire::Retries "0";
Acquire::http::Timeout "30";
Acquire::http::Proxy "$proxy";
Acquire::https::Proxy "DIRECT";
EOF
  export APT_CONFIG=$C/apt.conf
}

# wipe_client_state: what a fresh machine has: no lists, no archives.
wipe_client_state() {
  rm -rf "$C/state" "$C/cache"
  mkdir -p "$C/state/lists/partial" "$C/cache/archives/partial"
}

apt_update() {
  run_step "$1" apt-get update --error-on=any
  if grep -E '^(W|E): ' "$STEP_LOG" >&2; then die "apt-get update reported warnings or errors"; fi
  apt-cache policy e2e-big | grep -q "$DIST/main" || die "apt-cache does not see e2e-big from the repository"
}

apt_download() {
  run_step "$1" apt-get install --download-only "${INSTALL[@]}"
}

# check_archives: every .deb apt downloaded equals the origin's, byte for byte.
check_archives() {
  local p deb got
  for p in "${ALL_PKGS[@]}"; do
    deb=$(printf '%s\n' "${DEBS[@]}" | grep "/${p}_") || die "no origin .deb for $p"
    got=$(find "$C/cache/archives" -maxdepth 1 -name "${p}_*_all.deb")
    [ "$(echo "$got" | wc -w)" = 1 ] || die "expected one downloaded .deb for $p, found: '${got}'"
    same_bytes "$got" "$REPO/$deb"
  done
  say "all ${#ALL_PKGS[@]} downloaded .debs equal the origin's"
}

for mode in $MODES; do
  say "=== mode: $mode"
  [ -n "$ORIGIN_PID" ] || origin_start
  client_setup "$mode"
  apt_update "[$mode] apt-get update"
  apt_download "[$mode] apt-get install --download-only ${INSTALL[*]}"
  apt_update "[$mode] apt-get update (again)"
  check_archives
  expect_hit debian "pool/main/e/e2e-tools/e2e-tools_0.9-3_all.deb"
  expect_hit debian "pool/main/e/e2e-big/e2e-big_1.0-1_all.deb"

  [ "$DIRECT" = 1 ] && continue
  origin_stop
  wipe_client_state
  # An interrupted earlier download: apt resumes it with Range + If-Range (the partial's mtime,
  # which apt had set from Last-Modified).
  big=$REPO/pool/main/e/e2e-big/e2e-big_1.0-1_all.deb
  head -c $((5 * 1024 * 1024)) "$big" >"$C/cache/archives/partial/e2e-big_1.0-1_all.deb"
  touch -r "$big" "$C/cache/archives/partial/e2e-big_1.0-1_all.deb"
  apt_update "[$mode] origin down, fresh client: apt-get update"
  apt_download "[$mode] origin down, fresh client (e2e-big 5 MiB partial): apt-get install --download-only"
  check_archives
done

if stale_phase_start; then
  wipe_client_state
  apt_update "[$mode] stale, origin down, fresh client: apt-get update"
  apt_download "[$mode] stale, origin down, fresh client: apt-get install --download-only"
  check_archives
  before=$(origin_gets "/debian/dists/$DIST/InRelease")
  origin_start
  wipe_client_state
  apt_update "[$mode] origin back, fresh client: apt-get update"
  origin_revalidated "/debian/dists/$DIST/InRelease" "$before"
fi
unset APT_CONFIG

# The origin's log covers every mode: each .deb crossed the origin exactly once, each by-hash
# index (immutable too) at most once.
assert_origin_gets 1 1 "${DEBS[@]/#//debian/}"
assert_origin_gets 0 1 "${BYHASH[@]/#//debian/}"
say PASS
