#!/usr/bin/env bash
# End-to-end: Alpine's real apk client (apk-tools 3, set up by setup.sh) through apt-proxy against
# a signed local v2 repository.
#
# Repository (built here, no network): v2 .apk packages made by packaging/apkpkg.py (e2e-hello depends on
# e2e-dep, a name with '+' like libstdc++, and e2e-big: 25 MiB of random data), indexed by
# `apk index --rewrite-arch x86_64` (as abuild does), APKINDEX.tar.gz signed with a throwaway RSA
# key; served by nginx under /alpine/v3.23/main/x86_64/.
#
# Client: apk with its own --root, --keys-dir (only the test key), --repositories-file and
# --cache-dir. Per mode:
#   forward: repositories name the origin, http_proxy = apt-proxy
#   path:    repositories name http://127.0.0.1:PROXY/alpine/v3.23/main
# Steps: add --initdb, update, fetch --recursive, add (real install into the root), update again,
# fetched .apks compared byte for byte with the origin's; then the origin is stopped and a fresh
# client (new root and cache) must update, fetch and add from the proxy's cache alone.
# Both modes share one proxy: every .apk crosses the origin exactly once.
# Stale phase (STALE_WAIT, lib.sh): the proxy's index entries past their fresh window, the origin
# down three ways in turn (stopped, hung, answering 500: upstream_down_phases in lib.sh): in each
# mode a fresh client must succeed again (stale served) within DOWN_STEP_MAX seconds per step, and
# a file the proxy never saw must fail fast with a 502/504; then the origin returns and a fresh
# client updates (whether the proxy revalidated is reported).
#
# Tampered phase (tamper_phase, lib.sh): a first mirror serves e2e-hello with one byte changed in
# its data segment; the proxy must count it, store nothing, and serve the good copy from the
# second mirror.
#
# DIRECT=1: no proxy, the client uses the origin (checks the repository and the client part).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init apk
need_cmd python3 openssl nginx curl
if ! "$APK_BIN" --version >/dev/null 2>&1; then die "apk client $APK_BIN missing or broken (tests/e2e/setup.sh installs it)"; fi

BIG_MIB=${BIG_MIB:-25}
BRANCH=v3.23/main
ARCHDIR=$WWW/alpine/$BRANCH/x86_64
KEYS=$WORK/keys
TRUSTED=$WORK/trusted
KEYNAME=apt-proxy-e2e-$(date +%s)
WANT=(e2e-hello e2e-big e2e-lib++)         # e2e-dep comes in as a dependency
INSTALL=(e2e-hello e2e-lib++)
MKAPK=(python3 "$E2E_DIR/../../packaging/apkpkg.py")

# ---------------------------------------------------------------- repository

say "throwaway key + packages"
mkdir -p "$ARCHDIR" "$TRUSTED"
cp "$("${MKAPK[@]}" keygen "$KEYS" "$KEYNAME")" "$TRUSTED/"
KEY=$KEYS/$KEYNAME.rsa
"${MKAPK[@]}" build "$ARCHDIR" "$KEY" e2e-dep 2.1-r0 noarch >/dev/null
"${MKAPK[@]}" build "$ARCHDIR" "$KEY" e2e-hello 1.0-r0 x86_64 --depends 'e2e-dep>=2' \
  --text 'usr/share/e2e-hello/hello.txt=hello from apk' >/dev/null
