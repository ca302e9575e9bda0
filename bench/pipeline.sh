#!/usr/bin/env bash
# bench/pipeline.sh -- a first install through apt-proxy next to going straight to the mirror,
# with the mirror a round trip away. Loopback only (127.0.0.1); every step is bounded
# (STEP_TIMEOUT); everything started here is stopped on exit.
#
#   bench/pipeline.sh          (table on stdout, progress on stderr; about a minute at 50 ms)
#
# What it does:
#   1. builds, offline, a signed APT repository of N packages of PKG_KIB KiB of random payload
#      each (dpkg-deb, apt-ftparchive, by-hash copies, InRelease signed by a throwaway key;
#      tests/e2e/aptrepo.sh), served by nginx;
#   2. puts bench/delay_relay.py in front of nginx: every byte takes RTT_MS/2 more each way, so
#      each round trip to the "mirror" costs RTT_MS more;
#   3. a fresh, isolated apt-get (nothing from /etc/apt, empty dpkg status) runs `update` and
#      `install --download-only` of all N packages: directly against the relay; through a fresh
#      apt-proxy (forward proxy, sources naming the relay) with a cold cache, then warm (a fresh
#      client again, the proxy's cache kept); and the same two in path form (sources naming
#      http://apt-proxy/debian/) on another fresh proxy;
#   4. checks every round downloaded N packages, counts the mirror's requests during the warm
#      rounds, and prints each step's seconds and its ratio to direct.
#
# apt pipelines up to 10 requests per connection (Acquire::http::Pipeline-Depth): going direct
# it pays the round trip about once per batch; a proxy that answers pipelined requests one
# after another pays it once per file on a cold cache.
#
# Environment (all optional):
#   APT_PROXY_BIN  binary to measure (default <repo>/target/release/apt-proxy)
#   N=120          packages;  PKG_KIB=64: payload of each
#   RTT_MS=50      round trip the relay adds
#   KEEP=1         keep the work folder (/tmp/apt-proxy-bench/pipeline) and its logs
# Targets (issue 13): cold <= 1.25x direct, warm <= 1.0x, cold update <= 1.2x.
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
export E2E_WORK=${E2E_WORK:-/tmp/apt-proxy-bench}
export APT_PROXY_BIN=${APT_PROXY_BIN:-$ROOT/target/release/apt-proxy}
N=${N:-120}
PKG_KIB=${PKG_KIB:-64}
RTT_MS=${RTT_MS:-50}
MODES=forward
. "$ROOT/tests/e2e/lib.sh"
. "$ROOT/tests/e2e/aptrepo.sh"
exec 3>&1 1>&2   # the table on stdout (fd 3), progress on stderr
e2e_init pipeline
need_cmd apt-get apt-ftparchive dpkg-deb gpg gpgconf gzip xz nginx python3
[ -x "$APT_PROXY_BIN" ] || die "no apt-proxy at $APT_PROXY_BIN (cargo build --release, or set APT_PROXY_BIN)"

DIST=bench
REPO=$WWW/debian
BIN=dists/$DIST/main/binary-amd64

say "building $N packages of $PKG_KIB KiB"
PKGS=()
for i in $(seq -w 1 "$N"); do
  mkdeb "bench-p$i" 1.0-1 '' 0 "$PKG_KIB"
  PKGS+=("bench-p$i")
done
signing_key
publish_indexes

origin_start
RELAY_PORT=$(free_port)
spawn relay "$LOGS/relay.log" python3 "$BENCH_DIR/delay_relay.py" "$RELAY_PORT" "$ORIGIN_PORT" \
  "$(awk "BEGIN { print $RTT_MS / 2 }")"
wait_port "$RELAY_PORT" "$SPAWNED_PID" 10 || die "the relay did not listen on $RELAY_PORT"
MIRROR=http://127.0.0.1:$RELAY_PORT/debian/
export DEBIAN_MIRRORS=$MIRROR   # the proxy's Debian mirror: the relay
say "mirror: $MIRROR (nginx on $ORIGIN_PORT, $RTT_MS ms more per round trip)"

declare -A SECS
# round NAME URL PROXY: a fresh client's update and download of every package.
round() {
  local name=$1 t0 n
  apt_client_conf "$WORK/client-$name" "$2" "$3"
  t0=$(_now_ms)
  run_step "$name: apt-get update" apt-get update --error-on=any
  SECS[$name.update]=$(($(_now_ms) - t0))
  t0=$(_now_ms)
  run_step "$name: apt-get install --download-only ($N packages)" \
    apt-get install --download-only "${PKGS[@]}"
  SECS[$name.download]=$(($(_now_ms) - t0))
  n=$(find "$WORK/client-$name/cache/archives" -name '*.deb' | wc -l)
  [ "$n" = "$N" ] || die "$name: $n of $N packages downloaded"
}

origin_requests() { wc -l <"$ORIGIN_LOG"; }

round direct "$MIRROR" DIRECT

proxy_start
round cold "$MIRROR" "$(proxy_url)/"
before=$(origin_requests)
round warm "$MIRROR" "$(proxy_url)/"
WARM_FORWARD=$(($(origin_requests) - before))
stop_pid "$PROXY_PID" apt-proxy
PROXY_PID=

proxy_start
round path-cold "$(proxy_url)/debian/" DIRECT
before=$(origin_requests)
round path-warm "$(proxy_url)/debian/" DIRECT
WARM_PATH=$(($(origin_requests) - before))

# ---------------------------------------------------------------- table

secs() { awk "BEGIN { printf \"%.2f\", $1 / 1000 }"; }
ratio() { awk "BEGIN { printf \"%.2f\", $1 / $2 }"; }
{
  echo
  echo "apt-proxy first-install benchmark  $(date -u +%Y-%m-%dT%H:%M:%SZ)  $(nproc) CPUs"
  echo "binary: $APT_PROXY_BIN"
  echo "$N packages of $PKG_KIB KiB, mirror $RTT_MS ms away (relay), apt-get update + install --download-only"
  echo
  printf '| %-10s | %9s | %17s | %17s | %17s | %17s |\n' step direct "forward cold" "forward warm" "path cold" "path warm"
  printf '|%s|%s|%s|%s|%s|%s|\n' "------------" "-----------" "-------------------" "-------------------" "-------------------" "-------------------"
  for step in update download total; do
    for r in direct cold warm path-cold path-warm; do
      if [ "$step" = total ]; then SECS[$r.total]=$((SECS[$r.update] + SECS[$r.download])); fi
    done
    row=$(printf '| %-10s | %8ss |' "$step" "$(secs "${SECS[direct.$step]}")")
    for r in cold warm path-cold path-warm; do
      row+=$(printf ' %7ss (%5sx) |' "$(secs "${SECS[$r.$step]}")" "$(ratio "${SECS[$r.$step]}" "${SECS[direct.$step]}")")
    done
    echo "$row"
  done
  echo
  echo "mirror requests during the warm rounds: forward $WARM_FORWARD, path $WARM_PATH (0 = all from the cache)"
  echo "targets: cold total <= 1.25x direct, warm <= 1.0x, cold update <= 1.2x"
} >&3
