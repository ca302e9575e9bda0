#!/usr/bin/env bash
# bench/hits.sh -- how fast apt-proxy serves what it has cached, next to nginx serving the
# same files straight from disk, plus its memory and its behaviour under a thundering herd.
# Loopback only (127.0.0.1); every loop is bounded; everything started here is stopped on exit.
#
#   bench/hits.sh              (from anywhere; prints a table on stdout, progress on stderr)
#
# What it does:
#   1. generates, in a fresh temp dir, debian/pool/main/big.deb (BIG_MIB random) and
#      small-1..NSMALL.deb (2-20 KiB random);
#   2. starts Debian's nginx (own config, daemon off, sendfile) on a free port as the origin,
#      and apt-proxy on another free port with --debian pointing at it;
#   3. warms the cache through apt-proxy (every file once), checks the big file's sha256 through
#      the proxy, the X-Cache header, and the forward-proxy request form;
#   4. for nginx direct and for apt-proxy hits: big-file MiB/s with 1 and BIG_CLIENTS curl clients,
#      small-file req/s with wrk cycling over the small files, and the p50 latency of one
#      keep-alive connection; counts origin requests during apt-proxy's hit tests (should be 0);
#   5. herd: HERD_N concurrent curls for a never-seen HERD_MIB file that the origin sends at
#      HERD_RATE per connection; counts the GETs the origin logged for it, the slowest time to
#      first byte, and checks the copy apt-proxy kept;
#   6. samples apt-proxy's VmRSS, RssAnon and thread count every 0.2 s during all of it and
#      reports the peaks.
#
# Environment (all optional):
#   APT_PROXY_BIN   binary to measure (default <repo>/target/release/apt-proxy)
#   APT_PROXY_ARGS  extra arguments for it (word-split), e.g. "--debug"
#   MODE=path       how the hit tests address apt-proxy: path ("GET /debian/...") or
#                   proxy (forward proxy, "GET http://127.0.0.1:ORIGINPORT/debian/...")
#   PIN=1           apt-proxy -- and nginx while it is measured directly -- on CPU PROXY_CPU=0;
#                   curl, wrk and the origin on CPU LOAD_CPU=1. PIN=0: no pinning.
#   PRIO=0          nice value for everything started here (-10 helps on a busy box; root only)
#   BIG_MIB=200 NSMALL=1000
#   BIG_CLIENTS=8 BIG_SECS=5 BIG_MAX=10  each big-file client stops starting fetches after
#                   BIG_SECS seconds or BIG_MAX fetches
#   WRK_THREADS=2 WRK_CONNS=64 WRK_SECS=10 LAT_SECS=5
#   HERD_N=32 HERD_MIB=100 HERD_RATE=25m
#   KEEP=1          keep the temp dir (data, cache, logs) instead of deleting it
#   STORE=s3        the cache in an S3 bucket on a SeaweedFS started here (its `weed` from
#                   WEED_BIN, default the one tests/e2e/setup.sh installs), on the load CPU;
#                   default STORE=disk
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
BIN=${APT_PROXY_BIN:-$ROOT/target/release/apt-proxy}
read -r -a EXTRA_ARGS <<< "${APT_PROXY_ARGS:-}"
MODE=${MODE:-path}
PIN=${PIN:-1}; PROXY_CPU=${PROXY_CPU:-0}; LOAD_CPU=${LOAD_CPU:-1}
PRIO=${PRIO:-0}
BIG_MIB=${BIG_MIB:-200}; NSMALL=${NSMALL:-1000}
BIG_CLIENTS=${BIG_CLIENTS:-8}; BIG_SECS=${BIG_SECS:-5}; BIG_MAX=${BIG_MAX:-10}
WRK_THREADS=${WRK_THREADS:-2}; WRK_CONNS=${WRK_CONNS:-64}; WRK_SECS=${WRK_SECS:-10}; LAT_SECS=${LAT_SECS:-5}
HERD_N=${HERD_N:-32}; HERD_MIB=${HERD_MIB:-100}; HERD_RATE=${HERD_RATE:-25m}
KEEP=${KEEP:-0}
STORE=${STORE:-disk}
WEED_BIN=${WEED_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/apt-proxy-e2e/seaweedfs/venv/bin/weed}

