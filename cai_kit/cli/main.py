"""`cai-kit`: the entry point. Command modules register themselves on the root app.

Each module in `COMMAND_MODULES` defines `register(app: typer.Typer) -> None` and keeps its
top level light (typer and the standard library only) so that `cai-kit --help` stays fast:
heavy imports happen inside the command functions.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Annotated

import typer
from typer.core import TyperGroup

from cai_kit._version import __version__
from cai_kit.cli.common import EXIT_CODES_HELP
from cai_kit.errors import CaiKitError, redact

# litellm fetches a price list over the network at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

COMMAND_MODULES = (
    "basic",  # chat, models
    "constitution",  # constitution list | show | validate | new | infer | diff
    "prompts",  # prompts expand
    "revise",  # revise
    "judge",  # prefs, judge, judge-report
    "export",  # export sft | prefs | dpo | kto | reward
    "jobs",  # retry-failed
    "batches",  # batches list | cancel (a run's open Batch API jobs)
    "train",  # train sft | reward | dpo | kto | orpo | ppo | spin | online-dpo, reward score
    "rl",  # train ppo | spin | online-dpo (adds to the train group)
    "eval",  # eval winrate | harmlessness | reward
    "pipeline",  # pipeline RECIPE
    "serve",  # serve MODEL (OpenAI-compatible API + feedback page)
    "review",  # review RUN (read and label a run in a local page), review export-gold
)


class _Root(TyperGroup):
    """Turns a user error (CaiKitError) into one red line and exit code 1, for every command."""

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except CaiKitError as exc:
            typer.secho(f"Error: {redact(str(exc))}", fg="red", err=True)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_Root,
    name="cai-kit",
    help="Constitutional AI and RLAIF: critique-revise SFT data, AI-judged preferences, local training.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cai-kit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Constitutional AI and RLAIF: critique-revise SFT data, AI-judged preferences, local training."""


for _name in COMMAND_MODULES:
    _modname = f"cai_kit.cli.{_name}"
    if importlib.util.find_spec(_modname) is not None:
        importlib.import_module(_modname).register(app)


def main() -> None:
    """Run the CLI; user errors print one line (secrets redacted) instead of a traceback."""
    try:
        app()
    except CaiKitError as exc:
        typer.secho(f"Error: {redact(str(exc))}", fg="red", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.secho(
            "Interrupted; finished work is kept. Re-run the same command to resume.", err=True
        )
        sys.exit(130)


if __name__ == "__main__":
    main()