"${MKAPK[@]}" build "$ARCHDIR" "$KEY" e2e-lib++ 3.4-r1 x86_64 >/dev/null
"${MKAPK[@]}" build "$ARCHDIR" "$KEY" e2e-big 1.0-r0 x86_64 --random-mib "$BIG_MIB" >/dev/null
mapfile -t APKS < <(cd "$ARCHDIR" && ls -- *.apk | sort)
[ "$(stat -c %s "$ARCHDIR/e2e-big-1.0-r0.apk")" -gt $((20 * 1024 * 1024)) ] || die "e2e-big.apk is not over 20 MiB"
"$APK_BIN" verify --keys-dir "$TRUSTED" "$ARCHDIR"/*.apk >"$LOGS/verify-apks.log" 2>&1 ||
  { cat "$LOGS/verify-apks.log" >&2; die "apk verify rejects the built packages"; }

say "APKINDEX.tar.gz (apk index --rewrite-arch) + signature"
# --rewrite-arch: noarch packages are listed as x86_64 and live in x86_64/, as abuild publishes them
"$APK_BIN" index --keys-dir "$TRUSTED" --rewrite-arch x86_64 -d "apt-proxy e2e $BRANCH" \
  -o "$ARCHDIR/APKINDEX.tar.gz" "$ARCHDIR"/*.apk >"$LOGS/index.log" 2>&1 ||
  { cat "$LOGS/index.log" >&2; die "apk index failed"; }
"${MKAPK[@]}" sign "$ARCHDIR/APKINDEX.tar.gz" "$KEY"
"$APK_BIN" verify --keys-dir "$TRUSTED" "$ARCHDIR/APKINDEX.tar.gz" >"$LOGS/verify-index.log" 2>&1 ||
  { cat "$LOGS/verify-index.log" >&2; die "apk verify rejects the signed index"; }

# ---------------------------------------------------------------- servers

origin_start
proxy_start

# ---------------------------------------------------------------- client

# client_setup MODE: isolated apk state under $C; APK=(...) is the command prefix.
client_setup() {
  local mode=$1
  C=$WORK/client-$mode
  rm -rf "$C"
  mkdir -p "$C/root" "$C/cache" "$C/dl"
  echo "$(base_url "$mode" alpine)$BRANCH" >"$C/repositories"
  APK=()
  [ "$mode" = forward ] && APK=(env "http_proxy=$(proxy_url)")
  # keys-dir and every path absolute: apk resolves relative ones against --root
  APK+=("$APK_BIN" --root "$C/root" --arch x86_64 --keys-dir "$TRUSTED" --repositories-file "$C/repositories"
    --cache-dir "$C/cache" --no-interactive --no-progress)
}

fresh_client() {
  rm -rf "$C/root" "$C/cache" "$C/dl"
  mkdir -p "$C/root" "$C/cache" "$C/dl"
}

check_fetched() {
  local f
  for f in "${APKS[@]}"; do same_bytes "$C/dl/$f" "$ARCHDIR/$f"; done
  [ "$(find "$C/dl" -name '*.apk' | wc -l)" = "${#APKS[@]}" ] || die "unexpected files fetched: $(ls "$C/dl")"
  say "all ${#APKS[@]} fetched .apks equal the origin's"
}

check_installed() {
  [ "$(cat "$C/root/usr/share/e2e-hello/hello.txt")" = "hello from apk" ] || die "e2e-hello not installed into $C/root"
  [ -f "$C/root/usr/share/e2e-dep/README" ] || die "e2e-dep (dependency) not installed into $C/root"
  [ -f "$C/root/usr/share/e2e-lib++/README" ] || die "e2e-lib++ not installed into $C/root"
}

client_round() { # client_round LABEL
  run_step "$1 apk add --initdb" "${APK[@]}" add --initdb
  run_step "$1 apk update" "${APK[@]}" update
  grep -q 'OK: 4 distinct packages available' "$STEP_LOG" || die "apk update did not load the 4-package index"
  run_step "$1 apk fetch --recursive ${WANT[*]}" "${APK[@]}" fetch --recursive -o "$C/dl" "${WANT[@]}"
  run_step "$1 apk add ${INSTALL[*]} (into $C/root)" "${APK[@]}" add "${INSTALL[@]}"
  check_installed
}

for mode in $MODES; do
  say "=== mode: $mode"
  [ -n "$ORIGIN_PID" ] || origin_start
  client_setup "$mode"
  client_round "[$mode]"
  run_step "[$mode] apk update (again)" "${APK[@]}" update
  check_fetched
  expect_hit alpine "$BRANCH/x86_64/e2e-hello-1.0-r0.apk"
  expect_hit alpine "$BRANCH/x86_64/e2e-big-1.0-r0.apk"

  [ "$DIRECT" = 1 ] && continue
  origin_stop
  fresh_client
  client_round "[$mode] origin down, fresh client:"
  check_fetched
done

# down_round MODE LABEL: a fresh client of MODE updates, downloads and installs (upstream_down_phases).
down_round() {
  client_setup "$1"
  client_round "$2"
  check_fetched
}

if stale_phase_start; then
  upstream_down_phases down_round alpine "$BRANCH/x86_64/e2e-uncached-1.0-@.apk"
  before=$(origin_gets "/alpine/$BRANCH/x86_64/APKINDEX.tar.gz")
  origin_start
  fresh_client
  run_step "[$mode] origin back, fresh client: apk add --initdb" "${APK[@]}" add --initdb
  run_step "[$mode] origin back, fresh client: apk update" "${APK[@]}" update
  origin_revalidated "/alpine/$BRANCH/x86_64/APKINDEX.tar.gz" "$before"
fi

# Through the proxy every .apk crosses the origin once; direct, fetch and add each download the
# installed ones.
if [ "$DIRECT" = 1 ]; then max=2; else max=1; fi
assert_origin_gets 1 "$max" "${APKS[@]/#//alpine/$BRANCH/x86_64/}"

# tamper_fetch DIR MUST: a fresh path-mode client fetches e2e-hello into DIR (MUST=0: it may fail).
tamper_fetch() {
  fresh_client
  run_step "[tampered] apk add --initdb" "${APK[@]}" add --initdb
  run_step "[tampered] apk update" "${APK[@]}" update
  local step=run_step
  [ "$2" = 1 ] || step=try_step
  "$step" "[tampered] apk fetch e2e-hello" "${APK[@]}" fetch -o "$1" e2e-hello
}
tamper_phase alpine "$BRANCH/x86_64/e2e-hello-1.0-r0.apk" tamper_fetch
say PASS
