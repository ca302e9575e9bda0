#!/usr/bin/env bash
# End-to-end: the real dnf through apt-proxy against a signed local RPM repository.
#
# Repository (built here, no network): noarch rpms made with rpmbuild from generated specs
# (e2e-hello requires e2e-dep >= 2, a version with '+', and e2e-big: 25 MiB of random data),
# signed with rpmsign by a throwaway key; createrepo_c metadata; repomd.xml.asc detached signature;
# served by nginx under /centos/e2e/.
#
# Client: dnf isolated by --config/--installroot/--setopt (own reposdir, cachedir, rpmdb), with
# gpgcheck=1 and repo_gpgcheck=1, the key given as a local file. Per mode:
#   forward: baseurl = the origin, proxy= apt-proxy
#   path:    baseurl = http://127.0.0.1:PROXY/centos/e2e/
# Steps: makecache, download --resolve, install into the installroot, makecache again, downloaded
# rpms compared byte for byte with the origin's; then the origin is stopped and, with a fresh dnf
# cache and installroot, makecache + download --resolve + install must succeed from the proxy's
# cache alone. Both modes share one proxy: every rpm crosses the origin exactly once.
# Stale phase (STALE_WAIT, lib.sh): the proxy's index entries past their fresh window, the origin
# down three ways in turn (stopped, hung, answering 500: upstream_down_phases in lib.sh): in each
# mode a fresh client must succeed again (stale served) within DOWN_STEP_MAX seconds per step, and
# a file the proxy never saw must fail fast with a 502/504; then the origin returns and a fresh
# client updates (whether the proxy revalidated is reported).
#
# Tampered phase (tamper_phase, lib.sh): a first mirror serves e2e-hello with one byte changed;
# the proxy must count it, store nothing, and serve the good copy from the second mirror.
#
# DIRECT=1: no proxy, the client uses the origin (checks the repository and the client part).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init dnf
need_cmd rpmbuild rpmsign createrepo_c dnf gpg gpgconf nginx curl

REPO=$WWW/centos/e2e
BIG_MIB=${BIG_MIB:-25}
WANT=(e2e-hello e2e-big e2e-plus)              # e2e-dep comes in as a dependency
ALL_RPMS=(e2e-hello e2e-dep e2e-big e2e-plus)

# ---------------------------------------------------------------- signing key

say "throwaway signing key"
export GNUPGHOME=$WORK/gnupg
mkdir -m 700 "$GNUPGHOME"
KEY_UID='apt-proxy e2e rpm <rpm@test.invalid>'
gpg --batch --quiet --passphrase '' --quick-gen-key "$KEY_UID" rsa3072 sign 1d
KEYFILE=$WORK/RPM-GPG-KEY-e2e
gpg --batch --quiet --armor --export >"$KEYFILE"

# ---------------------------------------------------------------- rpms

TOP=$WORK/rpmbuild
mkdir -p "$TOP/SPECS" "$REPO/Packages"

# mkrpm NAME VERSION [REQUIRES] [PAYLOAD_MIB]
mkrpm() {
  local name=$1 version=$2 requires=${3:-} mib=${4:-0} payload
  if [ "$mib" -gt 0 ]; then
    payload="head -c $((mib * 1024 * 1024)) /dev/urandom > %{buildroot}/usr/share/$name/payload.bin"
  else
    payload="echo '$name $version' > %{buildroot}/usr/share/$name/README"
  fi
  cat >"$TOP/SPECS/$name.spec" <<EOF
Name:      $name
Version:   $version
Release:   1
Summary:   apt-proxy end-to-end test package $name
License:   MIT
BuildArch: noarch
${requires:+Requires:  $requires}

%description
Built by tests/e2e/dnf.sh for apt-proxy's end-to-end tests.

%install
mkdir -p %{buildroot}/usr/share/$name
$payload

%files
/usr/share/$name
EOF
  # w1.gzdio: fast payload compression (the big payload is random anyway); no brp post-processing
  rpmbuild -bb --quiet --define "_topdir $TOP" --define '_binary_payload w1.gzdio' \
    --define '__os_install_post %{nil}' "$TOP/SPECS/$name.spec" >"$LOGS/rpmbuild-$name.log" 2>&1 ||
    { cat "$LOGS/rpmbuild-$name.log" >&2; die "rpmbuild $name failed"; }
}

