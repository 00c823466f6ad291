#!/usr/bin/env python
"""The cost of rsyn's bounded downloads (rsyn/net.py) against a bare urllib3 pool, in one run, same server.

    .venv/bin/python bin/bench_fetch.py [--images 2000] [--threads 16] [--rounds 3]

Both sides fetch the same URLs from a loopback HTTP/1.1 keep-alive server (its own process, serving the
JPEGs of /work/shared/data/images) on a pool of --threads threads:

- rsyn: `rsyn.images.Fetcher` (whole-request deadline watchdog, checked addresses, byte cap, redirects,
  retries), with --allow-private-urls since the server is on 127.0.0.1;
- bare: one `urllib3.PoolManager` with the same pool size, `retries=False`, body read whole: the least a
  downloader can do, and the strongest honest reference for the same transport.

Images/s of each, best of --rounds alternating rounds (the machine is shared), and the ratio rsyn / bare.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("RSYN_SAMPLE_DATA", "/work/shared/data"))
sys.path.insert(0, str(ROOT))

SERVER = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

files = [p.read_bytes() for p in sorted(Path(sys.argv[1]).glob("*.jpg"))]

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def do_GET(self):
        body = files[int(self.path.strip("/").split(".")[0]) % len(files)]
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

server = Server(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    opts = parser.parse_args()
    photos = sorted((DATA / "images").glob("*.jpg"))
    if not photos:
        sys.exit(f"no sample photos in {DATA / 'images'}")
    import urllib3

    from rsyn.images import Fetcher

    server = subprocess.Popen([sys.executable, "-c", SERVER, str(DATA / "images")], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        urls = [f"http://127.0.0.1:{port}/{i}.jpg" for i in range(opts.images)]
        fetcher = Fetcher(timeout=10, deadline=30, retries=0, pool_size=opts.threads, allow_private=True)
        bare = urllib3.PoolManager(maxsize=opts.threads, retries=False, timeout=urllib3.Timeout(10))

        def bare_fetch(url: str) -> bytes:
            return bare.request("GET", url).data

        sides = {"rsyn Fetcher": fetcher.fetch, "bare urllib3": bare_fetch}
        best = dict.fromkeys(sides, float("inf"))
        volume = 0
        with ThreadPoolExecutor(opts.threads) as pool:
            for fetch in sides.values():
                list(pool.map(fetch, urls[:200]))  # warm-up: connections opened
            for _ in range(opts.rounds):
                for name, fetch in sides.items():
                    start = time.perf_counter()
                    volume = sum(map(len, pool.map(fetch, urls)))
                    best[name] = min(best[name], time.perf_counter() - start)
        print(
            f"{opts.images} images ({volume / 1e6:.0f} MB) from a loopback server, {opts.threads} threads, "
            f"best of {opts.rounds}; load average {os.getloadavg()[0]:.1f}"
        )
        print(f"{'':16}{'seconds':>10}{'images/s':>10}{'MB/s':>8}")
        for name, seconds in best.items():
            print(f"{name:16}{seconds:>10.2f}{opts.images / seconds:>10.0f}{volume / 1e6 / seconds:>8.0f}")
        print(f"{'ratio rsyn / bare':16}{best['bare urllib3'] / best['rsyn Fetcher']:>20.2f}")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
