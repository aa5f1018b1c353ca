"""`cai-kit revise`: prompts + constitution -> critique/revision traces (SFT data)."""

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
    ModelOpt,
    SeedOpt,
    ShardOpt,
    TemperatureOpt,
    check_reasoning,
    engine_config_from,
    exit_for,
    job_backend,
    job_flags,
    keys_needed,
    parse_shard,
    replay_argv,
)
from cai_kit.stages.revise import REVISE_DEFAULTS as D


@job_flags(without=NO_SEPARATE_JUDGE)
def revise(
    prompts: Annotated[
        str,
        typer.Argument(
            help="Prompt file (.jsonl/.json/.csv/.parquet/.txt) or hf:NAME[:split][:column]."
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Run directory (revisions.jsonl + manifest.json).")
    ],
    constitution: Annotated[
        str, typer.Option("--constitution", "-c", help="Shipped name or YAML file.")
    ] = "harmless",
    model: ModelOpt = "local",
    api_base: ApiBaseOpt = None,
    critic_model: Annotated[
        str | None,
        typer.Option(
            "--critic-model", help="Model for critiques and revisions (default: --model)."
        ),
    ] = None,
    critic_api_base: Annotated[
        str | None,
        typer.Option(
            "--critic-api-base", help="Base URL for --critic-model (default: --api-base)."
        ),
    ] = None,
    rounds: Annotated[
        int, typer.Option("--rounds", "-r", min=0, help="Critique→revision rounds per prompt.")
    ] = D.rounds,
    principles: Annotated[
        str,
        typer.Option(
            "--principles", help="random (one per round, as in the CAI paper) | sequence | all."
        ),
    ] = D.principles,
    early_stop: Annotated[
        bool,
        typer.Option(
            "--early-stop", help="Skip a revision when the critic says there is no problem."
        ),
    ] = False,
    no_few_shot: Annotated[
        bool,
        typer.Option("--no-few-shot", help="Don't put the constitution's few-shot examples first."),
    ] = False,
    column: Annotated[
        str | None, typer.Option("--column", help="Prompt column (default: prompt or messages).")
    ] = None,
    split: Annotated[
        str | None, typer.Option("--split", help="Dataset split for hf: inputs.")
    ] = None,
    limit: LimitOpt = None,
    on_bad_row: Annotated[
        str,
        typer.Option("--on-bad-row", help="fail (default: report all bad rows, then stop) | skip."),
    ] = "fail",
    max_prompt_chars: Annotated[
        int | None,
        typer.Option("--max-prompt-chars", help="Skip (and report) prompts longer than this."),
    ] = None,
    temperature: TemperatureOpt = D.temperature,
    max_tokens: MaxTokensOpt = D.max_tokens,
    seed: SeedOpt = D.seed,
    shard: ShardOpt = None,
    **flags: Any,
) -> None:
    """Critique and revise responses to each prompt under a constitution (SFT data)."""
    from cai_kit.cli.common import fail
    from cai_kit.constitution import load_constitution
    from cai_kit.prompts import load_prompts
    from cai_kit.stages.revise import check_mode, revise_config, run_revise

    check_mode(principles)  # the config's own check, before any model is loaded
    if on_bad_row not in ("fail", "skip"):
        fail(f"--on-bad-row must be fail or skip, not {on_bad_row!r}.")
    const = load_constitution(constitution)
    pset = load_prompts(prompts, column=column, split=split, on_bad_row=on_bad_row,  # type: ignore[arg-type]
                        max_prompt_chars=max_prompt_chars, limit=limit)  # fmt: skip
    typer.echo(f"{prompts}: {pset.summary()}", err=True)
    critic_model = critic_model or model
    critic_api_base = critic_api_base or api_base
    responder = job_backend(model, api_base, flags)
    critic = (
        responder
        if (critic_model, critic_api_base) == (model, api_base)
        else job_backend(critic_model, critic_api_base, flags)
    )
    for backend in {id(b): b for b in (responder, critic)}.values():
        check_reasoning(backend, flags, temperature=temperature)
    cfg = revise_config(const, rounds=rounds, principles=principles, temperature=temperature,
                        max_tokens=max_tokens, seed=seed, reasoning_effort=flags["reasoning_effort"],
                        early_stop=early_stop, few_shot=not no_few_shot)  # fmt: skip
    summary = run_revise(
        pset.records, cfg,
        responder=responder, critic=critic,
        models={"responder": model, "critic": critic_model},
        out_dir=out,
        engine_config=engine_config_from(flags),
        shard=parse_shard(shard),
        argv=replay_argv("revise"),
        inputs={"prompts": prompts, "prompt_report": pset.summary()},
    )  # fmt: skip
    typer.echo(summary.line())
    if flags["dry_run"]:
        typer.echo(keys_needed((model, api_base), (critic_model, critic_api_base)))
    else:
        typer.echo(f"Wrote {out / 'revisions.jsonl'}")
    exit_for(summary)


def register(app: typer.Typer) -> None:
    app.command("revise", epilog=EXIT_CODES_HELP)(revise)
