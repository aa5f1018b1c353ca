"""The data stages as Python calls: plain values in, records out (`cai_kit.revise`, ...).

Each call takes prompts (a file, or a list of strings / message lists), a constitution (a
name, a YAML path or a `Constitution`) and a model (a string or a `Backend`), and returns the
records it made as `Records` (a list, plus `.summary` and `.run_dir`). Without `out=` the work
runs in a temporary directory that is removed afterwards; with `out=` the run directory is
kept and a second call with the same arguments resumes it (finished rows are not redone).
`max_cost=` caps one call; `budget=Budget(cap)` is one ledger shared by several calls. Every
call works inside a running event loop (a notebook): `cai_kit.engine.loop.run_sync`.

    rows = cai_kit.revise(["How do I pick a lock?"], "harmless", model="local", max_tokens=32)
    print(rows[0].final_response, rows.summary.line())
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cai_kit.api.inputs import (
    ConstitutionLike,
    Model,
    ProgressFn,
    Prompts,
    Records,
    as_backend,
    as_constitution,
    as_prompts,
    engine_config,
    model_name,
    run_dir,
)
from cai_kit.constitution import Constitution
from cai_kit.engine.budget import Budget
from cai_kit.engine.core import EngineConfig
from cai_kit.errors import ConfigError
from cai_kit.io import latest_by_id
from cai_kit.judges.pairwise import JudgeConfig
from cai_kit.judges.rubric import Rubric
from cai_kit.llm.base import GenParams
from cai_kit.prompts import load_prompts
from cai_kit.records import GenerationRecord, PreferenceRecord, PromptRecord, RevisionRecord
from cai_kit.stages.expand import ExpandConfig, ExpandResult, run_expand
from cai_kit.stages.generate import GENERATE_DEFAULTS, run_generate
from cai_kit.stages.infer import (
    InferConfig,
    InferResult,
    build_constitution,
    load_labelled_pairs,
    run_infer,
)
from cai_kit.stages.prefs import PREFS_DEFAULTS, load_pairs, run_judge_file, run_prefs
from cai_kit.stages.revise import (
    REVISE_DEFAULTS,
    backend_identities,
    revise_config,
    revision_record_id,
    run_revise,
)


def revise(
    prompts: Prompts,
    constitution: ConstitutionLike = "harmless",
    *,
    model: Model = "local",
    critic_model: Model | None = None,
    api_base: str | None = None,
    rounds: int = REVISE_DEFAULTS.rounds,
    principles: str = REVISE_DEFAULTS.principles,
    temperature: float = REVISE_DEFAULTS.temperature,
    max_tokens: int = REVISE_DEFAULTS.max_tokens,
    seed: int = REVISE_DEFAULTS.seed,
    reasoning_effort: str | None = None,
    early_stop: bool = False,
    few_shot: bool = True,
    out: str | Path | None = None,
    max_cost: float | None = None,
    budget: Budget | None = None,
    engine: EngineConfig | None = None,
    quiet: bool = False,
    progress: ProgressFn | None = None,
) -> Records[RevisionRecord]:
    """Critique and revise a response to each prompt under the constitution (`cai-kit revise`)."""
    const = as_constitution(constitution)
    cfg = revise_config(const, rounds=rounds, principles=principles, temperature=temperature,
                        max_tokens=max_tokens, seed=seed, reasoning_effort=reasoning_effort,
                        early_stop=early_stop, few_shot=few_shot)  # fmt: skip
    records = as_prompts(prompts)
    responder = as_backend(model, api_base)
    critic = responder if critic_model is None else as_backend(critic_model, api_base)
    models = {"responder": model_name(model), "critic": model_name(critic_model or model)}
    config = engine_config(engine, max_cost, budget, quiet, progress)
    ids = backend_identities(responder, critic)
    with run_dir(out) as where:
        summary = run_revise(records, cfg, responder=responder, critic=critic, models=models,
                             out_dir=where, engine_config=config)  # fmt: skip
        done = latest_by_id(where / "revisions.jsonl", RevisionRecord)
        wanted = [revision_record_id(p, cfg, ids) for p in records]
        return _records([done[i] for i in wanted if i in done], summary, out)


def generate(
    prompts: Prompts,
    *,
    model: Model = "local",
    api_base: str | None = None,
    samples: int = GENERATE_DEFAULTS.samples,
    temperature: float = GENERATE_DEFAULTS.temperature,
    max_tokens: int = GENERATE_DEFAULTS.max_tokens,
    seed: int = GENERATE_DEFAULTS.seed,
    reasoning_effort: str | None = None,
    out: str | Path | None = None,
    max_cost: float | None = None,
    budget: Budget | None = None,
    engine: EngineConfig | None = None,
    quiet: bool = False,
    progress: ProgressFn | None = None,
) -> Records[GenerationRecord]:
    """`samples` responses per prompt, each its own draw (`cai-kit generate`)."""
    records = as_prompts(prompts)
    backend = as_backend(model, api_base)
    params = GenParams(temperature=temperature, max_tokens=max_tokens, seed=seed, reasoning_effort=reasoning_effort)  # fmt: skip
    config = engine_config(engine, max_cost, budget, quiet, progress)
    with run_dir(out) as where:
        summary = run_generate(records, backend=backend, model=model_name(model), params=params,
                               samples=samples, out_dir=where, engine_config=config)  # fmt: skip
        return _records(
            _of_prompts(where / "generations.jsonl", GenerationRecord, records), summary, out
        )


def prefs(
    prompts: Prompts,
    constitution: ConstitutionLike = "harmless",
    *,
    model: Model = "local",
    judge_model: Model | None = None,
    api_base: str | None = None,
    k: int = PREFS_DEFAULTS.k,
    pairs: str = PREFS_DEFAULTS.pairs,
    label: str = PREFS_DEFAULTS.label,
    judge: JudgeConfig | None = None,
    rubric_combine: str | None = None,
    temperature: float = PREFS_DEFAULTS.temperature,
    max_tokens: int = PREFS_DEFAULTS.max_tokens,
    seed: int = PREFS_DEFAULTS.seed,
    reasoning_effort: str | None = None,
    out: str | Path | None = None,
    max_cost: float | None = None,
    budget: Budget | None = None,
    engine: EngineConfig | None = None,
    quiet: bool = False,
    progress: ProgressFn | None = None,
) -> Records[PreferenceRecord]:
    """Sample k responses per prompt from `model` and label pairs: by the pairwise judge
    (`judge_model`, default `model`; both orders) or, with `label="rubric"`, by the
    constitution's rubric scores (`cai-kit prefs`). `.summary` is (sampling, judging)."""
    if rubric_combine is not None and label != "rubric":
        raise ConfigError("rubric_combine applies to label='rubric' only.")
    const = as_constitution(constitution)
    cfg = judge or JudgeConfig(seed=seed)
    rubric = Rubric(const, rubric_combine, seed=seed) if label == "rubric" else None
    records = as_prompts(prompts)
    policy = as_backend(model, api_base)
    judge_backend = policy if judge_model is None else as_backend(judge_model, api_base)
    models = {"policy": model_name(model), "judge": model_name(judge_model or model)}
    params = GenParams(temperature=temperature, max_tokens=max_tokens, seed=seed, reasoning_effort=reasoning_effort)  # fmt: skip
    config = engine_config(engine, max_cost, budget, quiet, progress)
    with run_dir(out) as where:
        summaries = run_prefs(records, policy=policy, judge=judge_backend, models=models,
                              constitution=const, cfg=cfg, k=k, pairs=pairs, policy_params=params,
                              out_dir=where, engine_config=config, label=label, rubric=rubric)  # fmt: skip
        return _records(
            _of_prompts(where / "prefs.jsonl", PreferenceRecord, records), summaries, out
        )


