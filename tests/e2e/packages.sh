#!/usr/bin/env bash
# End-to-end: the .deb, .rpm and .apk that scripts/release.sh made (dist/), installed by the real
# package managers, each started once and fetching a package through it.
#   .deb: dpkg -i on this machine (root). The unit passes `systemd-analyze verify` and
#         `systemd-analyze security --offline=yes` at or under UNIT_EXPOSURE_MAX (exposure x10;
#         1.1 today: keep it from getting worse); the conffiles are registered; the service user
#         exists; the unit's ExecStart runs as the unit's User= in its WorkingDirectory=, with the
#         CacheDirectory= systemd would make, fetches a package (MISS, HIT) into a cache its user
#         owns, and stops on SIGTERM with status 0. `dpkg --purge` then leaves nothing behind: no
#         file of the package, no /etc/apt-proxy, no cache, no user or group, no unit symlink.
#   .rpm: dnf install into an empty --installroot; its conffiles are %config(noreplace); the
#         installed binary checks its installed configuration and serves once.
#   .apk: the real apk client (apk-tools 3) adds it into an empty --root (unsigned:
#         --allow-untrusted); the installed binary checks its configuration and serves once.
# The host must not have apt-proxy installed already (the suite purges it at the end).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init packages
need_cmd dpkg dnf rpm systemd-analyze setpriv getent curl
"$APK_BIN" --version >/dev/null 2>&1 || die "apk client $APK_BIN missing (tests/e2e/setup.sh installs it)"
[ "$DIRECT" = 1 ] && { say "DIRECT: nothing to check without a proxy"; exit 0; }
UNIT_EXPOSURE_MAX=${UNIT_EXPOSURE_MAX:-11}
VERSION=$(version)

package_fixture
origin_start

# serve_once LABEL CMD...: starts CMD (an apt-proxy command line; port, mode and mirror come by
# environment), fetches the package twice (MISS, HIT), stops it with SIGTERM: exit status 0.
serve_once() {
  local label=$1 port rc=0
  shift
  port=$(free_port)
  PROXY_LOG=$WORK/$label.log
  # None of the caller's APT_PROXY_* settings: only the installed configuration and these.
  local strip
  no_proxy_env strip
  spawn "$label" "$PROXY_LOG" env "${strip[@]}" APT_PROXY_PORT="$port" APT_PROXY_MODE=debian \
    APT_PROXY_DEBIAN="$ORIGIN_URL/debian/" "$@"
  local pid=$SPAWNED_PID
  wait_livez "$port" 30 || die "$label: no answer on /livez at 127.0.0.1:$port"
  fetch_expect "http://127.0.0.1:$port" "$PKG_PATH" MISS
  fetch_expect "http://127.0.0.1:$port" "$PKG_PATH" HIT
  kill -TERM "$pid"
  wait "$pid" || rc=$?
  [ "$rc" = 0 ] || die "$label: exit status $rc after SIGTERM"
  grep -q 'SIGTERM received' "$PROXY_LOG" || die "$label: SIGTERM not handled"
  say "$label: served a MISS and a HIT, stopped cleanly"
}

# ---------------------------------------------------------------- checksums, tarball
(cd "$DIST_DIR" && sha256sum --quiet -c SHA256SUMS) || die "SHA256SUMS does not match the artefacts in $DIST_DIR"
[ "$(wc -l <"$DIST_DIR/SHA256SUMS")" = 5 ] || die "SHA256SUMS does not cover the five artefacts (tarball, deb, rpm, apk, image)"
TARBALL=$(dist_file "apt-proxy-${VERSION}-*-linux.tar.gz")
mkdir -p "$WORK/tarball"
tar -C "$WORK/tarball" -xzf "$TARBALL"
T=$WORK/tarball/$(basename "$TARBALL" .tar.gz)
[ "$("$T/apt-proxy" --version)" = "apt-proxy $VERSION" ] || die "the tarball's binary does not run"
ldd "$T/apt-proxy" 2>&1 | grep -q 'statically linked' || die "the tarball's binary is not statically linked: $(ldd "$T/apt-proxy" 2>&1)"
run_step "tarball apt-proxy --check-config (its templates)" "$T/apt-proxy" --check-config \
  --config "$T/apt-proxy.yaml" --distributions-config "$T/distributions.yaml"
say "SHA256SUMS verified; the tarball's static binary checks its own templates"

# run_installed LABEL ROOT: the apt-proxy installed under ROOT checks its installed configuration
# and serves once (serve_once), its cache under $WORK.
run_installed() {
  local label=$1 root=$2
  local args=(--config "$root/etc/apt-proxy/apt-proxy.yaml" --distributions-config "$root/etc/apt-proxy/distributions.yaml")
  run_step "$label apt-proxy --check-config" "$root/usr/bin/apt-proxy" --check-config "${args[@]}"
  serve_once "$label" "$root/usr/bin/apt-proxy" "${args[@]}" --cachedir "$WORK/$label-cache"
}

# ---------------------------------------------------------------- .deb
DEB=$(dist_file "apt-proxy_${VERSION}-1_*.deb")
if dpkg-query -W -f='${Status}' apt-proxy 2>/dev/null | grep -q 'ok installed'; then
  die "apt-proxy is already installed on this machine: the suite installs and purges its own"
