#!/usr/bin/env bash
# Runs setup.sh, then the end-to-end suites (apt, dnf, apk), each with a time limit; prints
# PASS/FAIL and the time per suite, then one line "N passed, N failed". Exit 1 if any failed.
#
#   bash tests/e2e/run.sh                    proxy from $APT_PROXY_BIN (default target/debug/apt-proxy)
#   DIRECT=1 bash tests/e2e/run.sh           no proxy: checks the repositories and clients only
#   SUITES="apt dnf" SKIP_SETUP=1 bash tests/e2e/run.sh
# Suites: apt dnf apk status apt-s3 (the proxy binary), image packages examples (the artefacts
# scripts/release.sh leaves in dist/, or in APT_PROXY_DIST_DIR: run it first).
# Other knobs (MODES, KEEP, VERBOSE, E2E_WORK, STEP_TIMEOUT, STALE_WAIT, DOWN_WAYS, DOWN_STEP_MAX):
# see lib.sh; apt.sh also reads NEW_VERSION_WAIT, SLOW_MIB and SLOW_RATE.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SUITES=${SUITES:-apt dnf apk status}
SUITE_TIMEOUT=${SUITE_TIMEOUT:-1800}

now_ms() { local t; t=$(date +%s%N); echo $((t / 1000000)); }
fmt_ms() { printf '%d.%ds' $(($1 / 1000)) $(($1 % 1000 / 100)); }

results=()
passed=0
failed=0

if [ "${SKIP_SETUP:-0}" != 1 ]; then
  echo "=== setup"
  t0=$(now_ms)
  if ! timeout -k 15 1200 bash "$HERE/setup.sh"; then
    echo "setup FAIL: cannot run the suites ($(fmt_ms $(($(now_ms) - t0))))"
    for s in $SUITES; do echo "FAIL  $s (not run: setup failed)"; done
    echo "0 passed, $(echo "$SUITES" | wc -w) failed"
    exit 1
  fi
fi

for s in $SUITES; do
  echo "=== $s"
  t0=$(now_ms)
  rc=0
  timeout -k 15 "$SUITE_TIMEOUT" bash "$HERE/$s.sh" || rc=$?
  el=$(($(now_ms) - t0))
  if [ "$rc" = 0 ]; then
    passed=$((passed + 1))
    results+=("PASS  $s  $(fmt_ms "$el")")
  else
    failed=$((failed + 1))
    why="exit $rc"
    [ "$rc" = 124 ] && why="timed out after ${SUITE_TIMEOUT}s"
    results+=("FAIL  $s  $(fmt_ms "$el")  ($why)")
  fi
done

echo "=== summary$([ "${DIRECT:-0}" = 1 ] && echo ' (DIRECT: no proxy)')"
printf '%s\n' "${results[@]}"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