# our test traffic must never go through a proxy inherited from the environment
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---- prerequisites -------------------------------------------------------------------------
[[ $MODE == path || $MODE == proxy ]] || die "MODE must be path or proxy, not '$MODE'"
[[ -x $BIN ]] || die "apt-proxy binary not found at $BIN (build it with 'cargo build --release' or set APT_PROXY_BIN)"
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
[[ -x $NGINX ]] || die "nginx not found (Debian: apt-get install nginx-light)"
for tool in curl wrk sha256sum; do
  command -v "$tool" >/dev/null || die "$tool not found (Debian: apt-get install curl wrk coreutils)"
done
if [[ $PIN == 1 ]]; then
  if ! command -v taskset >/dev/null; then log "taskset not found: running unpinned"; PIN=0
  elif (( $(nproc) < 2 )); then log "fewer than 2 CPUs: running unpinned"; PIN=0; fi
fi
if [[ $PIN == 1 ]]; then
  ON_PROXY_CPU=(taskset -c "$PROXY_CPU"); ON_LOAD_CPU=(taskset -c "$LOAD_CPU")
else
  ON_PROXY_CPU=(); ON_LOAD_CPU=()
fi
NICE=(nice -n "$PRIO")
LOAD=("${NICE[@]}" "${ON_LOAD_CPU[@]}")   # prefix for every load generator

# ---- state and cleanup ---------------------------------------------------------------------
STATE=$(mktemp -d "${TMPDIR:-/tmp}/apt-proxy-hits.XXXXXX")
chmod 755 "$STATE"   # nginx workers run as an unprivileged user when we are root
NGINX_PID='' PROXY_PID='' SAMPLER_PID='' WEED_PID=''
CLIENT_PIDS=()

