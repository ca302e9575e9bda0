#!/usr/bin/env bash
# bench/peers.sh -- apt-proxy side by side with nginx, apt-cacher-ng, varnish (and others) in the
# shared peer harness (run_all.sh of $SHARED_BENCH), end to end:
#   1. starts the harness's origin (upstream.sh start) unless it is already running;
#   2. starts apt-proxy with an empty cache dir on a free port, upstream that origin, as
#      `taskset -c LOAD_CPU nice -n 0 apt-proxy ...` (the way the harness starts its peers);
#   3. runs `run_all.sh -r ROUNDS <peers> rust=PORT:proxy:PID rust-path=PORT:path:PID`;
#   4. prints the summary's path and the summary table; stops apt-proxy, and the origin if it
#      started it.
#
#   bench/peers.sh [-r ROUNDS] [PEER...]     default: -r 3 direct nginx acng varnish
#
# Environment (all optional):
#   SHARED_BENCH    the harness (default <repo>/../shared/bench; not part of this repository)
#   APT_PROXY_BIN   binary to measure (default <repo>/target/release/apt-proxy)
#   APT_PROXY_ARGS  extra arguments for it (word-split)
#   BENCH_STATE     the harness's state dir (default /tmp/proxybench)
#   RESULTS         where run_all.sh writes results/<stamp>/ (default $BENCH_STATE/results)
#   KEEP=1          keep apt-proxy's cache dir and log
#   anything the harness reads (PIN, PRIO, QUIET_WAIT, WRK_SECS, ...; see its README.md)
# A full run takes a while (every target: ~1-2 min per round, plus waiting for a quiet machine).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHARED_BENCH=${SHARED_BENCH:-$ROOT/../shared/bench}
BIN=${APT_PROXY_BIN:-$ROOT/target/release/apt-proxy}
read -r -a EXTRA_ARGS <<< "${APT_PROXY_ARGS:-}"
KEEP=${KEEP:-0}
ROUNDS=3

log() { printf '[%(%H:%M:%S)T] peers.sh: %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
usage() { sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }

while [[ $# -gt 0 ]]; do
  case $1 in
    -r) [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || die "-r needs a number of rounds"; ROUNDS=$2; shift 2;;
    -h|--help) usage;;
    -*) die "unknown option $1 (see --help)";;
    *) break;;
  esac
done
PEERS=("$@"); [[ ${#PEERS[@]} -gt 0 ]] || PEERS=(direct nginx acng varnish)

if [[ ! -x $SHARED_BENCH/run_all.sh || ! -x $SHARED_BENCH/upstream.sh ]]; then
  die "the shared peer harness is not at $SHARED_BENCH (no run_all.sh / upstream.sh there).
  It is not part of this repository: it lives in the project's shared/ folder, next to the repo.
  Point SHARED_BENCH at its bench/ directory, or use bench/hits.sh, which needs nothing else."
fi
[[ -x $BIN ]] || die "apt-proxy binary not found at $BIN (cargo build --release, or set APT_PROXY_BIN)"
command -v taskset >/dev/null || die "taskset not found (util-linux)"

unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY
export BENCH_STATE=${BENCH_STATE:-/tmp/proxybench}
export RESULTS=${RESULTS:-$BENCH_STATE/results}
ORIGIN_PORT=${ORIGIN_PORT:-18080}
LOAD_CPU=${LOAD_CPU:-1}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/apt-proxy-peers.XXXXXX")
chmod 755 "$WORK"
PROXY_PID=
STARTED_ORIGIN=0

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n $PROXY_PID ]] && kill -0 "$PROXY_PID" 2>/dev/null; then
    kill -TERM "$PROXY_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$PROXY_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$PROXY_PID" 2>/dev/null || true
    wait "$PROXY_PID" 2>/dev/null || true
    log "stopped apt-proxy ($PROXY_PID)"
  fi
  if [[ $STARTED_ORIGIN == 1 ]]; then "$SHARED_BENCH/upstream.sh" stop || true; fi
  if [[ $KEEP == 1 ]]; then log "apt-proxy cache and log kept in $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# 1. origin (the harness generates its data on first use)
if "$SHARED_BENCH/upstream.sh" status >/dev/null 2>&1; then
  log "origin already running on 127.0.0.1:$ORIGIN_PORT; leaving it running afterwards"
else
  "$SHARED_BENCH/upstream.sh" start
  STARTED_ORIGIN=1
fi

# 2. apt-proxy on a free port (below the ephemeral range, away from the harness's 18080-18105)
PORT=
for _ in $(seq 1 500); do
  p=$(( 20000 + (RANDOM * 32768 + RANDOM) % 12000 ))
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then PORT=$p; break; fi
done
[[ -n $PORT ]] || die "found no free port"
mkdir -p "$WORK/cache"
taskset -c "$LOAD_CPU" nice -n 0 "$BIN" --host 127.0.0.1 --port "$PORT" --cachedir "$WORK/cache" \
  --mode debian --debian "http://127.0.0.1:$ORIGIN_PORT/debian/" "${EXTRA_ARGS[@]}" </dev/null >"$WORK/apt-proxy.log" 2>&1 &
PROXY_PID=$!
for _ in $(seq 1 100); do
  kill -0 "$PROXY_PID" 2>/dev/null || { tail -n 30 "$WORK/apt-proxy.log" >&2; PROXY_PID=; die "apt-proxy exited during start-up"; }
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.2
done
(exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null || { tail -n 30 "$WORK/apt-proxy.log" >&2; die "apt-proxy does not listen on $PORT after 20 s"; }
log "apt-proxy pid $PROXY_PID on 127.0.0.1:$PORT, cache $WORK/cache, log $WORK/apt-proxy.log"

# 3. the harness
mkdir -p "$RESULTS"
marker=$WORK/.started
: > "$marker"
targets=("${PEERS[@]}" "rust=$PORT:proxy:$PROXY_PID" "rust-path=$PORT:path:$PROXY_PID")
log "run_all.sh -r $ROUNDS ${targets[*]}"
rc=0
"$SHARED_BENCH/run_all.sh" -r "$ROUNDS" "${targets[@]}" > "$WORK/run_all.out" || rc=$?
kill -0 "$PROXY_PID" 2>/dev/null || log "WARNING: apt-proxy is no longer running (log: $WORK/apt-proxy.log; KEEP=1 keeps it)"

# 4. summary: the results dir run_all.sh created during this run
summary=
for d in "$RESULTS"/*/; do
  [[ -f $d/summary.md && $d/summary.md -nt $marker ]] && summary=${d%/}/summary.md
done
if [[ -z $summary ]]; then
  cat "$WORK/run_all.out" >&2
  die "run_all.sh (exit status $rc) left no summary under $RESULTS"
fi
echo "summary: $summary"
echo
cat "$summary"
[[ $rc == 0 ]] || die "run_all.sh exited with status $rc"
