"""`cai-kit retry-failed RUN_DIR`: re-run a job so only its missing or failed rows are called."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def retry_failed(
    run_dir: Annotated[Path, typer.Argument(help="A run directory holding manifest.json.")],
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
    typer.echo("Re-running: " + " ".join(argv), err=True)
    raise typer.Exit(subprocess.call([sys.executable, "-m", "cai_kit", *argv[1:]]))


def register(app: typer.Typer) -> None:
    app.command("retry-failed")(retry_failed)