stop_pid() { # stop_pid PID NAME: TERM, up to 10 s, then KILL; only that pid
  local pid=$1 name=$2 i
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.2
  done
  log "$name ($pid) ignored TERM for 10 s; sending KILL"
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# load_pids PID: descendants of PID except the servers' process trees (curl, wrk, subshells)
load_pids() {
  local c
  for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do
    [[ $c == "$NGINX_PID" || $c == "$PROXY_PID" ]] && continue
    echo "$c"; load_pids "$c"
  done
}

cleanup() {
  local rc=$? p
  trap - EXIT INT TERM
  # load generators of an interrupted step first (interrupted wrk/curl would run on otherwise)
  for p in $(load_pids $$); do kill -TERM "$p" 2>/dev/null || true; done
  stop_pid "$SAMPLER_PID" rss-sampler
  stop_pid "$PROXY_PID" apt-proxy
  stop_pid "$NGINX_PID" nginx
  stop_pid "$WEED_PID" seaweedfs
  if [[ $KEEP == 1 ]]; then log "state kept in $STATE"; else rm -rf "$STATE"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# pick_port VAR: a port nothing listens on (below the usual ephemeral range), not picked before
PICKED=" "
pick_port() {
  local p i
  for i in $(seq 1 500); do
    p=$(( 20000 + (RANDOM * 32768 + RANDOM) % 12000 ))
    [[ $PICKED == *" $p "* ]] && continue
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      PICKED+="$p "; printf -v "$1" '%s' "$p"; return 0
    fi
  done
  die "found no free port"
}

# wait_listen PORT PID NAME LOG: until something accepts on 127.0.0.1:PORT (20 s at most)
wait_listen() {
  local i
  for i in $(seq 1 100); do
    kill -0 "$2" 2>/dev/null || { tail -n 30 "$4" >&2; die "$3 exited during start-up (log above: $4)"; }
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.2
  done
  tail -n 30 "$4" >&2; die "$3 does not listen on 127.0.0.1:$1 after 20 s"
}

# the proxy must still be running at every step; if not, show why and stop
check_proxy() {
  local rc
  kill -0 "$PROXY_PID" 2>/dev/null && return 0
  wait "$PROXY_PID" 2>/dev/null && rc=0 || rc=$?
  tail -n 30 "$STATE/proxy.log" >&2
  PROXY_PID=
  die "apt-proxy is gone (exit status $rc) during: $1 (log above: $STATE/proxy.log)"
}

# pin_nginx CPU: move nginx's master and worker (all threads) to CPU
pin_nginx() {
  [[ $PIN == 1 ]] || return 0
  local p
  for p in "$NGINX_PID" $(ps -o pid= --ppid "$NGINX_PID"); do
    taskset -a -p -c "$1" "$p" >/dev/null 2>&1 || true
  done
}

us_now() { printf -v "$1" '%s' "${EPOCHREALTIME/./}"; }   # microseconds since the epoch
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.3f", (b - a) / 1e6}'; }

# origin access log: nginx flushes its buffer every second
origin_lines() { sleep 1.2; wc -l < "$STATE/nginx/access.log"; }

# busy_pct SECONDS: how busy the whole machine is (all CPUs, %), over SECONDS
busy_pct() {
  local a b
  a=$(head -n 1 /proc/stat); sleep "$1"; b=$(head -n 1 /proc/stat)
  printf '%s\n%s\n' "$a" "$b" | awk '
    { busy[NR] = $2 + $3 + $4 + $7 + $8 + $9; idle[NR] = $5 + $6 }
    END { all = busy[2] - busy[1] + idle[2] - idle[1]
          printf "%.0f", (all > 0 ? 100 * (busy[2] - busy[1]) / all : 0) }'
}
BUSY_BEFORE=$(busy_pct 2)
(( BUSY_BEFORE < 15 )) || log "warning: the machine is already ${BUSY_BEFORE}% busy; figures will be disturbed"

# ---- 1. data -------------------------------------------------------------------------------
WWW=$STATE/www
POOL=$WWW/debian/pool/main
mkdir -p "$POOL/herd"
log "generating $BIG_MIB MiB big.deb and $NSMALL small files in $STATE"
head -c "$((BIG_MIB << 20))" /dev/urandom > "$POOL/big.deb"
BIG_SIZE=$(stat -c %s "$POOL/big.deb")
BIG_SHA=$(sha256sum < "$POOL/big.deb" | cut -c1-64)
RANDOM=42   # same sizes every run
for i in $(seq 1 "$NSMALL"); do
  head -c "$(( 2048 + (RANDOM * 32768 + RANDOM) % (18 * 1024 + 1) ))" /dev/urandom > "$POOL/small-$i.deb"
done
chmod -R a+rX "$WWW"

# ---- 2. origin nginx and apt-proxy ---------------------------------------------------------
RANDOM=$(( (${EPOCHREALTIME/./} + $$) % 32768 ))   # ports: differ from run to run
pick_port NGINX_PORT
pick_port PROXY_PORT
ORIGIN=http://127.0.0.1:$NGINX_PORT
ND=$STATE/nginx
mkdir -p "$ND/tmp"
cat > "$ND/nginx.conf" <<CONF
worker_processes 1;
pid $ND/nginx.pid;
error_log $ND/error.log warn;
events { worker_connections 4096; }
http {
  log_format hits '\$msec \$request_method "\$request_uri" \$status \$body_bytes_sent';
  access_log $ND/access.log hits buffer=64k flush=1s;
  client_body_temp_path $ND/tmp/body; proxy_temp_path $ND/tmp/proxy;
  fastcgi_temp_path $ND/tmp/fastcgi; uwsgi_temp_path $ND/tmp/uwsgi; scgi_temp_path $ND/tmp/scgi;
  default_type application/octet-stream;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_requests 1000000; keepalive_timeout 65s;
  open_file_cache max=4096 inactive=60s;
  server {
    listen 127.0.0.1:$NGINX_PORT backlog=4096;
    root $WWW;
    location /debian/pool/main/herd/ { limit_rate $HERD_RATE; }
    location /debian/ { }
    location / { return 404; }
  }
}
CONF
: > "$ND/access.log"
"${NICE[@]}" "${ON_LOAD_CPU[@]}" "$NGINX" -e "$ND/error.log" -p "$ND" -c "$ND/nginx.conf" -g 'daemon off;' \
  </dev/null >"$ND/stdout.log" 2>&1 &
NGINX_PID=$!
wait_listen "$NGINX_PORT" "$NGINX_PID" nginx "$ND/error.log"
log "origin nginx pid $NGINX_PID on $ORIGIN"

if [[ $STORE == s3 ]]; then
  [[ -x $WEED_BIN ]] || die "SeaweedFS not found at $WEED_BIN (bash tests/e2e/setup.sh installs it)"
  # SeaweedFS also listens on port+10000 (gRPC).
  pair_port() {
    local pair
    while :; do
      pick_port pair
      (( pair + 10000 < 65536 )) && ! (exec 3<>"/dev/tcp/127.0.0.1/$((pair + 10000))") 2>/dev/null && break
    done
    printf -v "$1" '%s' "$pair"
  }
  pair_port S3_PORT; pair_port W_MASTER; pair_port W_VOLUME; pair_port W_FILER
  mkdir -p "$STATE/weed"
  printf '{"identities":[{"name":"bench","credentials":[{"accessKey":"benchkey","secretKey":"benchsecret"}],"actions":["Admin","Read","Write","List"]}]}\n' >"$STATE/weed/s3.json"
  "${NICE[@]}" "${ON_LOAD_CPU[@]}" "$WEED_BIN" server -dir="$STATE/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -master.port="$W_MASTER" -volume.port="$W_VOLUME" -filer.port="$W_FILER" -s3 -s3.port="$S3_PORT" \
    -s3.config="$STATE/weed/s3.json" -s3.port.iceberg=0 -s3.port.lance=0 -volume.max=20 </dev/null >"$STATE/weed.log" 2>&1 &
  WEED_PID=$!
  for i in $(seq 1 150); do
    curl -sf -o /dev/null --aws-sigv4 "aws:amz:us-east-1:s3" --user benchkey:benchsecret \
      -X PUT "http://127.0.0.1:$S3_PORT/bench" && break
    (( i < 150 )) || die "SeaweedFS did not start (log: $STATE/weed.log)"
    sleep 0.2
  done
  log "SeaweedFS pid $WEED_PID, S3 on 127.0.0.1:$S3_PORT, bucket bench"
  EXTRA_ARGS+=(--storage-backend s3 --s3-endpoint "127.0.0.1:$S3_PORT" --s3-bucket bench
    --s3-use-ssl false --s3-use-path-style --s3-access-key benchkey --s3-secret-key benchsecret)
fi

mkdir -p "$STATE/cache"
"${NICE[@]}" "${ON_PROXY_CPU[@]}" "$BIN" --host 127.0.0.1 --port "$PROXY_PORT" --cachedir "$STATE/cache" \
  --mode debian --debian "$ORIGIN/debian/" "${EXTRA_ARGS[@]}" </dev/null >"$STATE/proxy.log" 2>&1 &
PROXY_PID=$!
wait_listen "$PROXY_PORT" "$PROXY_PID" apt-proxy "$STATE/proxy.log"
log "apt-proxy pid $PROXY_PID on 127.0.0.1:$PROXY_PORT (upstream $ORIGIN/debian/)"

# memory sampler: one line "VmRSS RssAnon Threads" (KiB, KiB, count) per 0.2 s while the proxy
# lives (a burst of blocking-pool threads shows as a jump in Threads and RssAnon)
sample_rss() {
  local key val rss anon threads
  while kill -0 "$1" 2>/dev/null; do
    rss='' anon='' threads=''
    { while read -r key val _; do
        case $key in VmRSS:) rss=$val;; RssAnon:) anon=$val;; Threads:) threads=$val; break;; esac
      done < "/proc/$1/status"; } 2>/dev/null || true
    [[ -z $rss ]] || echo "$rss ${anon:-0} ${threads:-0}" >> "$2"
    sleep 0.2
  done
}
# mem_now: apt-proxy's current VmRSS / RssAnon / RssFile, for the progress log
mem_now() {
  awk '/^(VmRSS|RssAnon|RssFile):/ { printf "%s %.0f MiB  ", $1, $2 / 1024 }' "/proc/$PROXY_PID/status" 2>/dev/null || true
}
sample_rss "$PROXY_PID" "$STATE/rss.kib" &
SAMPLER_PID=$!
[[ $PIN == 1 ]] && taskset -p -c "$LOAD_CPU" "$SAMPLER_PID" >/dev/null

