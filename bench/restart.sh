#!/usr/bin/env bash
# bench/restart.sh -- how long apt-proxy takes to start on a cache directory holding N entries
# (default 100,000): time until it answers requests, and until its index of entries is loaded
# (it is built in the background, so requests are served before that).
# Loopback only; everything started here is stopped on exit.
#
#   bench/restart.sh                 N=100000, binary target/release/apt-proxy
#   N=20000 APT_PROXY_BIN=... bench/restart.sh
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${APT_PROXY_BIN:-$ROOT/target/release/apt-proxy}
N=${N:-100000}
[[ -x $BIN ]] || { echo "no binary at $BIN (cargo build --release)" >&2; exit 1; }
WORK=$(mktemp -d /tmp/apt-proxy-restart.XXXXXX)
PID=
cleanup() { [[ -n $PID ]] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

echo "writing $N cache entries (1 KiB bodies) into $WORK/cache" >&2
python3 - "$WORK/cache" "$N" <<'PY'
import hashlib, json, os, sys, time
root, n = sys.argv[1], int(sys.argv[2])
now = int(time.time())
os.makedirs(os.path.join(root, "data"), exist_ok=True)
body = os.urandom(1024)
sha = hashlib.sha256(body).hexdigest()
for i in range(n):
    key = f"debian/pool/main/p/pkg{i}/pkg{i}_1.0_all.deb"
    digest = hashlib.sha256(key.encode()).hexdigest()
    shard = os.path.join(root, "data", digest[:2])
    os.makedirs(shard, exist_ok=True)
    name = f"{digest}-{i:016x}.body"
    with open(os.path.join(shard, name), "wb") as f:
        f.write(body)
    meta = {"v": 1, "key": key, "body": name, "status": 200, "len": len(body), "content_type": None,
            "last_modified": None, "etag": None, "sha256": sha, "stored_at": now - i, "fresh_until": 2**64 - 1}
    with open(os.path.join(shard, digest + ".meta"), "w") as f:
        json.dump(meta, f)
PY
sync
echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || echo "(could not drop the page cache: figures are warm-cache)" >&2

port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
start=$(date +%s.%N)
APT_PROXY_LOG_FORMAT=json "$BIN" --host 127.0.0.1 --port "$port" --cachedir "$WORK/cache" \
  --mode debian --debian http://127.0.0.1:9/debian/ --cache-max-size 0 > "$WORK/log" 2>&1 &
PID=$!
answered=
for _ in $(seq 1 6000); do
  if [[ -z $answered ]] && curl -s -o /dev/null "http://127.0.0.1:$port/_/ping"; then
    answered=$(date +%s.%N)
  fi
  if grep -q '"cache index loaded"' "$WORK/log"; then break; fi
  sleep 0.01
done
loaded=$(date +%s.%N)
grep -q '"cache index loaded"' "$WORK/log" || { cat "$WORK/log" >&2; echo "index never loaded" >&2; exit 1; }
hit=$(curl -s -o /dev/null -w '%{http_code} %header{x-cache}' "http://127.0.0.1:$port/debian/pool/main/p/pkg7/pkg7_1.0_all.deb")
rss=$(awk '/VmRSS/ {print int($2/1024)}' "/proc/$PID/status")
items=$(grep '"cache index loaded"' "$WORK/log" | sed -n 's/.*"items":\([0-9]*\).*/\1/p')
printf '| metric | value |\n|---|---|\n'
printf '| entries on disk | %s |\n' "$N"
printf '| first answer after start | %.3f s |\n' "$(awk -v a="$answered" -v b="$start" 'BEGIN{print a-b}')"
printf '| index loaded after start | %.3f s |\n' "$(awk -v a="$loaded" -v b="$start" 'BEGIN{print a-b}')"
printf '| entries indexed | %s |\n' "$items"
printf '| a cached file after restart | %s |\n' "$hit"
printf '| RSS with the index loaded | %s MiB |\n' "$rss"
