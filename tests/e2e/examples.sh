#!/usr/bin/env bash
# End-to-end: the Compose examples under examples/, on the image scripts/release.sh built.
#   basic/, specify-mirrors/: started with podman-compose (plus an override file: host network,
#     since the origin is nginx on 127.0.0.1, and a free port), a package fetched through each
#     (MISS, HIT); specify-mirrors also shows, by --check-config inside its container, that its
#     distributions.yaml is the one loaded and its Debian pin (the origin, given by the shell as
#     the example documents) is used. Then `down -v`.
#   s3-seaweedfs/, config-template/: no SeaweedFS image can be pulled here, so every apt-proxy
#     service of these files is checked instead: its environment and bind mounts, as the compose
#     file gives them, passed to `apt-proxy --check-config` in the image (exit 0, and the
#     settings the file names appear resolved).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init examples
need_cmd podman python3 curl
"$PODMAN_COMPOSE" --version >/dev/null 2>&1 || die "podman-compose $PODMAN_COMPOSE missing (tests/e2e/setup.sh installs it)"
python3 -c 'import yaml' 2>/dev/null || die "python3-yaml is missing (tests/e2e/setup.sh installs it)"
[ "$DIRECT" = 1 ] && { say "DIRECT: nothing to check without a proxy"; exit 0; }
podman_init
image_load
export APT_PROXY_IMAGE=$IMAGE
EXAMPLES=$PROJECT_ROOT/examples

package_fixture
origin_start

# compose_up NAME [KEY=VALUE...]: podman-compose up -d of examples/NAME with an override file
# (host network, a free port, Debian only, and the environment given); sets PORT and COMPOSE.
compose_up() {
  local name=$1 kv
  shift
  PORT=$(free_port)
  {
    printf 'services:\n  apt-proxy:\n    network_mode: host\n    environment:\n'
    printf '      APT_PROXY_PORT: "%s"\n      APT_PROXY_MODE: debian\n' "$PORT"
    for kv in "$@"; do printf '      %s: "%s"\n' "${kv%%=*}" "${kv#*=}"; done
  } >"$WORK/$name.override.yaml"
  COMPOSE=("$PODMAN_COMPOSE" -p "apt-proxy-e2e-$name-$$" -f "$EXAMPLES/$name/compose.yaml" -f "$WORK/$name.override.yaml")
  on_exit "$(printf '%q ' "${COMPOSE[@]}") down -v"
  run_step "podman-compose up -d ($name)" "${COMPOSE[@]}" up -d
  PROXY_LOG=$WORK/$name.log
  wait_livez "$PORT" 30 || { "${COMPOSE[@]}" logs >"$PROXY_LOG" 2>&1; die "$name: no answer on /livez at 127.0.0.1:$PORT"; }
  CONTAINER=$("${COMPOSE[@]}" ps -q 2>/dev/null | tail -n 1)
  [ -n "$CONTAINER" ] || CONTAINER=$(podman ps -q --filter "label=io.podman.compose.project=apt-proxy-e2e-$name-$$" | head -n 1)
  say "$name: up on 127.0.0.1:$PORT (container $CONTAINER)"
}

compose_down() {
  "${COMPOSE[@]}" logs >"$PROXY_LOG" 2>&1 || true
  run_step "podman-compose down -v ($1)" "${COMPOSE[@]}" down -v
}

# ---------------------------------------------------------------- basic
# basic/ names no mirror: the Debian pin is added by the override.
compose_up basic "APT_PROXY_DEBIAN=$ORIGIN_URL/debian/"
fetch_expect "http://127.0.0.1:$PORT" "$PKG_PATH" MISS
fetch_expect "http://127.0.0.1:$PORT" "$PKG_PATH" HIT
compose_down basic