# How the proxy is addressed: URL for a repo path, extra curl args, wrk settings.
PROXY_BASE=http://127.0.0.1:$PROXY_PORT
CURL=(curl -sS --no-progress-meter)
if [[ $MODE == proxy ]]; then
  PROXY_URL_PREFIX=$ORIGIN; PROXY_CURL_ARGS=(-x "$PROXY_BASE")
else
  PROXY_URL_PREFIX=$PROXY_BASE; PROXY_CURL_ARGS=()
fi

# ---- 3. warm-up and correctness checks -----------------------------------------------------
log "warm-up: big.deb and $NSMALL small files through apt-proxy (one keep-alive curl)"
{
  printf 'url = "%s"\noutput = "/dev/null"\n' "$PROXY_URL_PREFIX/debian/pool/main/big.deb"
  for i in $(seq 1 "$NSMALL"); do
    printf 'url = "%s"\noutput = "/dev/null"\n' "$PROXY_URL_PREFIX/debian/pool/main/small-$i.deb"
  done
} > "$STATE/warm.cfg"
{
  echo "200 $BIG_SIZE"
  for i in $(seq 1 "$NSMALL"); do echo "200 $(stat -c %s "$POOL/small-$i.deb")"; done
} > "$STATE/warm.want"
us_now t0
"${LOAD[@]}" "${CURL[@]}" --max-time 600 "${PROXY_CURL_ARGS[@]}" -K "$STATE/warm.cfg" \
  -w '%{http_code} %{size_download}\n' > "$STATE/warm.out" 2>"$STATE/warm.err" || true
