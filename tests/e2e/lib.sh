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
#   upstream_down_phases ROUND DISTRO PATH_FMT
#                           -> the origin down three ways (stopped, hung, answering 500): per way and
#                              mode, ROUND (a fresh client's update + download of cached packages)
#                              with each step bounded by DOWN_STEP_MAX; uncached files must fail fast
#   origin_start error500 / origin_hang_start  -> the origin's port answering 500 / never answering
#   proxy_kill9, proxy_restart                 -> SIGKILL the proxy; restart it on the same port+cache
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
#   DOWN_WAYS      how the origin is down in the stale phase (default "stopped hung error500")
#   DOWN_STEP_MAX  seconds one client step may take while the origin is down (default 60)
#   ORIGIN_EXTRA_CONF  extra nginx directives for the origin's server block (e.g. a throttled location)
#   KEEP=1         keep the work folder even when the suite passes
#   VERBOSE=1      show every client command's output as it runs

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROJECT_ROOT=$(cd "$E2E_DIR/../.." && pwd)
APT_PROXY_BIN=${APT_PROXY_BIN:-$PROJECT_ROOT/target/debug/apt-proxy}
E2E_WORK=${E2E_WORK:-/tmp/apt-proxy-e2e}
E2E_TOOLS=${E2E_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/apt-proxy-e2e}
APK_BIN=${APK_BIN:-$E2E_TOOLS/apk-tools/apk}
WEED_BIN=${APT_PROXY_WEED:-$E2E_TOOLS/seaweedfs/venv/bin/weed}
PODMAN_COMPOSE=${PODMAN_COMPOSE:-$E2E_TOOLS/podman-compose/venv/bin/podman-compose}
DIRECT=${DIRECT:-0}
STEP_TIMEOUT=${STEP_TIMEOUT:-300}
STALE_WAIT=${STALE_WAIT:-35}
DOWN_WAYS=${DOWN_WAYS:-stopped hung error500}
DOWN_STEP_MAX=${DOWN_STEP_MAX:-60}
STEP_MAX=        # when set, run_step fails a step that takes more than STEP_MAX seconds
if [ "$DIRECT" = 1 ]; then MODES=direct; else MODES=${MODES:-forward path}; fi

# No proxy from the caller's environment may leak into a client: each suite sets its own.
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY

_E2E_PIDS=()     # pids started by this suite (stopped in reverse order on exit)
_E2E_CLEANUP=()  # shell commands run on exit, last first (on_exit)
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
  local i
  # Cleanup first: it may save the logs of what it removes (a container's) for the dump below.
  for ((i = ${#_E2E_CLEANUP[@]} - 1; i >= 0; i--)); do
    eval "${_E2E_CLEANUP[$i]}" >>"$LOGS/cleanup.log" 2>&1 ||
      echo "${SUITE}: cleanup failed (see $LOGS/cleanup.log): ${_E2E_CLEANUP[$i]}" >&2
  done
  if [ "$rc" != 0 ]; then dump_server_logs; fi
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
  "$@" >>"$log" 2>&1 &   # appended: a restarted server's log goes on after the previous one's
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
  wait "$pid" 2>/dev/null || true   # its exit status (143 when TERM ended it) is no failure here
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

# nginx_conf DIR SERVER: writes DIR/nginx.conf, an nginx that runs in the foreground with
# everything (pid, logs, temp files) under DIR and one server block with SERVER in it, and
# checks it with nginx -t. Access log: one line per request,
#   <status> <method> <decoded path> <bytes sent> raw=<request URI as sent> range=<Range header>
nginx_conf() {
  local d=$1 server=$2 user_line=
  mkdir -p "$d/tmp"
  # As root, workers would run as nobody and could not read a work folder under a private dir.
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
    $server
  }
}
EOF
  nginx -t -q -e "$d/error.log" -c "$d/nginx.conf" >"$d/configtest.log" 2>&1 ||
    { cat "$d/configtest.log" >&2; die "nginx rejected its config in $d"; }
}

# origin_start [serve|error500]: nginx serving $WWW on 127.0.0.1:$ORIGIN_PORT (the same port on
# every restart, so URLs the proxy and clients hold stay valid), with $ORIGIN_EXTRA_CONF in its
# server block; error500: the same port answering 500 to every request instead.
# Access log: one line per request,
#   <status> <method> <decoded path> <bytes sent> raw=<request URI as sent> range=<Range header>
# (counting by the decoded path: 'a+b' and 'a%2bb' are the same file)
origin_start() {
  local d=$WORK/nginx how=${1:-serve} body
  case $how in
    serve) body="root $WWW;
    autoindex on;
    ${ORIGIN_EXTRA_CONF:-}" ;;
    error500) body='return 500;' ;;
    *) die "origin_start: unknown mode $how" ;;
  esac
  [ -n "$ORIGIN_PORT" ] || ORIGIN_PORT=$(free_port)
  ORIGIN_URL=http://127.0.0.1:$ORIGIN_PORT
  ORIGIN_LOG=$d/access.log
  chmod -R a+rX "$WWW"
  nginx_conf "$d" "listen 127.0.0.1:$ORIGIN_PORT;
    server_name origin;
    $body"
  spawn origin "$d/stdout.log" nginx -e "$d/error.log" -c "$d/nginx.conf"
  ORIGIN_PID=$SPAWNED_PID
  wait_port "$ORIGIN_PORT" "$ORIGIN_PID" 20 ||
    { cat "$d/stdout.log" "$d/error.log" >&2 2>/dev/null; die "origin nginx did not listen on 127.0.0.1:$ORIGIN_PORT"; }
  if [ "$how" = serve ]; then say "origin up: $ORIGIN_URL (root $WWW)"; else say "origin up, answering 500 to everything: $ORIGIN_URL"; fi
}

