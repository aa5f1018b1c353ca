"""`cai-kit review RUN`: a local page to read a run and label it; `review export-gold RUN`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup


class _ReviewGroup(TyperGroup):
    """`cai-kit review RUN` means `cai-kit review open RUN` (RUN is not a subcommand's name)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["open", *args]
        return super().parse_args(ctx, args)


review_app = typer.Typer(
    cls=_ReviewGroup,
    help="Read a run's pairs and revisions in a local page and label them (RUN/labels.sqlite). "
    "`cai-kit review RUN` is `cai-kit review open RUN`.",
    no_args_is_help=True,
)

RunArg = Annotated[
    Path, typer.Argument(help="A run directory: the --out of prefs, judge, revise or eval winrate.")
]


@review_app.command("open")
def open_(
    run_dir: RunArg,
    host: Annotated[
        str, typer.Option("--host", help="Address to bind (loopback only).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port (0 picks a free one).")] = 8001,
    labels_db: Annotated[
        Path | None,
        typer.Option(
            "--labels-db", help="SQLite file for the labels (default: RUN/labels.sqlite)."
        ),
    ] = None,
    low_margin: Annotated[
        float, typer.Option("--low-margin", help="The 'low margin' view: judge margin below this.")
    ] = 0.2,
) -> None:
    """Open a local page to read and label RUN's pairs and revisions.

    Pairs show both responses, the verdict, both orders and each principle's call; revisions
    each critique and revision and a word diff. Views (ties, low margin, orders disagree,
    failed, unlabelled), a principle and a text search filter them; keys label them.

    Labels go to RUN/labels.sqlite at once; then `cai-kit review export-gold RUN --out
    gold.jsonl`, `cai-kit judge-report RUN --gold gold.jsonl`, or `cai-kit export dpo RUN
    --prefer-human`.
    """
    import asyncio
    import time

    from cai_kit.cli.common import fail
    from cai_kit.review.app import ReviewConfig, create_review_app
    from cai_kit.review.index import RunIndex
    from cai_kit.review.labels import FILENAME, LabelStore
    from cai_kit.web.guard import is_loopback
    from cai_kit.web.server import start, until_stopped

    if not is_loopback(host):
        fail(
            f"cai-kit review serves the run and writes labels without a key: bind to 127.0.0.1 "
            f"(not {host}) and reach it from elsewhere through an SSH tunnel."
        )
    if not 0 <= low_margin <= 1:
        fail(f"--low-margin must be from 0 to 1, not {low_margin}.")
    t0 = time.perf_counter()
    index = RunIndex.open(run_dir, low_margin=low_margin)
    labels = LabelStore(labels_db or run_dir / FILENAME)
    opened = time.perf_counter() - t0
    app = create_review_app(index, labels, ReviewConfig(host=host))

    async def main() -> None:
        runner, bound = await start(app, host, port)
        shown = f"[{host}]" if ":" in host else host
        sizes = ", ".join(f"{index.counts(k)['views']['all']} {k}s" for k in index.kinds)
        typer.echo(
            f"Reviewing {run_dir} ({sizes}; indexed in {opened:.2f} s) at http://{shown}:{bound}/ ; "
            f"labels -> {labels.path}"
        )
        typer.echo("Stop with Ctrl-C.", err=True)
        await until_stopped(runner)

    try:
        asyncio.run(main())
    finally:
        n = sum(labels.counts(k).get(x, 0) for k in ("pair", "revision") for x in labels.counts(k))
        labels.close()
        index.close()
    typer.echo(f"Stopped. {labels.path}: {n} labels.")


@review_app.command("export-gold")
def export_gold(
    run_dir: RunArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="The gold JSONL to write.")],
    reviewer: Annotated[
        str | None, typer.Option("--reviewer", help="Only this reviewer's labels (default: all).")
    ] = None,
    labels_db: Annotated[
        Path | None,
        typer.Option("--labels-db", help="SQLite file of the labels (default: RUN/labels.sqlite)."),
    ] = None,
) -> None:
    """Write the human pair labels as a gold file for `cai-kit judge-report RUN --gold FILE`.

    Several reviewers of one pair give one row: their unanimous or majority label (a split
    is left out); `both-bad` says nothing about which is better and is left out.
    """
    from cai_kit.review.labels import export_gold as export

    counts = export(run_dir, out, labels_db, reviewer)
    left = ", ".join(f"{n} {why}" for why, n in counts.items() if why != "written" and n)
    typer.echo(
        f"Wrote {counts['written']} gold pairs to {out}" + (f"; left out {left}" if left else "")
    )
    typer.echo(f"Next: cai-kit judge-report {run_dir} --gold {out}")


def register(app: typer.Typer) -> None:
    app.add_typer(review_app, name="review")
