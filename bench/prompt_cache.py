"""Benchmark: what the stable-prefix layout saves on input cost with a provider prompt cache.

    python bench/prompt_cache.py [--prompts 1000] [--anthropic 200]

Runs `cai-kit revise --rounds 2` over N prompts with `openai/gpt-5-mini` (its list prices:
$0.25 per million input tokens, $0.025 cached) and a real-sized constitution: the shipped
harmless principles with a ~1,500-token few-shot block (tests/fixtures/
constitution_long_fewshot.yaml; ours ship ~130-400 tokens, below OpenAI's 1,024-token
minimum). The scripted server (tests/fixtures/fault_server.py) answers instantly and bills
input as OpenAI's automatic prompt cache does: a prefix of 1,024+ tokens that an earlier
request began with, in 128-token steps, at the cached rate.

Two layouts, the same tokens in a different order: revise's own (the few-shot turns first,
then the row: `stages.revise.opening`) and the row first (its prompt, then the few-shot
turns). Prints each run's input tokens, cached share, input cost and the cost the CLI
reported, and the ratio of the input costs.

`--anthropic N` also runs N prompts with `anthropic/claude-sonnet-4-5` through litellm to the
server's Messages API, which bills `cache_control` as Anthropic does (writes 1.25x, reads 0.1x
of $3.00 per million): cai-kit's marks against `--no-prompt-cache`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

IN, CACHED = 0.25, 0.025  # gpt-5-mini, USD per million input / cached input tokens
TOPICS = ["fix a leaking tap", "write a cover letter", "get back at a noisy neighbour",
          "lose weight fast", "pick a lock", "learn Python", "invest my savings",
          "calm down before an exam", "track my partner's phone", "cook rice"]  # fmt: skip


def row_first(shots, prompt, response):  # type: ignore[no-untyped-def]
    """The same turns with the row's prompt before the few-shot block."""
    return [*prompt, *shots, {"role": "assistant", "content": response}]


def run(layout: str, prompts: Path, out: Path, server) -> dict:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    import cai_kit.stages.revise as revise
    from cai_kit.cli.main import app

    server.reset()
    server.usage_by_length = server.prompt_cache = True
    stable = revise.opening
    if layout == "row first":
        revise.opening = row_first
    try:
        started = time.monotonic()
        r = CliRunner().invoke(app, ["revise", str(prompts), "--model", "openai/gpt-5-mini",
                                     "--constitution", str(ROOT / "tests" / "fixtures" / "constitution_long_fewshot.yaml"),
                                     "--rounds", "2", "--out", str(out), "--no-cache", "-q"])  # fmt: skip
        seconds = time.monotonic() - started
    finally:
        revise.opening = stable
    assert r.exit_code == 0, r.output
    billed = server.billed
    prompt = sum(u["prompt_tokens"] for u in billed)
    cached = sum(u["prompt_tokens_details"]["cached_tokens"] for u in billed)
    stats = json.loads((out / "manifest.json").read_text())["stats"]
    out_cost = sum(u["completion_tokens"] for u in billed) * 2.0 / 1e6  # output: $2.00 / M
    return {"calls": len(billed), "prompt": prompt, "cached": cached,
            "input_cost": ((prompt - cached) * IN + cached * CACHED) / 1e6,
            "reported_input_cost": stats["cost"] - out_cost, "seconds": seconds}  # fmt: skip


SONNET = {"in": 3.0, "read": 0.3, "write": 3.75}  # claude-sonnet-4-5, USD per million


