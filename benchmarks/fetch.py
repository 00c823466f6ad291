#!/usr/bin/env python
"""The cost of rsyn's bounded downloads (rsyn/net.py) against a bare urllib3 pool, in one run, same server.

    .venv/bin/python benchmarks/fetch.py [--images 2000] [--threads 16] [--rounds 3]

Both sides fetch the same URLs from a loopback HTTP/1.1 keep-alive server (benchmarks/loopback.py, its own
process, serving the web JPEGs of the sample data's images/) on a pool of --threads threads:

- rsyn: `rsyn.images.Fetcher` (whole-request deadline watchdog, checked addresses, byte cap, redirects,
  retries), with --allow-private-urls since the server is on 127.0.0.1;
- bare: one `urllib3.PoolManager` with the same pool size, `retries=False`, body read whole: the least a
  downloader can do, and the strongest honest reference for the same transport.

Images/s of each, best of --rounds alternating rounds (the machine is shared), and the ratio rsyn / bare.
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor

import harness  # benchmarks/harness.py
import loopback  # benchmarks/loopback.py


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    opts = parser.parse_args()
    photos = harness.sample_data("images")
    import urllib3

    from rsyn.images import Fetcher

    with loopback.serve("images", photos) as url:
        urls = [f"{url}/{i}.jpg" for i in range(opts.images)]
        fetcher = Fetcher(timeout=10, deadline=30, retries=0, pool_size=opts.threads, allow_private=True)
        bare = urllib3.PoolManager(maxsize=opts.threads, retries=False, timeout=urllib3.Timeout(10))

        def bare_fetch(url: str) -> bytes:
            return bare.request("GET", url).data

        fetchers = {"bare urllib3": bare_fetch, "rsyn Fetcher": fetcher.fetch}
        with ThreadPoolExecutor(opts.threads) as pool:
            for fetch in fetchers.values():
                list(pool.map(fetch, urls[:200]))  # warm-up: connections opened
            volume = sum(map(len, pool.map(bare_fetch, urls)))
            best = harness.best_of(
                {name: lambda fetch=fetch: list(pool.map(fetch, urls)) for name, fetch in fetchers.items()},
                opts.rounds,
            )
    print(
        f"{opts.images} images ({volume / 1e6:.0f} MB) from a loopback server, {opts.threads} threads, "
        f"best of {opts.rounds}; {harness.machine()}"
    )
    harness.print_table(
        ["", "seconds", "images/s", "MB/s", "ratio to bare"],
        [
            [name, s, round(opts.images / s), volume / 1e6 / s, harness.ratio(best["bare urllib3"], s)]
            for name, s in best.items()
        ],
    )


if __name__ == "__main__":
    main()
