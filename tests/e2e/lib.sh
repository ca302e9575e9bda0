# shellcheck shell=bash
# Shared helpers for the end-to-end suites (apt.sh, dnf.sh, apk.sh) and setup.sh.
#
# Every suite:
#   . "$(dirname "$0")/lib.sh"; e2e_init NAME
#   origin_start            -> nginx on a free 127.0.0.1 port serving $WWW (debian/ centos/ alpine/)
#   proxy_start             -> apt-proxy (APT_PROXY_BIN) with a fresh cache dir, mirrors = origin
#   run_step DESC cmd...    -> runs a client command with a timeout, output kept in $WORK/logs
#   origin_gets PATH        -> how many GETs for PATH the origin logged
#   assert_origin_gets MIN MAX PATH...   (e.g. 1 1: each package crossed the origin exactly once)
#   stale_phase_start       -> origin down + STALE_WAIT seconds, for the stale-index phase
# and everything it started is stopped by the EXIT trap.
#
# Environment knobs (all optional):
#   APT_PROXY_BIN  proxy binary                 (default: <repo>/target/debug/apt-proxy)
#   PROXY_ARGS     extra apt-proxy flags, e.g. "--debug" (other APT_PROXY_* variables are not passed)
#   DIRECT=1       no proxy: clients talk to the origin directly (checks the repos and clients)
#   MODES          client configurations to run: "forward path" (default; DIRECT=1 forces "direct")
#   E2E_WORK       work root                    (default: /tmp/apt-proxy-e2e; one folder per suite)
#   E2E_TOOLS      where setup.sh keeps tools   (default: ~/.cache/apt-proxy-e2e)
#   STEP_TIMEOUT   seconds for one client command (default 300)
#   STALE_WAIT     seconds to wait, origin down, until the proxy's index entries are stale (default 35:
#                  the proxy keeps indexes fresh for 30 s); then a fresh client must still succeed
#                  (stale served when the origin is unreachable). 0 skips that phase.
#   KEEP=1         keep the work folder even when the suite passes
#   VERBOSE=1      show every client command's output as it runs

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROJECT_ROOT=$(cd "$E2E_DIR/../.." && pwd)
APT_PROXY_BIN=${APT_PROXY_BIN:-$PROJECT_ROOT/target/debug/apt-proxy}
E2E_WORK=${E2E_WORK:-/tmp/apt-proxy-e2e}
E2E_TOOLS=${E2E_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/apt-proxy-e2e}
APK_BIN=${APK_BIN:-$E2E_TOOLS/apk-tools/apk}
DIRECT=${DIRECT:-0}
STEP_TIMEOUT=${STEP_TIMEOUT:-300}
STALE_WAIT=${STALE_WAIT:-35}
if [ "$DIRECT" = 1 ]; then MODES=direct; else MODES=${MODES:-forward path}; fi

# No proxy from the caller's environment may leak into a client: each suite sets its own.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY

_E2E_PIDS=()     # pids started by this suite (stopped in reverse order on exit)
_E2E_NAMES=()
_E2E_STEP=0
_E2E_T0=$(($(date +%s%N) / 1000000))
ORIGIN_PID=
PROXY_PID=
PROXY_PORT=

# ---------------------------------------------------------------- output

_now_ms() { local t; t=$(date +%s%N); echo $((t / 1000000)); }

say() {
  local el=$(($(_now_ms) - ${_E2E_T0:-$(_now_ms)}))
  printf '[%4d.%01ds] %s: %s\n' $((el / 1000)) $((el % 1000 / 100)) "${SUITE:-e2e}" "$*"
}

die() {
  printf '%s: FAIL: %s\n' "${SUITE:-e2e}" "$*" >&2
  exit 1
}

# Last lines of the proxy's and the origin's logs: what a failure report needs.
dump_server_logs() {
  if [ -n "${PROXY_LOG:-}" ] && [ -s "$PROXY_LOG" ]; then
    echo "----- last 40 lines of the proxy log ($PROXY_LOG) -----" >&2
    tail -n 40 "$PROXY_LOG" >&2
  fi
  if [ -n "${ORIGIN_LOG:-}" ] && [ -s "$ORIGIN_LOG" ]; then
    echo "----- last 20 lines of the origin access log ($ORIGIN_LOG) -----" >&2
    tail -n 20 "$ORIGIN_LOG" >&2
  fi
}

need_cmd() {
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null 2>&1 || die "required tool '$c' is missing (tests/e2e/setup.sh installs it)"
  done
}

# ---------------------------------------------------------------- lifecycle

