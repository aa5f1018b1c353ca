"""Benchmark: calls/s of a real `cai-kit generate` run, as a user runs it, against a bare loop.

    python bench/throughput.py [--latency 0.2] [--levels 1,16,64,256,1024] [--seconds 8]

The server (the test suite's provider server, no faults, 200 ms per answer) runs in its own
process. For each in-flight level, in one run:
  - bare aiohttp: an asyncio loop posting the same requests (the baseline);
  - cai-kit job: `python -m cai_kit generate PROMPTS --model m --api-base URL --concurrency N`
    in a subprocess, timed from launch to exit (interpreter start, input loading, cache,
    records, fsync'd JSONL and manifest all included), one call per row;
  - distilabel (only when it is installed; it is not a dependency): the same rows through a
    distilabel TextGeneration pipeline with OpenAILLM at the same batch size.
Then the hosted-string rows (issue 16): `openai/fake-model` with OPENAI_BASE_URL pointing at
the server, and `litellm:openai/fake-model --api-base URL`, each labelled with the path the
registry picks for it. Last, a finished 10,000-row job is re-run (goal: <= 3 s, 0 calls).
Ratios compare figures from the same run only; the load average is printed with them.
`job/bare` is wall-clock (what a user waits); `engine/bare` uses the job's own clock
(manifest `elapsed_s`: without interpreter start-up and input loading).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

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


def write_prompts(path: Path, n: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = path.parent.name
    path.write_text("".join(json.dumps({"prompt": f"row {i} {tag}"}) + "\n" for i in range(n)))
    return path


def cli_job(
    url: str | None, n: int, in_flight: int, run: Path, model: str = "m", env: dict | None = None
) -> tuple[float, int, int, float]:
    """Run `cai-kit generate` in a subprocess; returns (rows/s wall-clock, done, calls, rows/s
    on the job's own clock, i.e. without interpreter start-up and input loading)."""
    prompts = run / "prompts.jsonl"
    if not prompts.is_file():
        write_prompts(prompts, n)
    cmd = [sys.executable, "-m", "cai_kit", "generate", str(prompts), "--model", model,
           "--out", str(run / "out"), "--cache-path", str(run / "cache.sqlite"),
           "--concurrency", str(in_flight), "--max-tokens", "8", "--quiet"]  # fmt: skip
    if url:
        cmd += ["--api-base", url]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "CAI_KIT_CACHE_DIR": str(run / "cc"),
                **(env or {})}  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True, cwd=ROOT)
    elapsed = time.perf_counter() - start
    if proc.returncode not in (0, 2):
        raise RuntimeError(f"cai-kit failed ({proc.returncode}): {proc.stderr[-800:]}")
    stats = json.loads((run / "out" / "manifest.json").read_text())["stats"]
    engine_rate = int(stats["done"]) / max(float(stats.get("elapsed_s") or 0), 1e-9)
    return n / elapsed, int(stats["done"]), int(stats["calls"]), engine_rate


def distilabel_job(url: str, n: int, in_flight: int) -> str:
    """distilabel's calls/s for the same rows, or why there is none."""
    try:
        import distilabel  # noqa: F401
    except ImportError:
        return "-"
    try:
        from distilabel.models import OpenAILLM
        from distilabel.pipeline import Pipeline
        from distilabel.steps import LoadDataFromDicts
        from distilabel.steps.tasks import TextGeneration

        with Pipeline(name="bench") as pipe:
            load = LoadDataFromDicts(
                data=[{"instruction": f"row {i} distilabel"} for i in range(n)],
                batch_size=in_flight,
            )
            llm = OpenAILLM(
                model="m", base_url=url, api_key="sk-bench", generation_kwargs={"max_new_tokens": 8}
            )
            gen = TextGeneration(llm=llm, input_batch_size=in_flight)
            load >> gen
        start = time.perf_counter()
        pipe.run(use_cache=False)
        return f"{n / (time.perf_counter() - start):.1f}"
    except Exception as exc:  # an API change in distilabel must not hide our figures
        return f"error: {type(exc).__name__}"


