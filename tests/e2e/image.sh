#!/usr/bin/env bash
# End-to-end: the container image that scripts/release.sh made (dist/apt-proxy-image.tar), loaded
# and run with podman. The container uses the host's network, since the origin is nginx on
# 127.0.0.1 and the Debian mirror is pinned to it by environment variables.
# Checked:
#   - the image: under 10 MB, user 65532:65532, port 3142, the /app/.aptcache volume, a health
#     check that runs the binary itself, the OCI version label;
#   - a package fetched twice through the container: a MISS, then a HIT, bytes identical; the
#     mirror is named by a host name (podman's /etc/hosts), which the static binary resolves;
#   - /livez from outside, and `podman healthcheck run`;
#   - the server process does not run as root, and the cache files on the volume are its own;
#   - `podman stop` (SIGTERM) ends it cleanly: exit status 0, "SIGTERM received" in its log;
#   - the cache on the named volume survives: after a restart the package is a HIT and the origin
#     saw it once.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init image
need_cmd podman curl
[ "$DIRECT" = 1 ] && { say "DIRECT: nothing to check without a proxy"; exit 0; }
podman_init
image_load

inspect() { podman image inspect --format "$1" "$IMAGE"; }
size=$(inspect '{{.Size}}')
say "image size: $size bytes"
[ "$size" -lt 10000000 ] || die "the image is $size bytes, not under 10 MB"
[ "$(inspect '{{.Config.User}}')" = 65532:65532 ] || die "image user is '$(inspect '{{.Config.User}}')', expected 65532:65532"
inspect '{{.Config.ExposedPorts}}' | grep -q '3142/tcp' || die "port 3142 is not exposed: $(inspect '{{.Config.ExposedPorts}}')"
inspect '{{.Config.Volumes}}' | grep -q '/app/.aptcache' || die "no /app/.aptcache volume: $(inspect '{{.Config.Volumes}}')"
inspect '{{.Config.Healthcheck.Test}}' | grep -q -- '--health-check' ||
  die "no health check running apt-proxy --health-check: $(inspect '{{.Config.Healthcheck}}')"
label=$(inspect '{{index .Labels "org.opencontainers.image.version"}}')
[ "$label" = "$(version)" ] || die "org.opencontainers.image.version is '$label', expected $(version)"

package_fixture
origin_start
PORT=$(free_port)
CTR=apt-proxy-e2e-image-$$
VOL=apt-proxy-e2e-cache-$$
PROXY_LOG=$WORK/container.log
on_exit "podman rm -f $CTR; podman volume rm -f $VOL"
on_exit "podman logs $CTR >$PROXY_LOG 2>&1"
podman run -d --name "$CTR" --network host --add-host "origin.test:127.0.0.1" -v "$VOL:/app/.aptcache" \
  -e APT_PROXY_PORT="$PORT" -e APT_PROXY_MODE=debian -e APT_PROXY_DEBIAN="http://origin.test:$ORIGIN_PORT/debian/" \
  "$IMAGE" >"$LOGS/run.log" 2>&1 || { cat "$LOGS/run.log" >&2; die "podman run failed"; }
# podman logs the absence of systemd (no health-check timers here); the check still runs on demand.
wait_livez "$PORT" 30 || { podman logs "$CTR" >"$PROXY_LOG" 2>&1; die "the container did not answer /livez on $PORT"; }
say "container $CTR up on 127.0.0.1:$PORT"

P=http://127.0.0.1:$PORT
fetch_expect "$P" "$PKG_PATH" MISS
fetch_expect "$P" "$PKG_PATH" HIT
podman healthcheck run "$CTR" >"$LOGS/healthcheck.log" 2>&1 || { cat "$LOGS/healthcheck.log" >&2; die "podman healthcheck run failed"; }
say "podman healthcheck run: healthy"

pid=$(podman inspect --format '{{.State.Pid}}' "$CTR")
uid=$(awk '/^Uid:/ { print $2 }' "/proc/$pid/status")
[ "$uid" = 65532 ] || die "the server process runs as uid $uid, expected 65532"
mount=$(podman volume inspect --format '{{.Mountpoint}}' "$VOL")
owners=$(find "$mount" -mindepth 1 -printf '%u\n' | sort -u | tr '\n' ' ')
[ "$owners" = "65532 " ] || die "files on the cache volume belong to: $owners (expected 65532 only)"
say "process uid $uid; cache files on the volume owned by 65532"

podman stop -t 30 "$CTR" >/dev/null 2>>"$LOGS/stop.log"
podman logs "$CTR" >"$PROXY_LOG" 2>&1
code=$(podman inspect --format '{{.State.ExitCode}}' "$CTR")
[ "$code" = 0 ] || die "after podman stop the container exited with $code (137: killed, not stopped)"
grep -q 'SIGTERM received' "$PROXY_LOG" || die "the log does not show SIGTERM being handled"
say "podman stop: SIGTERM handled, exit status 0"

podman start "$CTR" >/dev/null 2>>"$LOGS/start.log"
wait_livez "$PORT" 30 || die "the restarted container did not answer /livez"
fetch_expect "$P" "$PKG_PATH" HIT
assert_origin_gets 1 1 "/$PKG_PATH"
say "the cache survived the restart on volume $VOL"