# origin_hang_start: in place of nginx, a server on the origin's port that accepts connections,
# reads what it is sent and never answers (a hung mirror). One line per accepted connection in
# $HANG_LOG. Stopped by origin_stop.
origin_hang_start() {
  HANG_LOG=$WORK/hang.log
  cat >"$WORK/hang.py" <<'EOF'
import socket, sys, threading, time
port = int(sys.argv[1])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(128)
print("listening", flush=True)
def drain(conn):
    try:
        while conn.recv(65536):
            pass
    except OSError:
        pass
while True:
    conn, peer = srv.accept()
    print("%.3f accepted %s:%d" % (time.time(), peer[0], peer[1]), flush=True)
    threading.Thread(target=drain, args=(conn,), daemon=True).start()
EOF
  spawn origin-hung "$HANG_LOG" python3 "$WORK/hang.py" "$ORIGIN_PORT"
  ORIGIN_PID=$SPAWNED_PID
  wait_port "$ORIGIN_PORT" "$ORIGIN_PID" 20 || { cat "$HANG_LOG" >&2; die "hung origin did not listen on 127.0.0.1:$ORIGIN_PORT"; }
  say "origin hung: $ORIGIN_URL accepts connections and never answers"
}

# hang_connections: how many connections the hung origin accepted (the port probe included).
hang_connections() { grep -c ' accepted ' "$HANG_LOG" 2>/dev/null || true; }

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
  _proxy_spawn
  say "apt-proxy up: 127.0.0.1:$PROXY_PORT, cache $PROXY_CACHE, log $PROXY_LOG"
}

# no_proxy_env ARRAY: sets ARRAY to `env` arguments that unset every APT_PROXY_* variable of the
# caller's, so that an apt-proxy started with them reads only what the suite gives it.
no_proxy_env() {
  local -n _unset=$1
  local v
  _unset=()
  for v in $(compgen -e | grep '^APT_PROXY_' || true); do _unset+=(-u "$v"); done
}

# _proxy_spawn: starts apt-proxy on $PROXY_PORT with $PROXY_CACHE, its output appended to $PROXY_LOG.
# DEBIAN_MIRRORS, CENTOS_MIRRORS, ALPINE_MIRRORS, when set, replace that pin (a comma-separated
# failover list).
_proxy_spawn() {
  # The caller's APT_PROXY_* settings stay out (the CLI below is the whole configuration);
  # extra flags, e.g. --debug, come from PROXY_ARGS.
  local strip
  no_proxy_env strip
  # shellcheck disable=SC2086
  spawn apt-proxy "$PROXY_LOG" env "${strip[@]}" "$APT_PROXY_BIN" ${PROXY_ARGS:-} --host 127.0.0.1 --port "$PROXY_PORT" --cachedir "$PROXY_CACHE" \
    --debian "${DEBIAN_MIRRORS:-$ORIGIN_URL/debian/}" --centos "${CENTOS_MIRRORS:-$ORIGIN_URL/centos/}" \
    --alpine "${ALPINE_MIRRORS:-$ORIGIN_URL/alpine/}" \
    --ubuntu "$ORIGIN_URL/ubuntu/" --ubuntu-ports "$ORIGIN_URL/ubuntu-ports/"
  PROXY_PID=$SPAWNED_PID
  wait_port "$PROXY_PORT" "$PROXY_PID" 30 || die "apt-proxy did not listen on 127.0.0.1:$PROXY_PORT"
}