# e2e_init NAME: fresh work folder $WORK, timers, cleanup trap.
e2e_init() {
  SUITE=$1
  _E2E_T0=$(_now_ms)
  WORK=$E2E_WORK/$SUITE
  LOGS=$WORK/logs
  WWW=$WORK/www
  if [ -d "$WORK" ]; then
    _kill_gpg_agents "$WORK"
    rm -rf "$WORK"
  fi
  mkdir -p "$LOGS" "$WWW"
  chmod 755 "$E2E_WORK" "$WORK"
  trap _e2e_exit EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  say "work folder $WORK; modes: $MODES; $( [ "$DIRECT" = 1 ] && echo 'DIRECT (no proxy)' || echo "proxy $APT_PROXY_BIN")"
}

_e2e_exit() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  if [ "$rc" != 0 ]; then dump_server_logs; fi
  local i
  for ((i = ${#_E2E_PIDS[@]} - 1; i >= 0; i--)); do
    stop_pid "${_E2E_PIDS[$i]}" "${_E2E_NAMES[$i]}"
  done
  _kill_gpg_agents "$WORK"
  if [ "$rc" = 0 ] && [ "${KEEP:-0}" != 1 ]; then
    rm -rf "$WORK"
  else
    echo "${SUITE}: logs and files kept in $WORK" >&2
  fi
  exit "$rc"
}

# gpg (key generation, signing) and librepo (dnf repo_gpgcheck) leave a gpg-agent per home dir.
_kill_gpg_agents() {
  [ -d "$1" ] || return 0
  command -v gpgconf >/dev/null 2>&1 || return 0
  local d
  find "$1" \( -name pubring.kbx -o -name trustdb.gpg -o -name 'S.gpg-agent*' \) -printf '%h\n' 2>/dev/null |
    sort -u | while read -r d; do gpgconf --homedir "$d" --kill gpg-agent >/dev/null 2>&1 || true; done
}

# spawn NAME LOGFILE cmd...: start a background server; its pid in $SPAWNED_PID.
spawn() {
  local name=$1 log=$2
  shift 2
  "$@" >"$log" 2>&1 &
  SPAWNED_PID=$!
  _E2E_PIDS+=("$SPAWNED_PID")
  _E2E_NAMES+=("$name")
}

# stop_pid PID NAME: TERM, wait up to 10 s, then KILL. Only ever our own children.
stop_pid() {
  local pid=$1 name=${2:-process} i
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
  kill -TERM "$pid" 2>/dev/null
  for i in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "${SUITE}: $name ($pid) ignored TERM for 10 s: KILL" >&2
    kill -KILL "$pid" 2>/dev/null
  fi
  wait "$pid" 2>/dev/null
  return 0
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_port PORT PID SECONDS: until PORT accepts connections; fails if PID dies first.
wait_port() {
  local port=$1 pid=$2 secs=${3:-20} deadline
  deadline=$(($(_now_ms) + secs * 1000))
  while ! port_open "$port"; do
    kill -0 "$pid" 2>/dev/null || return 1
    [ "$(_now_ms)" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}

# wait_port_closed PORT SECONDS
wait_port_closed() {
  local port=$1 secs=${2:-10} deadline
  deadline=$(($(_now_ms) + secs * 1000))
  while port_open "$port"; do
    [ "$(_now_ms)" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}

# ---------------------------------------------------------------- origin (nginx)

ORIGIN_PORT=
ORIGIN_URL=

# origin_start: nginx serving $WWW on 127.0.0.1:$ORIGIN_PORT (the same port on every restart,
# so URLs the proxy and clients hold stay valid). Access log: one line per request,
#   <status> <method> <decoded path> <bytes sent> raw=<request URI as sent> range=<Range header>
# (counting by the decoded path: 'a+b' and 'a%2bb' are the same file)
origin_start() {
  local d=$WORK/nginx
  [ -n "$ORIGIN_PORT" ] || ORIGIN_PORT=$(free_port)
  ORIGIN_URL=http://127.0.0.1:$ORIGIN_PORT
  ORIGIN_LOG=$d/access.log
  mkdir -p "$d/tmp"
  chmod -R a+rX "$WWW"
  # As root, workers would run as nobody and could not read a work folder under a private dir.
  local user_line=
  [ "$(id -u)" = 0 ] && user_line='user root;'
  cat >"$d/nginx.conf" <<EOF
$user_line
daemon off;
master_process on;
worker_processes 1;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 512; }
http {
  include /etc/nginx/mime.types;
  default_type application/octet-stream;
  types { application/vnd.debian.binary-package deb; application/x-rpm rpm; }
  log_format e2e '\$status \$request_method \$uri \$body_bytes_sent raw=\$request_uri range=\$http_range';
  access_log $d/access.log e2e;
  sendfile on;
  keepalive_timeout 30;
  client_body_temp_path $d/tmp/body;
  proxy_temp_path $d/tmp/proxy;
  fastcgi_temp_path $d/tmp/fastcgi;
  uwsgi_temp_path $d/tmp/uwsgi;
  scgi_temp_path $d/tmp/scgi;
  server {
    listen 127.0.0.1:$ORIGIN_PORT;
    server_name origin;
    root $WWW;
    autoindex on;
  }
}
EOF
  nginx -t -q -e "$d/error.log" -c "$d/nginx.conf" >"$d/configtest.log" 2>&1 ||
    { cat "$d/configtest.log" >&2; die "nginx rejected its config"; }
  spawn origin "$d/stdout.log" nginx -e "$d/error.log" -c "$d/nginx.conf"
  ORIGIN_PID=$SPAWNED_PID
  wait_port "$ORIGIN_PORT" "$ORIGIN_PID" 20 ||
    { cat "$d/stdout.log" "$d/error.log" >&2 2>/dev/null; die "origin nginx did not listen on 127.0.0.1:$ORIGIN_PORT"; }
  say "origin up: $ORIGIN_URL (root $WWW)"
}

origin_stop() {
  stop_pid "$ORIGIN_PID" origin
  wait_port_closed "$ORIGIN_PORT" 10 || die "origin port $ORIGIN_PORT still open after stop"
  ORIGIN_PID=
  say "origin stopped"
}

# origin_gets PATH: number of GET requests the origin logged for PATH (decoded; any status).
origin_gets() {
  [ -f "$ORIGIN_LOG" ] || { echo 0; return; }
  awk -v u="$1" '$2 == "GET" && $3 == u { n++ } END { print n + 0 }' "$ORIGIN_LOG"
}

# assert_origin_gets MIN MAX URI...: the origin logged between MIN and MAX GETs for each URI.
assert_origin_gets() {
  local min=$1 max=$2 u n bad=0
  shift 2
  for u in "$@"; do
    n=$(origin_gets "$u")
    if [ "$n" -lt "$min" ] || [ "$n" -gt "$max" ]; then
      echo "${SUITE}: origin logged $n GETs for $u (expected $min..$max):" >&2
      grep -F " $u " "$ORIGIN_LOG" >&2 || true
      bad=1
    fi
  done
  [ "$bad" = 0 ] || die "upstream request counts are wrong (see above)"
  say "origin GET count within $min..$max for each of $# files"
}

# ---------------------------------------------------------------- proxy under test

# proxy_start: apt-proxy on a free port, fresh cache, all three mirrors on the origin.
proxy_start() {
  [ "$DIRECT" = 1 ] && return 0
  [ -x "$APT_PROXY_BIN" ] || die "proxy binary $APT_PROXY_BIN not found (build it, set APT_PROXY_BIN, or use DIRECT=1)"
  PROXY_PORT=$(free_port)
  PROXY_CACHE=$WORK/proxy-cache
  PROXY_LOG=$WORK/proxy.log
  rm -rf "$PROXY_CACHE"
  mkdir -p "$PROXY_CACHE"
  # The caller's APT_PROXY_* settings stay out (the CLI below is the whole configuration);
  # extra flags, e.g. --debug, come from PROXY_ARGS.
  local strip=() v
  for v in $(compgen -e | grep '^APT_PROXY_' || true); do strip+=(-u "$v"); done
  # shellcheck disable=SC2086
  spawn apt-proxy "$PROXY_LOG" env "${strip[@]}" "$APT_PROXY_BIN" ${PROXY_ARGS:-} --host 127.0.0.1 --port "$PROXY_PORT" --cachedir "$PROXY_CACHE" \
    --debian "$ORIGIN_URL/debian/" --centos "$ORIGIN_URL/centos/" --alpine "$ORIGIN_URL/alpine/"
  PROXY_PID=$SPAWNED_PID
  wait_port "$PROXY_PORT" "$PROXY_PID" 30 || die "apt-proxy did not listen on 127.0.0.1:$PROXY_PORT"
  say "apt-proxy up: 127.0.0.1:$PROXY_PORT, cache $PROXY_CACHE, log $PROXY_LOG"
}

proxy_alive() {
  [ "$DIRECT" = 1 ] && return 0
  kill -0 "$PROXY_PID" 2>/dev/null || die "apt-proxy (pid $PROXY_PID) is no longer running"
}

# base_url MODE DISTRO: the URL a client is configured with for DISTRO's mirror.
#   direct/forward: the origin's own URL (forward: the client also gets http_proxy=proxy_url)
#   path:           the proxy's path-prefixed URL
base_url() {
  case $1 in
    direct | forward) echo "$ORIGIN_URL/$2/" ;;
    path) echo "http://127.0.0.1:$PROXY_PORT/$2/" ;;
    *) die "unknown mode $1" ;;
  esac
}

proxy_url() { echo "http://127.0.0.1:$PROXY_PORT"; }

# x_cache URL [PROXY]: the X-Cache header of a GET of URL (optionally through a forward proxy).
x_cache() {
  local args=(-sS -o /dev/null -D - --max-time 60)
  [ -n "${2:-}" ] && args+=(--proxy "$2")
  curl "${args[@]}" "$1" | tr -d '\r' | awk -F': *' 'tolower($1) == "x-cache" { print $2 }'
}

# expect_hit DISTRO PATH: both URL forms of an object the proxy has cached answer X-Cache: HIT.
expect_hit() {
  [ "$DIRECT" = 1 ] && return 0
  local v
  v=$(x_cache "http://127.0.0.1:$PROXY_PORT/$1/$2")
  [ "$v" = HIT ] || die "path-prefixed GET /$1/$2: X-Cache '$v', expected HIT"
  v=$(x_cache "$ORIGIN_URL/$1/$2" "$(proxy_url)")
  [ "$v" = HIT ] || die "forward-proxy GET $ORIGIN_URL/$1/$2: X-Cache '$v', expected HIT"
}

# stale_phase_start: true when the stale phase runs; then the origin is down and the proxy's
# index entries have been unrefreshed for STALE_WAIT seconds.
stale_phase_start() {
  [ "$DIRECT" != 1 ] && [ "$STALE_WAIT" -gt 0 ] || return 1
  say "=== stale indexes: origin down, waiting ${STALE_WAIT}s so the proxy's index entries go stale"
  [ -z "$ORIGIN_PID" ] || origin_stop
  sleep "$STALE_WAIT"
  proxy_alive
}

# origin_revalidated PATH BEFORE: reports whether the origin saw PATH again since the count BEFORE.
origin_revalidated() {
  local n
  n=$(origin_gets "$1")
  if [ "$n" -gt "$2" ]; then
    say "origin back: the proxy revalidated $1 ($(grep -F " $1 " "$ORIGIN_LOG" | tail -n 1 | cut -d' ' -f1))"
  else
    say "origin back: the proxy did not ask the origin for $1 again (served from cache)"
  fi
}

# ---------------------------------------------------------------- client steps

# run_step DESC cmd...: run a client command with a timeout; output in $LOGS/NN-*.log.
# On failure: the command, its output's tail, the proxy's log tail, then exit 1.
run_step() {
  local desc=$1
  shift
  _E2E_STEP=$((_E2E_STEP + 1))
  STEP_LOG=$LOGS/$(printf '%02d' "$_E2E_STEP")-$(echo "$desc" | tr -c 'A-Za-z0-9_.-' '_' | cut -c1-60).log
  local t0 rc=0
  t0=$(_now_ms)
  say "$desc"
  {
    printf '$'
    printf ' %q' "$@"
    printf '\n'
  } >"$STEP_LOG"
  if [ "${VERBOSE:-0}" = 1 ]; then
    timeout -k 10 "$STEP_TIMEOUT" "$@" > >(tee -a "$STEP_LOG") 2>&1 || rc=$?
  else
    timeout -k 10 "$STEP_TIMEOUT" "$@" >>"$STEP_LOG" 2>&1 || rc=$?
  fi
  if [ "$rc" != 0 ]; then
    [ "$rc" = 124 ] && echo "${SUITE}: timed out after ${STEP_TIMEOUT}s" >&2
    echo "----- $desc failed (exit $rc); last 40 lines of $STEP_LOG -----" >&2
    tail -n 40 "$STEP_LOG" >&2
    die "$desc"
  fi
  local el=$(($(_now_ms) - t0))
  say "  ok ($((el / 1000)).$((el % 1000 / 100))s)"
  proxy_alive
}

# same_bytes A B: byte-for-byte comparison with a clear failure.
same_bytes() {
  [ -f "$1" ] || die "missing file $1"
  cmp -s "$1" "$2" || die "$1 differs from the origin's $2"
}

# random_file PATH MIB: incompressible content.
random_file() {
  head -c "$(($2 * 1024 * 1024))" /dev/urandom >"$1"
}