us_now t1
WARM_S=$(secs "$t0" "$t1")
check_proxy warm-up
if ! cmp -s "$STATE/warm.want" "$STATE/warm.out"; then
  log "warm-up answers differ from the files (want | got, first differences):"
  paste -d'|' "$STATE/warm.want" "$STATE/warm.out" | awk -F'|' '$1 != $2 {print NR": "$0}' | head -n 10 >&2
  head -n 5 "$STATE/warm.err" >&2
  die "apt-proxy did not return every file with status 200 and the right size during warm-up"
fi
log "warm-up done in $WARM_S s; apt-proxy $(mem_now)"

hit_check() { # hit_check PATH -> "STATUS X-CACHE SHA256" of one request through the proxy
  local hdr=$STATE/hit.hdr sha status xc
  sha=$("${LOAD[@]}" "${CURL[@]}" --max-time 120 "${PROXY_CURL_ARGS[@]}" -D "$hdr" \
        "$PROXY_URL_PREFIX$1" | sha256sum | cut -c1-64) || true
  status=$(awk 'NR==1{print $2}' "$hdr" 2>/dev/null)
  xc=$(awk -F': *' 'tolower($1)=="x-cache"{gsub(/\r/,"",$2); print $2}' "$hdr" 2>/dev/null | tail -n 1)
  echo "${status:-none} ${xc:-none} $sha"
}
read -r st xc sha < <(hit_check /debian/pool/main/big.deb)
check_proxy "sha256 check of big.deb"
[[ $st == 200 && $sha == "$BIG_SHA" ]] ||
  die "big.deb through apt-proxy after warm-up: status $st, sha256 $sha, want 200 and $BIG_SHA"
BIG_XCACHE=$xc
read -r st xc sha < <(hit_check /debian/pool/main/small-1.deb)
want=$(sha256sum < "$POOL/small-1.deb" | cut -c1-64)
[[ $st == 200 && $sha == "$want" ]] ||
  die "small-1.deb through apt-proxy after warm-up: status $st, sha256 $sha, want 200 and $want"
SMALL_XCACHE=$xc
# the other request form than MODE uses, once, so both are known to work
if [[ $MODE == path ]]; then
  other=(-x "$PROXY_BASE" "$ORIGIN/debian/pool/main/small-2.deb"); other_name="forward-proxy form"
else
  other=("$PROXY_BASE/debian/pool/main/small-2.deb"); other_name="path-routed form"
fi
sha=$("${LOAD[@]}" "${CURL[@]}" --max-time 60 -D "$STATE/other.hdr" "${other[@]}" | sha256sum | cut -c1-64) || true
st=$(awk 'NR==1{print $2}' "$STATE/other.hdr" 2>/dev/null)
xc=$(awk -F': *' 'tolower($1)=="x-cache"{gsub(/\r/,"",$2); print $2}' "$STATE/other.hdr" 2>/dev/null | tail -n 1)
want=$(sha256sum < "$POOL/small-2.deb" | cut -c1-64)
OTHER_FORM="$other_name: status ${st:-none}, X-Cache ${xc:-none}, body $([[ $sha == "$want" ]] && echo ok || echo WRONG)"
check_proxy "$other_name check"
log "checks: big.deb sha256 ok, X-Cache $BIG_XCACHE; small-1.deb X-Cache $SMALL_XCACHE; $OTHER_FORM"