say "building rpms"
mkrpm e2e-dep 2.1
mkrpm e2e-hello 1.0 'e2e-dep >= 2'
mkrpm e2e-plus 1.0+git5
mkrpm e2e-big 1.0 '' "$BIG_MIB"
cp "$TOP"/RPMS/noarch/*.rpm "$REPO/Packages/"
say "signing rpms"
rpmsign --define '__gpg /usr/bin/gpg' --define "_gpg_path $GNUPGHOME" --define "_gpg_name $KEY_UID" \
  --addsign "$REPO"/Packages/*.rpm >"$LOGS/rpmsign.log" 2>&1 || { cat "$LOGS/rpmsign.log" >&2; die "rpmsign failed"; }
mapfile -t RPMS < <(cd "$REPO" && find Packages -name '*.rpm' | sort)
[ "${#RPMS[@]}" = "${#ALL_RPMS[@]}" ] || die "expected ${#ALL_RPMS[@]} rpms, built ${#RPMS[@]}"
[ "$(stat -c %s "$REPO/Packages/e2e-big-1.0-1.noarch.rpm")" -gt $((20 * 1024 * 1024)) ] || die "e2e-big rpm is not over 20 MiB"

say "createrepo_c + signed repomd.xml"
createrepo_c --quiet "$REPO" >"$LOGS/createrepo.log" 2>&1 || { cat "$LOGS/createrepo.log" >&2; die "createrepo_c failed"; }
gpg --batch --quiet --yes --armor --detach-sign --output "$REPO/repodata/repomd.xml.asc" "$REPO/repodata/repomd.xml"
gpgconf --kill gpg-agent
unset GNUPGHOME
mapfile -t REPODATA < <(cd "$REPO" && find repodata -type f -regextype egrep -regex '.*/[0-9a-f]{64}-[^/]+' | sort)
[ "${#REPODATA[@]}" -gt 0 ] || die "createrepo_c wrote no hash-named metadata files"

# ---------------------------------------------------------------- servers

origin_start
proxy_start

# ---------------------------------------------------------------- client

# client_setup MODE: fresh dnf state under $C; DNF=(...) is the command prefix.
client_setup() {
  local mode=$1
  C=$WORK/client-$mode
  _kill_gpg_agents "$C"   # librepo's, from repo_gpgcheck in an earlier round
  rm -rf "$C"
  mkdir -p "$C/repos.d" "$C/cache" "$C/root" "$C/dl" "$C/persist" "$C/log"
  {
    echo '[main]'
    echo "reposdir=$C/repos.d"
    echo "cachedir=$C/cache"
    echo "logdir=$C/log"
    echo "persistdir=$C/persist"
    echo 'gpgcheck=1'
    echo 'repo_gpgcheck=1'
    echo 'skip_if_unavailable=False'
    echo 'install_weak_deps=False'
    echo 'retries=1'
    echo 'timeout=30'
    echo 'plugins=1'
  } >"$C/dnf.conf"
  {
    echo '[e2e]'
    echo 'name=apt-proxy e2e'
    echo "baseurl=$(base_url "$mode" centos)e2e/"
    [ "$mode" = forward ] && echo "proxy=$(proxy_url)"
    echo 'enabled=1'
    echo 'gpgcheck=1'
    echo 'repo_gpgcheck=1'
    echo "gpgkey=file://$KEYFILE"
    echo 'metadata_expire=0'
  } >"$C/repos.d/e2e.repo"
  DNF=(dnf -y --config="$C/dnf.conf" --installroot="$C/root" --releasever=1
    --setopt=cachedir="$C/cache" --setopt=reposdir="$C/repos.d" --setopt=logdir="$C/log"
    --setopt=persistdir="$C/persist" --disableplugin='*' --enableplugin=download)
}

