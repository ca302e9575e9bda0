#!/usr/bin/env python3
"""Memory of apt-proxy under many connections that do nothing: idle keep-alive connections
and readers that ask for a large cached file and never read it. Loopback only; every loop is
bounded; everything started here is stopped at the end.

    python3 bench/stalled.py [--bin target/release/apt-proxy] [--conns 5000] [--file-mib 64]

Prints one table: the proxy's resident memory (VmRSS) at rest, with N idle connections, and with
N stalled readers; the memory per connection; how many connections were accepted; and the
median time for another client to fetch a small cached file while the stalled readers hold
their connections. Connections are spread over 10 loopback source addresses (127.0.0.2-11),
since the proxy limits connections per client address.
"""
import argparse
import hashlib
import http.server
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = [f"127.0.0.{i}" for i in range(2, 12)]


def log(*a):
    print(time.strftime("[%H:%M:%S]"), *a, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def settle_rss(pid, secs):
    """The highest VmRSS seen over `secs` seconds (sampled every 0.2 s)."""
    peak = 0
    end = time.time() + secs
    while time.time() < end:
        peak = max(peak, rss_kib(pid))
        time.sleep(0.2)
    return peak


def connect_many(port, n, request, rcvbuf):
    socks = []
    for i in range(n):
        s = socket.socket()
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.bind((SOURCES[i % len(SOURCES)], 0))
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", port))
            if request:
                s.sendall(request)
        except OSError:
            s.close()
            continue
        socks.append(s)
    return socks


def still_open(socks):
    """Connections the proxy kept: no 503 refusal and not closed."""
    n = 0
    for s in socks:
        s.setblocking(False)
        try:
            head = s.recv(12, socket.MSG_PEEK)
            if head and not head.startswith(b"HTTP/1.1 503"):
                n += 1
        except BlockingIOError:
            n += 1
        except OSError:
            pass
    return n


def fetch_ms(url):
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as r:
        r.read()
    return (time.perf_counter() - t) * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/apt-proxy"))
    ap.add_argument("--conns", type=int, default=5000)
    ap.add_argument("--file-mib", type=int, default=64)
    ap.add_argument("--settle", type=float, default=5.0)
    args = ap.parse_args()
    if not os.access(args.bin, os.X_OK):
        sys.exit(f"no binary at {args.bin}: cargo build --release, or --bin")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    for k in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        os.environ.pop(k, None)

    work = tempfile.mkdtemp(prefix="apt-proxy-stalled-")
    proxy = None
    try:
        pool = os.path.join(work, "origin/debian/pool/main/s")
        os.makedirs(pool)
        big = os.urandom(args.file_mib << 20)
        with open(os.path.join(pool, "big.deb"), "wb") as f:
            f.write(big)
        with open(os.path.join(pool, "small.deb"), "wb") as f:
            f.write(os.urandom(16 << 10))
        handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(  # noqa: E731
            *a, directory=os.path.join(work, "origin"), **k)
        http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None
        origin = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=origin.serve_forever, daemon=True).start()
        oport = origin.server_address[1]

        port = free_port()
        env = dict(os.environ, APT_PROXY_LOG_LEVEL="warn")
        proxy = subprocess.Popen(
            [args.bin, "--host", "127.0.0.1", "--port", str(port), "--mode", "debian",
             "--debian", f"http://127.0.0.1:{oport}/debian/", "--cachedir",
             os.path.join(work, "cache")],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(base + "/livez", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        big_url = base + "/debian/pool/main/s/big.deb"
        small_url = base + "/debian/pool/main/s/small.deb"
        with urllib.request.urlopen(big_url) as r:
            assert hashlib.sha256(r.read()).digest() == hashlib.sha256(big).digest()
        fetch_ms(small_url)
        at_rest = settle_rss(proxy.pid, 1.0)
        log(f"at rest: {at_rest} KiB")

        log(f"{args.conns} idle connections")
        idle = connect_many(port, args.conns, b"", 0)
        time.sleep(1)
        idle_rss = settle_rss(proxy.pid, args.settle)
        idle_open = still_open(idle)
        for s in idle:
            s.close()
        time.sleep(2)

        log(f"{args.conns} stalled readers of a {args.file_mib} MiB cached file")
        request = b"GET /debian/pool/main/s/big.deb HTTP/1.1\r\nHost: bench\r\n\r\n"
        stalled = connect_many(port, args.conns, request, 4096)
        time.sleep(1)
        stalled_rss = settle_rss(proxy.pid, args.settle)
        stalled_open = still_open(stalled)
        latencies = [fetch_ms(small_url) for _ in range(21)]
        for s in stalled:
            s.close()

        n = args.conns
        per = lambda rss: (rss - at_rest) / n  # noqa: E731
        rows = [
            ("RSS at rest", f"{at_rest / 1024:.1f} MiB", "-"),
            (f"RSS with {n} idle connections", f"{idle_rss / 1024:.1f} MiB",
             "target < 64 MiB"),
            ("  per idle connection", f"{per(idle_rss):.1f} KiB", "-"),
            ("  idle connections kept", f"{idle_open} of {n}", "-"),
            (f"RSS with {n} stalled readers", f"{stalled_rss / 1024:.1f} MiB",
             "before: 3.4 GiB"),
            ("  per stalled reader", f"{per(stalled_rss):.1f} KiB",
             "before: ~650 KiB; target <= 64 KiB"),
            ("  stalled readers kept", f"{stalled_open} of {n}", "-"),
            ("small hit, median, while stalled", f"{statistics.median(latencies):.1f} ms",
             "before: p99 3.4 s"),
        ]
        width = max(len(r[0]) for r in rows)
        print(f"{'figure':<{width}}  {'apt-proxy':>14}  reference")
        for name, value, ref in rows:
            print(f"{name:<{width}}  {value:>14}  {ref}")
    finally:
        if proxy:
            proxy.terminate()
            try:
                proxy.wait(10)
            except subprocess.TimeoutExpired:
                proxy.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
