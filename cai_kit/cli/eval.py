"""`cai-kit eval winrate | harmlessness | rubric | safety | reward`: did alignment work?

`winrate`, `harmlessness`, `rubric` and `safety` are job commands: they take the engine flags every job command
takes (declared once in `cai_kit.cli.common`) and the judge flags of `cai-kit judge`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cai_kit.cli.common import (
    EXIT_CODES_HELP,
    LimitOpt,
    MaxTokensOpt,
    check_judge_mode,
    check_reasoning,
    exit_for,
    job_flags,
    keys_needed,
)
from cai_kit.cli.judge import Mode, Principles, Samples, TieMargin

# The flags of `harmlessness` and `rubric` (an eval of one model, a baseline beside it).
EvalModelOpt = Annotated[
    str, typer.Option("--model", "-m", help="The model to evaluate (after training).")
]
BaselineOpt = Annotated[
    str | None, typer.Option("--baseline", "-b", help="Before-training model, side by side.")
]
AllApiBaseOpt = Annotated[
    str | None, typer.Option("--api-base", help="OpenAI-compatible base URL for all models.")
]

eval_app = typer.Typer(
    help="Evaluate models: win rate against a baseline, harmlessness and rubric pass rates, harm vs "
    "over-refusal, reward-model accuracy.",
    no_args_is_help=True,
)


def _check_reasoning(built: dict[str, Any], flags: dict[str, Any], **values: Any) -> None:
    """check_reasoning for each role's backend (the judge's effort is --judge-reasoning-effort)."""
    for role, backend in built.items():
        check_reasoning(
            backend, flags, judge=role == "judge", **({} if role == "judge" else values)
        )


@eval_app.command("winrate", epilog=EXIT_CODES_HELP)
@job_flags()
def winrate(
    prompts: Annotated[
        str,
        typer.Option(
            "--prompts", help="Prompt file (a `category` column gives per-category results)."
        ),
    ],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Output directory (report.md, winrate.png, prefs.jsonl)."),
    ],
    model: Annotated[
        str, typer.Option("--model", "-m", help="The model to evaluate (e.g. hf:runs/dpo_model).")
    ],
    baseline: Annotated[
        str, typer.Option("--baseline", "-b", help="The model to compare against.")
    ] = "local",
    judge: Annotated[str, typer.Option("--judge", "-j", help="The judge model.")] = "local",
    api_base: Annotated[
        str | None,
        typer.Option("--api-base", help="OpenAI-compatible base URL for all three models."),
    ] = None,
    constitution: Annotated[
        str, typer.Option("--constitution", "-c", help="Principles the judge applies.")
    ] = "harmless",
    mode: Mode = "logprobs",
    samples: Samples = 5,
    principles: Principles = "one",
    tie_margin: TieMargin = 0.05,
    limit: LimitOpt = None,
    temperature: Annotated[
        float, typer.Option("--temperature", help="Generation temperature.")
    ] = 0.7,
    max_tokens: MaxTokensOpt = 256,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed (generation, principle sampling, bootstrap).")
    ] = 0,
    **flags: Any,
) -> None:
    """Generate from a model and a baseline, judge each pair in both orders, report the win rate."""
    from cai_kit.cli.common import engine_config_from, replay_argv
    from cai_kit.cli.judge import _judge_cfg
    from cai_kit.constitution import load_constitution
    from cai_kit.eval.winrate import run_winrate
    from cai_kit.llm.base import GenParams
    from cai_kit.prompts import load_prompts
    from cai_kit.stages.ties import tie_warning

    cfg = _judge_cfg(mode, samples, principles, tie_margin, seed)
    backend = _backends(api_base, flags)
    built = {
        role: backend(name)
        for role, name in (("model", model), ("baseline", baseline), ("judge", judge))
    }
    _check_reasoning(built, flags, temperature=temperature)
    check_judge_mode(built["judge"], mode, flags)
    summary, rep = run_winrate(
        load_prompts(prompts, limit=limit).records, model=built["model"], baseline=built["baseline"], judge=built["judge"],
        models={"model": model, "baseline": baseline, "judge": judge}, constitution=load_constitution(constitution),
        cfg=cfg, params=GenParams(temperature=temperature, max_tokens=max_tokens, seed=seed,
                                  reasoning_effort=flags["reasoning_effort"]), out_dir=out,
        engine_config=engine_config_from(flags), argv=replay_argv("eval"),
    )  # fmt: skip
    typer.echo(summary.line())
    if flags["dry_run"]:
        typer.echo(keys_needed(*((m, api_base) for m in (model, baseline, judge))))
    else:
        rate = (
            "n/a (no pair was judged)"
            if rep.n == rep.failed
            else f"{rep.win_rate:.3f} (95% CI {rep.ci[0]:.3f}-{rep.ci[1]:.3f})"
        )
        typer.echo(f"win rate {rate}; {rep.wins} wins, {rep.ties} ties, {rep.losses} losses, {rep.failed} failed. "
                   f"Report: {out / 'report.md'}")  # fmt: skip
        if warning := tie_warning(rep.outcomes()):
            typer.echo(f"Warning: {warning}", err=True)
    exit_for(summary)


@eval_app.command("harmlessness", epilog=EXIT_CODES_HELP)
@job_flags()
def harmlessness(
    prompts: Annotated[
        str, typer.Option("--prompts", help="Prompt file (e.g. examples/red_team_prompts.jsonl).")
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output directory (report.md, flags.jsonl).")
    ],
    model: EvalModelOpt = "local",
    baseline: BaselineOpt = None,
    judge: Annotated[str, typer.Option("--judge", "-j", help="The judge model.")] = "local",
    api_base: AllApiBaseOpt = None,
    constitution: Annotated[
        str, typer.Option("--constitution", "-c", help="Principles to check.")
    ] = "harmless",
    limit: LimitOpt = None,
    max_tokens: MaxTokensOpt = 256,
    seed: Annotated[int, typer.Option("--seed", help="Generation seed.")] = 0,
    **flags: Any,
) -> None:
    """Share of responses a judge flags under each harmlessness principle, before vs after."""
    from cai_kit.cli.common import engine_config_from, replay_argv
    from cai_kit.constitution import load_constitution
    from cai_kit.eval.harmlessness import run_harmlessness
    from cai_kit.llm.base import GenParams
    from cai_kit.prompts import load_prompts

    backend = _backends(api_base, flags)
    roles = {"model": backend(model), **({"baseline": backend(baseline)} if baseline else {})}
    judged = backend(judge)
    _check_reasoning({**roles, "judge": judged}, flags)
    summary, _ = run_harmlessness(
        load_prompts(prompts, limit=limit).records, models=roles, judge=judged, judge_name=judge,  # type: ignore[arg-type]
        constitution=load_constitution(constitution), params=GenParams(temperature=0.0, max_tokens=max_tokens, seed=seed,
                                                                       reasoning_effort=flags["reasoning_effort"]),
        out_dir=out, engine_config=engine_config_from(flags), argv=replay_argv("eval"),
    )  # fmt: skip
    typer.echo(summary.line())
    if flags["dry_run"]:
        typer.echo(keys_needed(*((m, api_base) for m in (model, baseline or model, judge))))
    else:
        typer.echo(f"Report: {out / 'report.md'}")
    exit_for(summary)


@eval_app.command("rubric", epilog=EXIT_CODES_HELP)
@job_flags()
def rubric(
    prompts: Annotated[str, typer.Option("--prompts", help="Prompt file (held-out prompts).")],
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Output directory (report.md, report.json, rubric.jsonl)."
        ),
    ],
    model: EvalModelOpt = "local",
    baseline: BaselineOpt = None,
    judge: Annotated[
        str | None,
        typer.Option(
            "--judge",
            "-j",
            help="Judge for principles without a check (none needed when every principle has one).",
        ),
    ] = None,
    api_base: AllApiBaseOpt = None,
    constitution: Annotated[
        str, typer.Option("--constitution", "-c", help="The rubric: one item per principle.")
    ] = "harmless",
    combine: Annotated[
        str | None,
        typer.Option(
            "--combine",
            help="mean | min | weighted | all-pass | priority (default: the "
            "constitution's rubric.combine, else mean).",
        ),
    ] = None,
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="A score passes at this (default 0.5).")
    ] = None,
    limit: LimitOpt = None,
    max_tokens: MaxTokensOpt = 256,
    seed: Annotated[int, typer.Option("--seed", help="Generation and bootstrap seed.")] = 0,
    **flags: Any,
) -> None:
    """Per-principle pass rates of a model (and a baseline) under a constitution's rubric."""
    from cai_kit.cli.common import engine_config_from, replay_argv
    from cai_kit.constitution import load_constitution
    from cai_kit.eval.rubric import COMBINED, run_rubric_eval
    from cai_kit.judges.rubric import Rubric
    from cai_kit.llm.base import GenParams
    from cai_kit.prompts import load_prompts

    rub = Rubric(load_constitution(constitution), combine, threshold, seed=seed)
    backend = _backends(api_base, flags)
    roles = {"model": backend(model), **({"baseline": backend(baseline)} if baseline else {})}
    scorer = backend(judge) if judge and rub.needs_judge else None
    _check_reasoning({**roles, **({"judge": scorer} if scorer else {})}, flags)
    summary, rep = run_rubric_eval(
        load_prompts(prompts, limit=limit).records, models=roles, judge=scorer,  # type: ignore[arg-type]
        judge_name=judge, rubric=rub, params=GenParams(temperature=0.0, max_tokens=max_tokens, seed=seed,
                                                       reasoning_effort=flags["reasoning_effort"]),
        out_dir=out, engine_config=engine_config_from(flags), argv=replay_argv("eval"), seed=seed,
    )  # fmt: skip
    typer.echo(summary.line())
    if rep is not None:
        for role in rep.roles:
            r = rep.rates[COMBINED][role]
            rate = "n/a" if r.rate is None else f"{r.rate:.3f} (95% CI {r.ci[0]:.3f}-{r.ci[1]:.3f})"
            typer.echo(
                f"{role}: all principles combined ({rub.combine}) pass rate {rate} over {r.n}"
            )
        w = rep.win_rate
        if w is not None and w["rate"] is not None:
            typer.echo(f"win rate against the baseline {w['rate']:.3f} (95% CI {w['ci'][0]:.3f}-"
                       f"{w['ci'][1]:.3f}): {w['wins']} wins, {w['ties']} ties, {w['losses']} losses")  # fmt: skip
        typer.echo(f"Report: {out / 'report.md'}")
    if flags["dry_run"]:
        typer.echo(keys_needed(*((m, api_base) for m in (model, baseline, judge) if m)))
    exit_for(summary)


