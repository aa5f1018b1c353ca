"""`cai-kit prompts expand`: new prompts in the style and spread of a seed file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cai_kit.cli.common import (
    EXIT_CODES_HELP,
    ApiBaseOpt,
    MaxTokensOpt,
    ModelOpt,
    SeedOpt,
    TemperatureOpt,
    engine_config_from,
    job_flags,
    replay_argv,
)

prompts_app = typer.Typer(help="Work on prompt files: expand a seed file.", no_args_is_help=True)


@prompts_app.command("expand", epilog=EXIT_CODES_HELP)
@job_flags()
def expand(
    seed_file: Annotated[str, typer.Argument(help="The seed prompt file (any format `generate` reads).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory: prompts.jsonl (the new prompts), calls.jsonl, keep.jsonl, expand_report.json, manifest.json.")],
    n: Annotated[int, typer.Option("--n", min=1, help="How many new prompts to write.")] = 100,
    model: ModelOpt = "local",
    judge_model: Annotated[str | None, typer.Option("--judge-model", "-j", help="The model that answers --keep-if (default: --model).")] = None,
    api_base: ApiBaseOpt = None,
    keep_if: Annotated[str | None, typer.Option("--keep-if", help="Keep only prompts that match this description, asked of the judge as a yes/no question, e.g. \"asks for something harmful\".")] = None,
    per_call: Annotated[int, typer.Option("--per-call", min=1, max=50, help="New prompts asked for per call.")] = 5,
    shots: Annotated[int, typer.Option("--shots", min=1, max=50, help="Seed prompts shown per call (sampled per call).")] = 5,
    oversample: Annotated[float, typer.Option("--oversample", min=1.0, help="First round: calls for this many times --n prompts (duplicates and --keep-if remove some).")] = 1.3,
    max_rounds: Annotated[int, typer.Option("--max-rounds", min=1, help="More rounds of calls while fewer than --n prompts survive.")] = 3,
    similarity: Annotated[float, typer.Option("--similarity", min=0.05, max=1.0, help="Jaccard (words and word pairs, MinHash) at which two prompts are near-duplicates.")] = 0.7,
    topic_column: Annotated[str, typer.Option("--topic-column", help="The seed column whose values are rotated as topics, one per call.")] = "category",
    on_bad_row: Annotated[str, typer.Option("--on-bad-row", help="fail | skip (bad rows of the seed file).")] = "fail",
    temperature: TemperatureOpt = 1.0,
    max_tokens: MaxTokensOpt = 512,
    seed: SeedOpt = 0,
    **flags: Any,
) -> None:  # fmt: skip
    """Write --n new prompts in the style and spread of SEED: few-shot generation with a
    per-call seed, topics rotated, exact and near duplicates removed, optional --keep-if."""
    from cai_kit.cli.common import check_reasoning, exit_for, fail, job_backend, keys_needed
    from cai_kit.llm.base import GenParams
    from cai_kit.prompts import load_prompts
    from cai_kit.stages.expand import ExpandConfig, run_expand

    if on_bad_row not in ("fail", "skip"):
        fail(f"--on-bad-row must be fail or skip, not {on_bad_row!r}.")
    pset = load_prompts(seed_file, on_bad_row=on_bad_row)  # type: ignore[arg-type]
    typer.echo(f"{seed_file}: {pset.summary()}", err=True)
    cfg = ExpandConfig(
        n=n, per_call=per_call, shots=shots, oversample=oversample, max_rounds=max_rounds,
        similarity=similarity, keep_if=keep_if, topic_column=topic_column, seed=seed,
        params=GenParams(temperature=temperature, max_tokens=max_tokens, seed=seed,
                         reasoning_effort=flags["reasoning_effort"]),
    )  # fmt: skip
    judge_model = judge_model or model
    backend = job_backend(model, api_base, flags)
    judge = backend if judge_model == model else job_backend(judge_model, api_base, flags)
    check_reasoning(backend, flags, temperature=temperature)
    if keep_if:
        check_reasoning(judge, flags, judge=True)
    models = {"generator": model} | ({"judge": judge_model} if keep_if else {})
    result = run_expand(
        pset.records, backend=backend, judge=judge, models=models, cfg=cfg, out_dir=out,
        engine_config=engine_config_from(flags), source=seed_file, argv=replay_argv("prompts"),
    )  # fmt: skip
    for i, (gen, keep) in enumerate(result.rounds, 1):
        typer.echo(f"round {i} generate: {gen.line()}")
        if keep is not None:
            typer.echo(f"round {i} keep-if:  {keep.line()}")
    summaries = [x for pair in result.rounds for x in pair if x is not None]
    if flags["dry_run"]:
        typer.echo(keys_needed((model, api_base), (judge_model, api_base)))
        if max_rounds > 1:
            typer.echo("(the first round; more rounds only if duplicates or --keep-if leave fewer than --n)")  # fmt: skip
        return
    if result.waiting:
        typer.echo(
            f"Not written yet: {result.waiting.rstrip('.')}. Re-run the same command to finish."
        )
        exit_for(*summaries)  # 4 when --max-cost stopped it, 1 when no row was done, ...
        raise typer.Exit(1)
    typer.echo(f"expand: {result.line()}")
    if result.written < n:
        typer.secho(f"Only {result.written} of {n} prompts survived {max_rounds} round(s); "
                    "raise --max-rounds or --oversample, or loosen --keep-if.", fg="yellow", err=True)  # fmt: skip
    exit_for(*summaries)  # 3 when some calls failed (a re-run redoes them)


def register(app: typer.Typer) -> None:
    app.add_typer(prompts_app, name="prompts")