# ---- 4. hit measurements -------------------------------------------------------------------
big_client() { # big_client URL OUT [curl args]: fetch until BIG_SECS elapsed or BIG_MAX fetches
  local url=$1 out=$2 start now n=0 line
  shift 2
  us_now start; now=$start
  while (( n < BIG_MAX && now - start < BIG_SECS * 1000000 )); do
    line=$("${LOAD[@]}" curl -s --max-time 60 "$@" -o /dev/null -w '%{http_code} %{size_download}' "$url") || true
    echo "${line:-000 0}" >> "$out"
    n=$((n + 1)); us_now now
  done
}
big_run() { # big_run NCLIENTS URL [curl args] -> "MiB/s good_fetches bad_fetches"
  local nc=$1 i t0 t1; shift
  rm -f "$STATE"/big.*.out
  CLIENT_PIDS=()
  us_now t0
  for i in $(seq 1 "$nc"); do big_client "$1" "$STATE/big.$i.out" "${@:2}" & CLIENT_PIDS+=($!); done
  wait "${CLIENT_PIDS[@]}" || true
  CLIENT_PIDS=()
  us_now t1
  cat "$STATE"/big.*.out | awk -v us="$((t1 - t0))" -v size="$BIG_SIZE" '
    { bytes += $2; if ($1 == 200 && $2 == size) good++; else bad++ }
    END { printf "%.1f %d %d\n", bytes / 1048576 / (us / 1e6), good, bad }'
}
wrk_run() { # wrk_run NFILES CONNS THREADS SECS BASE ABS HOST -> "rps p50_ms p99_ms errors requests"
  local out=$STATE/wrk.out
  WRK_PREFIX=/debian WRK_NFILES=$1 WRK_ABS=$6 WRK_HOST=$7 \
    "${LOAD[@]}" wrk -t"$3" -c"$2" -d"$4s" --timeout 10s --latency -s "$BENCH/wrk_cycle.lua" "$5" \
    > "$out" 2>&1 || true
  awk '
    function ms(s,  v, u) { v = s + 0; u = s; sub(/^[0-9.]+/, "", u)
      return u == "us" ? v / 1000 : u == "ms" ? v : u == "s" ? v * 1000 : u == "m" ? v * 60000 : v }
    /Requests\/sec:/ { rps = $2 }
    /^ +50%/ { p50 = ms($2) }
    /^ +99%/ { p99 = ms($2) }
    / requests in / { n = $1 }
    /Socket errors:/ { for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) err += $i + 0 }
    /Non-2xx or 3xx responses:/ { err += $NF }
    END { printf "%.0f %.3f %.3f %d %d\n", rps, p50, p99, err, n }' "$out"
}

