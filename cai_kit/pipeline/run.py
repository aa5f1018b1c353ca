"""`cai-kit pipeline RECIPE.yaml`: the whole Constitutional AI pipeline from one recipe.

    run = run_pipeline(Path("examples/recipes/local_tiny.yaml"), Path("runs/tiny"))

First the prompts are split: training prompts (`RUN/prompts/train.jsonl`) feed revise, SFT
and DPO; held-out prompts (`RUN/prompts/eval.jsonl`: the recipe's `eval_prompts` file, or a
seeded split of `prompts`) are only ever evaluated on. Then the stages, each the same CLI
command a user would run, in a subprocess (a crash in one never corrupts another), with its
output in `RUN/logs/NAME.log` and one progress line on screen:

    revise -> export sft -> train sft -> preference pairs -> train dpo -> eval winrate
           -> revise the held-out prompts -> implicit-reward accuracy of DPO and SFT

Preference pairs come from the AI judge on the SFT model's samples (`preferences: judge`,
RLAIF) or from the revisions (`preferences: revisions`: revision as chosen, initial response
as rejected, the Hugging Face CAI recipe). A stage is skipped when `RUN/.stages/NAME.done`
exists; each stage is itself resumable. `RUN/report.md` gives per-stage seconds, the eval
prompts used, the win rate (and whether the judge's ties leave it meaningless) and the
implicit-reward accuracies (`cai_kit.pipeline.report`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from cai_kit.constitution import list_constitutions
from cai_kit.errors import ConfigError
from cai_kit.pipeline.recipe import Recipe, load_recipe
from cai_kit.pipeline.split import split_prompts, write_prompts

# Child processes: no loading bars, no library chatter, output as it happens (for progress).
QUIET_ENV = {
    "PYTHONUNBUFFERED": "1",
    "PYTHONWARNINGS": "ignore",
    "TQDM_DISABLE": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


@dataclass
class Stage:
    """One step: `python -m MODULE ARGV`; `steps` (training) or `rows` (records file, total)
    drive its progress line."""

    name: str
    argv: list[str]
    module: str = "cai_kit"
    steps: int | None = None
    rows: tuple[Path, int] | None = None
    env: dict[str, str] = field(default_factory=dict)
    # run instead when this stage finds nothing to export (prefs.no_pairs: revisions)
    fallback: Stage | None = None

    def command(self) -> str:
        prog = "cai-kit" if self.module == "cai_kit" else f"python -m {self.module}"
        return " ".join([prog, *self.argv])


def _opt(flag: str, value: Any) -> list[str]:
    return [] if value is None else [flag, str(value)]


def _revision_pairs(run: Path) -> Stage:
    """Revision as chosen, initial response as rejected (the Hugging Face CAI recipe)."""
    return Stage("export-prefs", ["export", "prefs", str(run / "revise"), "--out", str(run / "dpo_data")])  # fmt: skip


def stages(r: Recipe, run: Path, n_train: int, n_eval: int) -> list[Stage]:
    """Every stage of the recipe, in order."""
    train_p, eval_p = run / "prompts" / "train.jsonl", run / "prompts" / "eval.jsonl"
    sft_model, dpo_model = run / "sft_model", run / "dpo_model"
    student = r.student.model
    batch = ["--batch-api"] if r.teacher is not None and r.teacher.batch_api else []

    def revise(prompts: Path, out: str) -> list[str]:
        resp, resp_base = r.served_by("responses")
        critic, critic_base = r.served_by("critiques")
        return ["revise", str(prompts), "--out", str(run / out), "--constitution", r.constitution,
                "--model", resp, *_opt("--api-base", resp_base), "--critic-model", critic,
                *_opt("--critic-api-base", critic_base), "--rounds", str(r.revise.rounds),
                "--principles", r.revise.principles, "--max-tokens", str(r.revise.max_tokens),
                "--temperature", str(r.revise.temperature), "--seed", str(r.seed), *batch, "-q"]  # fmt: skip

    def train(kind: str, data: str, model: str, out: Path, t: Any) -> list[str]:
        return ["train", kind, str(run / data), "--model", model, "--out", str(out),
                *_opt("--max-steps", t.max_steps), *_opt("--batch-size", t.batch_size), *_opt("--lr", t.lr),
                *_opt("--max-length", t.max_length), "--seed", str(r.seed), "--merge",
                "--set", "disable_tqdm=true", *(_opt("--beta", t.beta) + _opt("--loss", t.loss) if kind == "dpo" else [])]  # fmt: skip

    def steps(t: Any) -> int | None:
        return t.max_steps if t.max_steps and t.max_steps > 0 else None

    out = [
        Stage("revise", revise(train_p, "revise"), rows=(run / "revise" / "revisions.jsonl", n_train)),
        Stage("export-sft", ["export", "sft", str(run / "revise"), "--out", str(run / "sft_data")]),
        Stage("train-sft", train("sft", "sft_data", student, sft_model, r.sft), steps=steps(r.sft)),
    ]  # fmt: skip
    if r.preferences == "judge":
        judge, judge_base = r.served_by("judging")
        out += [
            Stage("prefs", ["prefs", str(train_p), "--out", str(run / "prefs"), "--policy-model", f"hf:{sft_model}",
                            "--judge-model", judge, *_opt("--judge-api-base", judge_base), "--constitution", r.constitution,
                            "--k", str(r.prefs.k), "--pairs", r.prefs.pairs, "--mode", r.prefs.mode,
                            "--max-tokens", str(r.prefs.max_tokens), "--seed", str(r.seed), *batch, "-q"]),
            Stage("export-dpo", ["export", "dpo", str(run / "prefs"), "--out", str(run / "dpo_data"),
                                 "--min-margin", str(r.prefs.min_margin), *(["--include-ties"] if r.prefs.include_ties else [])],
                  fallback=_revision_pairs(run) if r.prefs.no_pairs == "revisions" else None),
        ]  # fmt: skip
    else:
        out.append(_revision_pairs(run))
    judge, judge_base = r.served_by("eval_judging")
    out += [
        Stage("train-dpo", train("dpo", "dpo_data", f"hf:{sft_model}", dpo_model, r.dpo), steps=steps(r.dpo)),
        Stage("eval", ["eval", "winrate", "--prompts", str(eval_p), "--model", f"hf:{dpo_model}", "--baseline", student,
                       "--judge", judge, *_opt("--api-base", judge_base), "--constitution", r.constitution,
                       "--mode", r.eval.mode, "--max-tokens", str(r.eval.max_tokens), "--seed", str(r.seed),
                       "--out", str(run / "eval"), "-q"], rows=(run / "eval" / "prefs.jsonl", n_eval)),
    ]  # fmt: skip
    if r.eval.implicit_reward:
        beta = r.dpo.beta if r.dpo.beta is not None else 0.1  # TRL's DPOConfig default
        out += [
            Stage("revise-heldout", revise(eval_p, "heldout_revise"), rows=(run / "heldout_revise" / "revisions.jsonl", n_eval)),
            Stage("export-heldout", ["export", "prefs", str(run / "heldout_revise"), "--out", str(run / "heldout_pairs")]),
            Stage("implicit-reward", ["--pairs", str(run / "heldout_pairs"), "--base", student, "--sft", str(sft_model),
                                      "--dpo", str(dpo_model), "--beta", str(beta), "--max-length", str(r.dpo.max_length),
                                      "--out", str(run / "implicit_reward")], module="cai_kit.eval.implicit_reward"),
        ]  # fmt: skip
    return out


# --- running --------------------------------------------------------------------------------

_LOSS = re.compile(r"^\{'loss': '?([-0-9.eE+naif]+)")


def _progress(stage: Stage, log: Path) -> str:
    """What the stage has done so far, from its log (training) or its records file (jobs)."""
    if stage.steps is not None or stage.name.startswith("train"):
        losses = [float(m.group(1)) for line in _tail(log) if (m := _LOSS.match(line))]
        of = f"/{stage.steps}" if stage.steps else ""
        loss = f", loss {losses[0]:.3f} → {losses[-1]:.3f}" if losses else ""
        return f"{len(losses)}{of} steps{loss}"
    if stage.rows is not None:
        path, total = stage.rows
        ids = set()
        for line in _tail(path):
            try:
                ids.add(json.loads(line)["id"])
            except (ValueError, KeyError, TypeError):
                continue  # a line being written right now
        return f"{len(ids)}/{total} records"
    return ""


def _tail(log: Path) -> list[str]:
    return log.read_text(encoding="utf-8", errors="replace").splitlines() if log.is_file() else []


def _result(log: Path) -> str:
    """The stage's own summary line (engine counts, win rate, accuracy), if it printed one."""
    for line in reversed(_tail(log)):
        if re.match(
            r"(\d+ done[;,] \d+ failed|win rate|implicit reward|\d+ pairs|Wrote \d+ train)", line
        ):
            return line.strip()
    return ""


