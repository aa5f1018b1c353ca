"""Benchmark: tokens/s of the embedded model for 16 prompts, batched vs one at a time.

    python bench/local_generation.py [--prompts 16] [--max-tokens 64]

Measured in one run: llama.cpp (the default `local` backend; calls serialise in one thread)
and transformers (`local:transformers`; concurrent calls are micro-batched into one
`generate`), each one prompt at a time and all 16 submitted at once. Ratios are against
transformers one-at-a-time measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from cai_kit.llm import GenParams, get_backend


async def _measure(
    model: str, prompts: list[list[dict[str, str]]], params: GenParams, batched: bool
) -> tuple[float, int]:
    backend = get_backend(model)
    try:
        await backend.chat(prompts[0], params.replace(max_tokens=4))  # load + warm up
        start = time.perf_counter()
        if batched:
            outs = await asyncio.gather(*(backend.chat(p, params) for p in prompts))
        else:
            outs = [await backend.chat(p, params) for p in prompts]
        elapsed = time.perf_counter() - start
        return elapsed, sum(o.usage.completion_tokens for o in outs)
    finally:
        await backend.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    topics = [
        "tea",
        "rain",
        "maps",
        "bees",
        "clocks",
        "salt",
        "owls",
        "kites",
        "glass",
        "moss",
        "trains",
        "ink",
        "wolves",
        "bread",
        "tides",
        "stars",
    ]
    prompts = [
        [{"role": "user", "content": f"Write three sentences about {topics[i % len(topics)]}."}]
        for i in range(args.prompts)
    ]
    # min_tokens is not a portable knob: ignore EOS effects by reporting tokens actually generated
    params = GenParams(temperature=0.0, max_tokens=args.max_tokens, seed=0)
    rows = []
    for model in ("local:transformers", "local"):
        for batched in (False, True):
            elapsed, tokens = asyncio.run(_measure(model, prompts, params, batched))
            rows.append(
                (
                    model,
                    "batched" if batched else "one at a time",
                    tokens,
                    elapsed,
                    tokens / elapsed,
                )
            )
    base = rows[0][4]
    print(f"{args.prompts} prompts, up to {args.max_tokens} new tokens each, greedy")
    print(
        f"{'backend':<20}{'mode':<16}{'tokens':>8}{'seconds':>10}{'tok/s':>9}{'vs hf 1-by-1':>14}"
    )
    for model, mode, tokens, elapsed, tps in rows:
        print(f"{model:<20}{mode:<16}{tokens:>8}{elapsed:>10.2f}{tps:>9.1f}{tps / base:>13.2f}x")
    hf_ratio = rows[1][4] / rows[0][4]
    print(
        f"transformers batched / one-at-a-time: {hf_ratio:.2f}x; llama.cpp / transformers batched: {rows[2][4] / rows[1][4]:.2f}x"
    )


if __name__ == "__main__":
    main()
