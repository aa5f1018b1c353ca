"""`cai-kit batches list RUN` and `cai-kit batches cancel RUN [BATCH_ID]`: a run's open Batch
API jobs (the library: `cai_kit.engine.batch_admin`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

batches_app = typer.Typer(
    help="A run's open Batch API jobs (--batch-api): list them, or cancel them at the provider.",
    no_args_is_help=True,
)

RunArg = Annotated[Path, typer.Argument(help="A run directory (the --out of a --batch-api job).")]


@batches_app.command("list")
def list_(run_dir: RunArg) -> None:
    """Show the run's open batches and what each holds against --max-cost.

    One line a batch: its id, provider, requests, status at the provider, and the worst case
    it holds against --max-cost until it ends (reserved by every run of the directory)."""
    from cai_kit.engine.batch_admin import open_batches, with_status
    from cai_kit.engine.loop import run_sync

    found = run_sync(with_status(open_batches(run_dir)))
    if not found:
        typer.echo(f"{run_dir} has no open batches.")
        return
    for b in found:
        held = "not recorded" if b.reserved is None else f"${b.reserved:.4f}"
        typer.echo(f"{b.batch_id or '(wave ' + b.tag + ')'}  {b.provider}  "
                   f"{b.requests} requests  {b.status}  reserved {held}")  # fmt: skip
    typer.echo(
        f"`cai-kit batches cancel {run_dir}` cancels them; a re-run of the job collects them."
    )


@batches_app.command("cancel")
def cancel(
    run_dir: RunArg,
    batch_id: Annotated[
        str | None, typer.Argument(help="One batch id (from `batches list`); default: all.")
    ] = None,
) -> None:
    """Cancel the run's open batches (or one) at the provider and wait for it to confirm.

    What a batch answered before it stopped is kept in the run's call cache (a re-run does not
    pay for it again) and the batch is closed in the run's ledger, so no later run holds its
    worst case against --max-cost: the provider bills what it answered. A re-run (or
    `cai-kit retry-failed RUN`) sends the calls it did not answer."""
    from cai_kit.engine.batch_admin import cancel_batches, run_engine_config
    from cai_kit.engine.loop import run_sync

    done = run_sync(cancel_batches(run_dir, batch_id, run_engine_config(run_dir)))
    if not done:
        typer.echo(f"{run_dir} has no open batches.")
    for b in done:
        typer.echo(f"{b.batch_id or '(wave ' + b.tag + ')'}  {b.provider}  {b.status}")


def register(app: typer.Typer) -> None:
    app.add_typer(batches_app, name="batches")
