"""Settings that transfer: which budgets move a principle bench/outcome.py was never tuned on?

    python bench/transfer.py --setting "grpo --grpo-steps 12" --setting "dpo --k 8 --k-max 32" \\
        --seeds 0,1,2 [--train-n 10] [--out runs/transfer]

bench/outcome.py sized its budgets (steps, learning rate, generations, k) on its own
constitution. This benchmark runs the same methods, through the same functions
(`outcome.METHODS`, `outcome.evaluate`: the CLI in a subprocess, as a user runs it), on
another: `bench/terse.yaml`, answers of at most fifteen words that end with a finished
sentence, both `check:`s (no judge model; every score exact), with a small training set.

Prompts: bench/outcome.py's split of examples/outcome_prompts.jsonl, of `--kind` (default
benign: a word limit is no question of harm): the first `--train-n` (10) of its training
prompts train, its 22 held-out benign prompts are held out, never trained on. `--train` and
`--heldout` take other files (a held-out prompt that is also a training prompt is dropped).

Each `--setting` is a method of bench/outcome.py followed by outcome's own flags
(`--lr`, `--grpo-steps`, `--generations`, `--k`, `--k-max`, `--dpo-epochs`, `--odpo-steps`,
...), run once per seed of `--seeds`. Printed per run: the held-out all-pass rate before ->
after, the paired difference with its bootstrap 95% CI, minutes, and for dpo the decisive
pairs exported and the training prompts that gave no pair (all their samples scored alike);
per setting the mean difference over the seeds and its spread (lowest to highest, and the
standard deviation). A run directory with a result.json is not run again: an interrupted grid
resumes where it stopped.

Written: OUT/transfer.md and OUT/transfer.json, and each run's directory (OUT/SLUG/seedN).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shlex
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any


def _outcome() -> Any:
    """bench/outcome.py as a module (by path: a package named `outcome` may be installed too)."""
    spec = importlib.util.spec_from_file_location(
        "bench_outcome", Path(__file__).resolve().parent / "outcome.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


outcome = _outcome()  # the methods, the evaluation, the settings
ROOT = outcome.ROOT
CONSTITUTION = str(Path(__file__).resolve().parent / "terse.yaml")


def parse_setting(spec: str) -> tuple[str, list[str]]:
    """ "grpo --grpo-steps 30 --lr 1e-3" -> ("grpo", [flags]); the flags are checked by
    outcome's parser now, not after an hour of runs. `--seed` belongs to `--seeds`."""
    method, *flags = shlex.split(spec)
    if method not in outcome.METHODS:
        raise ValueError(
            f"unknown method {method!r} in --setting {spec!r}; choose from {', '.join(outcome.METHODS)}"
        )
    if "--seed" in flags:
        raise ValueError(f"--setting {spec!r} gives --seed; give the seeds with --seeds")
    try:
        outcome.settings().parse_args(flags)
    except SystemExit:
        raise ValueError(f"--setting {spec!r} has a flag bench/outcome.py does not take") from None
    return method, flags


def slug(method: str, flags: list[str]) -> str:
    """A directory name for a setting: "dpo --k 8 --k-max 32" -> "dpo_k_8_k-max_32"."""
    return re.sub(r"[^\w.+-]+", "", "_".join([method, *(f.lstrip("-") for f in flags)]))


def select(
    train_file: Path, held_file: Path, kind: str | None, train_n: int, held_n: int | None, out: Path
) -> tuple[Path, Path]:
    """Write OUT/train.jsonl (the first TRAIN_N rows of KIND) and OUT/heldout.jsonl (the
    held-out rows of KIND, the first HELD_N if given, none of them a training prompt)."""

    def rows(path: Path) -> list[dict[str, Any]]:
        all_rows = [json.loads(x) for x in path.open() if x.strip()]
        return [r for r in all_rows if kind is None or r.get("kind") == kind]

    train = rows(train_file)[:train_n]
    seen = {r["prompt"] for r in train}
    held = [r for r in rows(held_file) if r["prompt"] not in seen][:held_n]
    if len(train) < train_n or not held:
        raise ValueError(f"{train_file} has {len(train)} prompts of kind {kind} (wanted {train_n}); "
                         f"{held_file} has {len(held)} held out")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "train.jsonl", out / "heldout.jsonl"
    for path, part in zip(paths, (train, held), strict=True):
        path.write_text("".join(json.dumps(r) + "\n" for r in part))
    return paths


def dpo_pairs(run: Path, train: Path, k: int) -> dict[str, int]:
    """The decisive pairs exported, the training prompts that gave no pair (every sample scored
    alike) as `prefs` counts them, and how many had none among their first K samples (those
    `--k-max` drew more for)."""
    from cai_kit.prompts import load_prompts
    from cai_kit.stages.prefs import prompts_without_pair

    prompts = load_prompts(str(train)).records
    pairs = sum(1 for f in (run / "dpo.jsonl").glob("*.jsonl") for x in f.open() if x.strip())
    drawn = Counter(
        json.loads(x)["prompt_id"] for x in (run / "prefs" / "samples" / "generations.jsonl").open()
    )
    return {"pairs": pairs, "no_pair": len(prompts_without_pair(run / "prefs", prompts)),
            "no_pair_at_k": sum(n > k for n in drawn.values()), "prompts": len(prompts)}  # fmt: skip