def _children_cpu() -> float:
    """CPU seconds used by finished child processes (0 where the OS does not say: Windows)."""
    try:
        import resource
    except ImportError:
        return 0.0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


NOTHING_TO_EXPORT = "Nothing to export"  # cai_kit.stages.export: no row survived the filters


def run_stage(stage: Stage, run: Path, out: TextIO) -> tuple[float, float]:
    """Run one stage with its output in RUN/logs/NAME.log; one live line on a terminal.
    Returns (wall seconds, CPU seconds of the stage's process: comparable across machine loads)."""
    logs = run / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{stage.name}.log"
    env = {**os.environ, **QUIET_ENV, **stage.env}
    live = out.isatty()
    start, cpu_start = time.monotonic(), _children_cpu()
    with open(log, "w", encoding="utf-8") as fh:
        fh.write(f"$ {stage.command()}\n")
        fh.flush()
        proc = subprocess.Popen([sys.executable, "-m", stage.module, *stage.argv], stdout=fh,
                                stderr=subprocess.STDOUT, env=env)  # fmt: skip
        try:
            while proc.poll() is None:
                if live:
                    out.write(f"\r  {stage.name:<16} {_progress(stage, log):<40} {time.monotonic() - start:6.0f} s")  # fmt: skip
                    out.flush()
                time.sleep(0.5)
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait()
            raise
    seconds, cpu = time.monotonic() - start, _children_cpu() - cpu_start
    if live:
        out.write("\r\033[K")
    if proc.returncode != 0 and stage.fallback is not None:
        nothing = [line.strip() for line in _tail(log) if NOTHING_TO_EXPORT in line]
        if nothing:  # the judge left no pair to train on: prefs.no_pairs says what to do
            out.write(f"  {stage.name:<16} {nothing[-1].removeprefix('Error: ')}\n"
                      f"  {'':<16} prefs.no_pairs is revisions: DPO trains on the revision-over-initial pairs "
                      f"instead ({stage.fallback.name}; `no_pairs: fail` stops here)\n")  # fmt: skip
            more, more_cpu = run_stage(stage.fallback, run, out)
            return seconds + more, cpu + more_cpu
    if proc.returncode != 0:
        tail = "\n".join(f"    {line}" for line in _tail(log)[-15:])
        out.write(f"  {stage.name:<16} FAILED after {seconds:.0f} s; the end of {log}:\n{tail}\n")
        raise ConfigError(
            f"Stage {stage.name} failed (exit {proc.returncode}; log: {log}); fix it and re-run "
            "the pipeline: finished stages are skipped."
        )
    done = _result(log) or _progress(stage, log)  # the stage's own counts win over ours
    out.write(f"  {stage.name:<16} done in {seconds:5.1f} s{': ' + done if done else ''}\n")
    out.flush()
    return seconds, cpu


