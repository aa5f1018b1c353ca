"""`cai-kit pipeline RECIPE.yaml`: the whole Constitutional AI pipeline from one recipe.

    run = run_pipeline(Path("examples/recipes/local_tiny.yaml"), Path("runs/tiny"))

First the prompts are split: training prompts (`RUN/prompts/train.jsonl`) feed revise, SFT
and DPO; held-out prompts (`RUN/prompts/eval.jsonl`: the recipe's `eval_prompts` file, or a
seeded split of `prompts`) are only ever evaluated on. Then the stages, with their output in
`RUN/logs/NAME.log` and one progress line on screen. Data stages are library calls in this
process (`cai_kit.pipeline.calls`); training stages are the CLI command in a subprocess, whose
memory is freed when it ends. Every stage has the CLI command a user would run to repeat it (its
log's first line, the dry run's plan, its manifest); each writes only its own directory, and an
error in one stops the pipeline with its message in its log (a crash never corrupts another):

    [expand] -> split -> revise -> export sft -> train sft -> preference pairs [-> infer]
             -> train dpo -> eval winrate -> revise the held-out prompts
             -> implicit-reward accuracy of DPO and SFT

The bracketed steps run when the recipe names them: `expand` (`cai-kit prompts expand` on the
recipe's prompts) runs before the split, which then draws from the seed and the new prompts
(`RUN/expand/prompts.jsonl`); `infer` (`cai-kit constitution infer` on the preference pairs)
writes `RUN/infer/inferred.yaml`, and when no principle passes it is done with that outcome
(the report says so) and the pipeline goes on.

Preference pairs come from the AI judge on the SFT model's samples (`preferences: judge`,
RLAIF) or from the revisions (`preferences: revisions`: revision as chosen, initial response
as rejected, the Hugging Face CAI recipe). A stage is skipped when `RUN/.stages/NAME.done`
exists; each stage is itself resumable. `RUN/report.md` gives per-stage seconds, the eval
prompts used, the win rate (and whether the judge's ties leave it meaningless) and the
implicit-reward accuracies (`cai_kit.pipeline.report`).

`--max-cost C` (or the recipe's `max_cost:`) is one cap for the whole pipeline, every stage
together, per invocation: one ledger, `RUN/budget.json` (`cai_kit.engine.budget`; the teacher's
`price:` travels in it), spent through by the in-process stages and shared with the subprocess
ones by file; `stage_max_cost:` caps a stage inside the whole (a child ledger). A stage the cap stops ends the pipeline (exit 4, later stages not
started, finished work kept); a re-run continues with the cap anew.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from cai_kit.constitution import list_constitutions
from cai_kit.engine.budget import BUDGET_FILE_ENV, Budget
from cai_kit.engine.jobs import EXIT_FAILED, EXIT_PARTIAL, EXIT_STOPPED
from cai_kit.errors import BudgetExceeded, ConfigError
from cai_kit.pipeline import calls
from cai_kit.pipeline.calls import Call
from cai_kit.pipeline.in_process import QUIET_ENV, run_call
from cai_kit.pipeline.recipe import Recipe, load_recipe
from cai_kit.pipeline.split import split_prompts, write_prompts
from cai_kit.records import PromptRecord


@dataclass
class Stage:
    """One step: its library `call` in this process (a data stage), else `python -m MODULE ARGV`
    in a subprocess (training: its memory is freed when it ends); `argv` is the CLI command
    either way (the log, the dry run, the manifest). `steps` (training) or `rows` (records file,
    total) drive its progress line."""

    name: str
    argv: list[str]
    module: str = "cai_kit"
    steps: int | None = None
    rows: tuple[Path, int] | None = None
    env: dict[str, str] = field(default_factory=dict)
    job_dir: Path | None = None  # where its manifest.json is, when not its --out
    # an exit that is an outcome, not a failure: (its log, returncode) -> what to report
    outcome: Callable[[Path, int], str | None] | None = None
    # run instead when this stage finds nothing to export (prefs.no_pairs: revisions)
    fallback: Stage | None = None
    call: Call | None = None  # a data stage: the library call (cai_kit.pipeline.calls)
    ledger: Budget | None = None  # the pipeline's --max-cost ledger, for a call
    max_cost: float | None = None  # the recipe's stage_max_cost, for a call (a child ledger)

    def command(self) -> str:
        prog = "cai-kit" if self.module == "cai_kit" else f"python -m {self.module}"
        return f"{prog} {shlex.join(self.argv)}"  # to copy and paste


@dataclass
class PipelineRun:
    """The stages that ran, and those of them that finished with some rows failed."""

    stages: list[str] = field(default_factory=list)
    partial: list[str] = field(default_factory=list)


def _opt(flag: str, value: Any) -> list[str]:
    return [] if value is None else [flag, str(value)]


def _set(section: Any, name: str, flag: str) -> list[str]:
    """A flag for a field the recipe sets (else the command's own default): a reasoning teacher
    refuses a --temperature or --mode logprobs it is given, but takes the commands' defaults."""
    return [flag, str(getattr(section, name))] if name in section.model_fields_set else []


def _effort(r: Recipe, model: str, *, judge: bool = False, flag: str | None = None) -> list[str]:
    """The teacher's --reasoning-effort (or, for its judge-like calls, its
    --judge-reasoning-effort) for a stage the teacher's model runs."""
    t = r.teacher
    if t is None or model != t.model:
        return []
    value = t.judge_reasoning_effort if judge else t.reasoning_effort
    return _opt(flag or ("--judge-reasoning-effort" if judge else "--reasoning-effort"), value)


EXPANDED = Path("expand") / "prompts.jsonl"
INFERRED = Path("infer") / "inferred.yaml"


def expand_stage(r: Recipe, run: Path) -> Stage | None:
    """The recipe's `expand` step (before the split), or None when it has none."""
    e = r.expand
    if e is None:
        return None
    model, base = r.step_model(e)
    first = math.ceil(e.n * e.oversample / e.per_call)  # the first round's calls
    argv = ["prompts", "expand", r.prompts, "--out", str(run / "expand"), "--n", str(e.n),
            "--model", model, *_opt("--api-base", base), *_opt("--keep-if", e.keep_if),
            "--per-call", str(e.per_call), "--shots", str(e.shots), "--oversample", str(e.oversample),
            "--max-rounds", str(e.max_rounds), "--similarity", str(e.similarity),
            "--topic-column", e.topic_column, *_set(e, "temperature", "--temperature"),
            "--max-tokens", str(e.max_tokens), "--seed", str(r.seed), *_batch(r, model),
            *_effort(r, model), *(_effort(r, model, judge=True) if e.keep_if else []), "-q"]  # fmt: skip
    return Stage(
        "expand",
        argv,
        rows=(run / "expand" / "calls.jsonl", first),
        call=calls.expand_call(r, run / "expand"),
    )


def _batch(r: Recipe, model: str) -> list[str]:
    """--batch-api for the teacher's calls when the recipe asks for it."""
    on = r.teacher is not None and r.teacher.batch_api and model == r.teacher.model
    return ["--batch-api"] if on else []


def _no_principle(log: Path, returncode: int, inferred: Path) -> str | None:
    """infer ran to its end and no candidate passed: an outcome the report gives, not a
    failure (the pipeline goes on). A constitution from an earlier run is removed."""
    if returncode == EXIT_FAILED and any(calls.NO_PRINCIPLE in x for x in _tail(log)):
        inferred.unlink(missing_ok=True)
        return "no principle passed"
    return None


def infer_stage(r: Recipe, run: Path) -> Stage | None:
    """The recipe's `infer` step on the preference pairs, or None when it has none."""
    i = r.infer
    if i is None:
        return None
    model, base = r.step_model(i)
    data = run / ("prefs" if r.preferences == "judge" else "dpo_data")
    argv = ["constitution", "infer", str(data), "--out", str(run / INFERRED), "--work", str(run / "infer"),
            "--model", model, *_opt("--api-base", base), "--min-agreement", str(i.min_agreement),
            "--min-decided", str(i.min_decided), "--holdout", str(i.holdout),
            "--propose-pairs", str(i.propose_pairs), "--test-pairs", str(i.test_pairs),
            "--per-pair", str(i.per_pair), "--max-candidates", str(i.max_candidates), *_set(i, "mode", "--mode"),
            *_set(i, "temperature", "--temperature"), "--max-tokens", str(i.max_tokens), "--seed", str(r.seed),
            *_batch(r, model), *_effort(r, model), *_effort(r, model, judge=True), "-q"]  # fmt: skip
    return Stage("infer", argv, job_dir=run / "infer",
                 outcome=lambda log, rc: _no_principle(log, rc, run / INFERRED),
                 call=calls.infer_call(r, data, run / INFERRED, run / "infer"))  # fmt: skip


def human_agreement(run: Path, out: TextIO) -> None:
    """When people labelled the preference pairs (`cai-kit review RUN/prefs`), their labels
    become RUN/prefs/gold.jsonl and `judge-report --gold` measures the judge against them (its
    judge_report.json feeds report.md). Runs at every pipeline run: labels come after it."""
    prefs = run / "prefs"
    if not (prefs / "labels.sqlite").is_file():
        return
    gold = prefs / "gold.jsonl"
    for s in (Stage("export-gold", ["review", "export-gold", str(prefs), "--out", str(gold)],
                    call=calls.export_gold_call(prefs, gold)),
              Stage("judge-vs-human", ["judge-report", str(prefs), "--gold", str(gold)],
                    call=calls.judge_report_call(prefs, gold))):  # fmt: skip
        try:
            run_stage(s, run, out)
        except ConfigError:  # the report says what is missing; the run's stages stand
            return


def stage_names(r: Recipe) -> list[str]:
    """Every stage's name, in order (expand first, when the recipe has it)."""
    pre = ["expand"] if r.expand is not None else []
    return pre + [s.name for s in stages(r, Path("."), 0, 0)]


def _revision_pairs(run: Path) -> Stage:
    """Revision as chosen, initial response as rejected (the Hugging Face CAI recipe)."""
    return Stage("export-prefs", ["export", "prefs", str(run / "revise"), "--out", str(run / "dpo_data")],
                 call=calls.export_call("prefs", run / "revise", run / "dpo_data"))  # fmt: skip


def stages(r: Recipe, run: Path, n_train: int, n_eval: int) -> list[Stage]:
    """Every stage of the recipe after the split, in order (`expand_stage` comes before)."""
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
                *_set(r.revise, "temperature", "--temperature"), "--seed", str(r.seed), *batch,
                *_effort(r, resp), "-q"]  # fmt: skip

    def train(kind: str, data: str, model: str, out: Path, t: Any) -> list[str]:
        return ["train", kind, str(run / data), "--model", model, "--out", str(out),
                *_opt("--max-steps", t.max_steps), *_opt("--batch-size", t.batch_size), *_opt("--lr", t.lr),
                *_opt("--max-length", t.max_length), "--seed", str(r.seed), "--merge",
                "--set", "disable_tqdm=true", *_opt("--report-to", None if r.report_to == "none" else r.report_to),
                *(_opt("--beta", t.beta) + _opt("--loss", t.loss) if kind == "dpo" else [])]  # fmt: skip

    def steps(t: Any) -> int | None:
        return t.max_steps if t.max_steps and t.max_steps > 0 else None

    out = [
        Stage("revise", revise(train_p, "revise"), rows=(run / "revise" / "revisions.jsonl", n_train),
              call=calls.revise_call(r, train_p, run / "revise")),
        Stage("export-sft", ["export", "sft", str(run / "revise"), "--out", str(run / "sft_data")],
              call=calls.export_call("sft", run / "revise", run / "sft_data")),
        Stage("train-sft", train("sft", "sft_data", student, sft_model, r.sft), steps=steps(r.sft)),
    ]  # fmt: skip
    if r.preferences == "judge":
        judge, judge_base = r.served_by("judging")
        out += [
            Stage("prefs", ["prefs", str(train_p), "--out", str(run / "prefs"), "--policy-model", f"hf:{sft_model}",
                            "--judge-model", judge, *_opt("--judge-api-base", judge_base), "--constitution", r.constitution,
                            "--k", str(r.prefs.k), "--pairs", r.prefs.pairs, *_set(r.prefs, "mode", "--mode"),
                            "--max-tokens", str(r.prefs.max_tokens), "--seed", str(r.seed), *batch,
                            *_effort(r, judge, judge=True), "-q"],
                  call=calls.prefs_call(r, train_p, f"hf:{sft_model}", run / "prefs")),
            Stage("export-dpo", ["export", "dpo", str(run / "prefs"), "--out", str(run / "dpo_data"),
                                 "--min-margin", str(r.prefs.min_margin), *(["--include-ties"] if r.prefs.include_ties else [])],
                  fallback=_revision_pairs(run) if r.prefs.no_pairs == "revisions" else None,
                  call=calls.export_call("dpo", run / "prefs", run / "dpo_data", r.prefs.min_margin, r.prefs.include_ties)),
        ]  # fmt: skip
    else:
        out.append(_revision_pairs(run))
    if (infer := infer_stage(r, run)) is not None:  # on the pairs, before DPO trains on them
        out.append(infer)
    judge, judge_base = r.served_by("eval_judging")
    out += [
        Stage("train-dpo", train("dpo", "dpo_data", f"hf:{sft_model}", dpo_model, r.dpo), steps=steps(r.dpo)),
        Stage("eval", ["eval", "winrate", "--prompts", str(eval_p), "--model", f"hf:{dpo_model}", "--baseline", student,
                       "--judge", judge, *_opt("--api-base", judge_base), "--constitution", r.constitution,
                       *_set(r.eval, "mode", "--mode"), "--max-tokens", str(r.eval.max_tokens), "--seed", str(r.seed),
                       *_effort(r, judge, judge=True), "--out", str(run / "eval"), "-q"],
              rows=(run / "eval" / "prefs.jsonl", n_eval), call=calls.winrate_call(r, eval_p, f"hf:{dpo_model}", run / "eval")),
    ]  # fmt: skip
    if r.eval.implicit_reward:
        beta = r.dpo.beta if r.dpo.beta is not None else 0.1  # TRL's DPOConfig default
        out += [
            Stage("revise-heldout", revise(eval_p, "heldout_revise"), rows=(run / "heldout_revise" / "revisions.jsonl", n_eval),
                  call=calls.revise_call(r, eval_p, run / "heldout_revise")),
            Stage("export-heldout", ["export", "prefs", str(run / "heldout_revise"), "--out", str(run / "heldout_pairs")],
                  call=calls.export_call("prefs", run / "heldout_revise", run / "heldout_pairs")),
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
            r"(\d+ done[;,] \d+ failed|win rate|implicit reward|\d+ pairs|expand: |Wrote .*principles|Wrote \d+ train)",
            line,
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


# A job stage that ran to its end with rows failed (exit 3, or 1 when every row failed, e.g. a
# judge that gave no verdict) is done: the pipeline goes on (the report counts them; a later
# stage that needs the rows fails on its own) and exits STAGE_PARTIAL at the end.
STAGE_PARTIAL = EXIT_PARTIAL


def _rows_failed(stage: Stage, since: float) -> bool:
    """Whether the stage is a job that ran to its end with failed rows, by the manifest.json of
    a job that started after `since` in its --out (an error before the job began leaves none)."""
    from datetime import datetime

    if stage.job_dir is not None:
        manifest = stage.job_dir / "manifest.json"
    elif "--out" in stage.argv:
        manifest = Path(stage.argv[stage.argv.index("--out") + 1]) / "manifest.json"
    else:
        return False
    try:
        m = json.loads(manifest.read_text(encoding="utf-8"))
        started = datetime.fromisoformat(m["started_at"]).timestamp()
    except (OSError, ValueError, KeyError, TypeError):
        return False
    failed = (m.get("stats") or {}).get("failed", 0)
    return started >= since and m.get("status") == "finished" and failed > 0


def run_stage(stage: Stage, run: Path, out: TextIO) -> tuple[float, float, bool]:
    """Run one stage with its output in RUN/logs/NAME.log; one live line on a terminal.
    Returns (wall seconds, CPU seconds of the stage (its process, or this one's for a call):
    comparable across machine loads, whether some of its rows failed). An exit that `stage.outcome` names (infer: no principle
    passed) is done, with that outcome as its line."""
    logs = run / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{stage.name}.log"
    env = {**os.environ, **QUIET_ENV, **stage.env}
    live = out.isatty()
    start, cpu_start, began = time.monotonic(), _children_cpu() + time.process_time(), time.time()

    def tick() -> None:
        out.write(f"\r  {stage.name:<16} {_progress(stage, log):<40} {time.monotonic() - start:6.0f} s")  # fmt: skip
        out.flush()

    with open(log, "w", encoding="utf-8") as fh:
        fh.write(f"$ {stage.command()}\n")
        fh.flush()
        if stage.call is not None:
            returncode = run_call(stage.call, ledger=stage.ledger, max_cost=stage.max_cost,
                                  argv=["cai-kit", *stage.argv], log=fh, tick=tick if live else None)  # fmt: skip
        else:
            proc = subprocess.Popen([sys.executable, "-m", stage.module, *stage.argv], stdout=fh,
                                    stderr=subprocess.STDOUT, env=env)  # fmt: skip
            try:
                while proc.poll() is None:
                    if live:
                        tick()
                    time.sleep(0.5)
            except KeyboardInterrupt:
                proc.terminate()
                proc.wait()
                raise
            returncode = proc.returncode
    seconds = time.monotonic() - start
    cpu = _children_cpu() + time.process_time() - cpu_start
    if live:
        out.write("\r\033[K")
    if returncode == EXIT_STOPPED:  # --max-cost (the pipeline's or the stage's own)
        stops = [x.split("Stopped: ", 1)[1].strip() for x in _tail(log) if "Stopped: " in x]
        # the job the cap stopped, not a later one of the stage that then never started
        stop = next((x for x in stops if not x.startswith("not started")), stops[-1] if stops else "")  # fmt: skip
        out.write(f"  {stage.name:<16} stopped by --max-cost after {seconds:.0f} s\n")
        raise BudgetExceeded(
            f"Stage {stage.name} was stopped by the cap: {stop or f'see {log}'} Later stages were "
            "not started; re-run the pipeline to continue (finished stages are skipped)."
        )
    if returncode != 0 and stage.fallback is not None:
        nothing = [line.strip() for line in _tail(log) if NOTHING_TO_EXPORT in line]
        if nothing:  # the judge left no pair to train on: prefs.no_pairs says what to do
            out.write(f"  {stage.name:<16} {nothing[-1].removeprefix('Error: ')}\n"
                      f"  {'':<16} prefs.no_pairs is revisions: DPO trains on the revision-over-initial pairs "
                      f"instead ({stage.fallback.name}; `no_pairs: fail` stops here)\n")  # fmt: skip
            more, more_cpu, more_partial = run_stage(stage.fallback, run, out)
            return seconds + more, cpu + more_cpu, more_partial
    partial = returncode in (EXIT_FAILED, STAGE_PARTIAL) and _rows_failed(stage, began)
    outcome = stage.outcome(log, returncode) if stage.outcome and returncode else None
    if outcome is not None:
        partial = False
    if returncode != 0 and not partial and outcome is None:
        tail = "\n".join(f"    {line}" for line in _tail(log)[-15:])
        out.write(f"  {stage.name:<16} FAILED after {seconds:.0f} s; the end of {log}:\n{tail}\n")
        raise ConfigError(
            f"Stage {stage.name} failed (exit {returncode}; log: {log}); fix it and re-run "
            "the pipeline: finished stages are skipped."
        )
    done = outcome or _result(log) or _progress(stage, log)  # the stage's own counts win
    state = "done, some rows failed," if partial else "done"
    out.write(f"  {stage.name:<16} {state} in {seconds:5.1f} s{': ' + done if done else ''}\n")
    out.flush()
    return seconds, cpu, partial


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


def expanded_prompts(r: Recipe, run: Path, stand_ins: bool = False) -> list[PromptRecord] | None:
    """The prompts the recipe's expand step wrote (None without the step). Before it has run:
    with `stand_ins` (a dry run) `n` prompts the size of the seed prompts, else an error."""
    if r.expand is None:
        return None
    path = run / EXPANDED
    if path.is_file():
        from cai_kit.prompts import load_prompts

        return load_prompts(str(path)).records
    if not stand_ins:
        raise ConfigError(
            f"The recipe expands its prompts first and {path} is not there yet: run the pipeline "
            "without --only (or with --only expand) before the later stages."
        )
    from cai_kit.prompts import load_prompts

    seeds = load_prompts(r.prompts).records
    texts = [f"{i} {seeds[i % len(seeds)].prompt_text}" for i in range(r.expand.n)]
    return [
        PromptRecord(id=f"expanded-{i}", messages=[{"role": "user", "content": t}])  # type: ignore[list-item]
        for i, t in enumerate(texts)
    ]


def run_pipeline(
    recipe_path: Path,
    run: Path,
    only: str | None = None,
    dry_run: bool = False,
    out: TextIO | None = None,
    max_cost: float | None = None,
) -> PipelineRun:
    """Run (or with dry_run, plan and price) the stages; returns those that ran. `max_cost`
    (else the recipe's) caps the whole pipeline; a stage it stops raises BudgetExceeded."""
    out = out or sys.stdout
    recipe = load_recipe(recipe_path)
    cap = max_cost if max_cost is not None else recipe.max_cost
    names = stage_names(recipe)
    if only is not None and only not in names:
        raise ConfigError(f"--only {only!r}: stages are {', '.join(names)}.")
    markers = run / ".stages"
    out.write(describe_inputs(recipe, recipe_path, run))
    expand = expand_stage(recipe, run)
    if dry_run:
        from cai_kit.pipeline.estimate import estimate, format_estimates

        split = split_prompts(recipe, expanded_prompts(recipe, run, stand_ins=True))
        if expand is not None and not (run / EXPANDED).is_file():
            out.write(f"(expand has not run: the {recipe.expand.n} new prompts it asks for are "  # type: ignore[union-attr]
                      "counted as stand-ins the size of the seed prompts)\n")  # fmt: skip
        out.write(f"Training prompts: {len(split.train)}; eval prompts: {len(split.eval)}, from {split.note}.\n")  # fmt: skip
        plan = ([expand] if expand else []) + stages(recipe, run, len(split.train), len(split.eval))
        for s in plan:
            state = "done" if (markers / f"{s.name}.done").exists() else "todo"
            out.write(f"[{state}] {s.name}: {s.command()}\n")
            if s.fallback is not None:
                out.write(
                    f"    if no pair survives (prefs.no_pairs: revisions): {s.fallback.command()}\n"
                )
        rows = estimate(recipe, split)
        out.write("\n" + format_estimates(rows) + "\n")
        if cap is not None:
            out.write(_against_the_cap(recipe, rows, cap) + "\n")
        return PipelineRun()
    ran = PipelineRun()
    shared: dict[str, str] = {}
    ledger: Budget | None = None
    if cap is not None or recipe.stage_max_cost:  # one ledger for every stage, in or out of process
        ledger = Budget.on_disk(run / "budget.json", cap, fresh=True, prices=_teacher_price(recipe))
        shared[BUDGET_FILE_ENV] = str(run / "budget.json")

    def step(s: Stage) -> None:
        if only is not None and s.name != only:
            return
        marker = markers / f"{s.name}.done"
        if marker.exists() and only is None:
            out.write(f"  skip {s.name} (done)\n")
            return
        s.env.update(shared)
        s.ledger = ledger
        if s.name in recipe.stage_max_cost:
            s.max_cost = recipe.stage_max_cost[s.name]
            s.argv += ["--max-cost", f"{s.max_cost:g}"]
        seconds, cpu, partial = run_stage(s, run, out)
        markers.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{seconds:.1f} s wall, {cpu:.1f} s cpu\n")
        ran.stages.append(s.name)
        if partial:
            ran.partial.append(s.name)

    if expand is not None:
        step(expand)
    split = split_prompts(recipe, expanded_prompts(recipe, run))
    write_prompts(split.train, run / "prompts" / "train.jsonl")
    write_prompts(split.eval, run / "prompts" / "eval.jsonl")
    for s in stages(recipe, run, len(split.train), len(split.eval)):
        step(s)
    human_agreement(run, out)
    from cai_kit.pipeline.report import write_report

    write_report(recipe, run, names, split)
    return ran


def _teacher_price(r: Recipe) -> dict[str, tuple[float, float]]:
    """The teacher's `price:` for the stages' ledger (its calls are priced by it)."""
    if r.teacher is None or not r.teacher.price:
        return {}
    from cai_kit.engine.pricing import parse_price

    p = parse_price(r.teacher.price)
    return {r.teacher.model: (p.input_per_m, p.output_per_m)}


def _against_the_cap(r: Recipe, rows: list[Any], cap: float) -> str:
    """--dry-run: the worst case of every stage together next to the pipeline's cap."""
    batch = r.teacher is not None and r.teacher.batch_api
    costs = [e.cost(batch=batch) for e in rows if e.calls]
    if any(c is None for c in costs):
        return f"--max-cost ${cap:g} (the whole pipeline): can't be compared, a price is unknown"
    total = sum(c or 0.0 for c in costs)
    verdict = "fits under it" if total <= cap + 1e-12 else "is over it: the pipeline would stop before the end"  # fmt: skip
    return f"--max-cost ${cap:g} (the whole pipeline): the worst case of all stages, ${total:.4f}, {verdict}"
