"""`cai-kit prefs`, `cai-kit judge`, `cai-kit judge-report`: RLAIF preference labels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cai_kit.cli.common import (
    EXIT_CODES_HELP,
    NO_SEPARATE_JUDGE,
    ApiBaseOpt,
    LimitOpt,
    MaxTokensOpt,
    SeedOpt,
    ShardOpt,
    TemperatureOpt,
    check_judge_mode,
    check_reasoning,
    engine_config_from,
    exit_for,
    fail,
    job_backend,
    job_flags,
    keys_needed,
    parse_shard,
    replay_argv,
)
from cai_kit.cli.reward_flags import RubricCombine
from cai_kit.stages.prefs import PREFS_DEFAULTS as P

JudgeModel = Annotated[
    str, typer.Option("--judge-model", "-j", help="The judge model string (default: local).")
]
JudgeApiBase = Annotated[
    str | None,
    typer.Option("--judge-api-base", help="Base URL for the judge (default: --api-base)."),
]
Mode = Annotated[
    str,
    typer.Option(
        "--mode", help="logprobs (soft labels; falls back to the letter) | letter | cot | votes."
    ),
]
Samples = Annotated[
    int, typer.Option("--samples", help="Votes per order in --mode votes (self-consistency).")
]
Principles = Annotated[
    str,
    typer.Option(
        "--principles",
        help="one (sampled per pair) | all | sample:N (N >= 1): each judged in both orders, averaged.",
    ),
]
TieMargin = Annotated[float, typer.Option("--tie-margin", help="|P(A) - 0.5| below this is a tie.")]
Constitution = Annotated[
    str, typer.Option("--constitution", "-c", help="Shipped name or YAML file.")
]
Out = Annotated[
    Path, typer.Option("--out", "-o", help="Run directory (prefs.jsonl + manifest.json).")
]


def _judge_cfg(mode: str, samples: int, principles: str, tie_margin: float, seed: int):  # type: ignore[no-untyped-def]
    """The judge's config; it checks itself (a bad value: a ConfigError, one red line)."""
    from cai_kit.judges.pairwise import JudgeConfig

    return JudgeConfig(mode=mode, samples=samples, principles=principles, tie_margin=tie_margin,  # type: ignore[arg-type]
                       seed=seed)  # fmt: skip


@job_flags()
def prefs(
    prompts: Annotated[str, typer.Argument(help="Prompt file or hf:NAME[:split][:column].")],
    out: Out,
    policy_model: Annotated[str, typer.Option("--policy-model", "-p", help="The model whose responses are compared.")] = "local",
    judge_model: JudgeModel = "local",
    api_base: ApiBaseOpt = None,
    judge_api_base: JudgeApiBase = None,
    constitution: Constitution = "harmless",
    k: Annotated[int, typer.Option("--k", min=2, max=8, help="Responses sampled per prompt (2..8).")] = P.k,
    k_max: Annotated[int | None, typer.Option("--k-max", min=2, max=64, help="A prompt whose k samples were all judged alike (no decisive pair) draws more, 2k, 4k, ... up to this many, that prompt only (default: no more).")] = None,
    pairs: Annotated[str, typer.Option("--pairs", help="best-worst | all | random:N (N >= 1).")] = P.pairs,
    mode: Mode = "logprobs",
    samples: Samples = 5,
    principles: Principles = "one",
    tie_margin: TieMargin = 0.05,
    label: Annotated[str, typer.Option("--label", help="pairwise: the judge compares each pair in both orders | rubric: each response scored once by the constitution's rubric, pairs labelled by the score difference (docs/rewards.md).")] = P.label,
    rubric_combine: RubricCombine = None,
    limit: LimitOpt = None,
    on_bad_row: Annotated[str, typer.Option("--on-bad-row", help="fail | skip.")] = "fail",
    temperature: TemperatureOpt = P.temperature,
    max_tokens: MaxTokensOpt = P.max_tokens,
    seed: SeedOpt = P.seed,
    shard: ShardOpt = None,
    **flags: Any,
) -> None:  # fmt: skip
    """Sample k responses per prompt and label pairs with the AI judge (both orders) or by rubric scores."""
    from cai_kit.constitution import load_constitution
    from cai_kit.judges.rubric import Rubric
    from cai_kit.llm.base import GenParams
    from cai_kit.prompts import load_prompts
    from cai_kit.stages.prefs import pair_count, prompts_without_pair, run_prefs

    cfg = _judge_cfg(mode, samples, principles, tie_margin, seed)
    pair_count(pairs)
    if label not in ("pairwise", "rubric"):
        fail(f"--label must be pairwise or rubric, not {label!r}.")
    if rubric_combine is not None and label != "rubric":
        fail("--rubric-combine applies to --label rubric only.")
    const = load_constitution(constitution)
    rubric = Rubric(const, rubric_combine, seed=seed) if label == "rubric" else None
    pset = load_prompts(prompts, on_bad_row=on_bad_row, limit=limit)  # type: ignore[arg-type]
    typer.echo(f"{prompts}: {pset.summary()}", err=True)
    judge_api_base = judge_api_base or api_base
    policy = job_backend(policy_model, api_base, flags)
    judge = (
        policy
        if (judge_model, judge_api_base) == (policy_model, api_base)
        else job_backend(judge_model, judge_api_base, flags)
    )
    check_reasoning(policy, flags, temperature=temperature)
    check_reasoning(judge, flags, judge=True)
    if label == "pairwise":
        check_judge_mode(judge, mode, flags)
    ec = engine_config_from(flags)
    sampled, judged = run_prefs(
        pset.records,
        policy=policy,
        judge=judge,
        models={"policy": policy_model, "judge": judge_model},
        constitution=const,
        cfg=cfg,
        k=k,
        pairs=pairs,
        policy_params=GenParams(
            temperature=temperature,
            max_tokens=max_tokens,
            seed=seed,
            reasoning_effort=flags["reasoning_effort"],
        ),
        out_dir=out,
        engine_config=ec,
        shard=parse_shard(shard),
        argv=replay_argv("prefs"),
        label=label,
        rubric=rubric,
        k_max=k_max,
    )
    typer.echo(f"sampling: {sampled.line()}")
    typer.echo(f"judging:  {judged.line()}")
    if flags["dry_run"]:
        typer.echo(keys_needed((policy_model, api_base), (judge_model, judge_api_base)))
    else:
        alike = len(prompts_without_pair(out, pset.records))
        drew = f" (after drawing up to {k_max} samples)" if k_max and k_max > k else ""
        typer.echo(f"pairs:    {alike} of {len(pset.records)} prompts gave no pair: all their "
                   f"samples were judged alike{drew}.")  # fmt: skip
        typer.echo(f"Wrote {out / 'prefs.jsonl'}; see `cai-kit judge-report {out.resolve()}`")
    exit_for(sampled, judged)


