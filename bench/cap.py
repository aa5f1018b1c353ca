"""Measure: what `--max-cost` lets a multi-job command, or a command whose calls time out,
really be billed, against the cap.

    python bench/cap.py [--code DIR]   # DIR: the cai_kit checkout to run (default: here)

The test suite's scripted server runs in this process with `usage_by_length` (every answer its
whole max_tokens, the worst case a cap must hold) and bills, as a provider does, every call it
finished, also one whose client had given up (a timeout). The commands run through the CLI in
subprocesses at `--price 1000,1000` (a few calls reach a cap). Per case it prints the cap, what
the provider billed, the exit code and whether the summary counts calls sent and unanswered:
  1. prefs: sampling + judging (5 prompts, k 2, all pairs) under one cap;
  2. prefs: the cap stops sampling (30 prompts): does judging start anyway?
  3. expand: three rounds of generation (a yield of one prompt per call);
  4. infer: proposals, then tests of the candidates;
  5. timeout: the provider answers in 1.5 s, `--timeout 0.5 --max-retries 2`;
  6. above --price: the provider reports (and bills) $0.05 a call where --price says ~$0.02.
Run it with `--code` pointing at an export of an older commit to compare (`git archive`); the
old behaviour is also one ledger per job.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--code", type=Path, default=ROOT)
    args = ap.parse_args()
    from cai_kit.stages.expand import EXPAND_SYSTEM
    from tests.fixtures.fault_server import FaultServer, default_reply, start_fault_server
    from tests.test_infer import _pairs, hidden_rule_model

    server = FaultServer()
    start_fault_server(server)
    code = args.code.resolve()
    env = {**os.environ, "PYTHONPATH": str(code), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    tmp = Path(tempfile.mkdtemp(prefix="cai-cap-"))
    env["CAI_KIT_CACHE_DIR"] = str(tmp / "cache")

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "cai_kit", *argv, "-q", "--price", "1000,1000",
               "--api-base", server.base_url]  # fmt: skip
        return subprocess.run(cmd, env=env, cwd=code, capture_output=True, text=True, timeout=300)

    def prompts(n: int) -> str:
        path = tmp / f"p{n}.jsonl"
        path.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(n)))
        return str(path)

    def judge_says_a(body: dict[str, Any], rng: random.Random) -> str:
        return "A" if body["model"] == "jud" else default_reply(body, rng)

    def one_per_call(body: dict[str, Any], rng: random.Random) -> str:
        if body["messages"][0]["content"] == EXPAND_SYSTEM:
            return " ".join(rng.choice(["how", "why", "cats", "maps", "rain"]) for _ in range(8)) + "?"  # fmt: skip
        return default_reply(body, rng)

    seed = tmp / "seed.jsonl"
    seed.write_text("".join(json.dumps({"prompt": f"seed prompt number {i}?"}) + "\n" for i in range(6)))  # fmt: skip
    pairs = tmp / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in _pairs(12)))

    def prefs(n: int, cap: float, out: str) -> list[str]:
        return ["prefs", prompts(n), "-p", "pol", "-j", "jud", "--mode", "letter", "--k", "2",
                "--pairs", "all", "--max-tokens", "16", "--concurrency", "1",
                "--out", str(tmp / out), "--max-cost", str(cap)]  # fmt: skip

    cases: list[tuple[str, float, Any, list[str], str]] = [
        ("prefs: sampling + judging", 0.6, judge_says_a, prefs(5, 0.6, "prefs1"), "tokens"),
        (
            "prefs: judging after a sampling stop",
            0.4,
            judge_says_a,
            prefs(30, 0.4, "prefs2"),
            "tokens",
        ),
        (
            "expand: 3 rounds",
            1.0,
            one_per_call,
            [
                "prompts",
                "expand",
                str(seed),
                "--model",
                "teacher",
                "--out",
                str(tmp / "exp"),
                "--n",
                "12",
                "--per-call",
                "4",
                "--shots",
                "2",
                "--max-tokens",
                "24",
                "--concurrency",
                "2",
                "--max-rounds",
                "3",
                "--max-cost",
                "1.0",
            ],
            "tokens",
        ),
        (
            "infer: propose + test",
            4.0,
            hidden_rule_model,
            [
                "constitution",
                "infer",
                str(pairs),
                "--model",
                "teacher",
                "--out",
                str(tmp / "i.yaml"),
                "--concurrency",
                "2",
                "--max-cost",
                "4",
            ],
            "tokens",
        ),
        (
            "timeout 0.5 s, answers in 1.5 s",
            0.07,
            None,
            [
                "generate",
                prompts(4),
                "--model",
                "m",
                "--out",
                str(tmp / "gen"),
                "--timeout",
                "0.5",
                "--max-retries",
                "2",
                "--max-tokens",
                "16",
                "--max-cost",
                "0.07",
            ],
            "tokens",
        ),
        (
            "usage.cost above --price",
            0.9,
            None,
            [
                "generate",
                prompts(40),
                "--model",
                "m",
                "--out",
                str(tmp / "gen2"),
                "--concurrency",
                "4",
                "--max-tokens",
                "16",
                "--max-cost",
                "0.9",
            ],
            "reported",
        ),
    ]
    print(f"code: {code}")
    print(
        f"{'case':<38} {'cap':>6} {'billed':>8} {'exit':>4}  calls billed  sent-may-be-billed shown"
    )
    for name, cap, responder, argv, bill in cases:
        server.reset()
        server.usage_by_length = bill == "tokens"
        if responder is not None:
            server.responder = responder
        if name.startswith("timeout"):
            server.latency_s = 1.5
        if bill == "reported":
            server.report_cost, server.latency_s = 0.05, 0.05
        r = cli(*argv)
        time.sleep(1.7 if name.startswith("timeout") else 0.0)  # calls given up on still finish
        billed = server.billed_reported if bill == "reported" else server.billed_usd(1000, 1000)
        shown = "sent, may be billed" in " ".join((r.stdout + r.stderr).split())
        over = "  OVER THE CAP" if billed > cap + 1e-9 else ""
        print(f"{name:<38} {cap:>6.2f} {billed:>8.4f} {r.returncode:>4}  {server.billed_calls:>12}"
              f"  {'yes' if shown else 'no':>22}{over}")  # fmt: skip


if __name__ == "__main__":
    main()