@eval_app.command("safety", epilog=EXIT_CODES_HELP)
@job_flags()
def safety(
    model: Annotated[str, typer.Argument(help="The model to evaluate (e.g. hf:runs/dpo_model).")],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Run directory (report.md, report.json, frontier.png, safety.jsonl).",
        ),
    ],
    baseline: Annotated[
        list[str] | None,
        typer.Option(
            "--baseline",
            "-b",
            help="A model to compare with (repeat: base, SFT, DPO ... in order).",
        ),
    ] = None,
    prompts: Annotated[
        str | None,
        typer.Option(
            "--prompts",
            help="Prompt file with a `kind` column (harmful | benign), e.g. "
            "examples/safety/heldout.jsonl.",
        ),
    ] = None,
    prompt_set: Annotated[
        str | None,
        typer.Option(
            "--set",
            help="A public set instead: xstest | strongreject | harmbench | orbench (needs "
            "network once, then cached).",
        ),
    ] = None,
    train_prompts: Annotated[
        list[str] | None,
        typer.Option(
            "--train-prompts",
            help="Training or expanded prompts (repeatable): held-out prompts that "
            "duplicate one are dropped and counted.",
        ),
    ] = None,
    judge: Annotated[str, typer.Option("--judge", "-j", help="The judge model.")] = "local",
    api_base: AllApiBaseOpt = None,
    constitution: Annotated[
        str,
        typer.Option(
            "--constitution",
            "-c",
            help="Principles of the pairwise helpfulness judge; its hard: "
            "true principles are checked on every answer.",
        ),
    ] = "helpful-harmless",
    mode: Mode = "logprobs",
    samples: Samples = 5,
    principles: Principles = "one",
    tie_margin: TieMargin = 0.05,
    limit: LimitOpt = None,
    max_tokens: MaxTokensOpt = 256,
    seed: Annotated[
        int, typer.Option("--seed", help="Generation, principle sampling and bootstrap seed.")
    ] = 0,
    **flags: Any,
) -> None:
    """Harm (harmful prompts complied with) vs over-refusal (benign look-alikes refused), with CIs."""
    from cai_kit.cli.common import engine_config_from, fail, replay_argv
    from cai_kit.cli.judge import _judge_cfg
    from cai_kit.constitution import load_constitution
    from cai_kit.eval.safety import run_safety
    from cai_kit.eval.safety_sets import load_safety_prompts, materialise_set
    from cai_kit.llm.base import GenParams
    from cai_kit.prompts import load_prompts

    if (prompts is None) == (prompt_set is None):
        fail("Give exactly one of --prompts FILE and --set NAME.", 2)
    cfg = _judge_cfg(mode, samples, principles, tie_margin, seed)
    spec = prompts if prompts is not None else str(materialise_set(prompt_set, out))  # type: ignore[arg-type]
    records = load_safety_prompts(spec, limit=limit).records
    train = [r for f in train_prompts or [] for r in load_prompts(f).records]
    backend = _backends(api_base, flags)
    names = [model, *(baseline or [])]
    if len(set(names)) < len(names):
        fail(f"The models {', '.join(names)} name the same model twice: it is the same model; give "
             "each --baseline once, and none equal to the model.")  # fmt: skip
    summary, rep = run_safety(
        records, models={n: backend(n) for n in names}, judge=backend(judge), judge_name=judge,
        constitution=load_constitution(constitution), cfg=cfg,
        params=GenParams(temperature=0.0, max_tokens=max_tokens, seed=seed), out_dir=out,
        engine_config=engine_config_from(flags), train_prompts=train, argv=replay_argv("eval"), seed=seed,
    )  # fmt: skip
    typer.echo(summary.line())
    if rep is None:
        typer.echo(keys_needed(*((m, api_base) for m in (*names, judge))))
    else:
        if rep.dropped:
            typer.echo(
                f"{len(rep.dropped)} held-out prompts dropped as duplicates of training prompts."
            )
        for n in names:
            h, o = rep.harm[n]["comply"], rep.over_refusal[n]["refused"]
            typer.echo(f"{n}: harm {_rate(h)} of harmful prompts complied with; over-refusal {_rate(o)} "
                       f"of benign prompts refused")  # fmt: skip
        for b, w in rep.helpfulness.items():
            if w["win_rate"] is not None:
                typer.echo(f"{model} vs {b}: win rate {w['win_rate']:.3f} (95% CI {w['ci'][0]:.3f}-{w['ci'][1]:.3f}) "
                           "on the benign prompts")  # fmt: skip
        typer.echo(f"Report: {out / 'report.md'}")
    exit_for(summary)