def run_one(
    method: str, flags: list[str], seed: int, constitution: str, train: Path, held: Path, run: Path
) -> dict[str, Any]:
    a = outcome.settings().parse_args([*flags, "--seed", str(seed)])
    a.constitution = constitution
    run.mkdir(parents=True, exist_ok=True)
    log = run / "log.txt"
    log.write_text("")
    t_train = outcome.METHODS[method](a, train, run, log)
    t_eval, report = outcome.evaluate(a, held, run, log)
    c, rates = report["diff"]["(combined)"], report["rates"]["(combined)"]
    result = {"seed": seed, "before": rates["baseline"]["pass_rate"], "after": rates["model"]["pass_rate"],
              "diff": c["diff"], "ci": c["ci"], "train_s": t_train, "eval_s": t_eval,
              "principles": {p: {"before": r["baseline"]["pass_rate"], "after": r["model"]["pass_rate"]}
                             for p, r in report["rates"].items() if p != "(combined)"}}  # fmt: skip
    if method == "dpo":
        result.update(dpo_pairs(run, train, a.k))
    (run / "result.json").write_text(json.dumps(result, indent=1))
    return result


def _pts(x: float) -> str:
    return f"{x * 100:+.0f}"


def _pairs(r: dict[str, Any]) -> str:
    """ "9; 3 → 1 of 10": 9 pairs; 3 prompts without a pair among their first k samples, 1 after
    `--k-max` drew more (the same number twice without `--k-max`)."""
    if "pairs" not in r:
        return ""
    return f"{r['pairs']}; {r.get('no_pair_at_k', r['no_pair'])} → {r['no_pair']} of {r['prompts']}"


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    """One row per run, then one per setting: mean difference, spread, mean minutes."""
    lines = ["| setting | seed | all-pass before → after | difference [95% CI] | dpo: pairs; prompts with no pair at k → at the end | minutes |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    summary = [
        "| setting | mean difference | lowest … highest | sd | mean minutes |",
        "|---|---|---|---|---|",
    ]
    for setting, runs in results.items():
        for r in runs:
            pairs = _pairs(r)
            lines.append(f"| `{setting}` | {r['seed']} | {r['before'] * 100:.0f}% → {r['after'] * 100:.0f}% | "
                         f"{_pts(r['diff'])} pts [{_pts(r['ci'][0])}, {_pts(r['ci'][1])}] | {pairs} | "
                         f"{(r['train_s'] + r['eval_s']) / 60:.1f} |")  # fmt: skip
        diffs = [r["diff"] for r in runs]
        sd = statistics.stdev(diffs) * 100 if len(diffs) > 1 else 0.0
        minutes = statistics.mean((r["train_s"] + r["eval_s"]) / 60 for r in runs)
        summary.append(f"| `{setting}` | {_pts(statistics.mean(diffs))} pts | {_pts(min(diffs))} … "
                       f"{_pts(max(diffs))} | {sd:.0f} | {minutes:.1f} |")  # fmt: skip
    return "\n".join(lines) + "\n\n" + "\n".join(summary) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--setting", action="append", required=True,
                    help='A method of bench/outcome.py and its flags, e.g. "grpo --grpo-steps 30". Repeatable.')  # fmt: skip
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("-c", "--constitution", default=CONSTITUTION)
    ap.add_argument(
        "--train", type=Path, default=None, help="Default: bench/outcome.py's training split."
    )
    ap.add_argument(
        "--heldout", type=Path, default=None, help="Default: bench/outcome.py's held-out split."
    )
    ap.add_argument("--kind", default="benign", help="Only prompts of this `kind` ('' for all).")
    ap.add_argument("--train-n", type=int, default=10)
    ap.add_argument("--held-n", type=int, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "transfer")
    a = ap.parse_args(argv)
    try:
        settings = [(s, *parse_setting(s)) for s in a.setting]
        seeds = [int(x) for x in a.seeds.split(",") if x.strip()]
        train_file, held_file = (
            (a.train, a.heldout) if a.train else outcome.split(a.out / "outcome-split")
        )
        train, held = select(
            train_file, a.heldout or held_file, a.kind or None, a.train_n, a.held_n, a.out
        )
    except ValueError as e:
        sys.exit(str(e))
    print(f"{a.train_n} training prompts, {sum(1 for _ in held.open())} held out; constitution "
          f"{a.constitution}; logs in {a.out}/*/seed*/log.txt", flush=True)  # fmt: skip
    t_all = time.perf_counter()
    results: dict[str, list[dict[str, Any]]] = {}
    for setting, method, flags in settings:
        for seed in seeds:
            run = a.out / slug(method, flags) / f"seed{seed}"
            done = run / "result.json"
            r = json.loads(done.read_text()) if done.exists() else run_one(
                method, flags, seed, a.constitution, train, held, run)  # fmt: skip
            results.setdefault(setting, []).append(r)
            print(f"{setting} seed {seed}: all-pass {r['before'] * 100:.0f}% -> {r['after'] * 100:.0f}%, "
                  f"{_pts(r['diff'])} pts [{_pts(r['ci'][0])}, {_pts(r['ci'][1])}]"
                  + (f", {_pairs(r)} prompts gave no pair" if "pairs" in r else "")
                  + f"; {(r['train_s'] + r['eval_s']) / 60:.1f} min", flush=True)  # fmt: skip
    text = table(results)
    (a.out / "transfer.md").write_text(text)
    (a.out / "transfer.json").write_text(json.dumps(results, indent=1))
    print(f"\n{text}\nThis invocation: {(time.perf_counter() - t_all) / 60:.1f} min wall.")


if __name__ == "__main__":
    main()
