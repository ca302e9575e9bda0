#!/usr/bin/env bash
# End-to-end: the status page at GET / in a real headless Chromium (Debian's chromium package).
# After some traffic (two misses, one hit), Chromium renders the page at phone and desktop width
# (screenshots saved and their paths printed) and its DOM must show the figures the API reports:
# item count, hits, misses, a listed distribution, a recent request, and no external asset.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
e2e_init status
need_cmd chromium curl python3
[ "$DIRECT" = 1 ] && { say "DIRECT: nothing to check without a proxy"; exit 0; }

mkdir -p "$WWW/debian/pool/main/s"
head -c 3000 /dev/urandom >"$WWW/debian/pool/main/s/status-a.deb"
head -c 5000 /dev/urandom >"$WWW/debian/pool/main/s/status-b.deb"
origin_start
proxy_start
P=$(proxy_url)
curl -fsS -o /dev/null "$P/debian/pool/main/s/status-a.deb"
curl -fsS -o /dev/null "$P/debian/pool/main/s/status-b.deb"
curl -fsS -o /dev/null "$P/debian/pool/main/s/status-a.deb"
curl -sS -o /dev/null "$P/debian/pool/main/s/%3Cscript%3Ealert(1)%3C%2Fscript%3E.deb" || true
stats=$(curl -fsS "$P/api/cache/stats")
say "stats: $stats"

chrome() {
  local profile
  profile=$(mktemp -d "$WORK/chrome.XXXXXX")
  timeout -k 5 60 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync --disable-extensions \
    --user-data-dir="$profile" "$@" 2>>"$LOGS/chromium.log"
}

# Screenshots are kept after the run (the work folder is not), under target/ by default.
SHOTS=${SHOTS_DIR:-$(cd "$E2E_DIR/../.." && pwd)/target/e2e-screenshots}
mkdir -p "$SHOTS"
chrome --window-size=390,1400 --screenshot="$SHOTS/status-phone.png" "$P/" >/dev/null
chrome --window-size=1280,1000 --screenshot="$SHOTS/status-desktop.png" "$P/" >/dev/null
chrome --dump-dom "$P/" >"$WORK/status.html"
for shot in "$SHOTS/status-phone.png" "$SHOTS/status-desktop.png"; do
  [ -s "$shot" ] || die "no screenshot at $shot"
  say "screenshot: $shot ($(stat -c %s "$shot") bytes)"
done

python3 - "$WORK/status.html" "$stats" "$P" <<'PY' || die "the status page does not show what the API reports"
import json, re, sys
html = open(sys.argv[1]).read()
stats = json.loads(sys.argv[2])
base = sys.argv[3]
def text(id_):
    m = re.search(r'id="%s">([^<]*)<' % id_, html)
    if not m:
        sys.exit(f"no element #{id_} in the rendered page")
    return m.group(1)
checks = [
    ("items", str(stats["item_count"])),
    ("hits", str(stats["hit_count"])),
    ("misses", str(stats["miss_count"])),
    ("hit-rate", f'{stats["hit_rate"] * 100:.1f}%'),
    ("cache-size", stats["total_size_human"]),
]
for id_, want in checks:
    got = text(id_)
    print(f"  #{id_}: {got!r} (API: {want!r})")
    if got != want:
        sys.exit(f"#{id_} shows {got!r}, the API says {want!r}")
for needle in ["<code>/debian/</code>", "<code>/debian-security/</code>", "status-a.deb", "HIT", "MISS"]:
    if needle not in html:
        sys.exit(f"{needle!r} missing from the page")
if "<script" in html.lower():
    sys.exit("a client-supplied path reached the page unescaped")
if re.search(r'(src|href)="https?://', html):
    sys.exit("the page loads an external asset")
# Client set-up with the address the browser used.
for id_, want in [
    ("setup-apt-proxy", f'Acquire::http::Proxy "{base}/";'),
    ("setup-apt-path", f"deb {base}/debian bookworm main"),
    ("setup-dnf", f"proxy={base}/"),
    ("setup-apk", f"{base}/alpine/"),
]:
    m = re.search(r'id="%s">([^<]*)<' % id_, html)
    if not m or want not in m.group(1).replace("&quot;", '"'):
        sys.exit(f"#{id_} does not show {want!r}: {m and m.group(1)!r}")
# Traffic charts: inline SVG with bars for this run's requests and bytes.
for id_, bar in [("chart-requests", "<title>debian: "), ("chart-bytes", "<title>from cache: ")]:
    m = re.search(r'<svg id="%s".*?</svg>' % id_, html, re.S)
    if not m:
        sys.exit(f"no chart #{id_}")
    if bar not in m.group(0):
        sys.exit(f"chart #{id_} has no {bar!r} bar")
print("  page figures match the API; set-up snippets name the address used; charts drawn; no script, no external asset")
PY
say "status page checked in headless Chromium"