# proxy_kill9: SIGKILL the proxy (no chance to clean up), as a crash or an OOM kill would.
proxy_kill9() {
  kill -KILL "$PROXY_PID" 2>/dev/null || die "apt-proxy (pid $PROXY_PID) was not running when it was to be killed"
  wait "$PROXY_PID" 2>/dev/null || true
  echo "----- e2e: apt-proxy (pid $PROXY_PID) killed with SIGKILL -----" >>"$PROXY_LOG"
  say "apt-proxy (pid $PROXY_PID) killed with SIGKILL"
}

# proxy_restart: a new apt-proxy on the same port with the same cache dir (log appended).
proxy_restart() {
  ! kill -0 "$PROXY_PID" 2>/dev/null || die "proxy_restart: apt-proxy (pid $PROXY_PID) is still running"
  echo "----- e2e: apt-proxy restarted on the same port and cache -----" >>"$PROXY_LOG"
  _proxy_spawn
  say "apt-proxy restarted: 127.0.0.1:$PROXY_PORT, same cache $PROXY_CACHE (pid $PROXY_PID)"
}

proxy_alive() {
  [ "$DIRECT" = 1 ] && return 0
  [ -n "$PROXY_PID" ] || return 0   # suites that start no proxy of lib.sh's (packages, image)
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
  curl "${args[@]}" "$1" | x_cache_of
}

# x_cache_of: the X-Cache value in the response head on stdin.
x_cache_of() { tr -d '\r' | awk -F': *' 'tolower($1) == "x-cache" { print $2 }'; }

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

# uncached_start DISTRO PATH: asks the proxy, in the background and in both URL forms, for a file it
# never saw (DISTRO/PATH, '@' replaced by the form: the second request must not join the first
# one's fill). uncached_check: each answer must be 502 or 504, within DOWN_STEP_MAX seconds, with a
# non-empty one-line reason as its body.
_UNCACHED_PIDS=()
uncached_start() {
  local distro=$1 path=$2 form url d=$WORK/uncached
  mkdir -p "$d"
  _UNCACHED_PIDS=()
  for form in path forward; do
    local args=(-sS -o "$d/$form.body" -w '%{http_code} %{time_total}' --max-time $((DOWN_STEP_MAX + 15)))
    if [ "$form" = path ]; then
      url=http://127.0.0.1:$PROXY_PORT/$distro/${path//@/$form}
    else
      url=$ORIGIN_URL/$distro/${path//@/$form}
      args+=(--proxy "$(proxy_url)")
    fi
    echo "$url" >"$d/$form.url"
    rm -f "$d/$form.body"
    curl "${args[@]}" "$url" >"$d/$form.out" 2>"$d/$form.err" &
    _UNCACHED_PIDS+=($!)
  done
}

uncached_check() {
  local d=$WORK/uncached form url code secs reason i
  for i in "${_UNCACHED_PIDS[@]}"; do wait "$i" || true; done
  _UNCACHED_PIDS=()
  for form in path forward; do
    code='' secs=''
    read -r code secs <"$d/$form.out" || true
    url=$(cat "$d/$form.url")
    reason=$(head -c 300 "$d/$form.body" 2>/dev/null || true)
    case $code in
      502 | 504) ;;
      *) die "uncached $url with the origin down: status '${code:-none}' after ${secs:-?}s ($(cat "$d/$form.err")), expected 502 or 504" ;;
    esac
    awk -v t="$secs" -v m="$DOWN_STEP_MAX" 'BEGIN { exit !(t <= m) }' ||
      die "uncached $url with the origin down: $code after ${secs}s, more than the ${DOWN_STEP_MAX}s bound"
    [ -n "$(tr -d ' \t\r\n' <"$d/$form.body")" ] || die "uncached $url: $code with an empty body (no reason given)"
    [ "$(grep -c '' "$d/$form.body")" = 1 ] || die "uncached $url: $code whose body is not one line: '$reason'"
    say "uncached file ($form form): $code after ${secs}s: $(echo "$reason" | tr -d '\r\n')"
  done
}