# ---------------------------------------------------------------- specify-mirrors
# The pin comes from the shell, as the example's README shows (its compose file interpolates it).
export APT_PROXY_DEBIAN=$ORIGIN_URL/debian/
compose_up specify-mirrors
unset APT_PROXY_DEBIAN
podman exec "$CONTAINER" /usr/bin/apt-proxy --check-config >"$LOGS/specify-mirrors-check.log" 2>&1 ||
  { cat "$LOGS/specify-mirrors-check.log" >&2; die "specify-mirrors: --check-config in the container failed"; }
grep -qE '^distributions_config +/etc/apt-proxy/distributions.yaml$' "$LOGS/specify-mirrors-check.log" ||
  die "specify-mirrors: its distributions.yaml is not the one loaded: $(grep distributions_config "$LOGS/specify-mirrors-check.log")"
grep -qF "/debian/ -> $ORIGIN_URL/debian/ (pinned" "$LOGS/specify-mirrors-check.log" ||
  die "specify-mirrors: the Debian pin from the shell is not used: $(grep '/debian/' "$LOGS/specify-mirrors-check.log")"
fetch_expect "http://127.0.0.1:$PORT" "$PKG_PATH" MISS
fetch_expect "http://127.0.0.1:$PORT" "$PKG_PATH" HIT
compose_down specify-mirrors

# ---------------------------------------------------------------- s3-seaweedfs, config-template
# service_args FILE: for each service of the compose FILE that runs apt-proxy, the podman run
# arguments (environment, bind mounts) of that service, one per line, in $WORK/<service>.args;
# prints the service names. ${VAR:-default} is interpolated as Compose does, `<<` merges too.
service_args() {
  python3 - "$1" "$WORK" <<'PY'
import os, re, sys, yaml
path, work = sys.argv[1], sys.argv[2]
base = os.path.dirname(os.path.abspath(path))
def interp(v):
    if not isinstance(v, str):
        return v
    v = re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), v)
    return v.replace("$$", "$")
doc = yaml.safe_load(open(path))
for name, svc in doc["services"].items():
    if "apt-proxy" not in interp(svc.get("image", "")):
        continue
    args = []
    env = svc.get("environment", {})
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    for k, v in env.items():
        args += ["-e", f"{k}={interp(str(v))}"]
    for vol in svc.get("volumes", []):
        src, rest = interp(vol).split(":", 1)
        if src.startswith((".", "/")):
            args += ["-v", f"{os.path.normpath(os.path.join(base, src))}:{rest}"]
    with open(os.path.join(work, name + ".args"), "w") as f:
        f.write("\n".join(args) + "\n")
    print(name)
PY
}

# check_example NAME KEY=VALUE...: every apt-proxy service of examples/NAME passes --check-config
# in the image, and the report shows each KEY with VALUE.
check_example() {
  local name=$1 svc args=() kv out
  shift
  local services
  services=$(service_args "$EXAMPLES/$name/compose.yaml")
  [ -n "$services" ] || die "$name: no apt-proxy service found in its compose.yaml"
  for svc in $services; do
    mapfile -t args <"$WORK/$svc.args"
    out=$LOGS/$name-$svc-check.log
    podman run --rm --network none "${args[@]}" "$IMAGE" --check-config >"$out" 2>&1 ||
      { cat "$out" >&2; die "$name/$svc: apt-proxy --check-config failed"; }
    for kv in "$@"; do
      grep -qE "^${kv%%=*} +${kv#*=}\$" "$out" || die "$name/$svc: ${kv%%=*} is not '${kv#*=}': $(grep "^${kv%%=*} " "$out")"
    done
    say "$name/$svc: --check-config OK ($# settings compared)"
  done
}

check_example s3-seaweedfs storage.backend=s3 storage.s3.endpoint=seaweedfs:8333 \
  storage.s3.bucket=apt-proxy storage.s3.use_ssl=false storage.s3.use_path_style=true \
  storage.s3.temp_dir=/tmp 'storage.s3.secret_key=\(set, hidden\)'
check_example config-template 'configuration file:=/etc/apt-proxy/apt-proxy.yaml' \
  distributions_config=/etc/apt-proxy/distributions.yaml server.port=3142
