"""Measure: what `--max-cost` lets a `--batch-api` job spend, against the cap.

    python bench/batch_budget.py [--code DIR]   # DIR: the cai_kit checkout to run (default: here)

The test suite's scripted server runs in this process with `usage_by_length` (prompt tokens
from the prompt's length, a token per CJK character; every answer its whole max_tokens); the
jobs run through the CLI in subprocesses at a known `--price`. For each job it prints the cap,
what the job's summary says it spent, and what the provider billed (every paid answer's tokens
at the price: synchronous calls at full price, batched ones at the provider's batch rate, half
for OpenAI):
  1. mixed: `revise` with a synchronous responder (openrouter/..., no Batch API) and a batched
     critic (openai/...);
  2. judge: a prompt-heavy batch `judge` of long CJK responses;
  3. reopened: `generate` killed with SIGKILL while its batch of 4 calls is open, then re-run
     over 8 prompts with the same cap (the bill counts both runs).
Run it with `--code` pointing at an export of an older commit to compare (`git archive`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CJK = "人工智能的安全性需要仔细的评估和透明的原则"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--code", type=Path, default=ROOT)
    args = ap.parse_args()
    from tests.fixtures.fault_server import FaultServer, _usage, start_fault_server

    server = FaultServer()
    start_fault_server(server)
    code = args.code.resolve()  # (the working directory: `python -m` looks there first)
    env = {**os.environ, "PYTHONPATH": str(args.code.resolve()),
           "LITELLM_LOCAL_MODEL_COST_MAP": "True"}  # fmt: skip
    for name in ("OPENROUTER", "OPENAI"):
        env[f"{name}_BASE_URL"], env[f"{name}_API_KEY"] = server.base_url, "x"

    def billed(price: float, batch_models: set[str]) -> float:
        total = 0.0
        for body in server.bodies:
            p, c = _usage(server, body)
            total += (p + c) * price / 1e6 * (0.5 if body.get("model") in batch_models else 1.0)
        return total

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "cai_kit", *argv, "-q"]
        return subprocess.run(cmd, env=env, cwd=code, capture_output=True, text=True, timeout=600)

    def spent(out: Path) -> float:
        return float(json.loads((out / "manifest.json").read_text())["stats"]["cost"])

    def show(name: str, cap: float, out: Path, bill: float) -> None:
        print(f"{name:9s} cap ${cap:.4f}  summary spent ${spent(out):.4f}  "
              f"provider billed ${bill:.4f}  ({bill / cap:.2f} x cap)")  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        # 1. mixed synchronous + batched
        server.reset()
        server.usage_by_length = True
        prompts = t / "p1.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": f"{CJK * 20} {i}"}) + "\n"
                                   for i in range(40)))  # fmt: skip
        cap = 0.01
        cli("revise", str(prompts), "--model", "openrouter/responder", "--critic-model",
            "openai/critic", "--rounds", "1", "--max-tokens", "200", "--out", str(t / "o1"),
            "--batch-api", "--price", "1,1", "--max-cost", str(cap), "--concurrency", "4",
            "--cache-path", str(t / "c1"))  # fmt: skip
        show("mixed", cap, t / "o1", billed(1.0, {"critic"}))
        # 2. prompt-heavy CJK batch judge
        server.reset()
        server.usage_by_length = True
        server.responder = lambda body, rng: "A"
        pairs = t / "pairs.jsonl"
        pairs.write_text("".join(json.dumps({"prompt": f"{CJK} {i}", "response_a": CJK * 70,
                                             "response_b": CJK * 70 + "。"}) + "\n"
                                 for i in range(20)))  # fmt: skip
        cap = 0.01
        cli("judge", str(pairs), "--judge-model", "openai/j", "--mode", "letter", "--out",
            str(t / "o2"), "--batch-api", "--price", "1,1", "--max-cost", str(cap),
            "--cache-path", str(t / "c2"))  # fmt: skip
        show("judge", cap, t / "o2", billed(1.0, {"j"}))
        # 3. a batch reopened after kill -9
        server.reset()
        server.usage_by_length = True
        prompts = t / "p3.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n"
                                   for i in range(8)))  # fmt: skip
        cap = 0.003
        common = ["generate", str(prompts), "--model", "openai/m", "--out", str(t / "o3"),
                  "--batch-api", "--price", "10,10", "--max-tokens", "100", "--max-cost",
                  str(cap), "--cache-path", str(t / "c3")]  # fmt: skip
        server.batch_hold = True
        proc = subprocess.Popen([sys.executable, "-m", "cai_kit", *common, "--limit", "4", "-q"],
                                env=env, cwd=code, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.time() + 60
        while time.time() < deadline and server.batch_polls < 2:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        server.batch_hold = False
        cli(*common)
        show("reopened", cap, t / "o3", billed(10.0, {"m"}))


if __name__ == "__main__":
    main()