declare -A R
measure() { # measure direct|proxy
  local who=$1 url_prefix base abs host cargs=() mibs good bad rps p50 p99 err n
  if [[ $who == direct ]]; then
    url_prefix=$ORIGIN; base=$ORIGIN; abs=; host=
    pin_nginx "$PROXY_CPU"   # nginx gets the server CPU while it is the one measured
  else
    url_prefix=$PROXY_URL_PREFIX; base=$PROXY_BASE; cargs=("${PROXY_CURL_ARGS[@]}")
    if [[ $MODE == proxy ]]; then abs=$ORIGIN; host=127.0.0.1:$NGINX_PORT; else abs=; host=; fi
    pin_nginx "$LOAD_CPU"
  fi
  log "$who: big file, 1 client"
  read -r mibs good bad < <(big_run 1 "$url_prefix/debian/pool/main/big.deb" "${cargs[@]}")
  R[$who.big1]=$mibs; R[$who.big1_good]=$good; R[$who.big1_bad]=$bad
  log "$who: big file, $BIG_CLIENTS clients"
  read -r mibs good bad < <(big_run "$BIG_CLIENTS" "$url_prefix/debian/pool/main/big.deb" "${cargs[@]}")
  R[$who.bigN]=$mibs; R[$who.bigN_good]=$good; R[$who.bigN_bad]=$bad
  [[ $who == direct ]] || { check_proxy "big-file hits"; log "apt-proxy after the big-file hits: $(mem_now)"; }
  log "$who: wrk -t$WRK_THREADS -c$WRK_CONNS -d${WRK_SECS}s over $NSMALL small files"
  read -r rps p50 p99 err n < <(wrk_run "$NSMALL" "$WRK_CONNS" "$WRK_THREADS" "$WRK_SECS" "$base" "$abs" "$host")
  R[$who.small_rps]=$rps; R[$who.small_p99]=$p99; R[$who.small_err]=$err
  log "$who: wrk -t1 -c1 -d${LAT_SECS}s on small-1.deb"
  read -r rps p50 p99 err n < <(wrk_run 1 1 1 "$LAT_SECS" "$base" "$abs" "$host")
  R[$who.c1_p50]=$p50; R[$who.c1_rps]=$rps; R[$who.c1_err]=$err
  [[ $who == direct ]] || check_proxy "small-file hits"
  pin_nginx "$LOAD_CPU"
  [[ $who == direct ]] || log "apt-proxy after the hit tests: $(mem_now)"
}

measure direct
ol0=$(origin_lines)
measure proxy
ol1=$(origin_lines)
HIT_ORIGIN_REQS=$((ol1 - ol0))

# ---- 5. thundering herd --------------------------------------------------------------------
HERD_NAME=herd-$(date +%s%N).deb
log "herd: generating a new $HERD_MIB MiB file on the origin (sent at $HERD_RATE per connection)"
head -c "$((HERD_MIB << 20))" /dev/urandom > "$POOL/herd/$HERD_NAME"
chmod a+r "$POOL/herd/$HERD_NAME"
HERD_SIZE=$(stat -c %s "$POOL/herd/$HERD_NAME")
HERD_SHA=$(sha256sum < "$POOL/herd/$HERD_NAME" | cut -c1-64)
herd_url=$PROXY_URL_PREFIX/debian/pool/main/herd/$HERD_NAME
log "herd: $HERD_N concurrent curls for it through apt-proxy"
CLIENT_PIDS=()
us_now t0
for i in $(seq 1 "$HERD_N"); do
  "${LOAD[@]}" curl -s --max-time 300 "${PROXY_CURL_ARGS[@]}" -o /dev/null \
    -w '%{http_code} %{size_download} %{time_starttransfer} %{time_total}\n' "$herd_url" \
    > "$STATE/herd.$i.out" 2>/dev/null &
  CLIENT_PIDS+=($!)
done
wait "${CLIENT_PIDS[@]}" || true
CLIENT_PIDS=()
us_now t1
HERD_WALL=$(secs "$t0" "$t1")
check_proxy herd
cat "$STATE"/herd.*.out > "$STATE/herd.all"
HERD_OK=$(awk -v size="$HERD_SIZE" '$1 == 200 && $2 == size' "$STATE/herd.all" | wc -l)
HERD_TTFB_MAX=$(awk 'BEGIN { m = 0 } $3 > m { m = $3 } END { printf "%.3f", m }' "$STATE/herd.all")
sleep 1.2   # the origin's log buffer
HERD_GETS=$(grep -F "\"/debian/pool/main/herd/$HERD_NAME\"" "$ND/access.log" | awk '$2 == "GET"' | wc -l)
HERD_ALL_REQS=$(grep -cF "/debian/pool/main/herd/$HERD_NAME" "$ND/access.log" || true)
HERD_ORIGIN_MIB=$(grep -F "/debian/pool/main/herd/$HERD_NAME" "$ND/access.log" |
  awk '{ b += $5 } END { printf "%.1f", b / 1048576 }')
read -r st xc sha < <(hit_check "/debian/pool/main/herd/$HERD_NAME")
log "apt-proxy after the herd: $(mem_now)"
HERD_STORED="status $st, X-Cache $xc, sha256 $([[ $sha == "$HERD_SHA" ]] && echo ok || echo WRONG)"

