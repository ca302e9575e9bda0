#!/usr/bin/env bash
# bench/failover.sh -- what a failing mirror costs a client of apt-proxy, and how long the
# mirror benchmark takes. Loopback only (127.0.0.1); everything started here is stopped on exit.
#
#   bench/failover.sh          (prints a table on stdout, progress on stderr)
#
# Two nginx origins (A and B) serve the same tree; a third port refuses connections and a fourth
# accepts and never answers. Each scenario runs a fresh apt-proxy with a fresh cache:
#   baseline   --debian=B                    cold small files (TTFB), cold BIG_MIB file (MiB/s)
#   refused    --debian=DEAD,B               cold small files: the first request fails over
#   hung       --debian=HUNG,B               first cold file waits one response-head timeout
#                                            (10 s), the next go straight to B (A demoted)
#   killed     --debian=A,B                  A sends the big file at KILL_RATE and is killed
#                                            with SIGKILL after KILL_AFTER s: the download
#                                            continues on B with a byte range; sha256 checked
#   benchmark  no pin, distributions.yaml    candidates A (http, first; its benchmark file sent
#                                            at BENCH_RATE), DEAD, HUNG, B (these without a
#                                            scheme: https and http are probed):
#                                            time to "Finished benchmarking mirrors", the ranking
#
# Environment (all optional): APT_PROXY_BIN (default <repo>/target/release/apt-proxy),
#   BIG_MIB=200 NSMALL=20 KILL_RATE=100m KILL_AFTER=1 BENCH_RATE=100k (A's rate for the benchmark
#   file) KEEP=1 (keep the temp dir)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${APT_PROXY_BIN:-$ROOT/target/release/apt-proxy}
BIG_MIB=${BIG_MIB:-200}; NSMALL=${NSMALL:-20}
KILL_RATE=${KILL_RATE:-100m}; KILL_AFTER=${KILL_AFTER:-1}; BENCH_RATE=${BENCH_RATE:-100k}
KEEP=${KEEP:-0}
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ -x $BIN ]] || die "apt-proxy binary not found at $BIN (cargo build --release, or set APT_PROXY_BIN)"
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
[[ -x $NGINX ]] || die "nginx not found (Debian: apt-get install nginx-light)"
for tool in curl sha256sum python3; do command -v "$tool" >/dev/null || die "$tool not found"; done

STATE=$(mktemp -d "${TMPDIR:-/tmp}/apt-proxy-failover.XXXXXX")
chmod 755 "$STATE"
PIDS=()

