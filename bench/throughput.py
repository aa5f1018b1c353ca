"""Benchmark: calls/s of a real cai-kit job against a local server with 200 ms latency.

    python bench/throughput.py [--latency 0.2] [--levels 1,16,64,256]

The server (the test suite's fault-injection server, no faults) runs in its own process.
For each in-flight level: a bare aiohttp loop (the baseline) and a real `cai-kit generate`
job (JobSpec + Engine + cache + JSONL writer + manifest; one call per row), each printed as
calls/s and as a ratio to the ideal (in-flight / latency). Then a re-run of a finished
1,000-row job (every row already done: goal <= 3 s and 0 calls).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SERVER = """
import sys, threading
from tests.fixtures.fault_server import FaultServer, start_fault_server
s = FaultServer(latency_s=float(sys.argv[1]))
start_fault_server(s)
print(s.base_url, flush=True)
threading.Event().wait()
"""


async def bare_loop(url: str, n: int, in_flight: int) -> float:
    import aiohttp

    sem = asyncio.Semaphore(in_flight)
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 8}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(i: int) -> None:
            async with sem, session.post(f"{url}/chat/completions", json={**body, "seed": i}) as r:
                await r.read()

        start = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return n / (time.perf_counter() - start)


def cai_job(url: str, n: int, in_flight: int, out: Path) -> tuple[float, int]:
    from cai_kit.engine import EngineConfig
    from cai_kit.generate import run_generate
    from cai_kit.llm import GenParams, get_backend
    from cai_kit.records import Message, PromptRecord

    prompts = []
    for i in range(n):
        msgs = [Message(role="user", content=f"row {i} {out.name}")]
        prompts.append(PromptRecord(id=PromptRecord.make_id(msgs), messages=msgs))
    cfg = EngineConfig(concurrency=in_flight, quiet=True, cache_path=out / "cache.sqlite")
    start = time.perf_counter()
    s = run_generate(prompts, backend=get_backend("m", api_base=url), model="m", params=GenParams(max_tokens=8),
                     samples=1, out_dir=out, engine_config=cfg)  # fmt: skip
    elapsed = time.perf_counter() - start
    return s.done / elapsed, s.stats["calls"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--levels", default="1,16,64,256")
    ap.add_argument("--seconds", type=float, default=5.0, help="target duration per measurement")
    args = ap.parse_args()
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(args.latency)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parent.parent)  # fmt: skip
    url = proc.stdout.readline().strip()  # type: ignore[union-attr]
    try:
        tmp = Path(tempfile.mkdtemp(prefix="cai-bench-"))
        print(f"server latency {args.latency * 1000:.0f} ms; ideal calls/s = in-flight / latency")
        print(
            f"{'in flight':>9}{'rows':>7}{'ideal':>9}{'bare aiohttp':>14}{'cai-kit job':>13}{'job/ideal':>11}{'job/bare':>10}"
        )
        for level in (int(x) for x in args.levels.split(",")):
            ideal = level / args.latency
            n = max(20, int(ideal * args.seconds))
            bare = asyncio.run(bare_loop(url, n, level))
            job, _ = cai_job(url, n, level, tmp / f"job{level}")
            print(
                f"{level:>9}{n:>7}{ideal:>9.0f}{bare:>14.1f}{job:>13.1f}{job / ideal:>11.2f}{job / bare:>10.2f}"
            )
        out = tmp / "rerun"
        cai_job(url, 1000, 256, out)
        start = time.perf_counter()
        _, calls = cai_job(url, 1000, 256, out)
        print(
            f"re-run of a finished 1,000-row job: {time.perf_counter() - start:.2f} s, {calls} calls"
        )
    finally:
        proc.kill()


if __name__ == "__main__":
    main()