def judge(
    pairs: str | Path | list[dict[str, Any]],
    constitution: ConstitutionLike = "harmless",
    *,
    model: Model = "local",
    api_base: str | None = None,
    config: JudgeConfig | None = None,
    out: str | Path | None = None,
    max_cost: float | None = None,
    budget: Budget | None = None,
    engine: EngineConfig | None = None,
    quiet: bool = False,
    progress: ProgressFn | None = None,
) -> Records[PreferenceRecord]:
    """Label existing pairs with the AI judge, both orders (`cai-kit judge`). `pairs`: a file
    (pairs JSONL or a revisions.jsonl) or rows with prompt + response_a/response_b (or
    chosen/rejected)."""
    backend = as_backend(model, api_base)
    ec = engine_config(engine, max_cost, budget, quiet, progress)
    with run_dir(out) as where:
        if not isinstance(pairs, (str, Path)):  # rows: read by the same reader as a file
            path = where / "pairs.input.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in pairs), encoding="utf-8")
            pairs = path
        summary = run_judge_file(load_pairs(Path(pairs)), judge=backend, models={"judge": model_name(model)},
                                 constitution=as_constitution(constitution), cfg=config or JudgeConfig(),
                                 out_dir=where, engine_config=ec)  # fmt: skip
        return _records(
            list(latest_by_id(where / "prefs.jsonl", PreferenceRecord).values()), summary, out
        )