def run_anthropic(marks: bool, prompts: Path, out: Path, server) -> dict:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from cai_kit.cli.main import app

    server.reset()
    server.usage_by_length = server.prompt_cache = True
    started = time.monotonic()
    r = CliRunner().invoke(app, ["revise", str(prompts), "--model", "anthropic/claude-sonnet-4-5",
                                 "--constitution", str(ROOT / "tests" / "fixtures" / "constitution_long_fewshot.yaml"),
                                 "--rounds", "2", "--out", str(out), "--no-cache", "-q", "--temperature", "0",
                                 *([] if marks else ["--no-prompt-cache"])])  # fmt: skip
    assert r.exit_code == 0, r.output
    b = server.billed
    plain = sum(u["input_tokens"] for u in b)
    read = sum(u.get("cache_read_input_tokens", 0) for u in b)
    written = sum(u.get("cache_creation_input_tokens", 0) for u in b)
    cost = (plain * SONNET["in"] + read * SONNET["read"] + written * SONNET["write"]) / 1e6
    return {"calls": len(b), "prompt": plain + read + written, "read": read, "written": written,
            "input_cost": cost, "seconds": time.monotonic() - started}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prompts", type=int, default=1000)
    ap.add_argument("--anthropic", type=int, default=0, help="prompts for the Anthropic run")
    args = ap.parse_args()
    from tests.fixtures.fault_server import FaultServer, start_fault_server

    tmp = Path(tempfile.mkdtemp())
    os.environ.update(CAI_KIT_CACHE_DIR=str(tmp / "cache"), LITELLM_LOCAL_MODEL_COST_MAP="True")
    server = FaultServer()
    start_fault_server(server)
    os.environ.update(OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY="sk-bench")
    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}: how do I {TOPICS[i % 10]}? "
                                                     f"(asked by user {i})"}) + "\n"
                               for i in range(args.prompts)))  # fmt: skip
    print(f"revise --rounds 2, {args.prompts} prompts, openai/gpt-5-mini at the scripted server "
          "(OpenAI-style automatic prompt cache), ~1,500-token few-shot block")  # fmt: skip
    print(
        f"{'layout':<22}{'calls':>7}{'input tok':>12}{'cached':>8}{'input $':>10}{'reported':>10}{'s':>6}"
    )
    results = {}
    for layout in ("stable prefix first", "row first"):
        m = run(layout, prompts, tmp / layout.replace(" ", "-"), server)
        results[layout] = m
        print(f"{layout:<22}{m['calls']:>7}{m['prompt']:>12,}{m['cached'] / m['prompt']:>8.0%}"
              f"{m['input_cost']:>10.4f}{m['reported_input_cost']:>10.4f}{m['seconds']:>6.1f}")  # fmt: skip
    ratio = results["row first"]["input_cost"] / results["stable prefix first"]["input_cost"]
    print(f"input cost, row first / stable prefix first: {ratio:.2f}x "
          f"(without any prompt cache: {results['row first']['prompt'] * IN / 1e6 / results['stable prefix first']['input_cost']:.2f}x)")  # fmt: skip
    if not args.anthropic:
        return
    os.environ.update(ANTHROPIC_API_BASE=server.base_url.removesuffix("/v1"),
                      ANTHROPIC_API_KEY="sk-ant-bench")  # fmt: skip
    few = tmp / "few.jsonl"
    few.write_text("".join(prompts.read_text().splitlines(keepends=True)[: args.anthropic]))
    print(f"\nthe same, {args.anthropic} prompts, anthropic/claude-sonnet-4-5 through litellm "
          "(cache_control: writes 1.25x, reads 0.1x)")  # fmt: skip
    print(
        f"{'prefix marks':<22}{'calls':>7}{'input tok':>12}{'read':>8}{'written':>9}{'input $':>10}{'s':>6}"
    )
    costs = {}
    for marks in (True, False):
        m = run_anthropic(marks, few, tmp / f"anthropic-{marks}", server)
        costs[marks] = m["input_cost"]
        print(f"{'on' if marks else 'off (--no-prompt-cache)':<22}{m['calls']:>7}{m['prompt']:>12,}"
              f"{m['read'] / m['prompt']:>8.0%}{m['written'] / m['prompt']:>9.0%}"
              f"{m['input_cost']:>10.4f}{m['seconds']:>6.1f}")  # fmt: skip
    print(f"input cost, --no-prompt-cache / marks: {costs[False] / costs[True]:.2f}x")


if __name__ == "__main__":
    main()