@job_flags(without=NO_SEPARATE_JUDGE)
def judge(
    pairs_file: Annotated[Path, typer.Argument(help="JSONL of pairs (prompt + response_a/response_b or chosen/rejected), or a revisions.jsonl.")],
    out: Out,
    judge_model: JudgeModel = "local",
    api_base: ApiBaseOpt = None,
    constitution: Constitution = "harmless",
    mode: Mode = "logprobs",
    samples: Samples = 5,
    principles: Principles = "one",
    tie_margin: TieMargin = 0.05,
    seed: SeedOpt = 0,
    shard: ShardOpt = None,
    **flags: Any,
) -> None:  # fmt: skip
    """Label existing pairs with the AI judge (e.g. revision vs initial from `revise`)."""
    from cai_kit.constitution import load_constitution
    from cai_kit.stages.prefs import load_pairs, run_judge_file

    cfg = _judge_cfg(mode, samples, principles, tie_margin, seed)
    backend = job_backend(judge_model, api_base, flags)
    check_reasoning(backend, flags, judge=True)
    check_judge_mode(backend, mode, flags)
    ec = engine_config_from(flags)
    summary = run_judge_file(
        load_pairs(pairs_file),
        judge=backend,
        models={"judge": judge_model},
        constitution=load_constitution(constitution),
        cfg=cfg,
        out_dir=out,
        engine_config=ec,
        shard=parse_shard(shard),
        argv=replay_argv("judge"),
    )
    typer.echo(summary.line())
    if flags["dry_run"]:
        typer.echo(keys_needed((judge_model, api_base)))
    exit_for(summary)


def judge_report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory with prefs.jsonl.")],
    gold: Annotated[
        Path | None,
        typer.Option(
            "--gold",
            help="Human-labelled pairs: prompt + response_a, response_b, label A|B|tie (`cai-kit review export-gold` writes these), or TRL prompt/chosen/rejected.",
        ),
    ] = None,
    disagreements: Annotated[
        int,
        typer.Option("--disagreements", min=0, help="Pairs that disagree with gold printed (all are in judge_report.json)."),
    ] = 10,
    review_url: Annotated[
        str,
        typer.Option("--review-url", help="Where `cai-kit review RUN` serves: the disagreeing pairs link there."),
    ] = "http://127.0.0.1:8001",
) -> None:  # fmt: skip
    """Report position consistency, ties, labels, per-principle results, cost and gold agreement."""
    from cai_kit.eval.judge_report import build_report, plot, plot_gold, render

    rep = build_report(run_dir, gold, review_url=review_url)
    typer.echo(render(rep, max_disagreements=disagreements))
    import json

    (run_dir / "judge_report.json").write_text(json.dumps(rep.to_dict(), indent=2))
    plot(rep, run_dir / "judge_report.png")
    wrote = [run_dir / "judge_report.json", run_dir / "judge_report.png"]
    if gold is not None:
        plot_gold(rep, run_dir / "judge_report_gold.png")
        wrote.append(run_dir / "judge_report_gold.png")
    typer.echo("Wrote " + ", ".join(map(str, wrote[:-1])) + f" and {wrote[-1]}")


def register(app: typer.Typer) -> None:
    app.command("prefs", epilog=EXIT_CODES_HELP)(prefs)
    app.command("judge", epilog=EXIT_CODES_HELP)(judge)
    app.command("judge-report")(judge_report)
