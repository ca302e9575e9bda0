# shellcheck shell=bash
# Installs what a script needs, idempotently; sourced by scripts/release.sh and
# tests/e2e/setup.sh. Root (or sudo) is needed for Debian packages.
#   deps_debs PKG...            Debian packages not installed yet (one apt-get install)
#   deps_cargo_tool CRATE VER   `cargo install --locked CRATE@VER` unless that version is on PATH

deps_die() { echo "deps: $*" >&2; exit 1; }

deps_debs() {
  local missing=() p sudo=() log=${TMPDIR:-/tmp}/apt-proxy-deps-apt.log
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ "${#missing[@]}" -gt 0 ] || return 0
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || deps_die "not root and no sudo: cannot install ${missing[*]}"
    sudo=(sudo)
  fi
  echo "deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  # apt-get update only when the lists are absent or an install fails on them
  if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
    "${sudo[@]}" apt-get update -qq
  fi
  if ! "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$log" 2>&1 ||
      { tail -n 30 "$log" >&2; deps_die "apt-get install ${missing[*]} failed"; }
  fi
}

deps_cargo_tool() {
  local crate=$1 version=$2
  if "$crate" --version 2>/dev/null | grep -qF " $version"; then return 0; fi
  if cargo "${crate#cargo-}" --version 2>/dev/null | grep -qF " $version"; then return 0; fi
  echo "deps: cargo install $crate@$version" >&2
  cargo install --locked --quiet "$crate@$version" || deps_die "cargo install $crate@$version failed"
}
