"""`cai-kit constitution list | show | validate | new | infer | diff`: inspect, check, start,
infer (from preference labels) and compare constitutions."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from cai_kit.cli.common import EXIT_CODES_HELP
from cai_kit.cli.infer import diff, infer

constitution_app = typer.Typer(
    help="List, show, validate, start, infer and compare constitutions (YAML principles).",
    no_args_is_help=True,
)


@constitution_app.command("list")
def list_() -> None:
    """List the constitutions shipped with cai-kit (usable by name)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from cai_kit.constitution import list_constitutions, load_constitution

    table = Table(title="Shipped constitutions")
    for col in ("name", "version", "principles", "description"):
        table.add_column(col, overflow="fold")
    for name in list_constitutions():
        c = load_constitution(name)
        row = (c.name, c.version, str(len(c.principles)), c.description)
        table.add_row(*(escape(t) for t in row))  # "[...]" in a text is text, not markup
    Console().print(table)


@constitution_app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="A shipped name (e.g. harmless) or a YAML file.")],
) -> None:
    """Print a constitution's principles, few-shot examples and content hash."""
    from rich.console import Console
    from rich.markup import escape as e  # user text may hold "[...]": print it, not as markup

    from cai_kit.constitution import load_constitution

    c = load_constitution(name)
    con = Console()
    con.print(f"[bold]{e(c.name)}[/bold] v{e(c.version)}  hash={c.content_hash}")
    if c.description:
        con.print(e(c.description))
    for p in c.principles:
        con.print(f"\n[bold cyan]{e(p.id)}[/bold cyan]")
        con.print(f"  critique: {e(p.critique)}")
        con.print(f"  revision: {e(p.revision)}")
        con.print(f"  judge:    {e(p.judge_question)}")
        if p.check is not None:  # rubric items (docs/rewards.md)
            k = p.check
            how = f"python {k.python}" if k.python else f"regex '{k.regex}' must {k.must}"
            con.print(f"  check:    {e(how)}" + (f"  weight {p.weight:g}" if p.weight != 1 else ""))
        elif p.question or p.weight != 1:
            con.print(f"  rubric:   {e(p.rubric_question)}  weight {p.weight:g}")
    if c.rubric is not None:
        con.print(f"\nrubric: combine {c.rubric.combine}, threshold {c.rubric.threshold:g}")
    if c.few_shot:
        con.print(f"\n{len(c.few_shot)} few-shot example(s)")


@constitution_app.command("validate")
def validate(
    path: Annotated[str, typer.Argument(help="The YAML file to check.")],
) -> None:
    """Check a constitution file and report every problem as file:line: field: message."""
    from cai_kit.constitution import ConstitutionError, load_constitution

    try:
        c = load_constitution(path)
    except ConstitutionError as exc:
        for problem in exc.problems:
            typer.secho(str(problem), fg="red", err=True)
        typer.secho(f"{len(exc.problems)} problem(s) found.", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"OK: {c.name} v{c.version}, {len(c.principles)} principles, hash {c.content_hash}")


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@constitution_app.command("new")
def new(
    name: Annotated[str, typer.Argument(help="Name of the new constitution, e.g. team-rules.")],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="File to write (default: NAME.yaml here)."),
    ] = None,
) -> None:
    """Write a copy of the annotated template (constitutions/_template.yaml) to edit."""
    from cai_kit.cli.common import fail
    from cai_kit.constitution import template_text

    if not _NAME.fullmatch(name):
        fail(
            f"Name {name!r}: use letters, digits, '-', '_' or '.', starting with a letter or digit."
        )
    target = out or Path(f"{name}.yaml")
    if target.exists():
        fail(f"{target} exists; pick another --out or remove it first.")
    text = re.sub(r"(?m)^name: \S+", f"name: {name}", template_text(), count=1)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    typer.echo(f"Wrote {target}. Edit it, then check it: cai-kit constitution validate {target}")


constitution_app.command("infer", epilog=EXIT_CODES_HELP)(infer)
constitution_app.command("diff")(diff)


def register(app: typer.Typer) -> None:
    app.add_typer(constitution_app, name="constitution")