def path_label(model: str, api_base: str | None) -> str:
    from cai_kit.llm.registry import resolve

    return resolve(model, api_base).name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--levels", default="1,16,64,256,1024")
    ap.add_argument("--hosted-levels", default="64,256")
    ap.add_argument("--seconds", type=float, default=8.0, help="target duration per measurement")
    ap.add_argument("--max-rows", type=int, default=12000)
    ap.add_argument("--rerun-rows", type=int, default=10000)
    args = ap.parse_args()
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(args.latency)], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT)  # fmt: skip
    url = proc.stdout.readline().strip()  # type: ignore[union-attr]
    tmp = Path(tempfile.mkdtemp(prefix="cai-bench-"))
    try:
        print(f"load average at start: {os.getloadavg()[0]:.2f} (cores: {os.cpu_count()})")
        print(f"server latency {args.latency * 1000:.0f} ms; ideal calls/s = in-flight / latency")
        print(f"{'in flight':>9}{'rows':>7}{'ideal':>8}{'bare aiohttp':>14}{'cai-kit job':>13}"
              f"{'job/bare':>10}{'job/ideal':>11}{'engine/bare':>13}{'distilabel':>12}")  # fmt: skip
        for level in (int(x) for x in args.levels.split(",")):
            ideal = level / args.latency
            n = min(args.max_rows, max(20, int(ideal * args.seconds)))
            bare = asyncio.run(bare_loop(url, n, level))
            job, done, _, engine = cli_job(url, n, level, tmp / f"job{level}")
            assert done == n, f"{done} of {n} rows done"
            dist = distilabel_job(url, n, level)
            print(f"{level:>9}{n:>7}{ideal:>8.0f}{bare:>14.1f}{job:>13.1f}{job / bare:>10.2f}"
                  f"{job / ideal:>11.2f}{engine / bare:>13.2f}{dist:>12}")  # fmt: skip

        print("\nhosted model strings through the CLI (OPENAI_BASE_URL / --api-base -> loopback)")
        hosted_env = {"OPENAI_BASE_URL": url, "OPENAI_API_KEY": "sk-bench"}
        os.environ.update(hosted_env)  # so path_label sees what the subprocess sees
        rows = [("openai/fake-model", None, "openai/fake-model + OPENAI_BASE_URL"),
                ("litellm:openai/fake-model", url, "litellm:openai/fake-model --api-base")]  # fmt: skip
        print(
            f"{'in flight':>9}{'rows':>7}{'bare':>9}  {'model string (path taken)':<58}{'calls/s':>9}{'/bare':>7}"
        )
        for level in (int(x) for x in args.hosted_levels.split(",")):
            n = min(args.max_rows, max(20, int(level / args.latency * args.seconds)))
            bare = asyncio.run(bare_loop(url, n, level))
            for model, base, label in rows:
                run = tmp / f"hosted-{model.replace('/', '_').replace(':', '_')}-{level}"
                try:
                    rate, done, _, _ = cli_job(base, n, level, run, model=model, env=hosted_env)
                    fig = f"{rate:>9.1f}{rate / bare:>7.2f}" + (
                        "" if done == n else f" ({done}/{n} done)"
                    )
                except RuntimeError as exc:
                    fig = f"  failed: {str(exc)[-60:]}"
                name = f"{label} ({path_label(model, base)})"
                print(f"{level:>9}{n:>7}{bare:>9.1f}  {name:<58}{fig}")

        run = tmp / "rerun"
        cli_job(url, args.rerun_rows, 256, run)
        start = time.perf_counter()
        _, done, calls, _ = cli_job(url, args.rerun_rows, 256, run)
        print(f"\nre-run of a finished {args.rerun_rows:,}-row job through the CLI: "
              f"{time.perf_counter() - start:.2f} s, {calls} calls ({done} rows newly done)")  # fmt: skip
        print(f"load average at end: {os.getloadavg()[0]:.2f}")
    finally:
        proc.kill()


if __name__ == "__main__":
    main()