cleanup() {
  local rc=$? p
  trap - EXIT INT TERM
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [[ $KEEP == 1 ]]; then log "state kept in $STATE"; else rm -rf "$STATE"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# wait_listen PORT PID NAME LOG
wait_listen() {
  local i
  for i in $(seq 1 100); do
    kill -0 "$2" 2>/dev/null || { tail -n 20 "$4" >&2; die "$3 exited during start-up"; }
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  die "$3 does not listen on 127.0.0.1:$1"
}

# ---- data ------------------------------------------------------------------------------------
WWW=$STATE/www
POOL=$WWW/debian/pool/main
mkdir -p "$POOL" "$WWW/debian/dists/bench"
log "generating a $BIG_MIB MiB file and $NSMALL small ones"
head -c "$((BIG_MIB << 20))" /dev/urandom >"$POOL/big.deb"
BIG_SHA=$(sha256sum <"$POOL/big.deb" | cut -c1-64)
for i in $(seq 1 "$NSMALL"); do head -c 8192 /dev/urandom >"$POOL/small-$i.deb"; done
{
  echo "Origin: bench"
  echo "Date: $(date -u -R | sed 's/+0000/UTC/')"
  head -c 262144 /dev/urandom | base64
} >"$WWW/debian/dists/bench/Release"
chmod -R a+rX "$WWW"

# ---- origins ---------------------------------------------------------------------------------
# start_nginx NAME PORT BIG_RATE BENCH_RATE: an origin serving $WWW, with per-connection limits
# for big.deb and for the benchmark file (0: none)
start_nginx() {
  local d=$STATE/$1
  mkdir -p "$d"
  cat >"$d/nginx.conf" <<CONF
# One process, no master: SIGKILL on it kills the server that holds the connections.
master_process off;
pid $d/nginx.pid;
error_log $d/error.log;
events { worker_connections 1024; }
http {
  access_log $d/access.log;
  sendfile on;
  server {
    listen 127.0.0.1:$2;
    root $WWW;
    location = /debian/pool/main/big.deb { limit_rate $3; }
    location = /debian/dists/bench/Release { limit_rate $4; }
  }
}
CONF
  "$NGINX" -e "$d/error.log" -p "$d" -c "$d/nginx.conf" -g 'daemon off;' >"$d/out.log" 2>&1 &
  PIDS+=($!)
  printf -v "${1}_PID" '%s' "$!"
  wait_listen "$2" "$!" "nginx $1" "$d/error.log"
}
A_PORT=$(free_port); B_PORT=$(free_port); DEAD_PORT=$(free_port); HUNG_PORT=$(free_port)
start_nginx A "$A_PORT" "$KILL_RATE" "$BENCH_RATE"
start_nginx B "$B_PORT" 0 0
python3 - "$HUNG_PORT" >"$STATE/hung.log" 2>&1 <<'PY' &
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(128)
held = []
while True:
    c, _ = s.accept(); held.append(c)   # accepted, read, never answered
PY
PIDS+=($!); HUNG_PID=$!
wait_listen "$HUNG_PORT" "$HUNG_PID" hung "$STATE/hung.log"
A=http://127.0.0.1:$A_PORT/debian/; B=http://127.0.0.1:$B_PORT/debian/
DEAD=http://127.0.0.1:$DEAD_PORT/debian/; HUNG=http://127.0.0.1:$HUNG_PORT/debian/
log "origins: A $A (big.deb at $KILL_RATE), B $B, refusing $DEAD, hung $HUNG"

# ---- proxy -----------------------------------------------------------------------------------
PROXY_PID=''
# proxy_start NAME ARGS...: a fresh apt-proxy serving debian only
proxy_start() {
  local name=$1; shift
  PROXY_PORT=$(free_port)
  PROXY_LOG=$STATE/proxy-$name.log
  APT_PROXY_LOG_FORMAT=json "$BIN" --host 127.0.0.1 --port "$PROXY_PORT" --mode debian \
    --cachedir "$STATE/cache-$name" "$@" </dev/null >"$PROXY_LOG" 2>&1 &
  PROXY_PID=$!; PIDS+=("$PROXY_PID")
  wait_listen "$PROXY_PORT" "$PROXY_PID" "apt-proxy ($name)" "$PROXY_LOG"
  P=http://127.0.0.1:$PROXY_PORT/debian
}
proxy_stop() { kill -TERM "$PROXY_PID" 2>/dev/null || true; wait "$PROXY_PID" 2>/dev/null || true; }

# ttfb URL: seconds to the first byte of one GET (new connection)
ttfb() { curl -s -o /dev/null -w '%{time_starttransfer}' "$1"; }
# median of the numbers on stdin, in ms
median_ms() { sort -g | awk '{ v[NR] = $1 } END { printf "%.2f", 1000 * v[int((NR + 1) / 2)] }'; }
# small_ttfb FIRST LAST: median TTFB of cold small files FIRST..LAST through $P
small_ttfb() { local i; for i in $(seq "$1" "$2"); do ttfb "$P/pool/main/small-$i.deb"; echo; done | median_ms; }
# big_get: "seconds MiB/s sha-ok X-Cache" for a cold big.deb through $P
big_get() {
  local out t
  out=$(curl -s -D "$STATE/h" -o "$STATE/big.out" -w '%{time_total}' "$P/pool/main/big.deb")
  t=$out
  local ok=no; [[ $(sha256sum <"$STATE/big.out" | cut -c1-64) == "$BIG_SHA" ]] && ok=yes
  awk -v t="$t" -v m="$BIG_MIB" -v ok="$ok" 'BEGIN { printf "%.2f %.0f %s\n", t, m / t, ok }'
}

declare -A R
log "baseline: --debian=B"
proxy_start baseline --debian "$B"
R[base.small]=$(small_ttfb 1 "$NSMALL")
read -r R[base.big_s] R[base.big_rate] R[base.big_ok] < <(big_get)
proxy_stop

log "refused first mirror: --debian=DEAD,B"
proxy_start refused --debian "$DEAD,$B"
R[refused.first]=$(ttfb "$P/pool/main/small-1.deb" | median_ms)
R[refused.small]=$(small_ttfb 2 "$NSMALL")
proxy_stop

log "hung first mirror: --debian=HUNG,B (one 10 s response-head timeout expected)"
proxy_start hung --debian "$HUNG,$B"
R[hung.first]=$(ttfb "$P/pool/main/small-1.deb" | median_ms)
R[hung.small]=$(small_ttfb 2 "$NSMALL")
proxy_stop

log "mirror killed mid-download: --debian=A,B; A sends at $KILL_RATE, SIGKILL after ${KILL_AFTER}s"
proxy_start killed --debian "$A,$B"
( sleep "$KILL_AFTER"; kill -KILL "$A_PID" 2>/dev/null ) &
KILLER=$!
read -r R[kill.big_s] R[kill.big_rate] R[kill.big_ok] < <(big_get)
wait "$KILLER" || true
R[kill.cache]=$(tr -d '\r' <"$STATE/h" | awk -F': ' 'tolower($1) == "x-cache" { print $2 }')
R[kill.range]=$(awk '$7 ~ /big.deb/ && $9 == 206' "$STATE/B/access.log" | wc -l)
R[kill.failovers]=$(curl -s "http://127.0.0.1:$PROXY_PORT/metrics" | awk '$1 ~ /^apt_proxy_mirror_failovers_total/ { n += $2 } END { print n + 0 }')
R[kill.resumed_at]=$(grep -o '"from":[0-9]*' "$PROXY_LOG" | head -n 1 | cut -d: -f2 || true)
proxy_stop
start_nginx A "$A_PORT" "$KILL_RATE" "$BENCH_RATE"   # back for the benchmark

log "benchmark: candidates A (rate-limited), B, refusing, hung; no pin"
cat >"$STATE/distributions.yaml" <<YAML
distributions:
  - id: debian
    benchmark_url: "dists/bench/Release"
    mirrors:
      official: ["http://127.0.0.1:$A_PORT/debian/"]
      custom: ["127.0.0.1:$DEAD_PORT/debian/", "127.0.0.1:$HUNG_PORT/debian/", "127.0.0.1:$B_PORT/debian/"]
YAML
started=${EPOCHREALTIME/./}
proxy_start benchmark --distributions-config "$STATE/distributions.yaml"
R[bench.first]=$(ttfb "$P/pool/main/small-1.deb" | median_ms)
for _ in $(seq 1 400); do
  grep -q 'Finished benchmarking mirrors' "$PROXY_LOG" && break
  sleep 0.1
done
grep -q 'Finished benchmarking mirrors' "$PROXY_LOG" || die "the benchmark did not finish within 40 s"
done_at=$(date -d "$(grep -m1 'Finished benchmarking mirrors' "$PROXY_LOG" | python3 -c 'import json,sys; print(json.load(sys.stdin)["timestamp"])')" +%s%6N)
R[bench.secs]=$(awk -v a="$started" -v b="$done_at" 'BEGIN { printf "%.2f", (b - a) / 1e6 }')
R[bench.rank]=$(curl -s "http://127.0.0.1:$PROXY_PORT/api/mirrors" | python3 -c '
import json, sys
s = [x for x in json.load(sys.stdin) if x["repo"] == "debian"][0]
print(" > ".join("%s (%s ms)" % (m["url"].split("//")[1].split("/")[0], m["measure"]["score_ms"]) for m in s["mirrors"]),
      "| left out:", len(s["last_benchmark"]["dropped"]), "of", s["last_benchmark"]["probed"])')
proxy_stop

# ---- report ----------------------------------------------------------------------------------
cat <<EOF

apt-proxy failover figures (loopback; $BIG_MIB MiB big file, $NSMALL small 8 KiB files)

| scenario | figure | value |
|---|---|---|
| baseline (one healthy mirror) | cold small file TTFB, median | ${R[base.small]} ms |
| baseline | cold big file | ${R[base.big_s]} s, ${R[base.big_rate]} MiB/s, sha256 ok: ${R[base.big_ok]} |
| first mirror refuses | first cold file TTFB (fails over) | ${R[refused.first]} ms |
| first mirror refuses | next cold files TTFB, median (mirror demoted) | ${R[refused.small]} ms |
| first mirror hangs | first cold file TTFB (one head timeout) | ${R[hung.first]} ms |
| first mirror hangs | next cold files TTFB, median (mirror demoted) | ${R[hung.small]} ms |
| mirror killed mid-download | big file through the kill | ${R[kill.big_s]} s, ${R[kill.big_rate]} MiB/s, sha256 ok: ${R[kill.big_ok]}, X-Cache ${R[kill.cache]} |
| mirror killed mid-download | resumed at byte / 206 answers from B / failovers | ${R[kill.resumed_at]:-?} / ${R[kill.range]} / ${R[kill.failovers]} |
| benchmark (4 candidates) | first answer while it runs | ${R[bench.first]} ms |
| benchmark | start to ranking | ${R[bench.secs]} s |
| benchmark | ranking | ${R[bench.rank]} |
EOF
