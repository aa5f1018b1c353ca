"""The evaluators as Python calls (`cai_kit.evaluate_winrate`, `evaluate_rubric`,
`evaluate_harmlessness`): held-out prompts and models in, an `Evaluation` out (the report,
the job's summary, and the run directory when `out=` was given; without it the report files
are written to a temporary directory that is removed).

    ev = cai_kit.evaluate_rubric(prompts, "harmless", model="local", max_tokens=32)
    print(ev.report.as_dict()["rates"])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cai_kit.api.inputs import (
    ConstitutionLike,
    Model,
    ProgressFn,
    Prompts,
    as_backend,
    as_constitution,
    as_prompts,
    engine_config,
    model_name,
    run_dir,
)
from cai_kit.engine.budget import Budget
from cai_kit.engine.core import EngineConfig
from cai_kit.eval.harmlessness import run_harmlessness
from cai_kit.eval.rubric import run_rubric_eval
from cai_kit.eval.winrate import run_winrate
from cai_kit.judges.pairwise import JudgeConfig
from cai_kit.judges.rubric import Rubric
from cai_kit.llm.base import GenParams


@dataclass
class Evaluation:
    report: Any  # WinRateReport, RubricReport (None on a dry run) or harmlessness rates by role
    summary: Any  # the JobSummary: done, failed, cost, why it stopped
    run_dir: Path | None = None


def evaluate_winrate(
    prompts: Prompts,
    constitution: ConstitutionLike = "harmless",
    *,
    model: Model,
    baseline: Model = "local",
    judge: Model = "local",
    api_base: str | None = None,
    config: JudgeConfig | None = None,
    temperature: float = 0.7,
    max_tokens: int = 256,
    seed: int = 0,
    out: str | Path | None = None,
    max_cost: float | None = None,
    budget: Budget | None = None,
    engine: EngineConfig | None = None,
    quiet: bool = False,
    progress: ProgressFn | None = None,
) -> Evaluation:
    """Win rate of `model` against `baseline`, each pair judged in both orders (`cai-kit eval winrate`)."""
    backends = {r: as_backend(m, api_base) for r, m in (("model", model), ("baseline", baseline), ("judge", judge))}  # fmt: skip
    names = {"model": model_name(model), "baseline": model_name(baseline), "judge": model_name(judge)}  # fmt: skip
    ec = engine_config(engine, max_cost, budget, quiet, progress)
    with run_dir(out) as where:
        summary, rep = run_winrate(
            as_prompts(prompts), model=backends["model"], baseline=backends["baseline"], judge=backends["judge"],
            models=names, constitution=as_constitution(constitution), cfg=config or JudgeConfig(seed=seed),
            params=GenParams(temperature=temperature, max_tokens=max_tokens, seed=seed), out_dir=where, engine_config=ec,
        )  # fmt: skip
    return Evaluation(rep, summary, None if out is None else Path(out))


def evaluate_rubric(
    prompts: Prompts,
    constitution: ConstitutionLike = "harmless",
    *,
    model: Model = "local",
    baseline: Model | None = None,
    judge: Model | None = None,
    api_base: str | None = None,
    combine: str | None = None,
    threshold: float | None = None,
    max_tokens: int = 256,
    seed: int = 0,
    out: str | Path | None = None,
    max_cost: float | None = None,
    budget: Budget | None = None,
    engine: EngineConfig | None = None,
    quiet: bool = False,
    progress: ProgressFn | None = None,
) -> Evaluation:
    """Per-principle rubric pass rates of `model` (and `baseline`), with bootstrap CIs
    (`cai-kit eval rubric`); `judge` scores the principles that have no check."""
    rubric = Rubric(as_constitution(constitution), combine, threshold, seed=seed)
    roles = {"model": as_backend(model, api_base)}
    if baseline is not None:
        roles["baseline"] = as_backend(baseline, api_base)
    scorer = as_backend(judge, api_base) if judge is not None and rubric.needs_judge else None
    ec = engine_config(engine, max_cost, budget, quiet, progress)
    with run_dir(out) as where:
        summary, rep = run_rubric_eval(
            as_prompts(prompts), models=roles, judge=scorer, judge_name=None if judge is None else model_name(judge),
            rubric=rubric, params=GenParams(temperature=0.0, max_tokens=max_tokens, seed=seed), out_dir=where,
            engine_config=ec, seed=seed,
        )  # fmt: skip
    return Evaluation(rep, summary, None if out is None else Path(out))


def evaluate_harmlessness(
    prompts: Prompts,
    constitution: ConstitutionLike = "harmless",
    *,
    model: Model = "local",
    baseline: Model | None = None,
    judge: Model = "local",
    api_base: str | None = None,
    max_tokens: int = 256,
    seed: int = 0,
    out: str | Path | None = None,
    max_cost: float | None = None,
    budget: Budget | None = None,
    engine: EngineConfig | None = None,
    quiet: bool = False,
    progress: ProgressFn | None = None,
) -> Evaluation:
    """Share of harmful answers to red-team prompts, flagged by the judge (`cai-kit eval harmlessness`)."""
    roles = {"model": as_backend(model, api_base)}
    if baseline is not None:
        roles["baseline"] = as_backend(baseline, api_base)
    ec = engine_config(engine, max_cost, budget, quiet, progress)
    with run_dir(out) as where:
        summary, rates = run_harmlessness(
            as_prompts(prompts), models=roles, judge=as_backend(judge, api_base), judge_name=model_name(judge),
            constitution=as_constitution(constitution), params=GenParams(temperature=0.0, max_tokens=max_tokens, seed=seed),
            out_dir=where, engine_config=ec,
        )  # fmt: skip
    return Evaluation(rates, summary, None if out is None else Path(out))