def expand_prompts(
    seeds: Prompts,
    *,
    model: Model = "local",
    judge_model: Model | None = None,
    api_base: str | None = None,
    config: ExpandConfig | None = None,
    out: str | Path | None = None,
    max_cost: float | None = None,
    budget: Budget | None = None,
    engine: EngineConfig | None = None,
    quiet: bool = False,
    progress: ProgressFn | None = None,
) -> Records[PromptRecord]:
    """New prompts in the style and spread of the seeds, deduplicated (`cai-kit prompts
    expand`); `config=ExpandConfig(n=...)` holds the stage's settings and defaults.
    `.summary` is the `ExpandResult`."""
    cfg = config or ExpandConfig()
    backend = as_backend(model, api_base)
    keeper = backend if judge_model is None else as_backend(judge_model, api_base)
    models = {"generator": model_name(model)} | (
        {"judge": model_name(judge_model or model)} if cfg.keep_if else {}
    )
    ec = engine_config(engine, max_cost, budget, quiet, progress)
    with run_dir(out) as where:
        result: ExpandResult = run_expand(as_prompts(seeds), backend=backend, judge=keeper, models=models,
                                          cfg=cfg, out_dir=where, engine_config=ec)  # fmt: skip
        made = where / "prompts.jsonl"
        rows = load_prompts(str(made)).records if made.is_file() and made.stat().st_size else []
        return _records(rows, result, out)


def infer_constitution(
    pairs: str | Path,
    *,
    name: str = "inferred",
    model: Model = "local",
    judge_model: Model | None = None,
    api_base: str | None = None,
    config: InferConfig | None = None,
    out: str | Path | None = None,
    max_cost: float | None = None,
    budget: Budget | None = None,
    engine: EngineConfig | None = None,
    quiet: bool = False,
    progress: ProgressFn | None = None,
) -> tuple[Constitution | None, InferResult]:
    """Principles that explain labelled pairs (Inverse Constitutional AI, `cai-kit
    constitution infer`): the kept ones as a `Constitution` (None when none passed), and the
    scores of every candidate. `pairs`: prefs.jsonl, labels, gold pairs."""
    cfg = config or InferConfig()
    backend = as_backend(model, api_base)
    scorer = backend if judge_model is None else as_backend(judge_model, api_base)
    models = {"proposer": model_name(model), "judge": model_name(judge_model or model)}
    ec = engine_config(engine, max_cost, budget, quiet, progress)
    with run_dir(out) as where:
        result = run_infer(load_labelled_pairs(Path(pairs)), backend=backend, judge=scorer, models=models,
                           cfg=cfg, work=where, engine_config=ec, source=str(pairs))  # fmt: skip
    return build_constitution(result, name, str(pairs), models), result


def _of_prompts(path: Path, kind: type[Any], prompts: list[PromptRecord]) -> list[Any]:
    """The latest record of each id in `path` that belongs to one of these prompts."""
    ids = {p.id for p in prompts}
    return [r for r in latest_by_id(path, kind).values() if r.prompt_id in ids]


def _records(rows: list[Any], summary: Any, out: str | Path | None) -> Records[Any]:
    result: Records[Any] = Records(rows)
    result.summary, result.run_dir = summary, None if out is None else Path(out)
    return result
