"""`cai-kit pipeline RECIPE`: [expand ->] revise -> SFT -> preferences [-> infer] -> DPO -> held-out
eval, from one YAML file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cai_kit.cli.common import EXIT_CODES_HELP


def pipeline(
    recipe: Annotated[
        Path,
        typer.Argument(
            help="Recipe YAML (see examples/recipes/local_tiny.yaml). Relative paths inside it "
            "(prompts, eval_prompts, a constitution file, hf:PATH models) are read from the "
            "recipe's folder, not the current directory; a shipped constitution name stays "
            "the shipped one."
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Run directory holding every stage's outputs and report.md; like every "
            "command-line path it is relative to the current directory.",
        ),
    ],
    only: Annotated[
        str | None,
        typer.Option(
            "--only",
            help="Run just this stage (even if done; a finished job stage makes no call), "
            "e.g. expand, revise, infer, train-dpo, eval.",
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="List the stages with their models, calls, tokens and cost (synchronous and "
            "Batch API); run nothing.",
        ),
    ] = False,
    max_cost: Annotated[
        float | None,
        typer.Option(
            "--max-cost",
            min=0,
            help="USD cap for the whole pipeline, every stage together, per invocation (a "
            "re-run gets the cap anew); overrides the recipe's max_cost. The stages share one "
            "ledger (RUN/budget.json); a stage it stops ends the pipeline (exit 4).",
        ),
    ] = None,
) -> None:
    """Run the whole Constitutional AI pipeline from a recipe; finished stages are skipped."""
    from cai_kit.engine.jobs import EXIT_STOPPED
    from cai_kit.errors import BudgetExceeded
    from cai_kit.pipeline.run import STAGE_PARTIAL, run_pipeline

    try:
        ran = run_pipeline(recipe, out, only, dry_run, max_cost=max_cost)
    except BudgetExceeded as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(EXIT_STOPPED) from None
    if not dry_run:
        typer.echo(f"{len(ran.stages)} stage(s) ran. Report: {out / 'report.md'}")
    if ran.partial:  # every stage ran; these kept going past failed rows
        typer.echo(
            f"Some rows failed in: {', '.join(ran.partial)} (see {out / 'logs'}); "
            f"`cai-kit pipeline {recipe} --out {out} --only STAGE` retries a stage's failed rows.",
            err=True,
        )
        raise typer.Exit(STAGE_PARTIAL)


def register(app: typer.Typer) -> None:
    app.command("pipeline", epilog=EXIT_CODES_HELP)(pipeline)
