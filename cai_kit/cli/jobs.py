"""`cai-kit generate` (k samples per prompt) and `cai-kit retry-failed RUN_DIR`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cai_kit.cli.common import (
    ApiBaseOpt,
    MaxTokensOpt,
    ModelOpt,
    SeedOpt,
    ShardOpt,
    TemperatureOpt,
    job_flags,
)


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
    """Retry only the failed or missing rows of a run (finished rows are cache hits or skipped)."""
    import json
    import subprocess
    import sys

    from cai_kit.cli.common import fail

    manifest = run_dir / "manifest.json"
    if not manifest.is_file():
        fail(f"No manifest.json in {run_dir}: is it a cai-kit run directory?")
    argv = json.loads(manifest.read_text())["argv"]
    if not argv or "***" in " ".join(argv):
        fail(
            f"The manifest in {run_dir} has no replayable command line; re-run the original command."
        )
    if batch_api is not None:
        argv = [a for a in argv if a != "--batch-api"] + (["--batch-api"] if batch_api else [])
    typer.echo("Re-running: " + " ".join(argv), err=True)
    raise typer.Exit(subprocess.call([sys.executable, "-m", "cai_kit", *argv[1:]]))


@job_flags()
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
    ] = 1,
    limit: Annotated[int | None, typer.Option("--limit", help="Only the first N prompts.")] = None,
    on_bad_row: Annotated[str, typer.Option("--on-bad-row", help="fail | skip.")] = "fail",
    temperature: TemperatureOpt = 0.7,
    max_tokens: MaxTokensOpt = 256,
    seed: SeedOpt = 0,
    shard: ShardOpt = None,
    **flags: Any,
) -> None:
    """Sample responses to each prompt (one call per row), resumable and cached."""
    from cai_kit.cli.common import engine_config_from, parse_shard, replay_argv
    from cai_kit.llm.base import GenParams
    from cai_kit.llm.registry import get_backend
    from cai_kit.prompts import load_prompts
    from cai_kit.stages.generate import run_generate

    pset = load_prompts(prompts, on_bad_row=on_bad_row, limit=limit)  # type: ignore[arg-type]
    typer.echo(f"{prompts}: {pset.summary()}", err=True)
    summary = run_generate(
        pset.records,
        backend=get_backend(model, api_base=api_base, timeout_s=flags["timeout"]),
        model=model,
        params=GenParams(temperature=temperature, max_tokens=max_tokens, seed=seed),
        samples=samples,
        out_dir=out,
        engine_config=engine_config_from(flags),
        shard=parse_shard(shard),
        argv=replay_argv("generate"),
    )  # fmt: skip
    typer.echo(summary.line())
    if summary.stopped:
        raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
    app.command("retry-failed")(retry_failed)