# ---- 6. memory -----------------------------------------------------------------------------
HWM_KIB=$(awk '/^VmHWM:/ { print $2 }' "/proc/$PROXY_PID/status" 2>/dev/null || echo 0)
stop_pid "$SAMPLER_PID" rss-sampler; SAMPLER_PID=
RSS_PEAK_KIB=$(awk '$1 > m { m = $1 } END { print m + 0 }' "$STATE/rss.kib")
ANON_PEAK_KIB=$(awk '$2 > m { m = $2 } END { print m + 0 }' "$STATE/rss.kib")
THREADS_PEAK=$(awk '$3 > m { m = $3 } END { print m + 0 }' "$STATE/rss.kib")
RSS_SAMPLES=$(wc -l < "$STATE/rss.kib")

# ---- report --------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0) printf "%.2f", b / a; else print "n/a" }'; }
row() { # row LABEL KEY
  printf '| %-40s | %12s | %12s | %20s |\n' "$1" "${R[direct.$2]}" "${R[proxy.$2]}" "$(ratio "${R[direct.$2]}" "${R[proxy.$2]}")"
}
echo
echo "apt-proxy hit benchmark  $(date -u +%Y-%m-%dT%H:%M:%SZ)  $(nproc) CPUs  pin=$PIN  mode=$MODE  store=$STORE"
echo "binary: $BIN"
echo "machine busy before start: ${BUSY_BEFORE}% of all CPUs (other jobs disturb the figures); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
printf '| %-40s | %12s | %12s | %20s |\n' metric "nginx direct" apt-proxy "ratio (proxy/direct)"
printf '|%s|%s|%s|%s|\n' "$(printf -- '-%.0s' {1..42})" "$(printf -- '-%.0s' {1..14})" "$(printf -- '-%.0s' {1..14})" "$(printf -- '-%.0s' {1..22})"
row "big file ${BIG_MIB} MiB, 1 client (MiB/s)" big1
row "big file, $BIG_CLIENTS clients (MiB/s)" bigN
row "small files, wrk ${WRK_THREADS}t/${WRK_CONNS}c ${WRK_SECS}s (req/s)" small_rps
row "small files, p99 latency (ms)" small_p99
row "1 keep-alive conn, p50 latency (ms)" c1_p50
row "1 keep-alive conn (req/s)" c1_rps
echo
echo "big-file fetches complete (1 client + $BIG_CLIENTS clients): nginx ${R[direct.big1_good]}+${R[direct.bigN_good]}, apt-proxy ${R[proxy.big1_good]}+${R[proxy.bigN_good]}"
echo "errors (failed big fetches / wrk socket errors + non-2xx): nginx ${R[direct.big1_bad]}+${R[direct.bigN_bad]} / ${R[direct.small_err]}+${R[direct.c1_err]}, apt-proxy ${R[proxy.big1_bad]}+${R[proxy.bigN_bad]} / ${R[proxy.small_err]}+${R[proxy.c1_err]}"
echo "origin requests during apt-proxy's hit tests: $HIT_ORIGIN_REQS (0 = all served from its cache)"
echo "warm-up (big.deb + $NSMALL small files, one keep-alive curl, all misses): $WARM_S s"
echo "after warm-up: big.deb sha256 ok, X-Cache $BIG_XCACHE; small-1.deb X-Cache $SMALL_XCACHE; $OTHER_FORM"
awk -v p="$RSS_PEAK_KIB" -v a="$ANON_PEAK_KIB" -v h="$HWM_KIB" -v n="$RSS_SAMPLES" -v t="$THREADS_PEAK" \
  'BEGIN { printf "apt-proxy peak RSS: %.1f MiB (VmRSS, max of %d samples every 0.2 s; peak RssAnon %.1f MiB); VmHWM at the end: %.1f MiB; most threads seen (0.2 s samples): %d\n", p / 1024, n, a / 1024, h / 1024, t }'
echo "herd: $HERD_N concurrent curls, new $HERD_MIB MiB file, origin sends $HERD_RATE per connection:"
echo "  complete answers $HERD_OK/$HERD_N, origin GETs $HERD_GETS (all requests $HERD_ALL_REQS, $HERD_ORIGIN_MIB MiB sent)," \
     "slowest time to first byte $HERD_TTFB_MAX s, wall $HERD_WALL s"
echo "  fetched again afterwards: $HERD_STORED"
