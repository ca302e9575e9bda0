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
# Stale phase (STALE_WAIT, lib.sh): the proxy's index entries past their fresh window, the origin
# down three ways in turn (stopped, hung, answering 500: upstream_down_phases in lib.sh): in each
# mode a fresh client must update and download within DOWN_STEP_MAX seconds per step (stale
# served), and a file the proxy never saw must fail fast with a 502/504; then the origin returns
# and a fresh client updates (whether the proxy revalidated is reported).
# Crash safety: the origin serves e2e-slow (24 MiB, not in the first downloads) at SLOW_RATE; three
# concurrent downloads of it through the proxy, the proxy killed with SIGKILL part-way; restarted
# on the same port and cache dir, its tmp/ must be empty and fresh clients must download e2e-slow
# byte-identical to the origin's.
# Regional mirror: a client whose sources name a Debian mirror from the shipped official lists
# (not the pinned one) updates and downloads from the proxy, byte for byte.
# HTTPS source: a client with an https:// source and Acquire::https::Proxy = apt-proxy is tunnelled
# (CONNECT) to an nginx serving the repository over TLS with a test CA's certificate.
# New repository version (NEW_VERSION_WAIT): clients update, then the origin publishes a new
# version (new package e2e-extra, e2e-tools 0.9-3 -> 1.0-1; new Packages*, by-hash copies, Release,
# InRelease, Release.gpg); past the proxy's fresh window the same clients update again: no error,
# no "Hash Sum mismatch", apt-cache sees the new package and version, and it downloads.
#
# DIRECT=1: no proxy, the client uses the origin (checks the repository and the client part).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/aptrepo.sh"
e2e_init apt
need_cmd apt-get apt-ftparchive dpkg-deb gpg gpgconf gzip xz nginx curl

DIST=e2e
REPO=$WWW/debian
BIG_MIB=${BIG_MIB:-22}
SLOW_MIB=${SLOW_MIB:-24}
SLOW_RATE=${SLOW_RATE:-6m}                 # nginx limit_rate for e2e-slow (m = MiB/s)
NEW_VERSION_WAIT=${NEW_VERSION_WAIT:-35}   # past the proxy's 30 s index fresh window; 0 skips
INSTALL=(e2e-hello e2e-tools e2e-epoch e2e-plus e2e-big)   # e2e-libdep comes in as a dependency
ALL_PKGS=(e2e-hello e2e-libdep e2e-tools e2e-epoch e2e-plus e2e-big)

# ---------------------------------------------------------------- packages

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
# Only for the crash test (so not in DEBS: the proxy fetches it twice), served at SLOW_RATE.
mkdeb e2e-slow 1.0-1 '' "$SLOW_MIB"
SLOW_DEB=pool/main/e/e2e-slow/e2e-slow_1.0-1_all.deb
# shellcheck disable=SC2034  # read by origin_start (lib.sh)
ORIGIN_EXTRA_CONF="location = /debian/$SLOW_DEB { limit_rate $SLOW_RATE; }"

# ---------------------------------------------------------------- indexes + signatures

say "throwaway signing key"
signing_key

say "building indexes, signing Release"
BIN=dists/$DIST/main/binary-amd64
publish_indexes

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
  url=$(base_url "$mode" debian)
  [ "$mode" = forward ] && proxy=$(proxy_url)/
  apt_client_conf "$C" "$url" "$proxy"
}

