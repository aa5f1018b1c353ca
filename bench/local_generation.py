"""Benchmark: a 16-prompt, 1-round `revise` on the embedded model, batched vs one at a time.

    python bench/local_generation.py [--prompts 16] [--max-tokens 48] [--threads N]

Measured in one run, on the same prompts, each path from a clean call cache:
  - today's path: `local` with parallel=1, llama.cpp answering one call at a time (Q4_1);
  - the batched path jobs now take on `local`: concurrent calls decoded together in one
    llama.cpp context (up to 16 conversations per step, on the Q8_0 copy, with KV-cache
    prefix reuse across a row's calls).
Each line prints the job's wall-clock seconds (model load included), the tokens generated,
and the speed-up of the batched path over today's. Ratios count only within one run; the
load average is printed with them (this machine is shared).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def revise_once(
    parallel: int, n_prompts: int, max_tokens: int, out: Path
) -> tuple[float, int, int]:
    from cai_kit.constitution import load_constitution
    from cai_kit.engine import EngineConfig
    from cai_kit.llm.base import GenParams
    from cai_kit.llm.embedded import gguf_path
    from cai_kit.llm.local import LlamaCppBackend
    from cai_kit.prompts import load_prompts
    from cai_kit.stages.revise import ReviseConfig, run_revise

    root = Path(__file__).resolve().parent.parent
    prompts = load_prompts(str(root / "examples" / "red_team_prompts.jsonl"), limit=n_prompts)
    cfg = ReviseConfig(
        constitution=load_constitution("harmless"),
        rounds=1,
        response_params=GenParams(max_tokens=max_tokens),
        critique_params=GenParams(temperature=0.3, max_tokens=max_tokens),
        revision_params=GenParams(temperature=0.3, max_tokens=max_tokens),
    )
    backend = LlamaCppBackend(gguf_path(), parallel=parallel)
    start = time.perf_counter()
    s = run_revise(prompts.records, cfg, responder=backend, critic=backend,
                   models={"policy": "local", "critic": "local"}, out_dir=out,
                   engine_config=EngineConfig(use_cache=False, quiet=True))  # fmt: skip
    elapsed = time.perf_counter() - start
    return elapsed, s.done, s.stats["completion_tokens"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: cores)")
    args = ap.parse_args()
    if args.threads:
        os.environ["CAI_KIT_LLAMA_THREADS"] = str(args.threads)
    from cai_kit.llm.embedded import batch_gguf

    batch_gguf()  # the one-off Q8_0 conversion is not part of the timing
    tmp = Path(tempfile.mkdtemp(prefix="cai-bench-local-"))
    print(f"load average at start: {os.getloadavg()[0]:.2f} (cores: {os.cpu_count()})")
    print(f"revise, {args.prompts} prompts, 1 round, up to {args.max_tokens} new tokens per call")
    print(f"{'path':<40}{'rows':>6}{'tokens':>8}{'seconds':>10}{'tok/s':>8}{'speed-up':>10}")
    base = None
    for label, parallel in (
        ("one at a time (today: parallel=1)", 1),
        ("batched (jobs now: parallel=16)", 16),
    ):
        elapsed, done, tokens = revise_once(
            parallel, args.prompts, args.max_tokens, tmp / str(parallel)
        )
        base = base or elapsed
        print(
            f"{label:<40}{done:>6}{tokens:>8}{elapsed:>10.1f}{tokens / elapsed:>8.1f}{base / elapsed:>9.2f}x"
        )
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
