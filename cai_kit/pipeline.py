"""`cai-kit pipeline RECIPE.yaml`: the whole Constitutional AI pipeline from one recipe.

Stages, each the same CLI command a user would run (in a subprocess, so stages stay
isolated and a crash in one never corrupts another):

    revise -> export sft -> train sft -> preference pairs -> train dpo -> eval winrate

Preference pairs come from the AI judge on the SFT model's samples (`preferences: judge`,
RLAIF) or from the revisions themselves (`preferences: revisions`: revision as chosen,
initial response as rejected, the Hugging Face CAI recipe; the default for tiny local
judges, whose labels are mostly ties). A stage is skipped when its marker
`RUN/.stages/NAME.done` exists; each stage is itself resumable, so an interrupted run
continues where it stopped.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from cai_kit.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReviseStage(_Section):
    rounds: int = 1
    principles: Literal["random", "sequence", "all"] = "random"
    max_tokens: int = 256
    temperature: float = 0.7


class TrainStage(_Section):
    max_steps: int = 50
    batch_size: int = 4
    lr: float | None = None
    max_length: int = 512
    beta: float | None = None
    loss: str | None = None


class PrefsStage(_Section):
    k: int = 2
    pairs: str = "best-worst"
    mode: Literal["logprobs", "letter", "cot", "votes"] = "logprobs"
    max_tokens: int = 256
    min_margin: float = 0.0


class EvalStage(_Section):
    limit: int | None = None
    max_tokens: int = 256
    mode: Literal["logprobs", "letter", "cot", "votes"] = "logprobs"


class Recipe(_Section):
    name: str
    prompts: str
    constitution: str = "harmless"
    base_model: str = "local"
    judge_model: str = "local"
    api_base: str | None = None  # for API-served base/judge models
    limit: int | None = None
    seed: int = 0
    preferences: Literal["judge", "revisions"] = "revisions"
    revise: ReviseStage = ReviseStage()
    sft: TrainStage = TrainStage()
    prefs: PrefsStage = PrefsStage()
    dpo: TrainStage = TrainStage()
    eval: EvalStage = EvalStage()


def load_recipe(path: Path) -> Recipe:
    if not path.is_file():
        raise ConfigError(f"No recipe at {path}.")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from None


def _opt(flag: str, value: Any) -> list[str]:
    return [] if value is None else [flag, str(value)]


def stages(r: Recipe, run: Path) -> list[tuple[str, list[str]]]:
    """(name, cai-kit argv) for every stage, in order."""
    api = _opt("--api-base", r.api_base)
    limit = _opt("--limit", r.limit)
    sft_model, dpo_model = run / "sft_model", run / "dpo_model"
    train_flags = lambda t: [*_opt("--max-steps", t.max_steps), *_opt("--batch-size", t.batch_size), *_opt("--lr", t.lr),  # noqa: E731
                             *_opt("--max-length", t.max_length), "--seed", str(r.seed), "--merge"]  # fmt: skip
    out: list[tuple[str, list[str]]] = [
        ("revise", ["revise", r.prompts, "--out", str(run / "revise"), "--constitution", r.constitution, "--model", r.base_model,
                    *api, "--rounds", str(r.revise.rounds), "--principles", r.revise.principles, "--max-tokens", str(r.revise.max_tokens),
                    "--temperature", str(r.revise.temperature), "--seed", str(r.seed), *limit, "-q"]),
        ("export-sft", ["export", "sft", str(run / "revise"), "--out", str(run / "sft_data")]),
        ("train-sft", ["train", "sft", str(run / "sft_data"), "--model", r.base_model, "--out", str(sft_model), *train_flags(r.sft)]),
    ]  # fmt: skip
    if r.preferences == "judge":
        out += [
            ("prefs", ["prefs", r.prompts, "--out", str(run / "prefs"), "--policy-model", f"hf:{sft_model}", "--judge-model", r.judge_model,
                       *_opt("--judge-api-base", r.api_base), "--constitution", r.constitution, "--k", str(r.prefs.k), "--pairs", r.prefs.pairs,
                       "--mode", r.prefs.mode, "--max-tokens", str(r.prefs.max_tokens), "--seed", str(r.seed), *limit, "-q"]),
            ("export-dpo", ["export", "dpo", str(run / "prefs"), "--out", str(run / "dpo_data"), "--min-margin", str(r.prefs.min_margin)]),
        ]  # fmt: skip
    else:
        out.append(
            (
                "export-prefs",
                ["export", "prefs", str(run / "revise"), "--out", str(run / "dpo_data")],
            )
        )
    out += [
        ("train-dpo", ["train", "dpo", str(run / "dpo_data"), "--model", f"hf:{sft_model}", "--out", str(dpo_model), *train_flags(r.dpo),
                       *_opt("--beta", r.dpo.beta), *_opt("--loss", r.dpo.loss)]),
        ("eval", ["eval", "winrate", "--prompts", r.prompts, "--model", f"hf:{dpo_model}", "--baseline", r.base_model, "--judge", r.judge_model,
                  *api, "--constitution", r.constitution, "--mode", r.eval.mode, "--max-tokens", str(r.eval.max_tokens),
                  *_opt("--limit", r.eval.limit if r.eval.limit is not None else r.limit), "--seed", str(r.seed), "--out", str(run / "eval"), "-q"]),
    ]  # fmt: skip
    return out


def run_pipeline(
    recipe_path: Path, run: Path, only: str | None = None, dry_run: bool = False, echo: Any = print
) -> list[str]:
    """Run (or list) the stages; returns the names of the stages that ran."""
    recipe = load_recipe(recipe_path)
    plan = stages(recipe, run)
    names = [n for n, _ in plan]
    if only is not None and only not in names:
        raise ConfigError(f"--only {only!r}: stages are {', '.join(names)}.")
    markers = run / ".stages"
    ran = []
    for name, argv in plan:
        if only is not None and name != only:
            continue
        marker = markers / f"{name}.done"
        if dry_run:
            echo(f"[{'done' if marker.exists() else 'todo'}] {name}: cai-kit {' '.join(argv)}")
            continue
        if marker.exists() and only is None:
            echo(f"skip {name} (done)")
            continue
        echo(f"run  {name}: cai-kit {' '.join(argv)}")
        start = time.monotonic()
        code = subprocess.call([sys.executable, "-m", "cai_kit", *argv])
        if code != 0:
            raise ConfigError(
                f"Stage {name} failed (exit {code}); fix it and re-run the pipeline: finished stages are skipped."
            )
        markers.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{time.monotonic() - start:.1f} s\n")
        ran.append(name)
    if not dry_run:
        _report(recipe, run, names)
    return ran


def _report(recipe: Recipe, run: Path, names: list[str]) -> None:
    lines = [f"# Pipeline `{recipe.name}`", "", f"Constitution `{recipe.constitution}`, base model `{recipe.base_model}`, judge `{recipe.judge_model}`, "
             f"preferences from {recipe.preferences}.", "", "| stage | status | seconds |", "|---|---|---|"]  # fmt: skip
    for n in names:
        m = run / ".stages" / f"{n}.done"
        lines.append(
            f"| {n} | {'done' if m.exists() else 'not run'} | {m.read_text().strip() if m.exists() else ''} |"
        )
    lines += [
        "",
        "Outputs: `revise/revisions.jsonl`, `sft_data/`, `sft_model/`, `dpo_data/`, `dpo_model/`, `eval/report.md`.",
        "",
    ]
    ev = run / "eval" / "report.md"
    if ev.is_file():
        lines += ["## Evaluation", "", ev.read_text().split("\n", 1)[1]]
    (run / "report.md").write_text("\n".join(lines), encoding="utf-8")