def describe_inputs(r: Recipe, recipe_path: Path, run: Path) -> str:
    """Where everything is read from and written to, as absolute paths (printed first)."""
    eval_from = (
        r.eval_prompts or f"none (a seeded split of prompts, eval_fraction {r.eval_fraction:g})"
    )
    shipped = " (shipped)" if r.constitution in list_constitutions() else ""
    lines = [
        f"Recipe: {os.path.abspath(recipe_path)} (its relative paths are read from its folder)",
        f"  prompts: {r.prompts}",
        f"  eval_prompts: {eval_from}",
        f"  constitution: {r.constitution}{shipped}",
        f"  student: {r.student.model}",
        f"  run directory: {os.path.abspath(run)} (--out, from the current directory)",
    ]
    return "\n".join(lines) + "\n"


def run_pipeline(
    recipe_path: Path,
    run: Path,
    only: str | None = None,
    dry_run: bool = False,
    out: TextIO | None = None,
) -> list[str]:
    """Run (or with dry_run, plan and price) the stages; returns the names of those that ran."""
    out = out or sys.stdout
    recipe = load_recipe(recipe_path)
    split = split_prompts(recipe)
    plan = stages(recipe, run, len(split.train), len(split.eval))
    names = [s.name for s in plan]
    if only is not None and only not in names:
        raise ConfigError(f"--only {only!r}: stages are {', '.join(names)}.")
    markers = run / ".stages"
    out.write(describe_inputs(recipe, recipe_path, run))
    if dry_run:
        from cai_kit.pipeline.estimate import estimate, format_estimates

        out.write(f"Training prompts: {len(split.train)}; eval prompts: {len(split.eval)}, from {split.note}.\n")  # fmt: skip
        for s in plan:
            state = "done" if (markers / f"{s.name}.done").exists() else "todo"
            out.write(f"[{state}] {s.name}: {s.command()}\n")
            if s.fallback is not None:
                out.write(
                    f"    if no pair survives (prefs.no_pairs: revisions): {s.fallback.command()}\n"
                )
        out.write("\n" + format_estimates(estimate(recipe, split)) + "\n")
        return []
    write_prompts(split.train, run / "prompts" / "train.jsonl")
    write_prompts(split.eval, run / "prompts" / "eval.jsonl")
    ran = []
    for s in plan:
        if only is not None and s.name != only:
            continue
        marker = markers / f"{s.name}.done"
        if marker.exists() and only is None:
            out.write(f"  skip {s.name} (done)\n")
            continue
        seconds, cpu = run_stage(s, run, out)
        markers.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{seconds:.1f} s wall, {cpu:.1f} s cpu\n")
        ran.append(s.name)
    from cai_kit.pipeline.report import write_report

    write_report(recipe, run, names, split)
    return ran