fi
on_exit "dpkg --purge apt-proxy"
run_step "dpkg -i $(basename "$DEB")" dpkg -i "$DEB"
mapfile -t DEB_FILES < <(dpkg -L apt-proxy | grep apt-proxy)
[ "$(/usr/bin/apt-proxy --version)" = "apt-proxy $VERSION" ] || die "/usr/bin/apt-proxy --version: $(/usr/bin/apt-proxy --version)"
conffiles=$(dpkg-query -W -f='${Conffiles}' apt-proxy)
for f in /etc/apt-proxy/apt-proxy.yaml /etc/apt-proxy/distributions.yaml; do
  grep -q " $f " <<<"$conffiles " || die "$f is not a conffile: $conffiles"
done
getent passwd apt-proxy | grep -q ':/usr/sbin/nologin$' || die "no apt-proxy system user with a nologin shell: $(getent passwd apt-proxy)"

UNIT=$(dpkg -L apt-proxy | grep '/systemd/system/apt-proxy.service$')
run_step "systemd-analyze verify $UNIT" systemd-analyze verify "$UNIT"
[ "$(sed 1d "$STEP_LOG")" = "" ] || { cat "$STEP_LOG" >&2; die "systemd-analyze verify printed warnings"; }
systemd-analyze security --offline=yes --threshold="$UNIT_EXPOSURE_MAX" "$UNIT" >"$LOGS/security.log" 2>&1 ||
  { tail -n 30 "$LOGS/security.log" >&2; die "the unit's exposure is over $UNIT_EXPOSURE_MAX/10"; }
say "unit exposure: $(grep -o 'Overall exposure level.*' "$LOGS/security.log")"
run_step "apt-proxy --check-config (installed configuration)" /usr/bin/apt-proxy --check-config --config /etc/apt-proxy/apt-proxy.yaml

# What systemd would do: the unit's user, CacheDirectory= made for it, its WorkingDirectory=.
unit_key() { sed -n "s/^$1=//p" "$UNIT" | tail -n 1; }
user=$(unit_key User)
cache=/var/cache/$(unit_key CacheDirectory)
[ -n "$user" ] && [ "$cache" != /var/cache/ ] || die "the unit has no User= or CacheDirectory="
install -d -o "$user" -g "$user" -m "$(unit_key CacheDirectoryMode)" "$cache"
read -r -a exec_start <<<"$(unit_key ExecStart)"
(cd "$(unit_key WorkingDirectory)" && true) || die "WorkingDirectory $(unit_key WorkingDirectory) missing"
serve_once deb-service setpriv --reuid="$user" --regid="$user" --init-groups --inh-caps=-all \
  sh -c 'cd "$1" && shift && exec "$@"' sh "$(unit_key WorkingDirectory)" "${exec_start[@]}"
owners=$(find "$cache" -mindepth 1 -printf '%u\n' | sort -u | tr '\n' ' ')
[ "$owners" = "$user " ] || die "files in $cache belong to '$owners', expected $user only"
[ -n "$(find "$cache" -type f -size +1M)" ] || die "the package was not stored under $cache"

run_step "dpkg --purge apt-proxy" dpkg --purge apt-proxy
left=()
for f in "${DEB_FILES[@]}" /etc/apt-proxy "$cache" /var/cache/private/apt-proxy \
  /etc/systemd/system/multi-user.target.wants/apt-proxy.service \
  /var/lib/systemd/deb-systemd-helper-enabled/apt-proxy.service; do
  [ -e "$f" ] || [ -L "$f" ] && left+=("$f")
done
[ "${#left[@]}" = 0 ] || die "left behind after purge: ${left[*]}"
! getent passwd apt-proxy >/dev/null || die "the apt-proxy user is still there after purge"
! getent group apt-proxy >/dev/null || die "the apt-proxy group is still there after purge"
say ".deb purged: nothing of it left"

# ---------------------------------------------------------------- .rpm (dnf)
RPM=$(dist_file "apt-proxy-${VERSION}-1.*.rpm")
R=$WORK/rpm-root
mkdir -p "$R" "$WORK/dnf/repos.d" "$WORK/dnf/cache" "$WORK/dnf/log" "$WORK/dnf/persist"
run_step "dnf install $(basename "$RPM") (installroot)" dnf -y --installroot="$R" --releasever=1 \
  --setopt=reposdir="$WORK/dnf/repos.d" --setopt=cachedir="$WORK/dnf/cache" \
  --setopt=logdir="$WORK/dnf/log" --setopt=persistdir="$WORK/dnf/persist" --disableplugin='*' \
  install "$RPM"
rpm --root "$R" -q apt-proxy >/dev/null || die "rpm does not list apt-proxy as installed"
[ "$(rpm --root "$R" -qc apt-proxy | sort | tr '\n' ' ')" = "/etc/apt-proxy/apt-proxy.yaml /etc/apt-proxy/distributions.yaml " ] ||
  die "rpm conffiles: $(rpm --root "$R" -qc apt-proxy | tr '\n' ' ')"
run_installed rpm-installed "$R"

# ---------------------------------------------------------------- .apk (apk-tools)
APKF=$(dist_file "apt-proxy-${VERSION}-r0.apk")
A=$WORK/apk-root
mkdir -p "$A"
run_step "apk add $(basename "$APKF") (--root, --allow-untrusted)" "$APK_BIN" --root "$A" --initdb \
  --arch x86_64 --allow-untrusted --no-network --no-interactive --no-progress add "$APKF"
"$APK_BIN" --root "$A" info -e apt-proxy >/dev/null || die "apk does not list apt-proxy as installed"
run_installed apk-installed "$A"
