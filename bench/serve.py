"""Benchmark: `cai-kit serve` on the embedded model vs the same backend called directly.

    python bench/serve.py [--requests 8] [--max-tokens 32] [--rounds 4]

For 1, 4 and 16 concurrent clients, the same requests (same prompts, same seeds, so the same
tokens are generated) go (a) straight to the `local` backend in this process and (b) over
loopback HTTP to a `cai-kit serve local` process (which also writes every completion to its
feedback DB). Printed: requests/s and p50/p95 latency of each, and serve/direct as a ratio
(the serving overhead; goal <= 1.1x). Direct and served runs alternate `--rounds` times so
that a change of machine load hits both alike. Run it on a quiet machine and quote `uptime`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from cai_kit.llm import GenParams
from cai_kit.llm.registry import get_interactive_backend

TOPICS = ["tea", "rain", "maps", "bees", "clocks", "salt", "owls", "kites",
          "glass", "moss", "trains", "ink", "wolves", "bread", "tides", "stars"]  # fmt: skip


def _requests(n: int, max_tokens: int) -> list[dict]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"Write one sentence about {TOPICS[i % 16]}."}
            ],
            "max_tokens": max_tokens,
            "seed": i,
            "temperature": 0.7,
        }
        for i in range(n)
    ]


async def _run(call: Callable[[dict], Awaitable[str]], reqs: list[dict], clients: int) -> tuple[float, list[float]]:  # fmt: skip
    """Wall time and per-request latencies with `clients` requests in flight."""
    sem = asyncio.Semaphore(clients)
    latencies: list[float] = []

    async def one(req: dict) -> None:
        async with sem:
            t = time.perf_counter()
            await call(req)
            latencies.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*(one(r) for r in reqs))
    return time.perf_counter() - start, latencies


def _start_server(db: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cai_kit",
            "serve",
            "local",
            "--port",
            "0",
            "--feedback-db",
            str(db),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    match = re.search(r"at (http://\S+?)/ ", proc.stdout.readline())
    assert match, "serve did not start"
    return proc, match.group(1)


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


async def main_async(args: argparse.Namespace) -> None:
    reqs = _requests(args.requests, args.max_tokens)
    backend = get_interactive_backend("local")  # the backend `cai-kit serve local` uses

    async def direct(req: dict) -> str:
        params = GenParams(
            temperature=req["temperature"], max_tokens=req["max_tokens"], seed=req["seed"]
        )
        return (await backend.chat(req["messages"], params)).text

    db = Path(tempfile.mkdtemp()) / "feedback.db"
    proc, url = _start_server(db)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def served(req: dict) -> str:
        async with session.post(url + "/v1/chat/completions", json=req) as r:
            assert r.status == 200, await r.text()
            return (await r.json())["choices"][0]["message"]["content"]

    try:
        same = [await direct(r) for r in reqs[:2]] == [
            await served(r) for r in reqs[:2]
        ]  # + warm-up
        print(f"load average before: {os.getloadavg()}; same text direct vs served: {same}")
        print(
            f"{args.requests} requests x {args.max_tokens} max tokens, {args.rounds} rounds each\n"
        )
        print(f"{'clients':>7} | {'direct req/s':>12} {'p50 s':>7} {'p95 s':>7} | "
              f"{'serve req/s':>11} {'p50 s':>7} {'p95 s':>7} | {'time ratio':>10} {'p50 ratio':>9}")  # fmt: skip
        for clients in (1, 4, 16):
            res: dict[str, tuple[float, list[float]]] = {"direct": (0.0, []), "serve": (0.0, [])}
            for _ in range(args.rounds):
                for name, call in (("direct", direct), ("serve", served)):
                    wall, lat = await _run(call, reqs, clients)
                    res[name] = (res[name][0] + wall, res[name][1] + lat)
            (dw, dl), (sw, sl) = res["direct"], res["serve"]
            n = args.requests * args.rounds
            print(f"{clients:>7} | {n / dw:>12.2f} {_pct(dl, .5):>7.2f} {_pct(dl, .95):>7.2f} | "
                  f"{n / sw:>11.2f} {_pct(sl, .5):>7.2f} {_pct(sl, .95):>7.2f} | "
                  f"{sw / dw:>9.3f}x {statistics.median(sl) / statistics.median(dl):>8.3f}x")  # fmt: skip
        print(f"\nload average after: {os.getloadavg()}")
    finally:
        await session.close()
        await backend.aclose()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--requests", type=int, default=8, help="requests per round and side")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=4, help="direct/serve alternations per level")
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