# upstream_down_phases ROUND DISTRO PATH: the proxy's indexes are stale (after stale_phase_start)
# and the origin is down, in turn, each way in DOWN_WAYS:
#   stopped   nothing listens on its port (connection refused)
#   hung      connections accepted, never answered (origin_hang_start)
#   error500  every request answered 500 (origin_start error500)
# For each way and each mode: ROUND MODE LABEL, which sets up a fresh client for MODE and updates
# and downloads packages the proxy has cached; every client step is bounded by DOWN_STEP_MAX
# seconds. Meanwhile a file the proxy never saw, DISTRO/PATH with '@' replaced by a unique tag,
# must fail fast (uncached_start/uncached_check; asked for while the clients run, so a hung
# origin's timeout is not waited for twice). Ends with the origin stopped.
upstream_down_phases() {
  [ "$DIRECT" != 1 ] || return 0
  local round=$1 distro=$2 path=$3 way m n0 t0 el
  for way in $DOWN_WAYS; do
    [ -z "$ORIGIN_PID" ] || origin_stop
    say "=== stale indexes, origin $way"
    case $way in
      stopped) ;;
      hung) origin_hang_start ;;
      error500) origin_start error500 ;;
      *) die "unknown way down '$way' in DOWN_WAYS" ;;
    esac
    n0=$(_origin_contacts "$way")
    t0=$(_now_ms)
    uncached_start "$distro" "${path//@/$way-@}"
    STEP_MAX=$DOWN_STEP_MAX
    for m in $MODES; do
      "$round" "$m" "[$m] stale, origin $way, fresh client:"
    done
    STEP_MAX=
    el=$(($(_now_ms) - t0))
    say "origin $way: clients done in $((el / 1000)).$((el % 1000 / 100))s"
    uncached_check
    [ "$way" = stopped ] ||
      say "origin $way: it saw $(($(_origin_contacts "$way") - n0)) $([ "$way" = hung ] && echo connections || echo requests) from the proxy (2 for the uncached file)"
    [ "$way" = stopped ] || origin_stop
  done
}

# _origin_contacts WAY: requests (error500) or connections (hung) the origin has seen so far.
_origin_contacts() {
  case $1 in
    hung) hang_connections ;;
    error500) awk '$1 == 500 { n++ } END { print n + 0 }' "$ORIGIN_LOG" ;;
    *) echo 0 ;;
  esac
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
# With STEP_MAX set, the step also fails when it takes more than STEP_MAX seconds.
# On failure: the command, its output's tail, the proxy's log tail, then exit 1.
# _step_log DESC: the next step's number, and its log file in $STEP_LOG.
_step_log() {
  _E2E_STEP=$((_E2E_STEP + 1))
  STEP_LOG=$LOGS/$(printf '%02d' "$_E2E_STEP")-$(echo "$1" | tr -c 'A-Za-z0-9_.-' '_' | cut -c1-60).log
}

