#!/usr/bin/env bash
# Runs every test of the project: formatting and lints, unit and integration tests, and the
# end-to-end suites with real apt-get, dnf and apk. Installs what the suites need first
# (Debian packages, PyPI packages), so a fresh Debian 12 machine with the Rust toolchain and
# root needs nothing else. Exit status: non-zero when anything failed.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --all-targets --all-features -- -D warnings

step "unit and integration tests"
cargo test --all-targets

step "end-to-end suites: real apt-get, dnf and apk through the proxy"
cargo build --bin apt-proxy
APT_PROXY_BIN="$PWD/target/debug/apt-proxy" bash tests/e2e/run.sh
