"""Benchmark: a 10,000-call `revise --rounds 1 --batch-api` job against the loopback batch server.

    python bench/batch_api.py [--calls 10000] [--processing 60]

The test suite's scripted server (files + batches endpoints) runs in this process; each batch
takes `--processing` seconds of simulated provider time from creation to completion. The job
runs through the CLI in a subprocess, as a user runs it (3 waves: responses, critiques,
revisions; one batch each). Printed:
  1. wall time vs the server's simulated processing time (waves x processing); goal: the
     overhead (imports, writing and uploading the JSONL, polling, downloading, caching,
     writing records) <= 5% of the simulated time;
  2. peak memory of the job (ru_maxrss) at a quarter of the rows, all of them and --memory-x
     times as many (1 s batches): beyond the rows held at once (CAI_KIT_BATCH_ROWS, 1024), it
     should stay flat (goal: well under 1 KiB per extra prompt; the input itself is kept);
  3. the --dry-run cost preview with and without --batch-api (openai/gpt-4o-mini's list and
     batch prices from litellm's cost map): the batch preview should be half the synchronous
     one.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODEL = "openai/gpt-4o-mini"  # pointed at the loopback server; priced from litellm's cost map


def run_job(url: str, prompts: Path, out: Path, *extra: str) -> tuple[float, int, str]:
    """(wall seconds, peak RSS in MiB, stdout) of one CLI run."""
    cmd = [sys.executable, "-m", "cai_kit", "revise", str(prompts), "--model", MODEL,
           "--rounds", "1", "--out", str(out), "--max-tokens", "64",
           "--cache-path", str(out.parent / f"{out.name}.sqlite"), "-q", *extra]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "OPENAI_BASE_URL": url, "OPENAI_API_KEY": "sk-bench"}  # fmt: skip
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    output = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"the job failed: {output}")
    return wall, usage.ru_maxrss // 1024, output


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=10_000)
    ap.add_argument("--processing", type=float, default=60.0, help="simulated s per batch")
    ap.add_argument("--memory-x", type=int, default=4, help="the largest memory run, x rows")
    args = ap.parse_args()

    from tests.fixtures.fault_server import FaultServer, start_fault_server

    server = FaultServer()
    start_fault_server(server)
    rows = -(-args.calls // 3)  # 3 calls per prompt: response, critique, revision
    print(f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} (1/5 min), "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)

        def prompts(n: int) -> Path:
            path = work / f"prompts-{n}.jsonl"
            path.write_text("".join(json.dumps({"prompt": f"Question {i}: how do I stay safe "
                                                "online?"}) + "\n" for i in range(n)))  # fmt: skip
            return path

        # 1. wall time vs simulated processing time
        server.batch_processing_s = args.processing
        wall, rss, out = run_job(server.base_url, prompts(rows), work / "full", "--batch-api")
        waves = server.batches_created
        simulated = waves * args.processing
        provider = server.batch_compute_s  # the server answering the lines, once time is up
        overhead = wall - simulated - provider
        print(f"job: {rows} prompts, {server.paid} calls in {waves} batches; {out.strip()}")
        print(f"wall {wall:.1f} s vs simulated processing {simulated:.1f} s "
              f"({waves} x {args.processing:g} s) + the server answering {provider:.1f} s: "
              f"cai-kit overhead {overhead:.1f} s = {100 * overhead / simulated:.1f}% "
              "(goal <= 5%)")  # fmt: skip

        # 2. peak memory vs row count
        server.reset()
        server.batch_processing_s = 1.0
        sizes = [rows // 4, rows, rows * args.memory_x]
        peaks = {rows: rss}
        for n in (sizes[0], sizes[2]):
            _, peaks[n], _ = run_job(server.base_url, prompts(n), work / f"m{n}", "--batch-api")
        print("peak RSS: " + ", ".join(f"{peaks[n]} MiB at {n} prompts" for n in sizes))
        for a, b in itertools.pairwise(sizes):
            print(f"  {a} -> {b} prompts: {1024 * (peaks[b] - peaks[a]) / (b - a):.2f} KiB per "
                  "extra prompt")  # fmt: skip

        # 3. cost preview
        _, _, sync = run_job(server.base_url, prompts(rows), work / "dry", "--dry-run")
        _, _, batch = run_job(server.base_url, prompts(rows), work / "dry", "--dry-run",
                              "--batch-api")  # fmt: skip
        m = re.search(r"\$([\d.]+) with --batch-api \(synchronous: \$([\d.]+)\)", batch)
        assert m, batch
        print(f"cost preview: synchronous ${float(m[2]):.4f}, --batch-api ${float(m[1]):.4f} "
              f"(ratio {float(m[1]) / float(m[2]):.3f}; goal 0.5)")  # fmt: skip
        print(f"  {sync.strip()}\n  {batch.strip()}")


if __name__ == "__main__":
    main()
