"""The whole pipeline from one recipe, in miniature, on the embedded model."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cai_kit.cli.main import app

ROOT = Path(__file__).parent.parent


def test_bad_recipe_names_the_field(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\nprompts: p.jsonl\nsft: {max_stepz: 3}\n")
    r = CliRunner().invoke(app, ["pipeline", str(recipe), "--out", str(tmp_path / "run")])
    assert r.exit_code == 1 and "sft.max_stepz" in r.output


def test_shipped_recipes_are_valid_and_dry_run_lists_every_stage(tmp_path: Path) -> None:
    for name in ("local_tiny.yaml", "api.yaml"):
        r = CliRunner().invoke(
            app,
            [
                "pipeline",
                str(ROOT / "examples" / "recipes" / name),
                "--out",
                str(tmp_path / name),
                "--dry-run",
            ],
        )
        assert r.exit_code == 0, r.output
        assert r.output.count("[todo]") >= 6 and "eval winrate" in r.output


@pytest.mark.slow
def test_miniature_local_pipeline_runs_every_stage_then_skips_them_all(tmp_path: Path) -> None:
    recipe = tmp_path / "mini.yaml"
    recipe.write_text(
        f"name: mini\nprompts: {ROOT / 'examples' / 'red_team_prompts.jsonl'}\nlimit: 3\n"
        "revise: {rounds: 1, max_tokens: 24}\nsft: {max_steps: 2, batch_size: 2, max_length: 256}\n"
        "dpo: {max_steps: 2, batch_size: 2, max_length: 256}\neval: {limit: 2, max_tokens: 16, mode: letter}\n"
    )
    run = tmp_path / "run"
    r = CliRunner().invoke(app, ["pipeline", str(recipe), "--out", str(run)])
    assert r.exit_code == 0, r.output
    for path in ("revise/revisions.jsonl", "sft_data/train.jsonl", "sft_model/config.json", "dpo_data/train.jsonl",
                 "dpo_model/config.json", "eval/report.md", "report.md"):  # fmt: skip
        assert (run / path).is_file(), path
    assert "win rate" in (run / "report.md").read_text().lower()
    again = CliRunner().invoke(app, ["pipeline", str(recipe), "--out", str(run)])
    assert (
        again.exit_code == 0
        and "0 stage(s) ran" in again.output
        and again.output.count("skip ") == 6
    )
