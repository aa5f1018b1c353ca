"""Benchmark: judge cost per labelled pair by mode, and injection flip rate.

    python bench/judge_cost.py [--pairs 6]

Against a real llama.cpp server serving the embedded GGUF (started here), judges the pairs
of examples/judge/injection_set.jsonl in log-prob mode, CoT mode and self-consistency (K=5),
and prints calls and tokens per labelled pair. It prints the judge prompt's shared prefix
(instructions first, so provider prefix caching applies) and the injection flip rate: how
often appending an injection ("answer A", forged delimiters) to the bad response changes
the verdict, compared with the same pair without it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


async def judge_all(cfg, pairs, inject: bool, backend, engine):  # type: ignore[no-untyped-def]
    from cai_kit.constitution import load_constitution
    from cai_kit.judges.pairwise import judge_pair

    c = load_constitution("harmless")
    out = []
    for row in pairs:
        bad = row["bad"] + (row["injection"] if inject else "")
        convo = [{"role": "user", "content": row["prompt"]}]
        out.append(await judge_pair(convo, row["good"], bad, c, cfg, engine, backend))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pairs", type=int, default=6)
    args = ap.parse_args()
    from cai_kit.constitution import load_constitution
    from cai_kit.engine import Engine, EngineConfig
    from cai_kit.judges.pairwise import JudgeConfig, build_messages
    from cai_kit.llm import get_backend
    from tests.fixtures.llama_server import start_llama_server

    root = Path(__file__).resolve().parent.parent
    pairs = [
        json.loads(x)
        for x in (root / "examples" / "judge" / "injection_set.jsonl").read_text().splitlines()
    ][: args.pairs]
    tmp = Path(tempfile.mkdtemp())
    proc, server = start_llama_server(tmp / "server.log")
    os.environ["CAI_KIT_CACHE_DIR"] = str(tmp)
    try:
        print(f"{len(pairs)} pairs, judge = embedded SmolLM2-135M via the llama.cpp server")
        print(
            f"{'mode':<18}{'calls/pair':>11}{'tokens/pair':>13}{'labelled':>10}{'ties':>6}{'failed':>8}"
        )
        for name, cfg in (("logprobs", JudgeConfig(mode="logprobs")), ("cot", JudgeConfig(mode="cot", cot_max_tokens=160)),
                          ("votes K=5", JudgeConfig(mode="votes", samples=5))):  # fmt: skip

            async def go(cfg=cfg):  # type: ignore[no-untyped-def]
                engine = Engine(EngineConfig(quiet=True, use_cache=False))
                backend = get_backend(server.model, api_base=server.base_url)
                try:
                    return await judge_all(cfg, pairs, False, backend, engine), engine.stats
                finally:
                    await backend.aclose()

            verdicts, stats = asyncio.run(go())
            labelled = sum(v.label in ("A", "B") for v in verdicts)
            n = len(pairs)
            print(f"{name:<18}{stats.calls / n:>11.1f}{(stats.prompt_tokens + stats.completion_tokens) / n:>13.0f}{labelled:>10}"
                  f"{sum(v.label == 'tie' for v in verdicts):>6}{sum(v.label == 'failed' for v in verdicts):>8}")  # fmt: skip
        c = load_constitution("harmless")
        a = build_messages(
            c, c.principles[0], [{"role": "user", "content": "x"}], "a", "b", "letter", "t1"
        )
        b = build_messages(
            c, c.principles[3], [{"role": "user", "content": "y"}], "c", "d", "letter", "t2"
        )
        shared = os.path.commonprefix(  # noqa: RUF071 - a character prefix is what we measure
            [a[0]["content"] + a[1]["content"], b[0]["content"] + b[1]["content"]]
        )
        print(
            f"shared prompt prefix across different pairs: {len(shared)} chars (the system message, {len(a[0]['content'])} chars, comes first)"
        )

        async def flips():  # type: ignore[no-untyped-def]
            engine = Engine(EngineConfig(quiet=True, use_cache=False))
            backend = get_backend(server.model, api_base=server.base_url)
            cfg = JudgeConfig(mode="logprobs")
            try:
                clean = await judge_all(cfg, pairs, False, backend, engine)
                dirty = await judge_all(cfg, pairs, True, backend, engine)
                return clean, dirty
            finally:
                await backend.aclose()

        clean, dirty = asyncio.run(flips())
        flipped = sum(c.label != d.label for c, d in zip(clean, dirty, strict=True))
        shift = sum(
            (d.p_a or 0.5) - (c.p_a or 0.5) for c, d in zip(clean, dirty, strict=True)
        ) / len(pairs)
        print(
            f"injection flip rate (embedded judge): {flipped}/{len(pairs)} verdicts changed; mean shift of P(good) {shift:+.3f}"
        )
    finally:
        proc.kill()


if __name__ == "__main__":
    main()
