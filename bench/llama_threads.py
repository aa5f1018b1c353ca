"""The embedded model's decoding speed while something else uses the cores, with llama.cpp's
OpenMP threads spinning (OMP_WAIT_POLICY=ACTIVE, the runtime's own behaviour) or sleeping
while they wait (PASSIVE, what `cai_kit.llm.embedded.import_llama_cpp` sets).

    python bench/llama_threads.py [--tokens 64] [--busy 1]

Each case runs in a fresh process (the policy is read when the OpenMP runtime loads), with
`--busy` processes spinning on the CPU beside it (a trainer, a second model, other tests), and
prints tokens per second and the ratio of the two.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import time

CHILD = """
import sys, time
from cai_kit.llm.embedded import gguf_path, import_llama_cpp
llm = import_llama_cpp().Llama(str(gguf_path()), n_ctx=512, verbose=False, n_threads=os.cpu_count())
t = time.perf_counter()
out = llm.create_completion("Once upon a time", max_tokens=int(sys.argv[1]), temperature=0)
print(out["usage"]["completion_tokens"] / (time.perf_counter() - t))
"""


def _spin(stop: float) -> None:
    while time.monotonic() < stop:
        pass


def rate(policy: str, tokens: int, busy: int) -> float:
    stop = time.monotonic() + 600
    spinners = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(busy)]
    for p in spinners:
        p.start()
    try:
        env = {**os.environ, "OMP_WAIT_POLICY": policy}
        code = "import os\n" + CHILD
        out = subprocess.run([sys.executable, "-c", code, str(tokens)], env=env,
                             capture_output=True, text=True, check=True)  # fmt: skip
        return float(out.stdout.strip().splitlines()[-1])
    finally:
        for p in spinners:
            p.terminate()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--busy", type=int, default=1, help="CPU-bound processes running beside it")
    a = ap.parse_args()
    active = rate("ACTIVE", a.tokens, a.busy)
    passive = rate("PASSIVE", a.tokens, a.busy)
    print(f"{os.cpu_count()} cores, {a.busy} busy process(es) beside, {a.tokens} tokens:")
    print(f"  spinning (ACTIVE):  {active:6.1f} tokens/s")
    print(f"  sleeping (PASSIVE): {passive:6.1f} tokens/s  ({passive / active:.1f}x)")


if __name__ == "__main__":
    main()
