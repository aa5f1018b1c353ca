"""The package stays light to import, and every CLI command documents itself."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
import typer
from typer.testing import CliRunner

from cai_kit._version import __version__
from cai_kit.cli.main import app

HEAVY = ("torch", "transformers", "trl", "litellm", "datasets", "peft", "llama_cpp", "accelerate")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stdout.split())


def test_import_cai_kit_pulls_in_no_heavy_library() -> None:
    loaded = _modules_after("import cai_kit")
    assert not [m for m in HEAVY if m in loaded]


def test_cli_help_pulls_in_no_heavy_library() -> None:
    code = (
        "from typer.testing import CliRunner\n"
        "from cai_kit.cli.main import app\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0, r.output"
    )
    loaded = _modules_after(code)
    assert not [m for m in HEAVY if m in loaded]


def test_lazy_public_names_resolve() -> None:
    import cai_kit

    for name in cai_kit.__all__:
        assert getattr(cai_kit, name) is not None


def test_version_flag_prints_the_package_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"cai-kit {__version__}"


def _all_command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for name, cmd in group.commands.items():
        paths.append((*prefix, name))
        if isinstance(cmd, click.Group):
            paths.extend(_all_command_paths(cmd, (*prefix, name)))
    return paths


COMMANDS = _all_command_paths(typer.main.get_command(app))  # type: ignore[arg-type]


def test_cli_has_the_foundation_commands() -> None:
    assert {("chat",), ("models",)} <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) for p in COMMANDS])
def test_every_command_has_help_with_a_description(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    cmd: click.Command = typer.main.get_command(app)  # type: ignore[assignment]
    for part in path:
        cmd = cmd.commands[part]  # type: ignore[attr-defined]
    assert (cmd.help or cmd.short_help or "").strip(), (
        f"`cai-kit {' '.join(path)}` has no description"
    )
