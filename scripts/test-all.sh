#!/usr/bin/env bash
# Runs every test of the project: formatting and lints, unit and integration tests (the S3 ones
# against a real SeaweedFS), the release binary's size, and the end-to-end suites with real
# apt-get, dnf and apk (apt also with the cache in an S3 bucket). Installs what the tests need
# first (Debian packages, PyPI packages), so a fresh Debian 12 machine with the Rust toolchain
# and root needs nothing else. Exit status: non-zero when anything failed.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "installing what the tests need"
bash tests/e2e/setup.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --all-targets --all-features -- -D warnings

step "unit and integration tests"
cargo test --all-targets

step "release binary: at most 8 MiB"
cargo build --release --bin apt-proxy
size=$(stat -c %s target/release/apt-proxy)
echo "target/release/apt-proxy: $size bytes"
[ "$size" -le $((8 * 1024 * 1024)) ] || { echo "the release binary is over 8 MiB" >&2; exit 1; }

step "end-to-end suites: real apt-get, dnf and apk through the proxy"
cargo build --bin apt-proxy
APT_PROXY_BIN="$PWD/target/debug/apt-proxy" SKIP_SETUP=1 SUITES="apt dnf apk status apt-s3" bash tests/e2e/run.sh
