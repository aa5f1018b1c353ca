"""`cai-kit generate` (k samples per prompt) and `cai-kit retry-failed RUN_DIR`."""

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
    exit_for,
    job_backend,
    job_flags,
    keys_needed,
)
from cai_kit.stages.generate import GENERATE_DEFAULTS as G


def retry_failed(
    run_dir: Annotated[Path, typer.Argument(help="A run directory holding manifest.json.")],
    batch_api: Annotated[
        bool | None,
        typer.Option(
            "--batch-api/--sync",
            help="Redo the failed calls as a new Batch API job, or synchronously "
            "(default: as the run did).",
        ),
    ] = None,
) -> None:
    """Retry only the failed or missing rows of a run, from any directory.

    Finished rows are cache hits or skipped; the saved command line runs where the run started."""
    import json
    import subprocess
    import sys

    from cai_kit.cli.common import fail

    manifest = run_dir / "manifest.json"
    if not manifest.is_file():
        fail(f"No manifest.json in {run_dir}: is it a cai-kit run directory?")
    saved = json.loads(manifest.read_text())
    argv, cwd = saved["argv"], saved.get("cwd")  # (manifests before cwd: from here)
    if not argv or "***" in " ".join(argv):
        fail(
            f"The manifest in {run_dir} has no replayable command line; re-run the original command."
        )
    if cwd is not None and not Path(cwd).is_dir():
        fail(
            f"The run in {run_dir} started in {cwd}, which is gone, and its command line's "
            "paths are relative to it; re-run the original command."
        )
    if batch_api is not None:
        argv = [a for a in argv if a != "--batch-api"] + (["--batch-api"] if batch_api else [])
    # the command line's relative paths are relative to where the run started
    typer.echo(f"Re-running in {cwd or Path.cwd()}: " + " ".join(argv), err=True)
    raise typer.Exit(subprocess.call([sys.executable, "-m", "cai_kit", *argv[1:]], cwd=cwd))


@job_flags(without=NO_SEPARATE_JUDGE)
def generate(
    prompts: Annotated[
        str, typer.Argument(help="Prompt file (.jsonl/.json/.csv/.parquet/.txt) or hf:NAME.")
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Run directory (generations.jsonl + manifest.json).")
    ],
    model: ModelOpt = "local",
    api_base: ApiBaseOpt = None,
    samples: Annotated[
        int, typer.Option("--samples", "-k", min=1, help="Responses per prompt.")
    ] = G.samples,
    limit: LimitOpt = None,
    on_bad_row: Annotated[str, typer.Option("--on-bad-row", help="fail | skip.")] = "fail",
    temperature: TemperatureOpt = G.temperature,
    max_tokens: MaxTokensOpt = G.max_tokens,
    seed: SeedOpt = G.seed,
    shard: ShardOpt = None,
    **flags: Any,
) -> None:
    """Sample responses to each prompt (one call per row), resumable and cached."""
    from cai_kit.cli.common import engine_config_from, parse_shard, replay_argv
    from cai_kit.llm.base import GenParams
    from cai_kit.prompts import load_prompts
    from cai_kit.stages.generate import run_generate

    pset = load_prompts(prompts, on_bad_row=on_bad_row, limit=limit)  # type: ignore[arg-type]
    typer.echo(f"{prompts}: {pset.summary()}", err=True)
    backend = job_backend(model, api_base, flags)
    check_reasoning(backend, flags, temperature=temperature)
    summary = run_generate(
        pset.records,
        backend=backend,
        model=model,
        params=GenParams(temperature=temperature, max_tokens=max_tokens, seed=seed,
                         reasoning_effort=flags["reasoning_effort"]),
        samples=samples,
        out_dir=out,
        engine_config=engine_config_from(flags),
        shard=parse_shard(shard),
        argv=replay_argv("generate"),
    )  # fmt: skip
    typer.echo(summary.line())
    if flags["dry_run"]:
        typer.echo(keys_needed((model, api_base)))
    exit_for(summary)


def register(app: typer.Typer) -> None:
    app.command("generate", epilog=EXIT_CODES_HELP)(generate)
    app.command("retry-failed", epilog=EXIT_CODES_HELP)(retry_failed)
