"""The package stays light to import, and every CLI command documents itself."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

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


@pytest.mark.slow
def test_the_readmes_first_command_runs_the_main_job_on_the_embedded_model(
    tmp_path: Path,
) -> None:
    """The first command a newcomer copies: after its install, the job it names must run on
    the embedded model and write usable records (shortened here: 1 prompt, 8 tokens)."""
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text(encoding="utf-8")
    line = next(
        x
        for x in readme.splitlines()
        if x.startswith('pip install -c constraints.txt ".[local]" && ')
    )
    argv = shlex.split(line.split(" && ", 1)[1])
    assert argv[:2] == ["cai-kit", "revise"] and "--model" in argv and "local" in argv
    out = tmp_path / "first"
    r = subprocess.run([sys.executable, "-m", "cai_kit", *argv[1:], "--limit", "1", "--max-tokens", "8",
                        "--out", str(out), "-q"], cwd=root, capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 done; 0 failed" in r.stdout
    rows = [json.loads(x) for x in (out / "revisions.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["status"] == "ok" and rows[0]["final_response"]


def test_every_page_the_package_serves_is_in_setup_pys_package_data() -> None:
    """The tests read pages from the source tree, the installed package only has what setup.py
    lists: a page moved (review.html -> review/page.html) without its package_data line would
    pass every test here and be missing after `pip install` (a wheel built from this tree held
    cai_kit/serve/page.html and cai_kit/review/page.html)."""
    import ast

    root = Path(__file__).resolve().parent.parent
    setup_call = next(
        node
        for node in ast.walk(ast.parse((root / "setup.py").read_text()))
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup"
    )
    data = next(kw.value for kw in setup_call.keywords if kw.arg == "package_data")
    listed = ast.literal_eval(data)["cai_kit"]
    shipped = {p for pattern in listed for p in (root / "cai_kit").glob(pattern)}
    pages = set((root / "cai_kit").rglob("*.html"))
    assert len(pages) >= 2 and pages <= shipped, sorted(str(p) for p in pages - shipped)
