#!/usr/bin/env bash
# Runs every test of the project: formatting and lints, unit and integration tests (the S3 ones
# against a real SeaweedFS), the release artefacts (scripts/release.sh: the static binary and its
# size, .deb, .rpm, .apk, the container image), and the end-to-end suites: real apt-get, dnf and
# apk through the proxy (apt also with the cache in an S3 bucket), the status page in Chromium,
# the image under podman, the packages installed by dpkg, dnf and apk, and the Compose examples.
# Installs what the tests need first (Debian packages, PyPI packages, cargo-deb), so a fresh
# Debian 12 machine with the Rust toolchain and root needs nothing else. Exit status: non-zero
# when anything failed.
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

step "release artefacts: the static binary (at most 8 MiB), .deb, .rpm, .apk, image (scripts/release.sh)"
scripts/release.sh

step "end-to-end suites: real apt-get, dnf and apk through the proxy; the image, packages and examples"
cargo build --bin apt-proxy
APT_PROXY_BIN="$PWD/target/debug/apt-proxy" SKIP_SETUP=1 \
  SUITES="apt dnf apk status apt-s3 image packages examples" bash tests/e2e/run.sh
