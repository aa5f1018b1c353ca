"""Benchmark: resuming a large finished job, as a user does after a crash or to add prompts.

    python bench/resume.py [--rows 20000] [--kib 15]

Writes a finished `revise` output of `--rows` records of about `--kib` KiB each (a 2-round
trace with long answers), then, each in its own subprocess so that peak memory is the job's:
  - baseline: reading the whole output as records (`io.latest_by_id`, what `export` needs and
    what a resumed job read before to find its done ids);
  - cai-kit: `cai-kit revise PROMPTS --out RUN --rounds 2 --dry-run` over that output: the
    resume scan of a real job (ids and statuses only), then its dry-run plan.
Printed: wall time and peak RSS of each, and their ratios. Goal: the resume's memory does not
grow with the size of the records (only with the number of ids).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def measure(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one subprocess, run from the repository."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return time.monotonic() - start, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--kib", type=float, default=15.0, help="about this much per record")
    args = ap.parse_args()

    from cai_kit.records import CritiqueStep, Message, PromptRecord, RevisionRecord

    print(f"load: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prompts, run = work / "prompts.jsonl", work / "run"
        run.mkdir()
        text = ("lorem ipsum dolor sit amet " * int(args.kib * 1024 / 27 / 6))[:-1]
        with prompts.open("w") as pf, (run / "revisions.jsonl").open("w") as rf:
            for i in range(args.rows):
                msgs = [Message(role="user", content=f"Question {i}: how do I stay safe online?")]
                pf.write(json.dumps({"prompt": msgs[0].content}) + "\n")
                asked = [*msgs, Message(role="assistant", content=text)]
                steps = [CritiqueStep(round=r, principle_id="p", critique_messages=asked,
                                      critique=text, revision_messages=asked, revision=text)
                         for r in range(2)]  # fmt: skip
                rec = RevisionRecord(id=f"{i:064x}", prompt_id=PromptRecord.make_id(msgs),
                                     messages=msgs, initial_response=text, steps=steps,
                                     final_response=text)  # fmt: skip
                rf.write(rec.model_dump_json() + "\n")
        size = (run / "revisions.jsonl").stat().st_size / 2**20
        print(f"a finished output of {args.rows} records, {size:.0f} MiB")
        base_t, base_m = measure([sys.executable, "-c",
                                  "import sys; from cai_kit.io import latest_by_id; "
                                  "from cai_kit.records import RevisionRecord; "
                                  "latest_by_id(sys.argv[1], RevisionRecord)",
                                  str(run / "revisions.jsonl")])  # fmt: skip
        ours_t, ours_m = measure([sys.executable, "-m", "cai_kit", "revise", str(prompts),
                                  "--model", "m", "--api-base", "http://127.0.0.1:9/v1",
                                  "--rounds", "2", "--out", str(run), "--dry-run", "-q"])  # fmt: skip
        print(f"baseline, every record read (latest_by_id): {base_t:.2f} s, {base_m:.0f} MiB")
        print(f"cai-kit revise --dry-run over it (resume scan + plan): {ours_t:.2f} s, "
              f"{ours_m:.0f} MiB")  # fmt: skip
        print(f"ratio cai-kit / baseline: time {ours_t / base_t:.2f}, memory {ours_m / base_m:.2f}")


if __name__ == "__main__":
    main()
