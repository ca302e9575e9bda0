#!/usr/bin/env bash
# bench/instructions.sh -- user-space instructions apt-proxy spends per small cache hit, counted
# by callgrind: a figure that does not move with the machine's load, for comparing two builds
# when wrk's requests per second vary more than the change being measured.
# Loopback only (127.0.0.1); every loop is bounded; everything started here is stopped on exit.
#
#   bench/instructions.sh        (prints "instructions per hit: N" on stdout, progress on stderr)
#
# What it does:
#   1. generates NSMALL small files (2-20 KiB, random) in a fresh temp dir and serves them with
#      Python's http.server on a free port (the origin; only the warm-up reaches it);
#   2. starts apt-proxy under callgrind with instrumentation off, fills its cache with every file
#      over one keep-alive connection, and asks for them all once more;
#   3. turns instrumentation on, asks for every file ROUNDS times over one keep-alive connection
#      (all hits), turns it off, and divides the instructions counted by the requests made.
#
# Environment (all optional):
#   APT_PROXY_BIN  binary to measure (default <repo>/target/release/apt-proxy); one built with
#                  CARGO_PROFILE_RELEASE_DEBUG=1 CARGO_PROFILE_RELEASE_STRIP=false also gets
#                  the functions that cost most listed (TOP=N of them, default 25)
#   MODE=proxy     forward-proxy requests (GET http://origin/debian/...), or path (/debian/...)
#   NSMALL=1000 ROUNDS=3
#   KEEP=1         keep the temp dir (callgrind's output in it, for callgrind_annotate)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${APT_PROXY_BIN:-$ROOT/target/release/apt-proxy}
MODE=${MODE:-proxy}; NSMALL=${NSMALL:-1000}; ROUNDS=${ROUNDS:-3}; TOP=${TOP:-25}

say() { echo "[instructions] $*" >&2; }
die() { say "error: $*"; exit 1; }
for tool in valgrind callgrind_control callgrind_annotate curl python3; do
  command -v "$tool" > /dev/null || die "$tool not found (apt-get install -y valgrind curl python3)"
done
[[ -x $BIN ]] || die "no binary at $BIN (cargo build --release)"
[[ $MODE == proxy || $MODE == path ]] || die "MODE must be proxy or path"
(( NSMALL >= 1 && NSMALL <= 100000 && ROUNDS >= 1 && ROUNDS <= 100 )) \
  || die "NSMALL must be 1-100000 and ROUNDS 1-100"

T=$(mktemp -d /tmp/apt-proxy-instructions.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2> /dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2> /dev/null || true; done
  if [[ -n ${KEEP:-} ]]; then say "kept $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

say "generating $NSMALL small files"
mkdir -p "$T/www/debian/pool/main/s" "$T/cache"
python3 - "$T/www/debian/pool/main/s" "$NSMALL" << 'PY'
import os, random, sys
random.seed(7)
for i in range(1, int(sys.argv[2]) + 1):
    with open(os.path.join(sys.argv[1], f"small-{i}.deb"), "wb") as f:
        f.write(random.randbytes(random.randint(2048, 20480)))
PY
ORIGIN_PORT=$(free_port)
python3 -m http.server "$ORIGIN_PORT" --bind 127.0.0.1 --directory "$T/www" \
  > "$T/origin.log" 2>&1 &
PIDS+=($!)
PORT=$(free_port)
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$T/callgrind.out" \
  "$BIN" --host 127.0.0.1 --port "$PORT" --cachedir "$T/cache" --mode debian \
  --debian "http://127.0.0.1:$ORIGIN_PORT/debian/" > "$T/proxy.log" 2>&1 &
PROXY=$!
PIDS+=("$PROXY")
for _ in $(seq 1 120); do
  curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$PORT/healthz" && break
  sleep 0.5
done
curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$PORT/healthz" \
  || die "apt-proxy under valgrind did not answer within 60 s (see $T/proxy.log; KEEP=1)"

if [[ $MODE == proxy ]]; then
  BASE=http://127.0.0.1:$ORIGIN_PORT; VIA=(-x "http://127.0.0.1:$PORT")
else
  BASE=http://127.0.0.1:$PORT; VIA=()
fi
for i in $(seq 1 "$NSMALL"); do
  printf 'url = "%s/debian/pool/main/s/small-%d.deb"\noutput = "/dev/null"\n' "$BASE" "$i"
done > "$T/urls"
pass() { # one request per file over one keep-alive connection; prints the count of 200s
  curl -s --max-time 600 "${VIA[@]}" -K "$T/urls" -w '%{http_code}\n' | grep -c '^200$' || true
}

say "warm-up: every file twice (misses, then hits)"
for _ in 1 2; do
  ok=$(pass)
  [[ $ok == "$NSMALL" ]] || die "warm-up: $ok of $NSMALL answers were 200"
done
say "counting: $ROUNDS x $NSMALL hits"
callgrind_control -i on "$PROXY" > /dev/null 2>&1
for _ in $(seq 1 "$ROUNDS"); do
  ok=$(pass)
  [[ $ok == "$NSMALL" ]] || die "a counted pass had $ok of $NSMALL answers 200"
done
callgrind_control -i off "$PROXY" > /dev/null 2>&1
callgrind_control -d "$PROXY" > /dev/null 2>&1
sleep 1
out=$(ls -S "$T"/callgrind.out* | head -1)
callgrind_annotate "$out" > "$T/annotated" 2> /dev/null || true
total=$(awk '/PROGRAM TOTALS/ {gsub(",", ""); print $1; exit}' "$T/annotated")
[[ -n $total ]] || die "callgrind wrote no totals ($out)"
echo "instructions per hit: $(( total / (ROUNDS * NSMALL) )) ($MODE form, $(( ROUNDS * NSMALL )) hits, $BIN)"
if grep -q 'apt_proxy::' "$T/annotated"; then
  echo "costliest functions (own instructions, share of the total):"
  sed -n '/file:function/,$p' "$T/annotated" | sed -n "3,$(( TOP + 2 ))p" \
    | sed -E 's@ /[^ ]*/(src|library)/@ \1/@' | cut -c1-160
fi