def _rate(cell: dict[str, Any]) -> str:
    if cell["rate"] is None:
        return "n/a"
    return f"{cell['rate']:.3f} (95% CI {cell['ci'][0]:.3f}-{cell['ci'][1]:.3f}, n={cell['n']})"


def _backends(api_base: str | None, flags: dict[str, Any]):  # type: ignore[no-untyped-def]
    """job_backend, once per model string: the same string is the same backend object."""
    from cai_kit.cli.common import job_backend

    made: dict[str, object] = {}

    def backend(name: str):  # type: ignore[no-untyped-def]
        if name not in made:
            made[name] = job_backend(name, api_base, flags)
        return made[name]

    return backend


@eval_app.command("reward")
def reward(
    model: Annotated[Path, typer.Option("--model", "-m", help="A reward model directory.")],
    pairs: Annotated[
        Path, typer.Option("--pairs", help="Held-out pairs (chosen/rejected JSONL or export dir).")
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output directory (report.md, scores.jsonl).")
    ],
) -> None:
    """Reward-model accuracy on held-out pairs (share with r(chosen) > r(rejected))."""
    from cai_kit.train.reward_score import score_pairs

    out.mkdir(parents=True, exist_ok=True)
    res = score_pairs(model, pairs, out / "scores.jsonl")
    (out / "report.md").write_text(f"# Reward model accuracy\n\n`{model}` on `{pairs}`: {res['pairs']} pairs, accuracy "
                                   f"{res['accuracy']:.3f}, mean margin {res['mean_margin']:.4f}.\n")  # fmt: skip
    typer.echo(
        f"accuracy {res['accuracy']:.3f} on {res['pairs']} pairs; report: {out / 'report.md'}"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")
