"""Outcome: does the loop move a model toward a constitution on prompts it never trained on?

    python bench/outcome.py [--methods dpo,grpo,online-dpo] [--out runs/outcome]

The student is the embedded SmolLM2-135M-Instruct; the constitution is `brief-and-safe`
(constitutions/brief-and-safe.yaml): answers of at most 200 characters, at least three words,
no links, a refusal opening exactly for clearly harmful requests. Every principle is a program
(`check:`), so no judge model is needed and every score is exact. A response *passes* when all
four hold (`all-pass`). The base model mostly fails: it answers at length, and never refuses.

Prompts: examples/outcome_prompts.jsonl (32 harmful, 64 benign, in triples of one harmful and
two benign). Every third triple is held out (33 prompts: 11 harmful, 22 benign), never trained
on; the other 63 are the training prompts. Each method then runs through the CLI in a
subprocess, as a user runs it:

  dpo         `prefs --label rubric --k 8` (the student's own samples, scored by the rubric;
              best vs worst), `export dpo`, `train dpo` (LoRA)
  grpo        `train grpo --reward rubric` (LoRA)
  online-dpo  `train online-dpo --reward rubric` (two samples per prompt per step, the
              higher rubric score chosen; LoRA)

and `eval rubric --model hf:OUT --baseline local:transformers` on the held-out prompts
(greedy, so before and after are each one answer per prompt, through the same transformers
weights). Printed per method: the all-pass rate before and after with the paired difference
and its bootstrap 95% CI, the win rate against the base on the combined score with its CI,
each principle's pass rate before -> after, refusals of *benign* prompts before -> after
(the side that must not collapse into refusals), and minutes of wall time. The rubric reward
during training is the principles' `mean` (a denser signal than all-pass: a long answer that
keeps the other principles still scores 0.75, not 0).

Every call is made afresh (`--no-cache`), so the minutes are what a first run costs.
Written: OUT/outcome.md and OUT/outcome.json, and each method's run directory.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cai_kit.checks import refuses_only_harmful  # noqa: E402

CONSTITUTION = "brief-and-safe"
PRINCIPLES = ["brief", "says-something", "no-urls", "refuses-only-harmful"]


def _cli(args: list[str], log: Path, extra_env: dict[str, str] | None = None) -> float:
    """Run `cai-kit ARGS`, its output to LOG; the wall seconds. Exits on failure.
    (bench/recipe.py runs its stages through this too.)"""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           **(extra_env or {})}  # fmt: skip
    t0 = time.perf_counter()
    with log.open("a") as fh:
        fh.write(f"$ cai-kit {' '.join(args)}\n")
        fh.flush()
        proc = subprocess.run([sys.executable, "-m", "cai_kit", *args], env=env, stdout=fh,
                              stderr=subprocess.STDOUT, text=True)  # fmt: skip
    if proc.returncode != 0:
        sys.exit(f"`cai-kit {' '.join(args)}` failed (exit {proc.returncode}); see {log}")
    return time.perf_counter() - t0


def split(out: Path) -> tuple[Path, Path]:
    rows = [json.loads(x) for x in (ROOT / "examples" / "outcome_prompts.jsonl").open()]
    held = [r for i, r in enumerate(rows) if (i // 3) % 3 == 0]
    train = [r for i, r in enumerate(rows) if (i // 3) % 3 != 0]
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "train.jsonl", out / "heldout.jsonl"
    for path, part in zip(paths, (train, held), strict=True):
        path.write_text("".join(json.dumps(r) + "\n" for r in part))
    return paths


def train_dpo(a: argparse.Namespace, train: Path, run: Path, log: Path) -> float:
    prefs = run / "prefs"
    k_max = ["--k-max", str(a.k_max)] if a.k_max else []
    t = _cli(["prefs", str(train), "--policy-model", "local", "-c", a.constitution, "--k", str(a.k), *k_max,
              "--label", "rubric", "--rubric-combine", "mean", "--temperature", "1.0",
              "--max-tokens", str(a.max_tokens), "--seed", str(a.seed), "--out", str(prefs), "--no-cache", "-q"], log)  # fmt: skip
    t += _cli(["export", "dpo", str(prefs), "--out", str(run / "dpo.jsonl")], log)
    t += _cli(["train", "dpo", str(run / "dpo.jsonl"), "--model", "local", "--out", str(run / "model"),
               "--epochs", str(a.dpo_epochs), "--batch-size", "4", "--lr", str(a.lr), "--max-length", "128",
               "--seed", str(a.seed)], log)  # fmt: skip
    return t


def train_grpo(a: argparse.Namespace, train: Path, run: Path, log: Path) -> float:
    return _cli(["train", "grpo", str(train), "--model", "local", "--reward", "rubric", "--rubric-combine", "mean",
                 "-c", a.constitution, "--max-steps", str(a.grpo_steps), "--num-generations", str(a.generations),
                 "--batch-size", str(a.generations), "--max-completion-length", str(a.max_tokens),
                 "--lr", str(a.lr), "--seed", str(a.seed), "--out", str(run / "model")], log)  # fmt: skip


def train_online_dpo(a: argparse.Namespace, train: Path, run: Path, log: Path) -> float:
    return _cli(["train", "online-dpo", str(train), "--model", "local", "--reward", "rubric",
                 "--rubric-combine", "mean", "-c", a.constitution, "--steps", str(a.odpo_steps),
                 "--batch-size", str(a.odpo_batch), "--max-new-tokens", str(a.max_tokens), "--lr", str(a.lr),
                 "--seed", str(a.seed), "--out", str(run / "model")], log)  # fmt: skip


METHODS = {"dpo": train_dpo, "grpo": train_grpo, "online-dpo": train_online_dpo}


def evaluate(
    a: argparse.Namespace, held: Path, run: Path, log: Path
) -> tuple[float, dict[str, Any]]:
    ev = run / "eval"
    t = _cli(["eval", "rubric", "--model", f"hf:{run / 'model'}", "--baseline", "local:transformers",
              "-c", a.constitution, "--prompts", str(held), "--max-tokens", str(a.max_tokens),
              "--seed", str(a.seed), "--out", str(ev), "--no-cache", "-q"], log)  # fmt: skip
    report = json.loads((ev / "report.json").read_text())
    kinds = {json.loads(x)["prompt"]: json.loads(x)["kind"] for x in held.open()}
    benign_refusals = {"model": 0, "baseline": 0}
    benign = 0
    for line in (ev / "rubric.jsonl").open():
        rec = json.loads(line)
        prompt = rec["messages"][-1]["content"]
        if rec["status"] == "ok" and kinds.get(prompt) == "benign":
            benign += rec["metadata"]["role"] == "model"
            benign_refusals[rec["metadata"]["role"]] += not refuses_only_harmful(
                prompt, rec["response"]
            )
    report["benign_refusals"] = {**benign_refusals, "n": benign}
    return t, report


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def settings() -> argparse.ArgumentParser:
    """The training and evaluation settings every method reads (bench/transfer.py varies them)."""
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-4, help="LoRA learning rate of every method.")
    ap.add_argument("--k", type=int, default=8, help="dpo: samples per training prompt.")
    ap.add_argument("--dpo-epochs", type=float, default=3)
    ap.add_argument("--grpo-steps", type=int, default=12)
    ap.add_argument("--generations", type=int, default=8, help="grpo: completions per prompt.")
    ap.add_argument("--odpo-steps", type=int, default=12)
    ap.add_argument("--odpo-batch", type=int, default=8, help="online-dpo: prompts per step.")
    ap.add_argument("--k-max", type=int, default=None,
                    help="dpo: a prompt whose k samples all score alike draws more, up to this many.")  # fmt: skip
    ap.add_argument("--seed", type=int, default=0)
    # a constitution's name or YAML path; bench/transfer.py sets its own
    ap.set_defaults(constitution=CONSTITUTION)
    return ap


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], parents=[settings()])
    ap.add_argument("--methods", default="dpo,grpo,online-dpo")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "outcome")
    a = ap.parse_args()
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        sys.exit(f"unknown --methods {unknown}; choose from {', '.join(METHODS)}")

    train, held = split(a.out)
    print(f"{sum(1 for _ in train.open())} training prompts, {sum(1 for _ in held.open())} held out; "
          f"constitution {CONSTITUTION}; logs in {a.out}/*/log.txt", flush=True)  # fmt: skip
    t_all = time.perf_counter()
    results: dict[str, Any] = {}
    for m in methods:
        run = a.out / m
        run.mkdir(parents=True, exist_ok=True)
        log = run / "log.txt"
        log.write_text("")
        t_train = METHODS[m](a, train, run, log)
        t_eval, report = evaluate(a, held, run, log)
        results[m] = {"train_s": t_train, "eval_s": t_eval, **report}
        c = report["diff"]["(combined)"]
        w = report["win_rate"]
        print(f"{m}: all-pass {c['diff'] * 100:+.0f} pts [{c['ci'][0] * 100:+.0f}, {c['ci'][1] * 100:+.0f}], "
              f"win rate {w['rate']:.2f} [{w['ci'][0]:.2f}, {w['ci'][1]:.2f}]; train {t_train / 60:.1f} min, "
              f"eval {t_eval / 60:.1f} min", flush=True)  # fmt: skip
    total = time.perf_counter() - t_all

    head = ("| method | all-pass before → after | difference [95% CI] | win rate vs base [95% CI] | "
            + " | ".join(PRINCIPLES) + " | benign refused | minutes |")  # fmt: skip
    lines = [f"Held-out prompts: {sum(1 for _ in held.open())}; constitution `{CONSTITUTION}`; "
             "per principle: pass rate before → after.", "", head, "|---" * (len(PRINCIPLES) + 6) + "|"]  # fmt: skip
    for m, r in results.items():
        rates, c, w, br = r["rates"], r["diff"]["(combined)"], r["win_rate"], r["benign_refusals"]
        cells = [f"{_pct(rates[p]['baseline']['pass_rate'])} → {_pct(rates[p]['model']['pass_rate'])}"
                 for p in PRINCIPLES]  # fmt: skip
        lines.append(
            f"| {m} | {_pct(rates['(combined)']['baseline']['pass_rate'])} → "
            f"{_pct(rates['(combined)']['model']['pass_rate'])} | {c['diff'] * 100:+.0f} pts "
            f"[{c['ci'][0] * 100:+.0f}, {c['ci'][1] * 100:+.0f}] | {w['rate']:.2f} [{w['ci'][0]:.2f}, "
            f"{w['ci'][1]:.2f}] | "
            + " | ".join(cells)
            + f" | {br['baseline']} → {br['model']} of {br['n']} | {(r['train_s'] + r['eval_s']) / 60:.1f} |"
        )
    lines += ["", f"Whole benchmark: {total / 60:.1f} min wall on {os.cpu_count()} CPU cores."]
    text = "\n".join(lines) + "\n"
    (a.out / "outcome.md").write_text(text)
    (a.out / "outcome.json").write_text(
        json.dumps({"total_s": total, "methods": results}, indent=1)
    )
    print()
    print(text)


if __name__ == "__main__":
    main()
