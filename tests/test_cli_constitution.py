"""`cai-kit constitution list | show | validate` through typer's CliRunner: output and exit codes."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from cai_kit.cli.main import app
from cai_kit.constitution import list_constitutions, load_constitution

GOOD = """\
name: mini
version: 2
description: A two-principle test constitution.
principles:
  - id: a
    critique: Find harm.
    revision: Remove harm.
  - id: b
    critique: Find lies.
    revision: Remove lies.
    judge: Which is more honest?
"""

runner = CliRunner()


def test_validate_reports_every_problem_with_file_line_field_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\nprinciples:\n  - id: a\n    critique: c\n    revision: r\n    oops: 1\n"
        "  - id: a\n    critique: ''\n    revision: r\n"
    )
    result = runner.invoke(app, ["constitution", "validate", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:6: principles[0].oops: unknown key" in result.output
    assert f"{bad}:7: principles[1].id: duplicate id 'a'" in result.output
    assert f"{bad}:8: principles[1].critique: must not be empty" in result.output
    assert "3 problem(s) found." in result.output
    assert "Traceback" not in result.output


def test_validate_reports_yaml_syntax_error_with_line_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: x\nprinciples:\n  - id: a\n    critique: [unclosed\n")
    result = runner.invoke(app, ["constitution", "validate", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:" in result.output and ": yaml: " in result.output
    assert "column" in result.output


def test_validate_good_file_prints_one_ok_line_and_exits_0(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    result = runner.invoke(app, ["constitution", "validate", str(good)])
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("OK: mini v2, 2 principles, hash ")


def test_validate_missing_file_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    result = runner.invoke(app, ["constitution", "validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1
    assert "not a shipped name" in result.output and "Traceback" not in result.output


def test_list_shows_every_shipped_constitution_with_principle_count() -> None:
    result = runner.invoke(app, ["constitution", "list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for name in list_constitutions():
        c = load_constitution(name)
        row = next(line for line in result.output.splitlines() if f" {name} " in line)
        assert f" {len(c.principles)} " in row and c.version in row


def test_show_prints_principles_and_content_hash(tmp_path: Path) -> None:
    shown = runner.invoke(app, ["constitution", "show", "harmless"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0
    c = load_constitution("harmless")
    assert c.content_hash in shown.output
    assert all(p.id in shown.output for p in c.principles)
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    by_path = runner.invoke(app, ["constitution", "show", str(good)], env={"COLUMNS": "200"})
    assert by_path.exit_code == 0 and "Which is more honest?" in by_path.output


def test_every_constitution_command_has_help() -> None:
    for cmd in ("list", "show", "validate", "new"):
        result = runner.invoke(app, ["constitution", cmd, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output


def test_new_writes_a_valid_copy_of_the_template_named_as_asked(tmp_path: Path) -> None:
    target = tmp_path / "kind.yaml"
    made = runner.invoke(app, ["constitution", "new", "kind", "--out", str(target)])
    assert made.exit_code == 0, made.output
    assert str(target) in made.output and "validate" in made.output
    c = load_constitution(str(target))
    assert c.name == "kind"
    assert "#" in target.read_text()  # the annotations come along
    checked = runner.invoke(app, ["constitution", "validate", str(target)])
    assert checked.exit_code == 0 and checked.output.startswith("OK: kind v")


def test_new_refuses_to_overwrite_and_rejects_a_bad_name(tmp_path: Path) -> None:
    target = tmp_path / "mine.yaml"
    target.write_text("keep me")
    again = runner.invoke(app, ["constitution", "new", "mine", "--out", str(target)])
    assert again.exit_code == 1 and "exists" in again.output and target.read_text() == "keep me"
    bad = runner.invoke(
        app, ["constitution", "new", "no spaces/please", "--out", str(tmp_path / "x.yaml")]
    )
    assert bad.exit_code == 1 and "name" in bad.output.lower() and "Traceback" not in bad.output


def test_new_defaults_to_name_dot_yaml_in_the_current_directory(
    tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    made = runner.invoke(app, ["constitution", "new", "team-rules"])
    assert made.exit_code == 0, made.output
    assert load_constitution(str(tmp_path / "team-rules.yaml")).name == "team-rules"