# fresh_client: a new machine: no dnf cache, empty installroot, nothing downloaded.
fresh_client() {
  _kill_gpg_agents "$C/cache"
  rm -rf "$C/cache" "$C/root" "$C/dl" "$C/persist"
  mkdir -p "$C/cache" "$C/root" "$C/dl" "$C/persist"
}

check_downloads() {
  local r
  for r in "${RPMS[@]}"; do same_bytes "$C/dl/$(basename "$r")" "$REPO/$r"; done
  [ "$(find "$C/dl" -name '*.rpm' | wc -l)" = "${#RPMS[@]}" ] || die "unexpected rpms downloaded: $(ls "$C/dl")"
  say "all ${#RPMS[@]} downloaded rpms equal the origin's"
}

check_installed() {
  [ -f "$C/root/usr/share/e2e-hello/README" ] || die "e2e-hello not installed into $C/root"
  [ -f "$C/root/usr/share/e2e-dep/README" ] || die "e2e-dep (dependency) not installed into $C/root"
  rpm --root "$C/root" -q e2e-hello e2e-dep e2e-plus >/dev/null || die "rpmdb of $C/root lacks the packages"
}

client_round() { # client_round LABEL
  run_step "$1 dnf makecache" "${DNF[@]}" makecache
  run_step "$1 dnf download --resolve ${WANT[*]}" "${DNF[@]}" download --resolve --destdir "$C/dl" "${WANT[@]}"
  run_step "$1 dnf install e2e-hello e2e-plus (installroot)" "${DNF[@]}" install e2e-hello e2e-plus
  check_installed
}

for mode in $MODES; do
  say "=== mode: $mode"
  [ -n "$ORIGIN_PID" ] || origin_start
  client_setup "$mode"
  client_round "[$mode]"
  run_step "[$mode] dnf makecache (again)" "${DNF[@]}" makecache
  check_downloads
  expect_hit centos "e2e/Packages/e2e-hello-1.0-1.noarch.rpm"
  expect_hit centos "e2e/Packages/e2e-big-1.0-1.noarch.rpm"

  [ "$DIRECT" = 1 ] && continue
  origin_stop
  fresh_client
  client_round "[$mode] origin down, fresh client:"
  check_downloads
done

# down_round MODE LABEL: a fresh client of MODE updates, downloads and installs (upstream_down_phases).
down_round() {
  client_setup "$1"
  client_round "$2"
  check_downloads
}

if stale_phase_start; then
  upstream_down_phases down_round centos "e2e/Packages/e2e-uncached-1.0-@.noarch.rpm"
  before=$(origin_gets /centos/e2e/repodata/repomd.xml)
  origin_start
  fresh_client
  run_step "[$mode] origin back, fresh client: dnf makecache" "${DNF[@]}" makecache
  origin_revalidated /centos/e2e/repodata/repomd.xml "$before"
fi

# Through the proxy every rpm crosses the origin once; direct, dnf download and dnf install each
# fetch the installed ones.
if [ "$DIRECT" = 1 ]; then max=2; else max=1; fi
assert_origin_gets 1 "$max" "${RPMS[@]/#//centos/e2e/}"
assert_origin_gets 0 1 "${REPODATA[@]/#//centos/e2e/}"

# tamper_fetch DIR MUST: a fresh path-mode client downloads e2e-hello into DIR (MUST=0: it may fail).
tamper_fetch() {
  fresh_client
  run_step "[tampered] dnf makecache" "${DNF[@]}" makecache
  local step=run_step
  [ "$2" = 1 ] || step=try_step
  "$step" "[tampered] dnf download e2e-hello" "${DNF[@]}" download --destdir "$1" e2e-hello
}
tamper_phase centos e2e/Packages/e2e-hello-1.0-1.noarch.rpm tamper_fetch
say PASS