run_step() {
  local desc=$1
  shift
  _step_log "$desc"
  local t0 rc=0 limit=$STEP_TIMEOUT
  if [ -n "${STEP_MAX:-}" ] && [ "$STEP_MAX" -lt "$limit" ]; then limit=$STEP_MAX; fi
  t0=$(_now_ms)
  say "$desc"
  {
    printf '$'
    printf ' %q' "$@"
    printf '\n'
  } >"$STEP_LOG"
  if [ "${VERBOSE:-0}" = 1 ]; then
    timeout -k 10 "$limit" "$@" > >(tee -a "$STEP_LOG") 2>&1 || rc=$?
  else
    timeout -k 10 "$limit" "$@" >>"$STEP_LOG" 2>&1 || rc=$?
  fi
  local el=$(($(_now_ms) - t0))
  if [ "$rc" != 0 ]; then
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
      if [ "$limit" = "${STEP_MAX:-}" ]; then
        echo "${SUITE}: still running after ${limit}s, the bound for one client step while the origin is down (DOWN_STEP_MAX)" >&2
      else
        echo "${SUITE}: timed out after ${limit}s" >&2
      fi
    fi
    echo "----- $desc failed (exit $rc, after $((el / 1000)).$((el % 1000 / 100))s); last 40 lines of $STEP_LOG -----" >&2
    tail -n 40 "$STEP_LOG" >&2
    die "$desc"
  fi
  say "  ok ($((el / 1000)).$((el % 1000 / 100))s)"
  if [ -n "${STEP_MAX:-}" ] && [ "$el" -gt $((STEP_MAX * 1000)) ]; then
    die "$desc took $((el / 1000)).$((el % 1000 / 100))s, more than the ${STEP_MAX}s bound"
  fi
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

# ---------------------------------------------------------------- tampered mirror

# metric NAME: the value of one Prometheus sample of the proxy (0 when absent).
metric() {
  curl -fsS "$(proxy_url)/metrics" | awk -v n="$1" '$1 == n { v = $2 } END { print v + 0 }'
}

# try_step DESC CMD...: like run_step, but a failure is reported and returned, not fatal.
try_step() {
  local desc=$1 rc=0
  shift
  _step_log "$desc"
  say "$desc (may fail)"
  timeout -k 10 "$STEP_TIMEOUT" "$@" >"$STEP_LOG" 2>&1 || rc=$?
  if [ "$rc" = 0 ]; then say "  ok"; else say "  failed (exit $rc; log $STEP_LOG)"; fi
  proxy_alive
  return "$rc"
}

# tamper_phase DISTRO PACKAGE FETCH: the first of two pinned mirrors of DISTRO serves PACKAGE
# (a path under $WWW/DISTRO/) with the right length and one byte changed; the second is the
# real tree. With an empty cache, `FETCH DIR 0` (a fresh path-mode client fetching PACKAGE into
# DIR with try_step) runs once and may fail: the proxy cuts the tampered transfer (the client
# checks too). Then the proxy must have counted one integrity failure for DISTRO and stored
# nothing, `FETCH DIR 1` (with run_step) must succeed with the good file from the second
# mirror, and the cache must hold that file (a HIT, byte for byte). The tampered mirror is
# asked for the package once.
tamper_phase() {
  [ "$DIRECT" != 1 ] || return 0
  local distro=$1 package=$2 fetch=$3 good bad tree var n
  [ -n "$ORIGIN_PID" ] || origin_start
  tree=$distro-tampered
  good=$WWW/$distro/$package
  bad=$WWW/$tree/$package
  say "=== tampered mirror: /$tree/ serves $package with one byte changed, the real tree is the second mirror"
  rm -rf "${WWW:?}/$tree"
  cp -al "$WWW/$distro" "$WWW/$tree"
  rm -f "$bad"
  python3 - "$good" "$bad" <<'PY'
import sys
data = bytearray(open(sys.argv[1], "rb").read())
# Near the end: inside the payload (the data segment of an .apk, the archive of an .rpm).
data[len(data) - 16] ^= 0x01
open(sys.argv[2], "wb").write(data)
PY
  [ "$(stat -c %s "$bad")" = "$(stat -c %s "$good")" ] || die "the tampered copy has another length"
  stop_pid "$PROXY_PID" apt-proxy
  PROXY_CACHE=$WORK/proxy-cache-tamper
  rm -rf "$PROXY_CACHE"
  mkdir -p "$PROXY_CACHE"
  var=$(echo "$distro" | tr '[:lower:]' '[:upper:]')_MIRRORS
  export "$var=$ORIGIN_URL/$tree/,$ORIGIN_URL/$distro/"
  proxy_restart
  client_setup path
  mkdir -p "$WORK/tamper-1" "$WORK/tamper-2"
  "$fetch" "$WORK/tamper-1" 0 || true
  n=$(metric "apt_proxy_integrity_failures_total{distro=\"$distro\"}")
  [ "$n" = 1 ] || die "apt_proxy_integrity_failures_total{distro=\"$distro\"} is $n after the tampered package, expected 1"
  "$fetch" "$WORK/tamper-2" 1
  same_bytes "$WORK/tamper-2/$(basename "$package")" "$good"
  [ "$(x_cache "$(proxy_url)/$distro/$package")" = HIT ] || die "the good $package is not cached after the tampered one"
  curl -fsS "$(proxy_url)/$distro/$package" -o "$WORK/tamper-cached"
  same_bytes "$WORK/tamper-cached" "$good"
  n=$(origin_gets "/$tree/$package")
  [ "$n" = 1 ] || die "the tampered mirror was asked $n times for $package, expected once"
  n=$(metric "apt_proxy_integrity_failures_total{distro=\"$distro\"}")
  [ "$n" = 1 ] || die "apt_proxy_integrity_failures_total{distro=\"$distro\"} is $n at the end, expected 1"
  say "tampered package: counted once, not stored; the good copy came from the second mirror and is cached"
  unset "$var"
}

# ---------------------------------------------------------------- release artefacts and podman

DIST_DIR=${APT_PROXY_DIST_DIR:-$PROJECT_ROOT/dist}

# on_exit CMD: a shell command run when the suite ends (containers, volumes, installed packages).
on_exit() { _E2E_CLEANUP+=("$1"); }

# dist_file GLOB: the one artefact in $DIST_DIR (scripts/release.sh) whose name matches GLOB.
dist_file() {
  local found=()
  mapfile -t found < <(find "$DIST_DIR" -maxdepth 1 -name "$1" 2>/dev/null)
  [ "${#found[@]}" = 1 ] || die "expected one $1 in $DIST_DIR (scripts/release.sh makes it), found ${#found[@]}"
  echo "${found[0]}"
}

# version: the package version (Cargo.toml), as the artefacts carry it.
version() { sed -n 's/^version = "\(.*\)"$/\1/p' "$PROJECT_ROOT/Cargo.toml" | head -n 1; }

# podman_init: podman and podman-compose with the settings this machine needs (no default
# ulimits, cgroupfs, runc), through a containers.conf of the suite's own.
podman_init() {
  export CONTAINERS_CONF=$WORK/containers.conf
  printf '[containers]\ndefault_ulimits = []\n[engine]\ncgroup_manager = "cgroupfs"\nruntime = "runc"\n' >"$CONTAINERS_CONF"
}

# image_load: loads dist/apt-proxy-image.tar, tags it localhost/apt-proxy:latest as well, and
# sets IMAGE to localhost/apt-proxy:<version>.
image_load() {
  local tar
  tar=$(dist_file apt-proxy-image.tar)
  podman load -q -i "$tar" >"$LOGS/podman-load.log" 2>&1 || { cat "$LOGS/podman-load.log" >&2; die "podman load $tar failed"; }
  IMAGE=localhost/apt-proxy:$(version)
  podman image exists "$IMAGE" || die "$tar did not load as $IMAGE: $(cat "$LOGS/podman-load.log")"
  podman tag "$IMAGE" localhost/apt-proxy:latest
  # By id: every name the load gave it (podman also adds docker.io/library/apt-proxy:<version>).
  on_exit "podman rmi -f $(podman image inspect --format '{{.Id}}' "$IMAGE")"
  say "image $IMAGE loaded from $tar"
}

# wait_livez PORT SECONDS: until GET /livez on 127.0.0.1:PORT answers 200.
wait_livez() {
  local deadline=$(($(_now_ms) + ${2:-30} * 1000))
  until curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$1/livez" 2>/dev/null; do
    [ "$(_now_ms)" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

# fetch_expect BASE PATH WANT: GET BASE/PATH answers X-Cache WANT (MISS or HIT) with the bytes
# of $WWW/PATH.
fetch_expect() {
  local base=$1 path=$2 want=$3 got head
  local out=$WORK/fetched.body
  head=$(curl -sS -o "$out" -D - --max-time 60 "$base/$path" 2>&1) || die "GET $base/$path failed: $head"
  got=$(x_cache_of <<<"$head")
  [ "$got" = "$want" ] || die "GET $base/$path: X-Cache '$got', expected $want"
  same_bytes "$out" "$WWW/$path"
  say "GET /$path: $want, bytes identical"
}

# package_fixture: a package on the origin, in $PKG_PATH (under $WWW, a Debian pool path).
package_fixture() {
  PKG_PATH=debian/pool/main/e/e2e-pkg/e2e-pkg_1.0_all.deb
  mkdir -p "$WWW/$(dirname "$PKG_PATH")"
  random_file "$WWW/$PKG_PATH" 2
}