# client_use MODE: the client of MODE as client_setup left it (lists and archives kept).
client_use() {
  C=$WORK/client-$1
  [ -f "$C/apt.conf" ] || die "no $1 client in $C"
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

# down_round MODE LABEL: a fresh client of MODE updates and downloads (upstream_down_phases).
down_round() {
  client_setup "$1"
  apt_update "$2 apt-get update"
  apt_download "$2 apt-get install --download-only"
  check_archives
}

if stale_phase_start; then
  upstream_down_phases down_round debian "pool/main/e/e2e-uncached/e2e-uncached_1.0-@_all.deb"
  before=$(origin_gets "/debian/dists/$DIST/InRelease")
  origin_start
  wipe_client_state
  apt_update "[$mode] origin back, fresh client: apt-get update"
  origin_revalidated "/debian/dists/$DIST/InRelease" "$before"
fi

# ---------------------------------------------------------------- crash safety

# tmp_files: what is in the proxy's cache tmp/ folder (bodies being downloaded, metadata being written).
tmp_files() { find "$PROXY_CACHE/tmp" -mindepth 1 2>/dev/null || true; }

crash_phase() {
  [ "$DIRECT" != 1 ] || return 0
  [ -n "$ORIGIN_PID" ] || origin_start
  local d=$WORK/crash size url i n before deadline min got parts rcs=() pids=() sizes=()
  size=$(stat -c %s "$REPO/$SLOW_DEB")
  url=http://127.0.0.1:$PROXY_PORT/debian/$SLOW_DEB
  say "=== crash safety: 3 concurrent downloads of e2e-slow ($((size / 1048576)) MiB, origin limit_rate $SLOW_RATE), proxy killed part-way"
  mkdir -p "$d"
  before=$(origin_gets "/debian/$SLOW_DEB")
  for i in 1 2 3; do
    curl -sS -o "$d/dl$i" --max-time 120 "$url" 2>"$d/curl$i.err" &
    pids+=($!)
  done
  # part-way: every client has a quarter of the file, none has all of it
  deadline=$(($(_now_ms) + 30000))
  while :; do
    min=$size
    for i in 1 2 3; do
      got=$(stat -c %s "$d/dl$i" 2>/dev/null || echo 0)
      [ "$got" -ge "$min" ] || min=$got
    done
    [ "$min" -lt $((size / 4)) ] || break
    [ "$(_now_ms)" -lt "$deadline" ] || die "the 3 downloads of $SLOW_DEB did not all reach $((size / 4)) bytes within 30 s (smallest: $min)"
    sleep 0.05
  done
  parts=$(tmp_files | wc -l)
  proxy_kill9
  for i in 1 2 3; do
    n=0
    wait "${pids[$((i - 1))]}" || n=$?
    rcs+=("$n")
    got=$(stat -c %s "$d/dl$i")
    sizes+=("$got")
    [ "$got" -lt "$size" ] || die "download $i of $SLOW_DEB completed before the kill (raise SLOW_MIB or lower SLOW_RATE)"
    cmp -s -n "$got" "$d/dl$i" "$REPO/$SLOW_DEB" || die "the first $got bytes download $i received before the kill differ from the origin's"
  done
  say "clients cut at ${sizes[*]} of $size bytes (curl exit ${rcs[*]}; bytes received match the origin's); the proxy's tmp/ held $parts file(s) at the kill"
  # nginx logs a request when it ends: when it notices that the proxy's connection is gone
  deadline=$(($(_now_ms) + 10000))
  while [ "$(origin_gets "/debian/$SLOW_DEB")" -le "$before" ] && [ "$(_now_ms)" -lt "$deadline" ]; do sleep 0.1; done
  sleep 0.5
  n=$(($(origin_gets "/debian/$SLOW_DEB") - before))
  [ "$n" = 1 ] || { grep -F "$SLOW_DEB" "$ORIGIN_LOG" >&2; die "3 concurrent downloads made $n origin GETs of $SLOW_DEB, expected 1 (single-flight)"; }
  say "the 3 concurrent downloads made 1 origin GET: $(grep -F " /debian/$SLOW_DEB " "$ORIGIN_LOG" | tail -n 1)"

  proxy_restart
  local left
  left=$(tmp_files)
  [ -z "$left" ] || die "after the restart the proxy's tmp/ still holds: $(echo "$left" | tr '\n' ' ')"
  say "after the restart the proxy's tmp/ is empty"
  for m in $MODES; do
    client_setup "$m"
    apt_update "[$m] after the crash, fresh client: apt-get update"
    run_step "[$m] after the crash, fresh client: apt-get install --download-only e2e-slow" apt-get install --download-only e2e-slow
    same_bytes "$C/cache/archives/$(basename "$SLOW_DEB")" "$REPO/$SLOW_DEB"
    say "[$m] e2e-slow.deb equals the origin's"
  done
}
crash_phase

# ---------------------------------------------------------------- new repository version

new_version_phase() {
  [ "$NEW_VERSION_WAIT" -gt 0 ] || return 0
  [ -n "$ORIGIN_PID" ] || origin_start
  local m got deb wait=$NEW_VERSION_WAIT
  say "=== new repository version between two updates"
  for m in $MODES; do
    client_use "$m"   # the client as the earlier steps left it
    apt_update "[$m] before the new version: apt-get update"
    ! apt-cache show e2e-extra >/dev/null 2>&1 || die "e2e-extra is known before it was published"
  done
  sleep 1   # a new Last-Modified second, or an If-Modified-Since of the old InRelease could match it
  mkdeb e2e-tools 1.0-1
  mkdeb e2e-extra 1.0-1 'e2e-tools (>= 1.0)'
  NEW_DEBS=(pool/main/e/e2e-tools/e2e-tools_1.0-1_all.deb pool/main/e/e2e-extra/e2e-extra_1.0-1_all.deb)
  publish_indexes
  say "origin: new version published (e2e-extra 1.0-1, e2e-tools 1.0-1; InRelease $(sha256sum "$REPO/dists/$DIST/InRelease" | cut -c1-12))"
  [ "$DIRECT" = 1 ] && wait=0
  if [ "$wait" -gt 0 ]; then
    say "waiting ${wait}s (NEW_VERSION_WAIT) so the proxy's index entries go stale"
    sleep "$wait"
  fi
  for m in $MODES; do
    client_use "$m"
    apt_update "[$m] new version: apt-get update"
    if grep -i 'hash sum mismatch' "$STEP_LOG" >&2; then die "[$m] apt-get update: Hash Sum mismatch"; fi
    apt-cache policy e2e-tools >"$LOGS/policy-e2e-tools-$m.log"
    grep -q 'Candidate: 1.0-1' "$LOGS/policy-e2e-tools-$m.log" ||
      { cat "$LOGS/policy-e2e-tools-$m.log" >&2; die "[$m] after the update apt-cache policy does not offer e2e-tools 1.0-1"; }
    apt-cache show e2e-extra >"$LOGS/show-e2e-extra-$m.log" 2>&1 ||
      { cat "$LOGS/show-e2e-extra-$m.log" >&2; die "[$m] after the update apt-cache show does not know e2e-extra"; }
    grep -q '^Version: 1.0-1' "$LOGS/show-e2e-extra-$m.log" || die "[$m] apt-cache show e2e-extra: no Version 1.0-1"
    say "[$m] apt-cache: e2e-extra 1.0-1 known, e2e-tools candidate 1.0-1"
    run_step "[$m] new version: apt-get install --download-only e2e-extra" apt-get install --download-only e2e-extra
    for deb in "${NEW_DEBS[@]}"; do
      got=$C/cache/archives/$(basename "$deb")
      same_bytes "$got" "$REPO/$deb"
    done
    say "[$m] e2e-extra and e2e-tools 1.0-1 downloaded, equal to the origin's"
  done
}
NEW_DEBS=()
new_version_phase

# ---------------------------------------------------------------- a regional mirror named

# regional_phase: a machine whose sources name a regional Debian mirror (one of the shipped
# official lists, not the one the proxy is pinned to) is served from the proxy's cache and its
# own mirror; the regional host is never contacted (it is not even resolved).
regional_phase() {
  [ "$DIRECT" != 1 ] || return 0
  [ -n "$ORIGIN_PID" ] || origin_start
  local regional=http://ftp.lanet.kr/debian/ deb=pool/main/e/e2e-hello/e2e-hello_2.0-1_all.deb
  say "=== a client naming the regional mirror $regional while the proxy is pinned to the origin"
  client_setup forward
  echo "deb [signed-by=$KEYRING] $regional $DIST main" >"$C/etc/sources.list"
  apt_update "[regional] apt-get update"
  run_step "[regional] apt-get install --download-only e2e-hello" apt-get install --download-only e2e-hello
  same_bytes "$C/cache/archives/$(basename "$deb")" "$REPO/$deb"
  [ "$(x_cache "$regional$deb" "$(proxy_url)")" = HIT ] || die "[regional] $deb is not a HIT through the regional host name"
  say "[regional] e2e-hello equals the origin's, and is a HIT under the regional host name"
}
regional_phase

# ---------------------------------------------------------------- an https source

# https_phase: a client with an https:// source and Acquire::https::Proxy = apt-proxy sends
# CONNECT; the proxy tunnels it (the host and port allowed by flags) to an nginx serving the
# repository over TLS with a certificate of a test CA; apt verifies the certificate through the
# tunnel and downloads byte for byte. Nothing of it is cached.
# cache_counts: the proxy's entries, bytes, hits and misses.
cache_counts() {
  curl -fsS "$(proxy_url)/api/cache/stats" |
    python3 -c 'import json, sys; d = json.load(sys.stdin); print(d["item_count"], d["total_size_bytes"], d["hit_count"], d["miss_count"])'
}

https_phase() {
  [ "$DIRECT" != 1 ] || return 0
  local d=$WORK/tls port deb=pool/main/e/e2e-hello/e2e-hello_2.0-1_all.deb opened args=${PROXY_ARGS:-} before
  mkdir -p "$d"
  port=$(free_port)
  say "=== an https source through a CONNECT tunnel (test CA, nginx on 127.0.0.1:$port)"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=apt-proxy e2e CA" \
    -keyout "$d/ca.key" -out "$d/ca.pem" >"$d/openssl.log" 2>&1 || { cat "$d/openssl.log" >&2; die "test CA"; }
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$d/leaf.key" -out "$d/leaf.csr" >>"$d/openssl.log" 2>&1 ||
    { cat "$d/openssl.log" >&2; die "test certificate request"; }
  printf 'subjectAltName=DNS:localhost\n' >"$d/ext.cnf"
  openssl x509 -req -in "$d/leaf.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial -days 2 \
    -extfile "$d/ext.cnf" -out "$d/leaf.pem" >>"$d/openssl.log" 2>&1 || { cat "$d/openssl.log" >&2; die "test certificate"; }
  nginx_conf "$d" "listen 127.0.0.1:$port ssl;
    server_name localhost;
    ssl_certificate $d/leaf.pem;
    ssl_certificate_key $d/leaf.key;
    root $WWW;"
  spawn tls-origin "$d/stdout.log" nginx -e "$d/error.log" -c "$d/nginx.conf"
  wait_port "$port" "$SPAWNED_PID" 20 || { cat "$d/error.log" >&2; die "the TLS origin did not listen on $port"; }
  # localhost is 127.0.0.1: an internal address, allowed here for the test's sake.
  stop_pid "$PROXY_PID" apt-proxy
  PROXY_ARGS="$args --connect-hosts localhost --connect-ports $port --allow-private-upstreams 127.0.0.1/32"
  proxy_restart
  before=$(cache_counts)
  client_setup forward
  echo "deb [signed-by=$KEYRING] https://localhost:$port/debian $DIST main" >"$C/etc/sources.list"
  sed -i "s|^Acquire::https::Proxy .*|Acquire::https::Proxy \"$(proxy_url)/\";\nAcquire::https::CaInfo \"$d/ca.pem\";|" "$C/apt.conf"
  apt_update "[https] apt-get update through CONNECT"
  run_step "[https] apt-get install --download-only e2e-hello" apt-get install --download-only e2e-hello
  same_bytes "$C/cache/archives/$(basename "$deb")" "$REPO/$deb"
  opened=$(metric 'apt_proxy_tunnels_total{outcome="opened"}')
  [ "${opened:-0}" -ge 1 ] || die "[https] no tunnel counted"
  grep -q "/debian/$deb " "$d/access.log" || die "[https] the TLS origin did not serve $deb"
  # A tunnel carries TLS the proxy cannot read: nothing of it is cached or counted as a request.
  [ "$(cache_counts)" = "$before" ] ||
    die "[https] the cache changed through the tunnel (items bytes hits misses): $before -> $(cache_counts)"
  # The later phases run without the tunnel flags.
  stop_pid "$PROXY_PID" apt-proxy
  PROXY_ARGS=$args
  proxy_restart
  say "[https] e2e-hello equals the origin's, fetched through $opened tunnel(s); the TLS origin logged $(wc -l <"$d/access.log") requests"
}
https_phase
unset APT_CONFIG

# The origin's log covers every mode: each .deb crossed the origin exactly once, each by-hash
# index (immutable too) at most once (those of the new version included).
assert_origin_gets 1 1 "${DEBS[@]/#//debian/}"
[ "${#NEW_DEBS[@]}" = 0 ] || assert_origin_gets 1 1 "${NEW_DEBS[@]/#//debian/}"
mapfile -t BYHASH < <(cd "$REPO" && find "$BIN/by-hash" -type f | sort)
assert_origin_gets 0 1 "${BYHASH[@]/#//debian/}"

# ---------------------------------------------------------------- failover

# failover_phase: the first of two pinned Debian mirrors refuses connections; with an empty
# cache, every client still updates and downloads, byte for byte.
failover_phase() {
  [ "$DIRECT" != 1 ] || return 0
  [ -n "$ORIGIN_PID" ] || origin_start
  local dead m n
  dead=$(free_port)
  say "=== failover: the first pinned Debian mirror (127.0.0.1:$dead) refuses connections; empty cache"
  stop_pid "$PROXY_PID" apt-proxy
  PROXY_CACHE=$WORK/proxy-cache-failover
  mkdir -p "$PROXY_CACHE"
  # With the cache in a bucket (apt-s3.sh), FAILOVER_PROXY_ARGS names an empty place in it.
  PROXY_ARGS=${FAILOVER_PROXY_ARGS:-${PROXY_ARGS:-}}
  DEBIAN_MIRRORS="http://127.0.0.1:$dead/debian/,$ORIGIN_URL/debian/"
  proxy_restart
  for m in $MODES; do
    client_setup "$m"
    apt_update "[$m] first mirror dead: apt-get update"
    apt_download "[$m] first mirror dead: apt-get install --download-only ${INSTALL[*]}"
    # The repository has moved on (new version phase): compare each .deb with its namesake
    # (apt writes an epoch into the file name: `_3%3a1.0-1_`).
    local got name count=0
    for got in "$C"/cache/archives/*.deb; do
      name=$(basename "$got" | sed -E 's/_[0-9]+%3a/_/')
      same_bytes "$got" "$(find "$REPO/pool" -name "$name" | head -n 1)"
      count=$((count + 1))
    done
    [ "$count" -ge "${#ALL_PKGS[@]}" ] || die "[$m] $count .debs downloaded, expected ${#ALL_PKGS[@]}"
    say "[$m] all $count downloaded .debs equal the origin's"
  done
  n=$(metric 'apt_proxy_mirror_failovers_total{distro="debian"}')
  [ "${n:-0}" -ge 1 ] || die "the dead mirror caused no counted failover"
  curl -fsS "$(proxy_url)/api/mirrors" >"$LOGS/mirrors-failover.json"
  python3 - "$LOGS/mirrors-failover.json" "$dead" <<'PY' || die "/api/mirrors does not show the dead mirror's failures (see $LOGS/mirrors-failover.json)"
import json, sys
sets = json.load(open(sys.argv[1]))
debian = next(s for s in sets if s["repo"] == "debian")
first = debian["mirrors"][0]
assert first["url"].endswith(":%s/debian/" % sys.argv[2]), first
# Failures are counted until a success; the demotion itself may have run out by now.
assert first["consecutive_failures"] >= 1 and first["last_error"], first
assert debian["mirrors"][1]["healthy"] is True, debian
PY
  say "failovers counted: $n; /api/mirrors shows the dead mirror's failures ($(python3 -c 'import json,sys; s=[x for x in json.load(open(sys.argv[1])) if x["repo"]=="debian"][0]; print(s["mirrors"][0]["last_error"])' "$LOGS/mirrors-failover.json"))"
  unset DEBIAN_MIRRORS APT_CONFIG
}
failover_phase
say PASS
